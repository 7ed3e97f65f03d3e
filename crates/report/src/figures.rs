//! The report's numbers: per-iteration means, KL to the SFT model, the gold win rate of
//! the final policy over SFT, the PERL comparison, and the headline summary (summary.json).

use std::collections::BTreeMap;

use anyhow::Result;
use rlhf_core::metrics::{TRAINABLE_PARAMS, TRAINED_STATE_BYTES};
use rlhf_core::CoreError;
use serde::Serialize;

use crate::run_dir::{Iteration, Metrics, RunData, Sampled};

/// Metric names read from reward-model metrics, first present wins.
pub const RM_EVAL_ACCURACY: [&str; 3] = ["eval_accuracy", "eval/accuracy", "eval_acc"];
/// Training accuracy of the reward model.
pub const RM_TRAIN_ACCURACY: [&str; 3] = ["accuracy", "train_accuracy", "train/accuracy"];
/// Training loss.
pub const TRAIN_LOSS: [&str; 3] = ["loss", "train_loss", "train/loss"];
/// Evaluation loss.
pub const EVAL_LOSS: [&str; 2] = ["eval_loss", "eval/loss"];
/// Peak resident memory of a training stage, in bytes (maximum over rows).
pub const PEAK_MEMORY: [&str; 2] = ["run/peak_rss_bytes", "peak_rss_bytes"];
/// Wall time per optimiser step, in seconds (mean over rows).
pub const STEP_TIME: [&str; 2] = ["run/seconds_per_step", "seconds_per_step"];

/// Mean of the present values.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The proxy-reward column: `rm` (one reward model) or `rm_mean` (an ensemble) when the
/// scores have it, else `reward`.
pub fn proxy_column(s: &Sampled) -> &'static str {
    ["rm", "rm_mean"]
        .into_iter()
        .find(|c| s.has_source(c))
        .unwrap_or("reward")
}

/// Mean of a score column over rollouts that have a value.
pub fn mean_score(s: &Sampled, column: &str) -> Option<f64> {
    mean((0..s.rollouts.len()).filter_map(|i| s.score(i, column).map(f64::from)))
}

/// Mean over rollouts of sum_t(logprobs - ref_logprobs): the sampled estimate of
/// KL(policy || SFT). Rollouts without ref_logprobs are left out; None when none have them.
pub fn kl_to_ref(s: &Sampled) -> Option<f64> {
    mean(s.rollouts.iter().filter_map(|r| {
        r.ref_logprobs.as_ref().map(|refs| {
            r.logprobs
                .iter()
                .zip(refs)
                .map(|(&lp, &rp)| f64::from(lp) - f64::from(rp))
                .sum::<f64>()
        })
    }))
}

/// Mean response length in tokens.
pub fn mean_length(s: &Sampled) -> Option<f64> {
    mean(s.rollouts.iter().map(|r| r.response_tokens.len() as f64))
}

/// Policy metric: the KL coefficient beta an iteration trained with.
pub const KL_COEF: &str = "iter/kl_coef";
/// Policy metric: the adaptive KL controller's target (ppo-update --kl-target).
pub const KL_TARGET: &str = "iter/kl_target";
/// A final policy's gold reward counts as "within noise" of the best iteration's when the
/// paired difference is no lower than this many standard errors below zero.
pub const NOISE_SE: f64 = 2.0;

/// Figures of one policy on the held-out prompts.
#[derive(Debug, Clone, Serialize)]
pub struct HeldOut {
    pub rollouts: usize,
    pub proxy_reward: Option<f64>,
    pub gold_reward: Option<f64>,
    pub kl_to_sft: Option<f64>,
    /// Gold win rate over the SFT model's held-out rollouts; null without the oracle or
    /// without the SFT rollouts.
    pub gold_win_rate_vs_sft: Option<f64>,
}

/// Held-out figures of `s`, judged against the SFT model's held-out rollouts `sft`.
pub fn held_out(s: &Sampled, sft: Option<&Sampled>) -> Result<HeldOut> {
    let gold_win_rate_vs_sft = match sft {
        Some(sft) if judge_column(s, sft) == "gold" => Some(win_rate(s, sft)?.rate),
        _ => None,
    };
    Ok(HeldOut {
        rollouts: s.rollouts.len(),
        proxy_reward: mean_score(s, proxy_column(s)),
        gold_reward: mean_score(s, "gold"),
        kl_to_sft: kl_to_ref(s),
        gold_win_rate_vs_sft,
    })
}

