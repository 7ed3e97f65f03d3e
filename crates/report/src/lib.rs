//! report: reads a run folder and writes plots (PNG and SVG), summary.md, a self-contained
//! summary.html and summary.json with the headline figures. No libtorch, no system font.
//!
//! Figures: reward-model loss and accuracy over steps; per iteration the proxy reward
//! (`rm`, or an ensemble's `rm_mean`, else `reward`), the gold reward (`gold`), the KL to
//! the SFT model (mean over rollouts of sum_t(logprobs - ref_logprobs)) and the response
//! length, on the training rollouts and, where the run evaluated each iteration
//! (`iter-NNN/eval_*`), on the held-out prompts; the reward-vs-KL frontier and the best
//! iteration under the KL budget (over-optimisation); the gold win rate of the final
//! policy over SFT on held-out prompts (rollouts paired by prompt_id and sample_index, win
//! 1, tie 0.5); examples; the PERL table (LoRA vs full) when the run has a full-tuning
//! variant; seconds per stage from timings.jsonl.

pub mod document;
pub mod figures;
pub mod glyph_backend;
pub mod plots;
pub mod run_dir;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rlhf_core::atomic::AtomicDir;

use crate::document::{Block, Document};
use crate::figures::{Example, PerlTable, Summary, Variant};
use crate::run_dir::RunData;

/// Validated settings of one report.
#[derive(Debug, Clone)]
pub struct Settings {
    pub run_dir: PathBuf,
    pub out_dir: PathBuf,
    /// Number of example prompts shown side by side.
    pub examples: usize,
    /// Report a run in progress: what exists so far, missing parts as notes.
    pub partial: bool,
    /// KL budget (nats per response); None = the adaptive controller's target, if any.
    pub kl_budget: Option<f64>,
}

/// Reads the run folder, writes every output into `out_dir` (atomically, as one folder)
/// and returns the summary.
pub fn run(settings: &Settings) -> Result<Summary> {
    check_out_dir(settings)?;
    let run = RunData::load(&settings.run_dir, settings.partial)?;
    let summary = figures::summarise(&run, settings.kl_budget)?;
    let examples = figures::examples(&run, settings.examples)?;

    let out = AtomicDir::new(&settings.out_dir)
        .with_context(|| format!("creating {}", settings.out_dir.display()))?;
    let rm_charts = run
        .rm
        .as_ref()
        .map(plots::rm_charts)
        .unwrap_or_default()
        .iter()
        .map(|c| plots::render(c, out.path()))
        .collect::<Result<Vec<_>>>()?;
    let it_charts = plots::iteration_charts(&summary)
        .iter()
        .map(|c| plots::render(c, out.path()))
        .collect::<Result<Vec<_>>>()?;
    let doc = build_document(&run, &summary, &examples, rm_charts, it_charts);
    write(out.path(), "summary.md", doc.to_markdown().as_bytes())?;
    write(out.path(), "summary.html", doc.to_html().as_bytes())?;
    let mut json = serde_json::to_string_pretty(&summary).context("serialising the summary")?;
    json.push('\n');
    write(out.path(), "summary.json", json.as_bytes())?;
    out.commit()?;
    Ok(summary)
}

/// The report replaces its folder as a whole, so that folder must hold nothing but an
/// earlier report: not the run folder, not a folder above it, not another stage's output.
pub fn check_out_dir(settings: &Settings) -> Result<()> {
    let (out, run) = (&settings.out_dir, &settings.run_dir);
    let (o, r) = (
        rlhf_core::paths::resolved(out),
        rlhf_core::paths::resolved(run),
    );
    let usage = |m: String| anyhow::Error::new(rlhf_core::CoreError::Usage(m));
    if r.starts_with(&o) {
        return Err(usage(format!(
            "--out-dir {} {} --run-dir {}: the report replaces its folder, which would delete \
             the run\n  hint: leave --out-dir out (default <run-dir>/report) or name a new folder",
            out.display(),
            if o == r {
                "is the same folder as"
            } else {
                "contains"
            },
            run.display()
        )));
    }
    if out.is_file() {
        return Err(usage(format!("--out-dir {} is a file", out.display())));
    }
    if out.is_dir() && !out.join("summary.json").is_file() {
        let mut entries = std::fs::read_dir(out)
            .with_context(|| format!("listing {}", out.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.starts_with('.'));
        if let Some(first) = entries.next() {
            return Err(usage(format!(
                "--out-dir {} holds files that are not a report (e.g. {first}); the report \
                 replaces its folder as a whole\n  hint: name a new folder",
                out.display()
            )));
        }
    }
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))
}

