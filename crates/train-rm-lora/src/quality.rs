//! Quality figures of a reward model from its scores: pair accuracy and margin, reward
//! mean/std on chosen and rejected, expected calibration error, and for ratings balanced
//! accuracy and ROC AUC (thumbs data is skewed, so plain accuracy misleads).

/// Scores of pairs and ratings gathered over an evaluation pass (or one training batch).
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// (r_chosen, r_rejected, label) per pair.
    pub pairs: Vec<(f64, f64, f64)>,
    /// (reward, rating) per rated response.
    pub ratings: Vec<(f64, f64)>,
}

/// Mean and (population) standard deviation; (0, 0) when empty.
pub fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let n = values.clone().count();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.clone().sum::<f64>() / n as f64;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
    (mean, var.sqrt())
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Expected calibration error with `bins` equal-width confidence bins: for each prediction
/// the confidence is max(p, 1-p) and it is correct when p > 0.5 agrees with the outcome.
/// ECE = sum_b (n_b / n) |accuracy_b - confidence_b|.
pub fn expected_calibration_error(preds: &[(f64, bool)], bins: usize) -> f64 {
    if preds.is_empty() || bins == 0 {
        return 0.0;
    }
    let mut count = vec![0usize; bins];
    let mut conf = vec![0f64; bins];
    let mut correct = vec![0f64; bins];
    for &(p, outcome) in preds {
        let c = p.max(1.0 - p);
        // Confidences lie in [0.5, 1]; bins cover [0.5, 1] evenly.
        let b = (((c - 0.5) * 2.0 * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += c;
        if (p > 0.5) == outcome {
            correct[b] += 1.0;
        }
    }
    let n = preds.len() as f64;
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let k = count[b] as f64;
            (k / n) * (correct[b] / k - conf[b] / k).abs()
        })
        .sum()
}

