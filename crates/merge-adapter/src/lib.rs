//! merge-adapter: folds a LoRA adapter into its base and writes a Hugging Face folder that
//! transformers loads as-is: policy adapters become a *ForCausalLM, reward adapters (SEQ_CLS
//! with a score head) a *ForSequenceClassification with one label.
//!
//! Memory: the base is loaded once (f32, so the merge W + scale * B A is done in f32 whatever
//! the output dtype), merged in place one linear at a time, and written one tensor at a time
//! (converted to the output dtype per tensor), so the peak stays near one copy of the model.
//! With --verify the in-memory model is dropped before the written folder is loaded back.

pub mod output;
pub mod shards;
pub mod verify;

use std::path::PathBuf;

use anyhow::{Context, Result};
use rlhf_core::atomic::AtomicDir;
use rlhf_core::lineage::Lineage;
use rlhf_core::schema::Artifact;
use rlhf_core::CoreError;
use rlhf_nn::{Dtype, DtypeKind, Model};
use tch::{Device, Kind};
use tracing::{info, warn};

use crate::output::OutputKind;
use crate::shards::Entry;
use rlhf_core::adapter_meta::{self as base_check, BaseCheck};

/// Name the adapter is attached under while merging.
const ADAPTER: &str = "merge";

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    pub adapter: PathBuf,
    pub out: PathBuf,
    pub dtype: Dtype,
    pub device: Device,
    pub verify: bool,
    /// Relative tolerance of --verify (None: 1e-4 for f32, 3e-2 for bf16).
    pub tolerance: Option<f64>,
    pub max_shard_bytes: u64,
    pub force: bool,
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub out: String,
    pub kind: OutputKind,
    pub architecture: String,
    pub dtype: &'static str,
    pub base_id: String,
    pub files: Vec<String>,
    pub verification: Option<verify::Verification>,
}

fn bad(path: &std::path::Path, message: String) -> anyhow::Error {
    CoreError::BadInput {
        path: path.to_path_buf(),
        row: None,
        message,
    }
    .into()
}

/// Checks paths before any heavy work.
pub fn validate(s: &Settings) -> Result<()> {
    rlhf_core::paths::check_outputs(
        &[("--out", &s.out)],
        &[("--model", &s.model), ("--adapter", &s.adapter)],
    )?;
    if !s.model.join("config.json").is_file() {
        return Err(bad(&s.model, "not a model folder: config.json is missing\n  hint: --model takes the base the adapter was trained on (e.g. the SFT model folder)".into()));
    }
    if !s.adapter.join("adapter_config.json").is_file() {
        return Err(bad(&s.adapter, "not an adapter folder: adapter_config.json is missing\n  hint: --adapter takes a PEFT LoRA folder written by train-rm-lora, ppo-update or peft".into()));
    }
    Ok(())
}