/// Figures of one policy iteration.
#[derive(Debug, Clone, Serialize)]
pub struct IterationFigures {
    pub iteration: u32,
    pub rollouts: usize,
    pub proxy_column: &'static str,
    pub proxy_reward: Option<f64>,
    pub gold_reward: Option<f64>,
    pub kl_to_sft: Option<f64>,
    pub response_length: Option<f64>,
    /// The KL coefficient beta the iteration trained with (its policy metrics).
    pub kl_coef: Option<f64>,
    /// The iteration's updated policy on the held-out prompts (`iter-NNN/eval_*`).
    pub held_out: Option<HeldOut>,
}

/// Computes the figures of one iteration's rollouts (None when it has none) and of its
/// held-out evaluation.
pub fn iteration_figures(
    it: &Iteration,
    sft: Option<&Sampled>,
) -> Result<Option<IterationFigures>> {
    let Some(s) = it.sampled.as_ref() else {
        return Ok(None);
    };
    let proxy = proxy_column(s);
    Ok(Some(IterationFigures {
        iteration: it.number,
        rollouts: s.rollouts.len(),
        proxy_column: proxy,
        proxy_reward: mean_score(s, proxy),
        gold_reward: mean_score(s, "gold"),
        kl_to_sft: kl_to_ref(s),
        response_length: mean_length(s),
        kl_coef: it.policy_metrics.as_ref().and_then(|m| m.last(KL_COEF)),
        held_out: it.eval.as_ref().map(|e| held_out(e, sft)).transpose()?,
    }))
}

/// Where the KL budget of a report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetSource {
    /// `report --kl-budget`.
    Flag,
    /// The adaptive KL controller's target recorded by ppo-update (`iter/kl_target`).
    ControllerTarget,
}

/// The KL budget: the flag, else the last controller target the iterations recorded.
pub fn kl_budget(run: &RunData, flag: Option<f64>) -> Option<(f64, BudgetSource)> {
    flag.map(|b| (b, BudgetSource::Flag)).or_else(|| {
        run.iterations
            .iter()
            .rev()
            .find_map(|it| it.policy_metrics.as_ref().and_then(|m| m.last(KL_TARGET)))
            .map(|t| (t, BudgetSource::ControllerTarget))
    })
}

/// The iteration whose policy scores best on the held-out prompts under the reward model
/// (the proxy: what a user without an oracle can see) among those within the KL budget,
/// and how the final policy compares with it under the gold oracle.
#[derive(Debug, Clone, Serialize)]
pub struct BestIteration {
    pub iteration: u32,
    pub held_out: HeldOut,
    /// Mean over held-out rollouts paired by prompt_id and sample_index of the final
    /// policy's gold reward minus the best iteration's; null without the oracle.
    pub final_minus_best_gold: Option<f64>,
    /// Standard error of that mean.
    pub final_minus_best_gold_se: Option<f64>,
    /// True when the difference is no lower than NOISE_SE standard errors below zero.
    pub final_within_noise: Option<bool>,
}

/// Picks the best iteration under the budget (see [`BestIteration`]); None when no
/// iteration has a held-out evaluation within the budget.
pub fn best_iteration(
    run: &RunData,
    figures: &[IterationFigures],
    budget: Option<f64>,
) -> Result<Option<BestIteration>> {
    let mut best: Option<(&IterationFigures, &HeldOut, f64)> = None;
    for f in figures {
        let Some(h) = &f.held_out else { continue };
        let Some(proxy) = h.proxy_reward else {
            continue;
        };
        let within = match (budget, h.kl_to_sft) {
            (None, _) => true,
            (Some(b), Some(kl)) => kl <= b,
            (Some(_), None) => false,
        };
        if within && best.is_none_or(|(_, _, p)| proxy > p) {
            best = Some((f, h, proxy));
        }
    }
    let Some((f, h, _)) = best else {
        return Ok(None);
    };
    let best_eval = run
        .iterations
        .iter()
        .find(|it| it.number == f.iteration)
        .and_then(|it| it.eval.as_ref());
    let diff = match (&run.final_policy, best_eval) {
        (Some(fin), Some(b)) if fin.has_source("gold") && b.has_source("gold") => {
            paired_difference(fin, b, "gold")?
        }
        _ => None,
    };
    Ok(Some(BestIteration {
        iteration: f.iteration,
        held_out: h.clone(),
        final_minus_best_gold: diff.map(|d| d.0),
        final_minus_best_gold_se: diff.map(|d| d.1),
        final_within_noise: diff.map(|(mean, se)| mean >= -NOISE_SE * se),
    }))
}