/// ROC AUC of scores against binary outcomes (Mann-Whitney U with tied scores counted
/// half). None when either class is missing.
pub fn roc_auc(scored: &[(f64, bool)]) -> Option<f64> {
    let pos = scored.iter().filter(|s| s.1).count();
    let neg = scored.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = scored.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over ties.
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_pos += avg_rank * sorted[i..=j].iter().filter(|s| s.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_pos - (pos * (pos + 1)) as f64 / 2.0;
    Some(u / (pos as f64 * neg as f64))
}

impl Collected {
    /// Appends another collection.
    pub fn extend(&mut self, other: Collected) {
        self.pairs.extend(other.pairs);
        self.ratings.extend(other.ratings);
    }

    /// Named figures (metric name without prefix, value). Figures that need data the
    /// collection lacks are left out rather than reported as zero.
    pub fn figures(&self) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        // Pair accuracy and margin over strict pairs, oriented so that positive = right.
        let strict: Vec<(f64, f64, f64)> =
            self.pairs.iter().copied().filter(|p| p.2 != 0.5).collect();
        if !strict.is_empty() {
            let oriented = |p: &(f64, f64, f64)| {
                if p.2 > 0.5 {
                    p.0 - p.1
                } else {
                    p.1 - p.0
                }
            };
            let right = strict.iter().filter(|p| oriented(p) > 0.0).count();
            out.push(("accuracy", right as f64 / strict.len() as f64));
            let (m, _) = mean_std(strict.iter().map(oriented));
            out.push(("margin_mean", m));
            let preds: Vec<(f64, bool)> = strict
                .iter()
                .map(|p| (sigmoid(p.0 - p.1), p.2 > 0.5))
                .collect();
            out.push(("ece", expected_calibration_error(&preds, 10)));
        }
        if !self.pairs.is_empty() {
            let (cm, cs) = mean_std(self.pairs.iter().map(|p| p.0));
            let (rm, rs) = mean_std(self.pairs.iter().map(|p| p.1));
            out.push(("reward_chosen_mean", cm));
            out.push(("reward_chosen_std", cs));
            out.push(("reward_rejected_mean", rm));
            out.push(("reward_rejected_std", rs));
            out.push(("pairs", self.pairs.len() as f64));
            out.push(("ties", (self.pairs.len() - strict.len()) as f64));
        }
        if !self.ratings.is_empty() {
            let binary: Vec<(f64, bool)> =
                self.ratings.iter().map(|&(r, y)| (r, y >= 0.5)).collect();
            let pos: Vec<&(f64, bool)> = binary.iter().filter(|b| b.1).collect();
            let neg: Vec<&(f64, bool)> = binary.iter().filter(|b| !b.1).collect();
            let right = binary.iter().filter(|b| (b.0 > 0.0) == b.1).count();
            out.push(("ratings_accuracy", right as f64 / binary.len() as f64));
            if !pos.is_empty() && !neg.is_empty() {
                let tpr = pos.iter().filter(|b| b.0 > 0.0).count() as f64 / pos.len() as f64;
                let tnr = neg.iter().filter(|b| b.0 <= 0.0).count() as f64 / neg.len() as f64;
                out.push(("ratings_balanced_accuracy", (tpr + tnr) / 2.0));
            }
            if let Some(auc) = roc_auc(&binary) {
                out.push(("ratings_auc", auc));
            }
            let preds: Vec<(f64, bool)> = binary.iter().map(|&(r, y)| (sigmoid(r), y)).collect();
            out.push(("ratings_ece", expected_calibration_error(&preds, 10)));
            out.push((
                "ratings_positive_fraction",
                pos.len() as f64 / binary.len() as f64,
            ));
            let (m, s) = mean_std(self.ratings.iter().map(|r| r.0));
            out.push(("ratings_reward_mean", m));
            out.push(("ratings_reward_std", s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(f: &[(&str, f64)], name: &str) -> Option<f64> {
        f.iter().find(|x| x.0 == name).map(|x| x.1)
    }

    #[test]
    fn pair_figures_skip_ties_for_accuracy() {
        let c = Collected {
            pairs: vec![
                (1.0, 0.0, 1.0),
                (0.0, 2.0, 1.0),
                (3.0, 3.0, 0.5),
                (0.0, 1.0, 0.0),
            ],
            ratings: vec![],
        };
        let f = c.figures();
        // Strict pairs: right, wrong, right (label 0 with r_r > r_c).
        assert_eq!(get(&f, "accuracy"), Some(2.0 / 3.0));
        assert_eq!(get(&f, "margin_mean"), Some((1.0 - 2.0 + 1.0) / 3.0));
        assert_eq!(get(&f, "ties"), Some(1.0));
        assert_eq!(get(&f, "reward_chosen_mean"), Some(1.0));
        assert_eq!(get(&f, "reward_rejected_mean"), Some(1.5));
        assert!(get(&f, "ratings_auc").is_none());
    }

    #[test]
    fn auc_and_balanced_accuracy_on_skewed_thumbs() {
        // 4 positives, 1 negative; the negative outranks one positive.
        let scored = [
            (0.9, true),
            (0.8, true),
            (0.1, true),
            (0.5, true),
            (0.3, false),
        ];
        assert_eq!(roc_auc(&scored), Some(3.0 / 4.0));
        assert_eq!(roc_auc(&[(1.0, true), (1.0, false)]), Some(0.5));
        assert_eq!(roc_auc(&[(1.0, true)]), None);
        let c = Collected {
            pairs: vec![],
            ratings: vec![(2.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.5, 1.0), (1.5, 0.0)],
        };
        let f = c.figures();
        // Everything predicted positive but one: plain accuracy 3/5, balanced (3/4 + 0)/2.
        assert_eq!(get(&f, "ratings_accuracy"), Some(0.6));
        assert_eq!(get(&f, "ratings_balanced_accuracy"), Some(0.375));
        assert_eq!(get(&f, "ratings_positive_fraction"), Some(0.8));
    }

    #[test]
    fn calibration_error_of_known_cases() {
        // Perfectly calibrated: confidence 0.75, 3 of 4 right.
        let preds = [(0.75, true), (0.75, true), (0.75, true), (0.75, false)];
        assert!(expected_calibration_error(&preds, 10).abs() < 1e-12);
        // Over-confident: confidence 0.95, half right -> |0.5 - 0.95| = 0.45.
        let preds = [(0.95, true), (0.05, true)];
        assert!((expected_calibration_error(&preds, 10) - 0.45).abs() < 1e-12);
        assert_eq!(mean_std([1.0, 3.0].into_iter()), (2.0, 1.0));
    }
}
