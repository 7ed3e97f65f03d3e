//! The labelling queue: which pairs of responses a person is asked to compare, and in what
//! order.
//!
//! Pairs are every two samples of one prompt (`prompt_id`) in the rollouts; two samples
//! with the same response text are not worth a person's time and are left out. A pair's
//! key is a content hash of its two rollout ids (unordered), so the same rollouts always
//! give the same keys whatever the order of the queue.
//!
//! Order (Christiano et al. 2017, "Deep reinforcement learning from human preferences",
//! section 2.2.4: ask about the pairs on which an ensemble of reward predictors disagrees
//! most): with ensemble scores, for each pair
//! - members known (`rm_0`, `rm_1`, ...): `votes` = the fraction of members that score the
//!   first response higher (a tie counts half); the queue starts with the pairs whose
//!   `|votes - 0.5|` is smallest (the members split most evenly);
//! - always: `p = Phi((m_a - m_b) / sqrt(s_a^2 + s_b^2))` from each response's ensemble
//!   mean and standard deviation (`rm_mean`, `rm_std`, or computed from the members): the
//!   probability, under the ensemble's spread, that the first is better; `|p - 0.5|`
//!   orders when members are not known, and breaks ties between equal votes;
//! - remaining ties, and every pair without scores (placed last), in a random order drawn
//!   from `--seed`.
//!
//! Without scores the whole queue is that seeded random order.

use std::collections::HashMap;
use std::path::Path;

use rlhf_core::hash::content_id;
use rlhf_core::records::{RolloutRow, ScoresTable};

use crate::error::LabelError;

/// One pair in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedPair {
    /// Stable id of the unordered pair: content hash of its two rollout ids.
    pub key: String,
    /// Row (index into the rollouts) of the sample with the smaller rollout id.
    pub first: usize,
    /// Row of the other sample.
    pub second: usize,
    /// P(first better) under the ensemble's mean and spread, when both are scored.
    pub p_first: Option<f64>,
    /// Fraction of ensemble members scoring the first higher (ties half), when known.
    pub votes_first: Option<f64>,
}

/// Counts of how the queue was built (logged by `serve`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct QueueStats {
    pub rollouts: usize,
    pub prompts: usize,
    /// Prompts with a single sample: nothing to compare.
    pub single_sample_prompts: usize,
    /// Pairs left out because both responses are the same text.
    pub identical_pairs: usize,
    /// Pairs queued.
    pub pairs: usize,
    /// Pairs queued without ensemble scores (at the end, in seeded random order).
    pub unscored_pairs: usize,
}

/// The ordered queue.
#[derive(Debug, Clone)]
pub struct Queue {
    pub pairs: Vec<QueuedPair>,
    pub stats: QueueStats,
}

/// The key of the unordered pair of two rollout ids.
pub fn pair_key(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    content_id(&["label-pairs", x, y])
}

/// An ensemble's scores of each rollout, read from a scores file.
#[derive(Debug, Clone)]
pub struct Ensemble {
    /// Member columns (`rm_0`, ...) when the file has two or more; else empty.
    pub members: Vec<String>,
    /// Per rollout id: the member scores (empty without members), mean and std.
    by_id: HashMap<String, Scored>,
}

#[derive(Debug, Clone)]
struct Scored {
    members: Vec<f32>,
    mean: f64,
    std: f64,
}

/// The member columns `rm_0`, `rm_1`, ... of a scores table, in member order.
fn member_columns(table: &ScoresTable) -> Vec<(usize, String)> {
    let mut cols: Vec<(usize, String)> = table
        .sources
        .iter()
        .filter_map(|(name, _)| {
            let n = name.strip_prefix("rm_")?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok().map(|i| (i, name.clone())))
                .flatten()
        })
        .collect();
    cols.sort();
    cols
}