/// Mean and standard error of `a[column] - b[column]` over rollouts paired by prompt_id
/// and sample_index; None without pairs.
pub fn paired_difference(a: &Sampled, b: &Sampled, column: &str) -> Result<Option<(f64, f64)>> {
    let diffs: Vec<f64> = pairs(a, b)?
        .paired
        .iter()
        .map(|&(i, j)| Ok(f64::from(judged(a, i, column)?) - f64::from(judged(b, j, column)?)))
        .collect::<Result<_>>()?;
    let n = diffs.len() as f64;
    let Some(mean) = mean(diffs.iter().copied()) else {
        return Ok(None);
    };
    let var = if diffs.len() > 1 {
        diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Ok(Some((mean, (var / n).sqrt())))
}

/// Gold-judged comparison of a policy against SFT on the same prompts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WinRate {
    /// The score column that judged: `gold` when the run has the oracle, else the
    /// reward model's column (a proxy: the policy was trained on it).
    pub judge: String,
    /// (wins + ties / 2) / pairs.
    pub rate: f64,
    pub pairs: usize,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Policy rollouts with no SFT rollout of the same prompt_id and sample_index.
    pub unpaired_policy: usize,
    /// SFT rollouts with no policy rollout of the same key.
    pub unpaired_sft: usize,
}

/// (prompt_id, sample_index) -> rollout index, refusing duplicate keys.
fn keyed(s: &Sampled) -> Result<BTreeMap<(String, i32), usize>> {
    let mut out = BTreeMap::new();
    for (i, r) in s.rollouts.iter().enumerate() {
        let key = (r.prompt_id.clone(), r.sample_index);
        if let Some(first) = out.insert(key, i) {
            return Err(CoreError::BadInput {
                path: s.rollouts_path.clone(),
                row: Some(i),
                message: format!(
                    "prompt_id `{}` sample_index {} appears twice (rows {first} and {i}); pairs need one rollout per key",
                    r.prompt_id, r.sample_index
                ),
            }
            .into());
        }
    }
    Ok(out)
}

fn judged(s: &Sampled, i: usize, judge: &str) -> Result<f32> {
    s.score(i, judge).ok_or_else(|| {
        CoreError::BadInput {
            path: s.scores_path.clone(),
            row: Some(s.score_index[i]),
            message: format!(
                "no `{judge}` score for rollout `{}`\n  hint: score the final SFT and policy rollouts with the same reward sources",
                s.rollouts[i].rollout_id
            ),
        }
        .into()
    })
}

/// The column that judges the final policy against the SFT model: `gold` when both final
/// score files carry the oracle, else the reward model's proxy column.
pub fn judge_column(policy: &Sampled, sft: &Sampled) -> &'static str {
    if policy.has_source("gold") && sft.has_source("gold") {
        "gold"
    } else {
        proxy_column(policy)
    }
}

/// Policy and SFT rollouts matched by prompt_id and sample_index.
#[derive(Debug, Clone)]
pub struct Pairs {
    /// (policy index, SFT index), in key order.
    pub paired: Vec<(usize, usize)>,
    pub unpaired_policy: usize,
    pub unpaired_sft: usize,
}

/// The pairs of (policy index, SFT index) with the same prompt_id and sample_index.
pub fn pairs(policy: &Sampled, sft: &Sampled) -> Result<Pairs> {
    let p = keyed(policy)?;
    let s = keyed(sft)?;
    let paired: Vec<(usize, usize)> = p
        .iter()
        .filter_map(|(k, &i)| s.get(k).map(|&j| (i, j)))
        .collect();
    Ok(Pairs {
        unpaired_policy: p.len() - paired.len(),
        unpaired_sft: s.len() - paired.len(),
        paired,
    })
}

