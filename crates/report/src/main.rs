//! report: plot and summarise a run folder (thin CLI over `report::run`).

use std::path::PathBuf;

use clap::Parser;
use rlhf_core::cli::{self, GlobalArgs};

/// Plot and summarise a run folder: reward-model accuracy, proxy and gold reward, KL, lengths, win rate.
#[derive(Debug, Parser)]
#[command(
    name = "report",
    version,
    about,
    long_about = "Reads a run folder and writes PNG and SVG plots, summary.md, a self-contained summary.html and summary.json (headline figures: rm_eval_accuracy, gold_win_rate_vs_sft, kl_to_sft, gold_reward_sft, gold_reward_final, seconds per stage). Does not need libtorch or a system font.\n\nThe run folder must hold rm/metrics.parquet and final/{sft,policy}_{rollouts,scores}.parquet (with --partial, a run in progress: what exists so far, the rest as notes and null figures, summary.json's `complete` false); iter-NNN/ folders (with eval_{rollouts,scores}.parquet: the over-optimisation figures, the reward-vs-KL frontier and the best iteration under the KL budget), timings.jsonl and the full-tuning variants (rm-full/, final-full/, iter-NNN/policy-full/) are used when present."
)]
struct Cli {
    /// Run folder written by a pipeline (e.g. runs/demo).
    #[arg(long, value_name = "DIR")]
    run_dir: PathBuf,
    /// Output folder, replaced as a whole when the report is complete. Default: <run-dir>/report.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Number of held-out prompts shown with SFT and final responses side by side.
    #[arg(long, default_value_t = 5)]
    examples: usize,
    /// Report a run in progress: plot what the run folder holds so far (reward-model
    /// metrics, finished iterations) instead of refusing a folder without the final
    /// evaluation; missing parts become notes, their figures null, `complete` false.
    #[arg(long)]
    partial: bool,
    /// KL budget in nats per response (KL to the SFT model): the report says whether the
    /// final policy is within it and names the best iteration within it by held-out proxy
    /// reward. Default: the adaptive KL controller's target (ppo-update --kl-target) when
    /// the iterations recorded one.
    #[arg(long, value_name = "NATS", value_parser = positive_nats)]
    kl_budget: Option<f64>,
    #[command(flatten)]
    global: GlobalArgs,
}

fn positive_nats(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a finite number of nats > 0, got `{v}`")),
    }
}

fn main() -> ! {
    let cli = rlhf_core::config::parse::<Cli>("report");
    cli.global.init();
    let settings = report::Settings {
        out_dir: cli
            .out_dir
            .clone()
            .unwrap_or_else(|| cli.run_dir.join("report")),
        run_dir: cli.run_dir.clone(),
        examples: cli.examples,
        partial: cli.partial,
        kl_budget: cli.kl_budget,
    };
    let result = report::run(&settings).and_then(|summary| {
        match &summary.win_rate {
            Some(w) => tracing::info!(
                "wrote {} (win rate vs SFT under `{}`: {:.3})",
                settings.out_dir.display(),
                w.judge,
                w.rate
            ),
            None => tracing::info!(
                "wrote {} (partial: the run has no final evaluation yet)",
                settings.out_dir.display()
            ),
        }
        let details = serde_json::to_value(&summary)?;
        let mut out = rlhf_core::summary::StageSummary::new("report", env!("CARGO_PKG_VERSION"))
            .output(&settings.out_dir, None);
        // The headline figures are summary.json's top-level numbers.
        if let Some(m) = details.as_object() {
            for (k, v) in m {
                if let Some(f) = v.as_f64() {
                    out = out.metric(k, f);
                }
            }
        }
        cli.global.write_summary(out.details(details))?;
        Ok(())
    });
    cli::finish(result, &[])
}