impl Ensemble {
    /// Reads the ensemble columns of a scores table: members `rm_0`, `rm_1`, ... (two or
    /// more), else `rm_mean` and `rm_std`. A table with neither is refused (exit 3).
    pub fn from_table(table: &ScoresTable, path: &Path) -> Result<Ensemble, LabelError> {
        let members = member_columns(table);
        let mut by_id = HashMap::new();
        if members.len() >= 2 {
            let cols: Vec<&[Option<f32>]> = members
                .iter()
                .filter_map(|(_, name)| table.source(name))
                .collect();
            for (row, id) in table.rollout_id.iter().enumerate() {
                let values: Option<Vec<f32>> = cols
                    .iter()
                    .map(|c| c[row].filter(|v| v.is_finite()))
                    .collect();
                if let Some(values) = values {
                    let n = values.len() as f64;
                    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
                    let var = values
                        .iter()
                        .map(|&v| (v as f64 - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    let scored = Scored {
                        members: values,
                        mean,
                        std: var.sqrt(),
                    };
                    by_id.insert(id.clone(), scored);
                }
            }
            return Ok(Ensemble {
                members: members.into_iter().map(|(_, n)| n).collect(),
                by_id,
            });
        }
        let (Some(mean), Some(std)) = (table.source("rm_mean"), table.source("rm_std")) else {
            let mut found = vec!["reward".to_string(), "penalty".to_string()];
            found.extend(table.sources.iter().map(|(n, _)| n.clone()));
            return Err(LabelError::input(
                path,
                None,
                format!(
                    "no reward-ensemble columns: expected rm_0, rm_1, ... or rm_mean and rm_std, \
                     found {}\n  hint: score the rollouts with `score-rewards --reward-model A \
                     --reward-model B ...` (two or more), or leave --scores out for a random queue",
                    found.join(", ")
                ),
            ));
        };
        for (row, id) in table.rollout_id.iter().enumerate() {
            if let (Some(m), Some(s)) = (mean[row], std[row]) {
                if m.is_finite() && s.is_finite() && s >= 0.0 {
                    let scored = Scored {
                        members: Vec::new(),
                        mean: m as f64,
                        std: s as f64,
                    };
                    by_id.insert(id.clone(), scored);
                }
            }
        }
        Ok(Ensemble {
            members: Vec::new(),
            by_id,
        })
    }

    /// Number of rollouts with usable scores.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no rollout has usable scores.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// (P(a better), member votes for a) for two rollout ids, when both are scored.
    pub fn judge(&self, a: &str, b: &str) -> Option<(f64, Option<f64>)> {
        let (x, y) = (self.by_id.get(a)?, self.by_id.get(b)?);
        let p = preference_probability(x.mean, x.std, y.mean, y.std);
        let votes = (!x.members.is_empty()).then(|| {
            let n = x.members.len() as f64;
            let wins: f64 = x
                .members
                .iter()
                .zip(&y.members)
                .map(|(u, v)| match u.partial_cmp(v) {
                    Some(std::cmp::Ordering::Greater) => 1.0,
                    Some(std::cmp::Ordering::Equal) => 0.5,
                    _ => 0.0,
                })
                .sum();
            wins / n
        });
        Some((p, votes))
    }
}

/// `Phi((ma - mb) / sqrt(sa^2 + sb^2))`: the probability that a scores above b when each
/// score is normal with its ensemble mean and spread. Equal means give 0.5; no spread
/// gives 0 or 1.
pub fn preference_probability(ma: f64, sa: f64, mb: f64, sb: f64) -> f64 {
    let spread = (sa * sa + sb * sb).sqrt();
    let diff = ma - mb;
    if spread > 0.0 {
        normal_cdf(diff / spread)
    } else if diff > 0.0 {
        1.0
    } else if diff < 0.0 {
        0.0
    } else {
        0.5
    }
}

/// The standard normal CDF, through erfc (Numerical Recipes' Chebyshev fit, relative
/// error below 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Builds the queue from the rollouts (read from `path`) and optional ensemble scores.
pub fn build(
    rows: &[RolloutRow],
    path: &Path,
    ensemble: Option<&Ensemble>,
    seed: u64,
) -> Result<Queue, LabelError> {
    let mut stats = QueueStats {
        rollouts: rows.len(),
        ..QueueStats::default()
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(j) = seen.insert(r.rollout_id.as_str(), i) {
            return Err(LabelError::input(
                path,
                None,
                format!(
                    "rollout_id {} appears in rows {} and {}: rollout ids must be unique",
                    r.rollout_id,
                    j + 1,
                    i + 1
                ),
            ));
        }
    }
    // Samples grouped by prompt, in order of first appearance.
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let g = groups.entry(r.prompt_id.as_str()).or_default();
        if g.is_empty() {
            order.push(r.prompt_id.as_str());
        }
        g.push(i);
    }
    stats.prompts = order.len();
    let mut pairs: Vec<QueuedPair> = Vec::new();
    for pid in order {
        let mut g = groups.remove(pid).unwrap_or_default();
        g.sort_by(|&a, &b| {
            let (x, y) = (&rows[a], &rows[b]);
            (x.iteration, x.sample_index, &x.rollout_id).cmp(&(
                y.iteration,
                y.sample_index,
                &y.rollout_id,
            ))
        });
        if g.len() < 2 {
            stats.single_sample_prompts += 1;
            continue;
        }
        for i in 0..g.len() {
            for j in i + 1..g.len() {
                let (mut a, mut b) = (g[i], g[j]);
                if rows[a].response == rows[b].response {
                    stats.identical_pairs += 1;
                    continue;
                }
                if rows[b].rollout_id < rows[a].rollout_id {
                    std::mem::swap(&mut a, &mut b);
                }
                let judged =
                    ensemble.and_then(|e| e.judge(&rows[a].rollout_id, &rows[b].rollout_id));
                pairs.push(QueuedPair {
                    key: pair_key(&rows[a].rollout_id, &rows[b].rollout_id),
                    first: a,
                    second: b,
                    p_first: judged.map(|(p, _)| p),
                    votes_first: judged.and_then(|(_, v)| v),
                });
            }
        }
    }
    if pairs.is_empty() {
        return Err(LabelError::input(
            path,
            None,
            format!(
                "no pairs to label in {} rollouts of {} prompts ({} with one sample, {} pairs \
                 with the same response twice)\n  hint: sample two or more responses per prompt \
                 (sample-rollouts --samples-per-prompt)",
                stats.rollouts, stats.prompts, stats.single_sample_prompts, stats.identical_pairs
            ),
        ));
    }
    stats.pairs = pairs.len();
    stats.unscored_pairs = pairs.iter().filter(|p| p.p_first.is_none()).count();
    Ok(Queue {
        pairs: order_pairs(pairs, seed),
        stats,
    })
}

/// Orders pairs by disagreement first (see the module docs), ties and unscored pairs in a
/// random order drawn from `seed`.
pub fn order_pairs(pairs: Vec<QueuedPair>, seed: u64) -> Vec<QueuedPair> {
    let perm = rlhf_core::rng::permutation(pairs.len(), seed, "label-pairs/queue");
    let mut rank = vec![0usize; pairs.len()];
    for (r, &i) in perm.iter().enumerate() {
        rank[i] = r;
    }
    let mut keyed: Vec<((u8, f64, f64, usize), QueuedPair)> = pairs
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let key = match p.p_first {
                None => (1, 0.0, 0.0, rank[i]),
                Some(prob) => {
                    let certainty = (prob - 0.5).abs();
                    let primary = p.votes_first.map_or(certainty, |v| (v - 0.5).abs());
                    (0, primary, certainty, rank[i])
                }
            };
            (key, p)
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.total_cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    keyed.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, p: Option<f64>, votes: Option<f64>) -> QueuedPair {
        QueuedPair {
            key: key.into(),
            first: 0,
            second: 1,
            p_first: p,
            votes_first: votes,
        }
    }