/// Win rate of `policy` over `sft` under the judge column (see [`judge_column`]): win 1,
/// tie 0.5, loss 0.
pub fn win_rate(policy: &Sampled, sft: &Sampled) -> Result<WinRate> {
    let judge = judge_column(policy, sft);
    let Pairs {
        paired,
        unpaired_policy,
        unpaired_sft,
    } = pairs(policy, sft)?;
    if paired.is_empty() {
        return Err(CoreError::Mismatch {
            what: "prompt",
            left_name: policy.rollouts_path.display().to_string(),
            left: format!("{} rollouts", policy.rollouts.len()),
            right_name: sft.rollouts_path.display().to_string(),
            right: format!("{} rollouts, none with the same prompt_id and sample_index", sft.rollouts.len()),
            hint: "sample the final policy and the SFT model on the same held-out prompts with the same --samples-per-prompt".into(),
        }
        .into());
    }
    let (mut wins, mut ties, mut losses) = (0, 0, 0);
    for &(i, j) in &paired {
        let (gp, gs) = (judged(policy, i, judge)?, judged(sft, j, judge)?);
        if gp > gs {
            wins += 1;
        } else if gp == gs {
            ties += 1;
        } else {
            losses += 1;
        }
    }
    Ok(WinRate {
        judge: judge.to_string(),
        rate: (wins as f64 + 0.5 * ties as f64) / paired.len() as f64,
        pairs: paired.len(),
        wins,
        ties,
        losses,
        unpaired_policy,
        unpaired_sft,
    })
}

/// Resources and quality of one training variant (LoRA or full) of one stage.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Variant {
    /// RM eval accuracy or policy gold win rate.
    pub quality: Option<f64>,
    /// Policies: KL to the SFT model of the final policy on the held-out prompts.
    pub kl_to_sft: Option<f64>,
    pub trainable_params: Option<f64>,
    /// Weights, gradients and AdamW moments of the trained parameters (run/trained_state_bytes).
    pub trained_state_bytes: Option<f64>,
    pub peak_rss_bytes: Option<f64>,
    pub seconds_per_step: Option<f64>,
}

/// The PERL comparison: LoRA vs full tuning of the reward model and of the policy.
#[derive(Debug, Clone, Serialize)]
pub struct PerlTable {
    pub rm_lora: Variant,
    pub rm_full: Option<Variant>,
    pub policy_lora: Variant,
    pub policy_full: Option<Variant>,
}

/// What the training stages record about their resources, over one arm's stages.
struct Resources {
    /// Peak RSS: the maximum.
    peak: Option<f64>,
    /// Seconds per step: the mean.
    step: Option<f64>,
    /// Trainable parameters and trained-state bytes: the last stage's.
    params: Option<f64>,
    state_bytes: Option<f64>,
}

fn resources(metrics: &[&Metrics]) -> Resources {
    let peak = metrics
        .iter()
        .filter_map(|m| m.first_present(&PEAK_MEMORY).and_then(|n| m.max(n)))
        .reduce(f64::max);
    let step = mean(
        metrics
            .iter()
            .filter_map(|m| m.first_present(&STEP_TIME).and_then(|n| m.mean(n))),
    );
    let last = |name: &str| metrics.iter().rev().find_map(|m| m.last(name));
    Resources {
        peak,
        step,
        params: last(TRAINABLE_PARAMS),
        state_bytes: last(TRAINED_STATE_BYTES),
    }
}

impl Variant {
    fn new(quality: Option<f64>, kl_to_sft: Option<f64>, r: Resources) -> Variant {
        Variant {
            quality,
            kl_to_sft,
            trainable_params: r.params,
            trained_state_bytes: r.state_bytes,
            peak_rss_bytes: r.peak,
            seconds_per_step: r.step,
        }
    }
}

fn rm_variant(m: &Metrics) -> Variant {
    let quality = m.first_present(&RM_EVAL_ACCURACY).and_then(|n| m.last(n));
    Variant::new(quality, None, resources(&[m]))
}

