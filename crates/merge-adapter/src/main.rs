//! merge-adapter: fold a LoRA adapter into its base (thin CLI over `merge_adapter::run`).

use std::path::PathBuf;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};
use rlhf_nn::Dtype;

/// Fold a LoRA adapter into its base and write a Hugging Face model folder transformers loads as-is.
#[derive(Debug, Parser)]
#[command(
    name = "merge-adapter",
    version,
    about,
    long_about = "Policy adapters become a *ForCausalLM folder; reward adapters (SEQ_CLS with a score head) a *ForSequenceClassification folder with num_labels = 1 and score.weight. Tokenizer files come along. The adapter's recorded base hash must match the base (--force overrides). Written tensor by tensor (peak memory near one copy of the model), sharded like save_pretrained, into a folder that appears atomically. --verify compares merged and unmerged outputs.\n\nWith --summary-json: the files written, the base id and the verification figures."
)]
struct Cli {
    /// Base model folder the adapter was trained on (for RLHF adapters: the SFT model).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// Output folder (replaced atomically when complete).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Weight type written (the merge itself is computed in f32).
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    dtype: Dtype,
    /// Run unmerged and merged models on sample inputs and fail if their outputs differ.
    #[arg(long)]
    verify: bool,
    /// --verify tolerance on max |merged - unmerged|, relative to max |unmerged| (at least 1). Default: 1e-4 for f32, 3e-2 for bf16.
    #[arg(long, value_name = "REL")]
    tolerance: Option<f64>,
    /// Largest shard (e.g. 2GB, 500MB, 1GiB); bigger models get numbered shards and model.safetensors.index.json.
    #[arg(long, default_value = "2GB", value_name = "SIZE")]
    max_shard_size: String,
    /// Merge even when the adapter records another base (prints a warning).
    #[arg(long)]
    force: bool,
    /// Compute device: auto (CUDA if available, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    device: String,
    #[command(flatten)]
    global: GlobalArgs,
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    rlhf_nn::init_threads(cli.global.threads);
    if let Some(t) = cli.tolerance {
        if !(t > 0.0 && t.is_finite()) {
            anyhow::bail!(rlhf_core::CoreError::Usage(format!(
                "--tolerance {t}: expected a positive number"
            )));
        }
    }
    let settings = merge_adapter::Settings {
        model: cli.model.clone(),
        adapter: cli.adapter.clone(),
        out: cli.out.clone(),
        dtype: cli.dtype,
        device: rlhf_nn::parse_device(&cli.device)?,
        verify: cli.verify,
        tolerance: cli.tolerance,
        max_shard_bytes: merge_adapter::shards::parse_size(&cli.max_shard_size)
            .map_err(|e| rlhf_core::CoreError::Usage(format!("--max-shard-size: {e}")))?,
        force: cli.force,
        seed: cli.global.seed,
    };
    let summary = merge_adapter::run(&settings)?;
    let mut out = rlhf_core::summary::StageSummary::new("merge-adapter", env!("CARGO_PKG_VERSION"))
        .output(&settings.out, None);
    if let Some(v) = &summary.verification {
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(v) {
            for (k, x) in m {
                if let Some(f) = x.as_f64() {
                    out = out.metric(&format!("verify_{k}"), f);
                }
            }
        }
    }
    cli.global.write_summary(out.details(&summary))?;
    Ok(())
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("merge-adapter");
    cli.global.init();
    cli::finish_with(run(&cli), &[rlhf_nn::is_bad_input], &[rlhf_nn::is_usage])
}