/// Merges and writes the folder atomically; nothing appears at `out` on failure.
pub fn run(s: &Settings) -> Result<Summary> {
    validate(s)?;
    let (_, raw_cfg) = rlhf_nn::peft::read_adapter_config(&s.adapter)?;
    let mut model = Model::load(&s.model, s.device, Kind::Float)
        .with_context(|| format!("loading the base {}", s.model.display()))?;
    let base_id = model.base_id();
    // The merge loads the base in float32; an adapter trained on a bfloat16 load of it
    // records the id of that copy.
    let bf16_id = || Some(model.base_id_as(Kind::BFloat16));
    match base_check::check_base_or(&s.adapter, &s.model, &base_id, s.force, bf16_id)
        .context("the adapter was trained on another base (--force merges anyway)")?
    {
        BaseCheck::Match => info!("adapter was trained on this base (base_id {base_id})"),
        BaseCheck::Unrecorded => warn!(
            "{} records no base_id ({}): only tensor shapes are checked",
            s.adapter.display(),
            base_check::RECORD_FILES.join(", ")
        ),
        BaseCheck::Forced { recorded, actual } => warn!(
            "--force: the adapter records base_id {recorded} but {} has {actual}; merging anyway",
            s.model.display()
        ),
    }
    model
        .load_adapter(ADAPTER, &s.adapter)
        .with_context(|| format!("loading the adapter {}", s.adapter.display()))?;
    let kind = if model.adapter_has_head(ADAPTER)? {
        OutputKind::SequenceClassification
    } else {
        if raw_cfg.get("task_type").and_then(|t| t.as_str()) == Some("SEQ_CLS") {
            warn!("adapter_config.json says SEQ_CLS but the adapter has no score head: writing a causal LM");
        }
        if !model.has_lm_head() {
            return Err(bad(&s.model, "the base has no LM head (a sequence-classification model) and the adapter no score head: nothing to write a model class for".into()));
        }
        OutputKind::CausalLm
    };
    let cfg = model.config().clone();
    let architecture = output::architecture(&cfg, kind);
    let inputs = verify::sample_inputs(
        cfg.vocab_size,
        cfg.max_position_embeddings,
        s.seed,
        s.device,
    );
    let unmerged = if s.verify {
        Some(verify::outputs(&model, Some(ADAPTER), kind, &inputs)?)
    } else {
        None
    };

    model.merge_adapter(ADAPTER)?;
    let out_kind = s.dtype.kind();
    let dtype_name = match s.dtype {
        Dtype::F32 => "float32",
        Dtype::Bf16 => "bfloat16",
    };
    let mut entries: Vec<Entry> = model
        .base_named_tensors()
        .into_iter()
        .filter(|(name, _)| match kind {
            OutputKind::SequenceClassification => name != "lm_head.weight",
            OutputKind::CausalLm => name != "score.weight",
        })
        .map(|(name, tensor)| Entry {
            kind: if tensor.is_floating_point() {
                out_kind
            } else {
                tensor.kind()
            },
            name,
            tensor,
        })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));

    let dir = AtomicDir::new(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    let cfg_json = output::config_json(&cfg, kind, dtype_name);
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string_pretty(&cfg_json)? + "\n",
    )
    .context("writing config.json")?;
    let mut files = vec!["config.json".to_string()];
    files.extend(shards::write_model(
        dir.path(),
        &entries,
        s.max_shard_bytes,
    )?);
    let side = output::copy_side_files(&s.model, dir.path(), kind)?;
    if !side.iter().any(|f| f == "tokenizer.json") {
        warn!(
            "{} has no tokenizer.json: the merged folder has no tokenizer",
            s.model.display()
        );
    }
    files.extend(side);
    // One copy of the model at a time: release it before loading the written folder.
    drop(entries);
    drop(model);

    let verification = match unmerged {
        Some(unmerged) => {
            let merged = Model::load(dir.path(), s.device, Kind::Float)
                .context("loading the merged folder back for --verify")?;
            let tol = s.tolerance.unwrap_or(match s.dtype {
                Dtype::F32 => 1e-4,
                Dtype::Bf16 => 3e-2,
            });
            let v = verify::compare(
                &unmerged,
                &verify::outputs(&merged, None, kind, &inputs)?,
                tol,
            )?;
            info!(
                "verify: max |merged - unmerged| = {:.3e} (scale {:.3}, tolerance {:.1e})",
                v.max_abs_diff, v.scale, v.tolerance
            );
            Some(v)
        }
        None => None,
    };

    let mut lineage = Lineage::new(
        "merge-adapter",
        env!("CARGO_PKG_VERSION"),
        Artifact::Metrics,
    );
    lineage.schema = "hf-model-folder".into();
    lineage.add_input("model", &s.model)?;
    lineage.add_input("adapter", &s.adapter)?;
    lineage
        .extra
        .insert("base_id".into(), serde_json::json!(base_id));
    lineage
        .extra
        .insert("architecture".into(), serde_json::json!(architecture));
    lineage
        .extra
        .insert("dtype".into(), serde_json::json!(dtype_name));
    std::fs::write(dir.path().join("lineage.json"), lineage.to_json())
        .context("writing lineage.json")?;
    files.push("lineage.json".into());
    let out = dir.commit()?;
    Ok(Summary {
        out: out.display().to_string(),
        kind,
        architecture,
        dtype: dtype_name,
        base_id,
        files,
        verification,
    })
}
