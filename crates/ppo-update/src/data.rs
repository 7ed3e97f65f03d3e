//! Loading the training examples: rollouts joined to their scores by rollout_id. The join
//! is strict: a rollout without a score, a score without a rollout, or a duplicate id is an
//! error naming the counts and example ids (never a silent inner join). Rows are checked
//! (non-empty response, one sampler log-prob per token, finite reward) and named by id.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rlhf_core::error::{CoreError, Result};
use rlhf_core::parquet_io::Dataset;
use rlhf_core::records::{RolloutRow, ScoresTable};

/// One rollout with its score, ready for training.
#[derive(Debug, Clone)]
pub struct Example {
    pub rollout_id: String,
    pub prompt_id: String,
    /// Index of the prompt among the rollouts' prompts (order of first appearance).
    pub group: usize,
    pub prompt_tokens: Vec<i32>,
    pub response_tokens: Vec<i32>,
    /// Per-token log-probabilities under the sampling policy.
    pub sampler_logprobs: Vec<f32>,
    /// Per-token log-probabilities under the reference (adapter off), when recorded.
    pub ref_logprobs: Option<Vec<f32>>,
    /// The response ended with an end-of-sequence token.
    pub eos: bool,
    /// The training reward (the --reward-column value).
    pub score: f32,
}

/// The examples and what the inputs say about themselves.
#[derive(Debug)]
pub struct Data {
    pub examples: Vec<Example>,
    /// Iteration recorded in the rollouts (the largest when they mix several).
    pub iteration: i32,
    /// Mean of every score column (reward, penalty, each source such as `rm` or `gold`)
    /// over the rollouts, for metrics; nulls are skipped.
    pub score_means: Vec<(String, f64)>,
    pub tokenizer_hash: Option<String>,
    pub rollout_files: Vec<PathBuf>,
    pub score_files: Vec<PathBuf>,
    /// Distinct policy ids that sampled the rollouts.
    pub policy_ids: Vec<String>,
}