/// The PERL table, when the run has a full-tuning variant of either stage.
pub fn perl_table(run: &RunData, policy_win_rate: Option<f64>) -> Result<Option<PerlTable>> {
    let full_policy_metrics: Vec<&Metrics> = run
        .iterations
        .iter()
        .filter_map(|i| i.full_policy_metrics.as_ref())
        .collect();
    if run.rm_full.is_none() && run.final_full_policy.is_none() && full_policy_metrics.is_empty() {
        return Ok(None);
    }
    let lora_policy_metrics: Vec<&Metrics> = run
        .iterations
        .iter()
        .filter_map(|i| i.policy_metrics.as_ref())
        .collect();
    let policy_full = if run.final_full_policy.is_some() || !full_policy_metrics.is_empty() {
        let quality = match (&run.final_full_policy, &run.final_sft) {
            (Some(full), Some(sft)) => Some(win_rate(full, sft)?.rate),
            _ => None,
        };
        Some(Variant::new(
            quality,
            run.final_full_policy.as_ref().and_then(kl_to_ref),
            resources(&full_policy_metrics),
        ))
    } else {
        None
    };
    Ok(Some(PerlTable {
        rm_lora: run.rm.as_ref().map(rm_variant).unwrap_or_default(),
        rm_full: run.rm_full.as_ref().map(rm_variant),
        policy_lora: Variant::new(
            policy_win_rate,
            run.final_policy.as_ref().and_then(kl_to_ref),
            resources(&lora_policy_metrics),
        ),
        policy_full,
    }))
}

/// The headline figures, written as summary.json.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// False for a partial report of a run in progress (`--partial`): the figures that
    /// need the missing parts are null.
    pub complete: bool,
    pub rm_eval_accuracy: Option<f64>,
    /// Null when the run has no gold oracle (real data): then `win_rate` is judged by the
    /// reward model, named in `win_rate.judge`.
    pub gold_win_rate_vs_sft: Option<f64>,
    pub kl_to_sft: Option<f64>,
    pub gold_reward_sft: Option<f64>,
    pub gold_reward_final: Option<f64>,
    pub proxy_reward_sft: Option<f64>,
    pub proxy_reward_final: Option<f64>,
    pub response_length_sft: Option<f64>,
    pub response_length_final: Option<f64>,
    /// Null until the final evaluation exists (partial report).
    pub win_rate: Option<WinRate>,
    /// KL budget (nats per response): `report --kl-budget`, else the adaptive controller's
    /// target; null when neither is set (fixed beta).
    pub kl_budget: Option<f64>,
    pub kl_budget_source: Option<BudgetSource>,
    /// The final policy's held-out KL is at or under the budget.
    pub kl_within_budget: Option<bool>,
    /// The best iteration under the KL budget by held-out proxy reward; null when the
    /// iterations have no held-out evaluation (iter-NNN/eval_*.parquet).
    pub best_iteration: Option<BestIteration>,
    pub seconds_per_stage: Option<BTreeMap<String, f64>>,
    pub total_seconds: Option<f64>,
    pub iterations: Vec<IterationFigures>,
    pub perl: Option<PerlTable>,
    pub notes: Vec<String>,
}

