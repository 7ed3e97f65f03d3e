//! The output folder, written atomically: full tuning gives a model folder (config.json,
//! model.safetensors, the input model's tokenizer and generation files), LoRA gives a PEFT
//! adapter folder (adapter_config.json, adapter_model.safetensors). Both get
//! `metrics.parquet` (long form) and `lineage.json`.

use std::path::Path;

use anyhow::{Context, Result};
use rlhf_core::atomic::AtomicDir;
use rlhf_core::lineage::Lineage;
use rlhf_core::metrics::MetricsLog;
use rlhf_nn::Model;

/// Metrics file inside the output folder.
pub const METRICS_FILE: &str = "metrics.parquet";
/// Lineage file inside the output folder.
pub const LINEAGE_FILE: &str = "lineage.json";

/// Writes the trained model (`adapter` None) or adapter to `out`.
pub fn write(
    out: &Path,
    model: &Model,
    adapter: Option<&str>,
    model_dir: &Path,
    metrics: &MetricsLog,
    lineage: &Lineage,
) -> Result<()> {
    let dir = AtomicDir::new(out)?;
    match adapter {
        None => {
            model
                .save_pretrained(dir.path())
                .with_context(|| format!("writing the model into {}", dir.path().display()))?;
            use rlhf_core::tokenizer::{copy_model_files, GENERATION_FILES, TOKENIZER_FILES};
            copy_model_files(model_dir, dir.path(), TOKENIZER_FILES)?;
            copy_model_files(model_dir, dir.path(), GENERATION_FILES)?;
        }
        Some(name) => model
            .save_adapter(name, dir.path())
            .with_context(|| format!("writing the adapter into {}", dir.path().display()))?,
    }
    metrics
        .write(
            &dir.path().join(METRICS_FILE),
            &lineage.for_artifact(rlhf_core::schema::Artifact::Metrics),
        )
        .context("writing metrics")?;
    let folder = Lineage {
        schema: if adapter.is_some() {
            "adapter"
        } else {
            "model"
        }
        .to_string(),
        ..lineage.clone()
    };
    let lineage_path = dir.path().join(LINEAGE_FILE);
    std::fs::write(&lineage_path, folder.to_json() + "\n")
        .with_context(|| format!("writing {}", lineage_path.display()))?;
    rlhf_core::config::write_resolved(dir.path())?;
    dir.commit()?;
    Ok(())
}