fn examples_of(ids: &[&String], n: usize) -> String {
    let shown: Vec<&str> = ids.iter().take(n).map(|s| s.as_str()).collect();
    let more = ids.len().saturating_sub(n);
    if more > 0 {
        format!("{} (and {more} more)", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// Joins rollouts to scores strictly by rollout_id (rollout order kept).
pub fn join(
    rollouts: Vec<RolloutRow>,
    scores: &ScoresTable,
    reward_column: &str,
    rollouts_name: &str,
    scores_name: &str,
) -> Result<Vec<Example>> {
    let values: Vec<Option<f32>> = match reward_column {
        "reward" => scores.reward.iter().map(|&v| Some(v)).collect(),
        "penalty" => scores.penalty.iter().map(|&v| Some(v)).collect(),
        other => match scores.source(other) {
            Some(v) => v.to_vec(),
            None => {
                let mut cols = vec!["reward".to_string(), "penalty".to_string()];
                cols.extend(scores.sources.iter().map(|(n, _)| n.clone()));
                return Err(CoreError::BadInput {
                    path: scores_name.into(),
                    row: None,
                    message: format!(
                        "no score column `{other}` (--reward-column); columns: {}",
                        cols.join(", ")
                    ),
                });
            }
        },
    };
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(scores.rollout_id.len());
    for (i, id) in scores.rollout_id.iter().enumerate() {
        if by_id.insert(id.as_str(), i).is_some() {
            return Err(CoreError::BadInput {
                path: scores_name.into(),
                row: Some(i),
                message: format!(
                    "duplicate rollout_id `{id}`: each rollout needs exactly one score"
                ),
            });
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(rollouts.len());
    for (i, r) in rollouts.iter().enumerate() {
        if seen.insert(r.rollout_id.as_str(), i).is_some() {
            return Err(CoreError::BadInput {
                path: rollouts_name.into(),
                row: Some(i),
                message: format!("duplicate rollout_id `{}`", r.rollout_id),
            });
        }
    }
    let unscored: Vec<&String> = rollouts
        .iter()
        .map(|r| &r.rollout_id)
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    let orphans: Vec<&String> = scores
        .rollout_id
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    if !unscored.is_empty() || !orphans.is_empty() {
        let mut left = format!("{} rollouts", rollouts.len());
        if !unscored.is_empty() {
            left += &format!(
                ", {} without a score (e.g. {})",
                unscored.len(),
                examples_of(&unscored, 3)
            );
        }
        let mut right = format!("{} scores", scores.rollout_id.len());
        if !orphans.is_empty() {
            right += &format!(
                ", {} for unknown rollouts (e.g. {})",
                orphans.len(),
                examples_of(&orphans, 3)
            );
        }
        return Err(CoreError::Mismatch {
            what: "rollout_id",
            left_name: rollouts_name.into(),
            left,
            right_name: scores_name.into(),
            right,
            hint: "score exactly these rollouts (score-rewards --rollouts <this file>); no rollout is dropped silently".into(),
        });
    }
    let mut groups: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(rollouts.len());
    for (row, r) in rollouts.into_iter().enumerate() {
        let bad = |message: String| CoreError::BadInput {
            path: rollouts_name.into(),
            row: Some(row),
            message: format!("rollout `{}`: {message}", r.rollout_id),
        };
        if r.prompt_tokens.is_empty() || r.response_tokens.is_empty() {
            return Err(bad(format!(
                "empty {} tokens; ppo-update needs a tokenized prompt and a non-empty response",
                if r.prompt_tokens.is_empty() {
                    "prompt"
                } else {
                    "response"
                }
            )));
        }
        if r.logprobs.len() != r.response_tokens.len() {
            return Err(bad(format!(
                "{} sampler logprobs for {} response tokens",
                r.logprobs.len(),
                r.response_tokens.len()
            )));
        }
        if let Some(rl) = &r.ref_logprobs {
            if rl.len() != r.response_tokens.len() {
                return Err(bad(format!(
                    "{} ref_logprobs for {} response tokens",
                    rl.len(),
                    r.response_tokens.len()
                )));
            }
        }
        let si = by_id[r.rollout_id.as_str()];
        let score =
            match values[si] {
                Some(v) if v.is_finite() => v,
                other => {
                    return Err(CoreError::BadInput {
                        path: scores_name.into(),
                        row: Some(si),
                        message: format!(
                        "rollout `{}`: column `{reward_column}` is {} (expected a finite number)",
                        r.rollout_id,
                        other.map(|v| v.to_string()).unwrap_or_else(|| "null".into())
                    ),
                    })
                }
            };
        let n_groups = groups.len();
        let group = *groups.entry(r.prompt_id.clone()).or_insert(n_groups);
        out.push(Example {
            eos: r.finish_reason == "eos",
            rollout_id: r.rollout_id,
            prompt_id: r.prompt_id,
            group,
            prompt_tokens: r.prompt_tokens,
            response_tokens: r.response_tokens,
            sampler_logprobs: r.logprobs,
            ref_logprobs: r.ref_logprobs,
            score,
        });
    }
    Ok(out)
}

/// Means of the score columns, summed in rollout_id order so that the same scores in
/// another row order (a part folder, a reordered file) give the same bits.
fn score_means(scores: &ScoresTable) -> Vec<(String, f64)> {
    let mut order: Vec<usize> = (0..scores.rollout_id.len()).collect();
    order.sort_by(|&a, &b| scores.rollout_id[a].cmp(&scores.rollout_id[b]));
    let mean = |it: &mut dyn Iterator<Item = f32>| {
        let (s, n) = it.fold((0.0f64, 0usize), |(s, n), v| (s + v as f64, n + 1));
        (n > 0).then(|| s / n as f64)
    };
    let mut out = Vec::new();
    if let Some(m) = mean(&mut order.iter().map(|&i| scores.reward[i])) {
        out.push(("reward".to_string(), m));
    }
    if let Some(m) = mean(&mut order.iter().map(|&i| scores.penalty[i])) {
        out.push(("penalty".to_string(), m));
    }
    for (name, v) in &scores.sources {
        if let Some(m) = mean(&mut order.iter().filter_map(|&i| v[i])) {
            out.push((name.clone(), m));
        }
    }
    out
}

/// Reads and joins the rollouts and scores datasets.
pub fn load(rollouts: &Path, scores: &Path, reward_column: &str) -> Result<Data> {
    let rds = Dataset::open(rollouts, rlhf_core::schema::Artifact::Rollouts)?;
    let mut rows: Vec<RolloutRow> = rds.read_all()?;
    // One order whatever the files' row order (one file, a part folder, a reordered copy):
    // the update depends on the rollouts' content only.
    rows.sort_by(|a, b| {
        (&a.prompt_id, a.sample_index, &a.rollout_id).cmp(&(
            &b.prompt_id,
            b.sample_index,
            &b.rollout_id,
        ))
    });
    if rows.is_empty() {
        return Err(CoreError::BadInput {
            path: rollouts.into(),
            row: None,
            message: "no rollouts".into(),
        });
    }
    let (table, sds) = ScoresTable::read(scores)?;
    let iteration = rows.iter().map(|r| r.iteration).max().unwrap_or(0);
    let policy_ids: Vec<String> = rows
        .iter()
        .map(|r| r.policy_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let tokenizer_hash = rds.tokenizer_hash()?;
    let examples = join(
        rows,
        &table,
        reward_column,
        &rollouts.display().to_string(),
        &scores.display().to_string(),
    )?;
    Ok(Data {
        examples,
        iteration,
        score_means: score_means(&table),
        tokenizer_hash,
        rollout_files: rds.files.clone(),
        score_files: sds.files.clone(),
        policy_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(id: &str, prompt: &str) -> RolloutRow {
        RolloutRow {
            rollout_id: id.into(),
            prompt_id: prompt.into(),
            iteration: 1,
            sample_index: 0,
            prompt: "p".into(),
            messages: None,
            response: "r".into(),
            prompt_tokens: vec![1, 2],
            response_tokens: vec![3, 4],
            logprobs: vec![-1.0, -2.0],
            ref_logprobs: None,
            finish_reason: "eos".into(),
            policy_id: "base".into(),
            seed: 0,
        }
    }

    fn scores(ids: &[&str]) -> ScoresTable {
        ScoresTable {
            rollout_id: ids.iter().map(|s| s.to_string()).collect(),
            reward: (0..ids.len()).map(|i| i as f32).collect(),
            penalty: vec![0.0; ids.len()],
            sources: vec![("gold".into(), vec![Some(1.0); ids.len()])],
        }
    }

    #[test]
    fn join_keeps_rollout_order_and_groups_prompts() {
        let r = vec![rollout("a", "p1"), rollout("b", "p2"), rollout("c", "p1")];
        let ex = join(
            r,
            &scores(&["c", "b", "a"]),
            "reward",
            "r.parquet",
            "s.parquet",
        )
        .unwrap();
        let got: Vec<(&str, usize, f32)> = ex
            .iter()
            .map(|e| (e.rollout_id.as_str(), e.group, e.score))
            .collect();
        assert_eq!(got, vec![("a", 0, 2.0), ("b", 1, 1.0), ("c", 0, 0.0)]);
        let ex = join(vec![rollout("a", "p")], &scores(&["a"]), "gold", "r", "s").unwrap();
        assert_eq!(ex[0].score, 1.0);
    }

    #[test]
    fn missing_ids_on_either_side_are_named() {
        let r = vec![rollout("a", "p"), rollout("b", "p"), rollout("x", "p")];
        let e = join(
            r,
            &scores(&["a", "b", "y", "z"]),
            "reward",
            "r.parquet",
            "s.parquet",
        )
        .unwrap_err();
        assert!(e.is_bad_input());
        let msg = e.to_string();
        assert!(
            msg.contains("r.parquet has 3 rollouts, 1 without a score (e.g. x)"),
            "{msg}"
        );
        assert!(
            msg.contains("s.parquet has 4 scores, 2 for unknown rollouts (e.g. y, z)"),
            "{msg}"
        );
    }

    #[test]
    fn bad_rows_are_named() {
        let mut r = rollout("a", "p");
        r.logprobs.pop();
        let e = join(vec![r], &scores(&["a"]), "reward", "r", "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rollout `a`: 1 sampler logprobs for 2 response tokens"),
            "{e}"
        );
        let e = join(vec![rollout("a", "p")], &scores(&["a"]), "rm", "r", "s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no score column `rm`") && e.contains("gold"),
            "{e}"
        );
        let mut s = scores(&["a"]);
        s.reward[0] = f32::NAN;
        let e = join(vec![rollout("a", "p")], &s, "reward", "r", "s")
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `reward` is NaN"), "{e}");
        let e = join(
            vec![rollout("a", "p"), rollout("a", "p")],
            &scores(&["a"]),
            "reward",
            "r",
            "s",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("duplicate rollout_id `a`"), "{e}");
    }
}