/// Computes every figure of the report.
pub fn summarise(run: &RunData, kl_budget_flag: Option<f64>) -> Result<Summary> {
    let mut notes = run.notes.clone();
    let rm_eval_accuracy = match run
        .rm
        .as_ref()
        .map(|rm| (rm, rm.first_present(&RM_EVAL_ACCURACY)))
    {
        Some((rm, Some(name))) => rm.last(name),
        None => None,
        Some((_, None)) => {
            notes.push(format!(
                "rm/metrics.parquet has no eval accuracy (looked for {}): rm_eval_accuracy is null",
                RM_EVAL_ACCURACY.join(", ")
            ));
            None
        }
    };
    let win_rate = match (&run.final_policy, &run.final_sft) {
        (Some(p), Some(s)) => Some(win_rate(p, s)?),
        _ => None,
    };
    if let Some(w) = &win_rate {
        if w.judge != "gold" {
            notes.push(format!(
                "no gold scores in final/: the win rate is judged by `{}`, the reward model the policy was trained on (a proxy, not a human)",
                w.judge
            ));
        }
        if w.unpaired_policy + w.unpaired_sft > 0 {
            notes.push(format!(
                "win rate over {} pairs; {} final-policy and {} SFT rollouts had no counterpart with the same prompt_id and sample_index",
                w.pairs, w.unpaired_policy, w.unpaired_sft
            ));
        }
    }
    let kl_to_sft = run.final_policy.as_ref().and_then(kl_to_ref);
    if run.final_policy.is_some() && kl_to_sft.is_none() {
        notes.push("final/policy_rollouts.parquet has no ref_logprobs: kl_to_sft is null".into());
    }
    let mut iterations = Vec::new();
    for it in &run.iterations {
        iterations.extend(iteration_figures(it, run.final_sft.as_ref())?);
    }
    let budget = kl_budget(run, kl_budget_flag);
    let best = best_iteration(run, &iterations, budget.map(|b| b.0))?;
    let held_out_count = iterations.iter().filter(|f| f.held_out.is_some()).count();
    if !iterations.is_empty() && held_out_count == 0 {
        notes.push("no iter-NNN/eval_*.parquet: the iterations were not evaluated on the held-out prompts, so no best iteration is named".into());
    } else if held_out_count > 0 && best.is_none() {
        notes.push(format!(
            "no iteration's held-out KL is within the budget of {} nats: no best iteration",
            budget.map_or("n/a".into(), |b| format!("{:.2}", b.0))
        ));
    }
    let (seconds_per_stage, total_seconds) = match &run.timings {
        Some(t) => (
            Some(t.iter().cloned().collect::<BTreeMap<_, _>>()),
            Some(t.iter().map(|(_, s)| s).sum()),
        ),
        None => (None, None),
    };
    let perl = perl_table(run, win_rate.as_ref().map(|w| w.rate))?;
    let (sft, policy) = (run.final_sft.as_ref(), run.final_policy.as_ref());
    Ok(Summary {
        complete: run.complete,
        rm_eval_accuracy,
        gold_win_rate_vs_sft: win_rate
            .as_ref()
            .and_then(|w| (w.judge == "gold").then_some(w.rate)),
        kl_to_sft,
        gold_reward_sft: sft.and_then(|s| mean_score(s, "gold")),
        gold_reward_final: policy.and_then(|s| mean_score(s, "gold")),
        proxy_reward_sft: sft.and_then(|s| mean_score(s, proxy_column(s))),
        proxy_reward_final: policy.and_then(|s| mean_score(s, proxy_column(s))),
        response_length_sft: sft.and_then(mean_length),
        response_length_final: policy.and_then(mean_length),
        win_rate,
        kl_budget: budget.map(|b| b.0),
        kl_budget_source: budget.map(|b| b.1),
        kl_within_budget: match (budget, kl_to_sft) {
            (Some((b, _)), Some(kl)) => Some(kl <= b),
            _ => None,
        },
        best_iteration: best,
        seconds_per_stage,
        total_seconds,
        iterations,
        perl,
        notes,
    })
}

/// One example prompt with the SFT and final-policy responses.
#[derive(Debug, Clone)]
pub struct Example {
    pub prompt_id: String,
    pub prompt: String,
    pub sft: String,
    pub policy: String,
    pub sft_gold: Option<f32>,
    pub policy_gold: Option<f32>,
}

/// The first `n` prompts (by prompt_id) with their lowest-sample_index pair.
pub fn examples(run: &RunData, n: usize) -> Result<Vec<Example>> {
    let (Some(p), Some(s)) = (&run.final_policy, &run.final_sft) else {
        return Ok(Vec::new());
    };
    let paired = pairs(p, s)?.paired;
    let mut by_prompt: BTreeMap<&str, (i32, usize, usize)> = BTreeMap::new();
    for (i, j) in paired {
        let r = &p.rollouts[i];
        let e = by_prompt
            .entry(r.prompt_id.as_str())
            .or_insert((r.sample_index, i, j));
        if r.sample_index < e.0 {
            *e = (r.sample_index, i, j);
        }
    }
    Ok(by_prompt
        .into_iter()
        .take(n)
        .map(|(id, (_, i, j))| Example {
            prompt_id: id.to_string(),
            prompt: p.rollouts[i].prompt.clone(),
            sft: s.rollouts[j].response.clone(),
            policy: p.rollouts[i].response.clone(),
            sft_gold: s.score(j, "gold"),
            policy_gold: p.score(i, "gold"),
        })
        .collect())
}
