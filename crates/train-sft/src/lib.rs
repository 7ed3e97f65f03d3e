//! train-sft: supervised fine-tuning on an sft file, full or LoRA. The loss is on
//! completion tokens only; see `trainer` for the loop, `loss` for the masking, `batching`
//! for the deterministic data order; rlhf-algo's step loop runs the steps.

pub mod args;
pub mod batching;
pub mod data;
pub mod loss;
pub mod optimizer;
pub mod output;
pub mod settings;
pub mod trainer;

use anyhow::{Context, Result};
use rlhf_core::lineage::Lineage;
use rlhf_core::schema::Artifact;
use rlhf_core::tokenizer::Tokenizer;
use rlhf_nn::Model;
use serde_json::json;
use tracing::{info, warn};

pub use args::Cli;
pub use settings::Settings;

/// Name of the adapter trained with --lora-rank.
pub const ADAPTER: &str = "sft";

/// Runs the stage.
pub fn run(s: &Settings) -> Result<trainer::Outcome> {
    let tok = Tokenizer::from_dir(&s.model_dir)?;
    let mut model = Model::load(&s.model_dir, s.device, s.kind)
        .with_context(|| format!("loading model {}", s.model_dir.display()))?;
    let cfg = model.config().clone();
    let max_len = s
        .max_seq_len
        .min(cfg.max_position_embeddings.max(2) as usize);
    if max_len < s.max_seq_len {
        info!(
            max_seq_len = max_len,
            "--max-seq-len capped at the model's maximum position"
        );
    }
    let data = data::load(&s.data, &tok, cfg.vocab_size as usize, max_len)?;
    info!(
        train = data.train.len(),
        eval = data.eval.len(),
        tokens_from = ?data.source,
        truncated = data.truncated,
        "loaded {}",
        s.data.display()
    );
    if data.other_split > 0 {
        warn!(
            rows = data.other_split,
            "rows whose split is neither `train` nor `eval` are not used"
        );
    }
    if data.truncated > 0 {
        warn!(
            examples = data.truncated,
            max_seq_len = max_len,
            "examples were shortened to fit"
        );
    }

    let mut lineage = Lineage::new("train-sft", env!("CARGO_PKG_VERSION"), Artifact::Metrics)
        .with_tokenizer(Some(tok.hash().to_string()));
    lineage.add_input("model", &s.model_dir)?;
    lineage.add_input("sft", &s.data)?;
    let mut fingerprint = s.fingerprint();
    if let Some(m) = fingerprint.as_object_mut() {
        m.insert(
            "inputs".into(),
            json!(lineage.inputs.iter().map(|i| &i.blake3).collect::<Vec<_>>()),
        );
    }

    let (adapter, params) = match &s.lora {
        Some(l) => {
            let lc = l.config(cfg.arch);
            model
                .add_adapter(ADAPTER, &lc, None, s.seed)
                .context("adding the LoRA adapter")?;
            (Some(ADAPTER), model.adapter_named_parameters(ADAPTER)?)
        }
        None => {
            model.set_base_trainable(true);
            (None, model.base_parameters())
        }
    };
    if params.is_empty() {
        anyhow::bail!("nothing to train: no LoRA target module matched (see --lora-targets)");
    }
    let mut opt = optimizer::Optimizer::new(params, s.adamw(true), s.adamw(false));
    let run = trainer::Run {
        settings: s,
        model: &model,
        adapter,
        data: &data,
        pad_id: tok.pad_id as i64,
        fingerprint,
    };
    let (metrics, outcome) = run.train(&mut opt)?;
    lineage.extra.insert("steps".into(), json!(outcome.steps));
    lineage
        .extra
        .insert("final_train_loss".into(), json!(outcome.final_train_loss));
    lineage
        .extra
        .insert("eval_loss".into(), json!(outcome.eval_loss));
    lineage.extra.insert(
        "mode".into(),
        json!(if adapter.is_some() { "lora" } else { "full" }),
    );
    output::write(&s.out, &model, adapter, &s.model_dir, &metrics, &lineage)?;
    rlhf_algo::step_loop::remove_checkpoint(&s.checkpoint_dir, &s.checkpoint)?;
    info!(
        out = %s.out.display(),
        steps = outcome.steps,
        train_loss = ?outcome.final_train_loss,
        eval_loss = ?outcome.eval_loss,
        tokens = outcome.tokens_here,
        seconds = format!("{:.1}", outcome.train_seconds),
        tokens_per_s = format!("{:.0}", outcome.tokens_per_second()),
        "done"
    );
    Ok(outcome)
}