    #[test]
    fn normal_cdf_matches_tables() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.959_964) - 0.975).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_25).abs() < 1e-6);
        assert_eq!(preference_probability(1.0, 0.0, 0.0, 0.0), 1.0);
        assert_eq!(preference_probability(0.0, 0.0, 0.0, 0.0), 0.5);
        // (1 - 0) / sqrt(0.6^2 + 0.8^2) = 1
        let p = preference_probability(1.0, 0.6, 0.0, 0.8);
        assert!((p - 0.841_344_7).abs() < 1e-6, "{p}");
    }

    #[test]
    fn disagreement_comes_first_then_certainty_then_unscored() {
        let pairs = vec![
            pair("sure", Some(0.99), Some(1.0)),
            pair("unscored", None, None),
            pair("split-but-confident", Some(0.9), Some(0.5)),
            pair("split-and-unsure", Some(0.55), Some(0.5)),
            pair("lean", Some(0.6), Some(2.0 / 3.0)),
        ];
        let keys: Vec<String> = order_pairs(pairs, 0).into_iter().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "split-and-unsure",
                "split-but-confident",
                "lean",
                "sure",
                "unscored"
            ]
        );
    }

    #[test]
    fn mean_and_std_alone_order_by_probability() {
        let pairs = vec![
            pair("a", Some(0.2), None),
            pair("b", Some(0.51), None),
            pair("c", Some(0.7), None),
        ];
        let keys: Vec<String> = order_pairs(pairs, 3).into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["b", "c", "a"]);
    }

    #[test]
    fn random_order_depends_on_the_seed_only() {
        let pairs: Vec<QueuedPair> = (0..20).map(|i| pair(&i.to_string(), None, None)).collect();
        let a: Vec<String> = order_pairs(pairs.clone(), 1)
            .into_iter()
            .map(|p| p.key)
            .collect();
        let b: Vec<String> = order_pairs(pairs.clone(), 1)
            .into_iter()
            .map(|p| p.key)
            .collect();
        let c: Vec<String> = order_pairs(pairs, 2).into_iter().map(|p| p.key).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn pair_keys_ignore_order() {
        assert_eq!(pair_key("x", "y"), pair_key("y", "x"));
        assert_ne!(pair_key("x", "y"), pair_key("x", "z"));
    }
}
