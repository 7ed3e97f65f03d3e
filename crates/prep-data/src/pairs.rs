//! `prep-data pairs`: the oracle-labelling path. Samples of the same prompt are paired and
//! ordered by a score column (e.g. `gold` from score-rewards); a seeded fraction of labels
//! is flipped (--label-noise) and near-equal scores become ties (--tie-threshold).

use std::collections::HashMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use rlhf_core::hash::{content_id, split_salted, unit_interval};
use rlhf_core::lineage::Lineage;
use rlhf_core::parquet_io::{write_records, Dataset};
use rlhf_core::records::{PreferenceRow, RolloutRow, ScoresTable};
use rlhf_core::schema::Artifact;
use rlhf_core::shard::Shard;

use crate::error::PrepError;
use crate::output::RejectSink;
use crate::reject::{Reason, Rejection, Summary};

/// Which samples of a prompt are paired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pairing {
    /// Every pair of the K samples (K choose 2, sharing a group_id).
    All,
    /// Samples 0-1, 2-3, ... (independent pairs).
    Adjacent,
}

/// Flags of `prep-data pairs`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Rollouts (file, folder of part files, or glob) from sample-rollouts.
    #[arg(long)]
    pub rollouts: PathBuf,
    /// Scores of those rollouts from score-rewards.
    #[arg(long)]
    pub scores: PathBuf,
    /// Score column that decides the preference (`reward`, or a source such as `gold`).
    #[arg(long, default_value = "gold")]
    pub score_column: String,
    /// Probability of flipping each non-tie label (seeded by --seed and the pair).
    #[arg(long, default_value_t = 0.0)]
    pub label_noise: f64,
    /// Score differences at or below this are ties (label 0.5).
    #[arg(long, default_value_t = 0.0)]
    pub tie_threshold: f64,
    /// Reject ties (reason `tie`) instead of keeping them with label 0.5.
    #[arg(long)]
    pub drop_ties: bool,
    /// Which samples of a prompt to pair.
    #[arg(long, value_enum, default_value_t = Pairing::All)]
    pub pairing: Pairing,
    /// Fraction of prompts (by id) whose pairs go to the eval split.
    #[arg(long, default_value_t = 0.1)]
    pub eval_fraction: f64,
    /// Output preferences file.
    #[arg(long)]
    pub out: PathBuf,
    /// Rejects file (default: beside --out, named <stem>-rejects.parquet).
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// Fail (exit 3) on the first rejected rollout or pair.
    #[arg(long)]
    pub strict: bool,
}

fn score_of(table: &ScoresTable, column: &str) -> Option<Vec<Option<f32>>> {
    match column {
        "reward" => Some(table.reward.iter().map(|&x| Some(x)).collect()),
        "penalty" => Some(table.penalty.iter().map(|&x| Some(x)).collect()),
        c => table.source(c).map(<[Option<f32>]>::to_vec),
    }
}

/// The rejects file beside `out`: `<stem>-rejects.parquet`.
fn default_rejects(out: &std::path::Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}-rejects.parquet"))
}

