//! Combining reward sources into the scores table: one column per source, `penalty` (the
//! missing-EOS penalty and the ensemble disagreement penalty) and `reward`, the weighted
//! sum of the sources plus the penalty.

use rlhf_core::records::{RolloutRow, ScoresTable};

/// Finish reasons that count as a response that ended by itself.
pub const ENDED: [&str; 2] = ["eos", "stop"];

/// How sources combine.
#[derive(Debug, Clone, PartialEq)]
pub struct CombineSpec {
    /// Reward-model columns (`rm`, or `rm_0`, `rm_1`, ...) and their weights.
    pub rm: Vec<(String, f32)>,
    /// Rule columns and their weights.
    pub rules: Vec<(String, f32)>,
    /// Added when a response did not end by itself.
    pub eos_penalty: f32,
    /// Ensembles: `reward -= rm_std_penalty * rm_std`.
    pub rm_std_penalty: f32,
}

impl CombineSpec {
    /// Output source columns, in order.
    pub fn columns(&self) -> Vec<String> {
        let mut cols: Vec<String> = self.rm.iter().map(|(c, _)| c.clone()).collect();
        if self.rm.len() > 1 {
            cols.push("rm_mean".into());
            cols.push("rm_std".into());
        }
        cols.extend(self.rules.iter().map(|(c, _)| c.clone()));
        cols
    }

    /// A table with the source columns in order and no rows.
    pub fn empty_table(&self) -> ScoresTable {
        ScoresTable {
            sources: self
                .columns()
                .into_iter()
                .map(|c| (c, Vec::new()))
                .collect(),
            ..ScoresTable::default()
        }
    }

    /// Appends one rollout: `rm` holds the normalised reward-model scores (one per member),
    /// `rules` the rule values (one per rule).
    pub fn push(&self, table: &mut ScoresTable, row: &RolloutRow, rm: &[f32], rules: &[f32]) {
        let mut reward = 0.0f32;
        let mut penalty = 0.0f32;
        let mut values: Vec<f32> = Vec::with_capacity(rm.len() + 2 + rules.len());
        for ((_, w), &v) in self.rm.iter().zip(rm) {
            reward += w * v;
            values.push(v);
        }
        if self.rm.len() > 1 {
            let n = rm.len() as f32;
            let mean = rm.iter().sum::<f32>() / n;
            let std = (rm.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
            values.push(mean);
            values.push(std);
            penalty -= self.rm_std_penalty * std;
        }
        for ((_, w), &v) in self.rules.iter().zip(rules) {
            reward += w * v;
            values.push(v);
        }
        if !ENDED.contains(&row.finish_reason.as_str()) {
            penalty += self.eos_penalty;
        }
        table.rollout_id.push(row.rollout_id.clone());
        table.reward.push(reward + penalty);
        table.penalty.push(penalty);
        for ((_, col), v) in table.sources.iter_mut().zip(values) {
            col.push(Some(v));
        }
    }
}

/// Response length in tokens without a final EOS token (what length rules and the length
/// correlation use).
pub fn response_length(row: &RolloutRow) -> usize {
    let n = row.response_tokens.len();
    if row.finish_reason == "eos" {
        n.saturating_sub(1)
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::groups::tests::rollout;

    #[test]
    fn reward_is_the_weighted_sum_plus_penalties() {
        let spec = CombineSpec {
            rm: vec![("rm_0".into(), 0.5), ("rm_1".into(), 0.5)],
            rules: vec![("gold".into(), 0.0), ("length".into(), 0.1)],
            eos_penalty: -1.0,
            rm_std_penalty: 2.0,
        };
        assert_eq!(
            spec.columns(),
            ["rm_0", "rm_1", "rm_mean", "rm_std", "gold", "length"]
        );
        let mut t = spec.empty_table();
        spec.push(
            &mut t,
            &rollout("p", 0, "a", vec![1, 2], "eos"),
            &[1.0, 3.0],
            &[3.5, -0.5],
        );
        spec.push(
            &mut t,
            &rollout("p", 1, "b", vec![1, 2], "length"),
            &[2.0, 2.0],
            &[1.0, 0.0],
        );
        // Row 0: 0.5*1 + 0.5*3 + 0*3.5 + 0.1*(-0.5) = 1.95; std 1 -> penalty -2.
        assert!((t.reward[0] - (1.95 - 2.0)).abs() < 1e-6, "{}", t.reward[0]);
        assert_eq!(t.penalty[0], -2.0);
        // Row 1: 2.0, no disagreement, truncated -> -1.
        assert_eq!((t.reward[1], t.penalty[1]), (1.0, -1.0));
        assert_eq!(t.source("rm_mean").unwrap(), &[Some(2.0), Some(2.0)]);
        assert_eq!(t.source("rm_std").unwrap(), &[Some(1.0), Some(0.0)]);
        assert_eq!(t.source("gold").unwrap(), &[Some(3.5), Some(1.0)]);
        assert_eq!(t.rollout_id, ["p-0", "p-1"]);
    }

    #[test]
    fn single_model_has_no_ensemble_columns_and_stop_counts_as_ended() {
        let spec = CombineSpec {
            rm: vec![("rm".into(), 1.0)],
            rules: vec![],
            eos_penalty: -1.0,
            rm_std_penalty: 0.0,
        };
        assert_eq!(spec.columns(), ["rm"]);
        let mut t = spec.empty_table();
        spec.push(&mut t, &rollout("p", 0, "a", vec![1], "stop"), &[0.25], &[]);
        assert_eq!((t.reward[0], t.penalty[0]), (0.25, 0.0));
        assert_eq!(
            response_length(&rollout("p", 0, "a", vec![1, 2, 3], "eos")),
            2
        );
        assert_eq!(
            response_length(&rollout("p", 0, "a", vec![1, 2, 3], "length")),
            3
        );
    }
}