/// A figure with a fixed number of decimals, or "n/a".
fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{v:.decimals$}"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn mib(v: Option<f64>) -> String {
    v.map_or_else(
        || "n/a".into(),
        |v| {
            let m = v / (1024.0 * 1024.0);
            if m < 10.0 {
                format!("{m:.1} MiB")
            } else {
                format!("{m:.0} MiB")
            }
        },
    )
}

fn build_document(
    run: &RunData,
    s: &Summary,
    examples: &[Example],
    rm_charts: Vec<plots::Rendered>,
    it_charts: Vec<plots::Rendered>,
) -> Document {
    let name = run.dir.file_name().map_or_else(
        || run.dir.display().to_string(),
        |n| n.to_string_lossy().to_string(),
    );
    let mut d = Document {
        title: format!("RLHF run report: {name}"),
        blocks: Vec::new(),
    };
    if !s.complete {
        d.push(Block::Para(
            "Partial report of a run in progress: it shows what the run folder holds so far \
             (see the notes at the end); figures that need the final evaluation are n/a."
                .into(),
        ));
    }
    d.push(Block::Heading(1, "Headline".into()));
    let win = match &s.win_rate {
        Some(w) => vec![
            format!("win rate under `{}`, final policy vs SFT", w.judge),
            format!(
                "{} ({} pairs; wins/ties/losses {}/{}/{})",
                percent(Some(w.rate)),
                w.pairs,
                w.wins,
                w.ties,
                w.losses
            ),
        ],
        None => vec!["win rate, final policy vs SFT".into(), "n/a".into()],
    };
    let rows = vec![
        vec![
            "reward-model eval accuracy".into(),
            percent(s.rm_eval_accuracy),
        ],
        win,
        vec![
            "KL to the SFT model (nats per response)".into(),
            match (s.kl_budget, s.kl_within_budget) {
                (Some(b), Some(ok)) => format!(
                    "{} ({} the budget of {b:.2})",
                    fmt(s.kl_to_sft, 3),
                    if ok { "within" } else { "over" }
                ),
                _ => fmt(s.kl_to_sft, 3),
            },
        ],
        vec![
            "best iteration under the KL budget (held-out proxy reward)".into(),
            s.best_iteration.as_ref().map_or_else(
                || "n/a".into(),
                |b| {
                    format!(
                        "{} (gold win rate over SFT {}, KL {})",
                        b.iteration,
                        percent(b.held_out.gold_win_rate_vs_sft),
                        fmt(b.held_out.kl_to_sft, 3)
                    )
                },
            ),
        ],
        vec![
            "gold reward: SFT -> final".into(),
            format!(
                "{} -> {}",
                fmt(s.gold_reward_sft, 4),
                fmt(s.gold_reward_final, 4)
            ),
        ],
        vec![
            "proxy reward: SFT -> final".into(),
            format!(
                "{} -> {}",
                fmt(s.proxy_reward_sft, 4),
                fmt(s.proxy_reward_final, 4)
            ),
        ],
        vec![
            "response length (tokens): SFT -> final".into(),
            format!(
                "{} -> {}",
                fmt(s.response_length_sft, 1),
                fmt(s.response_length_final, 1)
            ),
        ],
        vec!["total stage time".into(), fmt(s.total_seconds, 1) + " s"],
    ];
    d.push(Block::Table(vec!["figure".into(), "value".into()], rows));

    d.push(Block::Heading(1, "Reward model".into()));
    if run.rm.is_none() {
        d.push(Block::Para("rm/metrics.parquet is not written yet.".into()));
    } else if rm_charts.is_empty() {
        d.push(Block::Para(
            "rm/metrics.parquet records no loss or accuracy metric.".into(),
        ));
    }
    d.blocks.extend(rm_charts.into_iter().map(Block::Chart));

    d.push(Block::Heading(1, "Policy iterations".into()));
    if s.iterations.is_empty() {
        d.push(Block::Para(
            "No iteration folders with rollouts and scores.".into(),
        ));
    } else {
        let rows = s
            .iterations
            .iter()
            .map(|f| {
                let h = f.held_out.as_ref();
                vec![
                    f.iteration.to_string(),
                    f.rollouts.to_string(),
                    fmt(f.kl_coef, 4),
                    format!("{} ({})", fmt(f.proxy_reward, 4), f.proxy_column),
                    fmt(f.gold_reward, 4),
                    fmt(f.kl_to_sft, 3),
                    fmt(f.response_length, 1),
                    fmt(h.and_then(|h| h.proxy_reward), 4),
                    fmt(h.and_then(|h| h.gold_reward), 4),
                    fmt(h.and_then(|h| h.kl_to_sft), 3),
                    percent(h.and_then(|h| h.gold_win_rate_vs_sft)),
                ]
            })
            .collect();
        d.push(Block::Para(
            "Proxy, gold, KL and length on the iteration's training rollouts (sampled by the policy before its update), then the updated policy on the held-out prompts (`iter-NNN/eval_*`), where the run evaluated each iteration.".into(),
        ));
        d.push(Block::Table(
            [
                "iteration",
                "rollouts",
                "beta",
                "proxy reward",
                "gold reward",
                "KL to SFT",
                "length",
                "held-out proxy",
                "held-out gold",
                "held-out KL",
                "gold win vs SFT",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
        d.blocks.extend(it_charts.into_iter().map(Block::Chart));
    }
    over_optimisation_section(&mut d, s);

    d.push(Block::Heading(1, "Examples (held-out prompts)".into()));
    for e in examples {
        d.push(Block::Heading(2, format!("prompt {}", e.prompt_id)));
        d.push(Block::Pre(e.prompt.clone()));
        let gold = |g: Option<f32>| g.map_or_else(|| "n/a".into(), |g| format!("{g:.3}"));
        d.push(Block::Table(
            vec![
                format!("SFT (gold {})", gold(e.sft_gold)),
                format!("final policy (gold {})", gold(e.policy_gold)),
            ],
            vec![vec![e.sft.clone(), e.policy.clone()]],
        ));
    }

    if let Some(p) = &s.perl {
        perl_section(&mut d, p);
    }
    if let Some(t) = &run.timings {
        d.push(Block::Heading(1, "Time per stage".into()));
        let rows = t
            .iter()
            .map(|(stage, secs)| vec![stage.clone(), format!("{secs:.1}")]);
        d.push(Block::Table(
            vec!["stage".into(), "seconds".into()],
            rows.collect(),
        ));
    }
    if !s.notes.is_empty() {
        d.push(Block::Heading(1, "Notes".into()));
        d.push(Block::List(s.notes.clone()));
    }
    d
}

fn over_optimisation_section(d: &mut Document, s: &Summary) {
    let Some(b) = &s.best_iteration else { return };
    d.push(Block::Heading(1, "Over-optimisation".into()));
    let budget = s.kl_budget.map_or_else(
        || "no KL budget (fixed beta, no --kl-budget)".into(),
        |v| format!("a KL budget of {v:.2} nats"),
    );
    d.push(Block::Para(format!(
        "Best iteration under {budget}, chosen by held-out proxy reward (what a user without an oracle sees): iteration {} with proxy {}, gold {}, KL {}, gold win rate over SFT {}.",
        b.iteration,
        fmt(b.held_out.proxy_reward, 4),
        fmt(b.held_out.gold_reward, 4),
        fmt(b.held_out.kl_to_sft, 3),
        percent(b.held_out.gold_win_rate_vs_sft),
    )));
    if let (Some(diff), Some(se), Some(ok)) = (
        b.final_minus_best_gold,
        b.final_minus_best_gold_se,
        b.final_within_noise,
    ) {
        d.push(Block::Para(format!(
            "Final policy minus best iteration, held-out gold (paired by prompt and sample): {diff:+.4} (standard error {se:.4}): {}.",
            if ok {
                format!("within noise (not below -{} standard errors)", figures::NOISE_SE)
            } else {
                format!("the final policy is worse than its best iteration by more than {} standard errors: over-optimised; use iteration {}'s policy", figures::NOISE_SE, b.iteration)
            }
        )));
    }
}

/// PERL's own findings (Sidahmed et al. 2024, arXiv 2403.10704), LoRA relative to full
/// tuning, as the paper's abstract versions state them (on models far larger than the
/// demo's); the versions differ, so the ranges span them.
const PAPER: [(&str, &str); 2] = [
    (
        "reward model",
        "accuracy on par with full tuning; about 50% less peak memory; training 50% to 2x faster",
    ),
    (
        "policy",
        "win rate on par with full tuning; 20% to 27% less peak memory; 10% to 15% faster",
    ),
];

fn ratio(lora: Option<f64>, full: Option<f64>) -> String {
    match (lora, full) {
        (Some(l), Some(f)) if f > 0.0 => format!("{:.0}% of full", 100.0 * l / f),
        _ => "n/a".into(),
    }
}

fn count(v: Option<f64>) -> String {
    match v {
        Some(n) if n >= 1e6 => format!("{:.2}M", n / 1e6),
        Some(n) if n >= 1e3 => format!("{:.1}k", n / 1e3),
        Some(n) => format!("{n:.0}"),
        None => "n/a".into(),
    }
}

fn perl_section(d: &mut Document, p: &PerlTable) {
    d.push(Block::Heading(1, "PERL: LoRA vs full tuning".into()));
    let row = |stage: &str, variant: &str, quality: String, v: &Variant| {
        vec![
            stage.to_string(),
            variant.to_string(),
            quality,
            fmt(v.kl_to_sft, 3),
            count(v.trainable_params),
            mib(v.trained_state_bytes),
            mib(v.peak_rss_bytes),
            fmt(v.seconds_per_step, 3),
        ]
    };
    let mut rows = vec![row(
        "reward model",
        "LoRA",
        percent(p.rm_lora.quality),
        &p.rm_lora,
    )];
    if let Some(f) = &p.rm_full {
        rows.push(row("reward model", "full", percent(f.quality), f));
    }
    rows.push(row(
        "policy",
        "LoRA",
        percent(p.policy_lora.quality),
        &p.policy_lora,
    ));
    if let Some(f) = &p.policy_full {
        rows.push(row("policy", "full", percent(f.quality), f));
    }
    d.push(Block::Table(
        [
            "stage",
            "tuning",
            "quality",
            "KL to SFT",
            "trainable parameters",
            "trained state",
            "peak memory",
            "seconds per step",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    ));
    d.push(Block::Para(
        "Quality: eval accuracy for the reward model, gold win rate over SFT on the held-out prompts for the policy. Trained state: the weights, gradients and AdamW moments of the trained parameters (run/trained_state_bytes), the memory that grows with what is tuned. Peak memory (peak RSS of the whole process, which also holds the frozen model, activations and libtorch) and time come from the metrics the training stages record with --record-timings (run/peak_rss_bytes, run/seconds_per_step); n/a where a stage did not record them.".into(),
    ));
    let mut rows = Vec::new();
    for ((stage, paper), (lora, full)) in PAPER.iter().zip([
        (&p.rm_lora, p.rm_full.as_ref()),
        (&p.policy_lora, p.policy_full.as_ref()),
    ]) {
        let Some(full) = full else { continue };
        let points = match (lora.quality, full.quality) {
            (Some(l), Some(f)) => format!("{:+.1} points", 100.0 * (l - f)),
            _ => "n/a".into(),
        };
        rows.push(vec![
            stage.to_string(),
            points,
            ratio(lora.trained_state_bytes, full.trained_state_bytes),
            ratio(lora.peak_rss_bytes, full.peak_rss_bytes),
            ratio(lora.seconds_per_step, full.seconds_per_step),
            paper.to_string(),
        ]);
    }
    if !rows.is_empty() {
        d.push(Block::Table(
            [
                "stage",
                "LoRA quality minus full",
                "LoRA trained state",
                "LoRA peak memory",
                "LoRA time per step",
                "PERL paper (LoRA vs full)",
            ]
            .map(String::from)
            .to_vec(),
            rows,
        ));
    }
}