/// Runs the labelling; returns the summary.
pub fn run(args: &PairsArgs, seed: u64) -> anyhow::Result<Summary> {
    if !(0.0..=1.0).contains(&args.label_noise) {
        return Err(PrepError::Flag(format!(
            "--label-noise {} must be in [0, 1]",
            args.label_noise
        ))
        .into());
    }
    if !(0.0..=1.0).contains(&args.eval_fraction) {
        return Err(PrepError::Flag(format!(
            "--eval-fraction {} must be in [0, 1]",
            args.eval_fraction
        ))
        .into());
    }
    if args.tie_threshold.is_nan() || args.tie_threshold < 0.0 {
        return Err(PrepError::Flag("--tie-threshold must be >= 0".into()).into());
    }
    let rejects_out = args
        .rejects
        .clone()
        .unwrap_or_else(|| default_rejects(&args.out));
    rlhf_core::paths::check_outputs(
        &[("--out", &args.out), ("--rejects", &rejects_out)],
        &[("--rollouts", &args.rollouts), ("--scores", &args.scores)],
    )
    .map_err(|e| PrepError::Flag(e.to_string()))?;
    crate::error::require_input(&args.rollouts)?;
    crate::error::require_input(&args.scores)?;
    let rollouts_ds = Dataset::open(&args.rollouts, Artifact::Rollouts)?;
    let rollouts: Vec<RolloutRow> = rollouts_ds.read_all()?;
    let (table, _) = ScoresTable::read(&args.scores)?;
    let scores = score_of(&table, &args.score_column).ok_or_else(|| {
        let mut cols = vec!["reward".to_string(), "penalty".to_string()];
        cols.extend(table.sources.iter().map(|(n, _)| n.clone()));
        PrepError::input(
            &args.scores,
            None,
            format!(
                "no score column `{}`; found: {}",
                args.score_column,
                cols.join(", ")
            ),
        )
    })?;
    let by_id: HashMap<&str, Option<f32>> = table
        .rollout_id
        .iter()
        .map(String::as_str)
        .zip(scores.iter().copied())
        .collect();

    let mut lineage = Lineage::new(
        "prep-data",
        env!("CARGO_PKG_VERSION"),
        Artifact::Preferences,
    )
    .with_tokenizer(rollouts_ds.tokenizer_hash()?);
    lineage.add_input("rollouts", &args.rollouts)?;
    lineage.add_input("scores", &args.scores)?;
    let rejects_path = rejects_out;
    let mut rejects = RejectSink::new(&rejects_path, Shard::ALL, &lineage);
    let mut summary = Summary::default();
    let source_file = args.rollouts.clone();
    let mut reject =
        |summary: &mut Summary, row: usize, text: String, r: Rejection| -> anyhow::Result<()> {
            if args.strict {
                return Err(PrepError::input(
                    &source_file,
                    Some(row),
                    format!("{}: {} (--strict)", r.reason.code(), r.detail),
                )
                .into());
            }
            summary.reject(r.reason);
            rejects.push(&source_file, row, &text, &r)
        };
    let describe = |r: &RolloutRow, s: Option<f32>| {
        serde_json::json!({"rollout_id": r.rollout_id, "prompt_id": r.prompt_id, "response": r.response, "score": s}).to_string()
    };

    // Group scored rollouts by prompt, in order of first appearance.
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<(usize, &RolloutRow, f32)>> = HashMap::new();
    for (i, r) in rollouts.iter().enumerate() {
        summary.rows_read += 1;
        match by_id.get(r.rollout_id.as_str()).copied().flatten() {
            Some(s) if s.is_finite() => {
                let g = groups.entry(r.prompt_id.as_str()).or_default();
                if g.is_empty() {
                    order.push(r.prompt_id.as_str());
                }
                g.push((i + 1, r, s));
            }
            s => {
                let why = if by_id.contains_key(r.rollout_id.as_str()) {
                    "is null or not finite"
                } else {
                    "is missing"
                };
                reject(
                    &mut summary,
                    i + 1,
                    describe(r, s),
                    Rejection::new(
                        Reason::MissingScore,
                        format!(
                            "score `{}` of rollout {} {why}",
                            args.score_column, r.rollout_id
                        ),
                    ),
                )?;
            }
        }
    }
    summary
        .files
        .insert(args.rollouts.display().to_string(), rollouts.len() as u64);

    let mut out: Vec<PreferenceRow> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let (mut flipped, mut ties) = (0u64, 0u64);
    for pid in order {
        let mut g = groups.remove(pid).unwrap_or_default();
        g.sort_by(|a, b| {
            (a.1.iteration, a.1.sample_index, &a.1.rollout_id).cmp(&(
                b.1.iteration,
                b.1.sample_index,
                &b.1.rollout_id,
            ))
        });
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        match args.pairing {
            Pairing::All => {
                (0..g.len()).for_each(|i| (i + 1..g.len()).for_each(|j| pairs.push((i, j))))
            }
            Pairing::Adjacent => (0..g.len() / 2).for_each(|k| pairs.push((2 * k, 2 * k + 1))),
        }
        let paired: std::collections::HashSet<usize> =
            pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        for (k, (row, r, s)) in g.iter().enumerate() {
            if !paired.contains(&k) {
                reject(
                    &mut summary,
                    *row,
                    describe(r, Some(*s)),
                    Rejection::new(
                        Reason::NoPartner,
                        format!(
                            "no other scored sample of prompt {} to pair rollout {} with",
                            r.prompt_id, r.rollout_id
                        ),
                    ),
                )?;
            }
        }
        let group_id = (args.pairing == Pairing::All && g.len() > 2)
            .then(|| content_id(&["oracle-group", pid]));
        for (a, b) in pairs {
            let ((ra, x, sa), (_, y, sb)) = (g[a], g[b]);
            let text = || {
                serde_json::json!({"a": describe(x, Some(sa)), "b": describe(y, Some(sb))})
                    .to_string()
            };
            if x.response == y.response {
                reject(
                    &mut summary,
                    ra,
                    text(),
                    Rejection::new(
                        Reason::ChosenEqualsRejected,
                        format!(
                            "rollouts {} and {} have the same response",
                            x.rollout_id, y.rollout_id
                        ),
                    ),
                )?;
                continue;
            }
            // in f64: two finite f32 scores far apart (3e38 and -3e38) differ by more than
            // f32 holds; the margin written is capped at f32::MAX, never inf
            let diff = (f64::from(sa) - f64::from(sb)).abs();
            let tie = diff <= args.tie_threshold;
            if tie && args.drop_ties {
                reject(
                    &mut summary,
                    ra,
                    text(),
                    Rejection::new(
                        Reason::Tie,
                        format!(
                            "scores {sa} and {sb} are within --tie-threshold {}",
                            args.tie_threshold
                        ),
                    ),
                )?;
                continue;
            }
            let (mut win, mut lose) = if sb > sa { (y, x) } else { (x, y) };
            let key = format!("label-noise:{seed}:{}:{}", x.rollout_id, y.rollout_id);
            if !tie && unit_interval(&key) < args.label_noise {
                std::mem::swap(&mut win, &mut lose);
                flipped += 1;
            }
            ties += tie as u64;
            let pair_id = content_id(&[&x.prompt, &win.response, &lose.response]);
            if !seen.insert(pair_id.clone()) {
                reject(
                    &mut summary,
                    ra,
                    text(),
                    Rejection::new(Reason::Duplicate, format!("pair {pair_id} already written")),
                )?;
                continue;
            }
            out.push(PreferenceRow {
                pair_id,
                prompt_id: x.prompt_id.clone(),
                group_id: group_id.clone(),
                prompt: x.prompt.clone(),
                chosen: win.response.clone(),
                rejected: lose.response.clone(),
                label: if tie { 0.5 } else { 1.0 },
                margin: Some(diff.min(f64::from(f32::MAX)) as f32),
                weight: 1.0,
                // Salted: the prompts were already split with the plain hash upstream.
                split: split_salted(&x.prompt_id, "pairs", args.eval_fraction).to_string(),
                source: format!("oracle:{}", args.score_column),
                prompt_tokens: Some(x.prompt_tokens.clone()),
                chosen_tokens: Some(win.response_tokens.clone()),
                rejected_tokens: Some(lose.response_tokens.clone()),
            });
        }
    }
    for (k, v) in [
        ("label_noise", args.label_noise),
        ("labels_flipped", flipped as f64),
        ("ties", ties as f64),
    ] {
        lineage.extra.insert(k.into(), serde_json::json!(v));
    }
    if out.is_empty() {
        return Err(PrepError::input(&args.rollouts, None, format!(
            "no preference pairs could be made from {} rollouts (hint: sample at least 2 responses per prompt)",
            rollouts.len()
        )).into());
    }
    let n = write_records(&args.out, &out, &lineage)?;
    summary
        .written
        .insert(args.out.display().to_string(), n as u64);
    rejects.finish(&mut summary)?;
    tracing::info!(
        "{n} pairs, {ties} ties, {flipped} labels flipped by --label-noise {}",
        args.label_noise
    );
    Ok(summary)
}
