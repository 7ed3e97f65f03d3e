//! Reward-model losses on scalar scores (the score head's value at the last token):
//! - Bradley-Terry on pairs with soft labels (label = P(chosen preferred); 0.5 is a tie)
//!   and an optional margin in the direction of the preference (Llama 2's margin loss):
//!   d = r_c - r_r - m * (2 label - 1), loss = -(label log s(d) + (1 - label) log s(-d));
//! - label smoothing: label <- (1 - eps) label + eps (1 - label) (conservative targets);
//! - a noise-robust variant for labels flipped with probability eps:
//!   loss = -log((1 - eps) s(d') + eps s(-d')) with d' signed towards the label;
//! - binary cross-entropy for pointwise ratings (thumbs up/down, or a rating in [0, 1]);
//! - an optional centering term lambda * mean((r_c + r_r)^2) that keeps scores near zero
//!   (Eisenstein et al. 2023).
//!
//! All losses are averaged with optional per-example weights.

use tch::{Kind, Reduction, Tensor};

use crate::error::{AlgoError, Result};
use crate::masked::check_same_shape;

/// Options of the pairwise loss.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PairLossConfig {
    /// Label smoothing eps in [0, 0.5).
    pub label_smoothing: f64,
    /// Assumed label-flip rate for the noise-robust loss (0 = plain Bradley-Terry), in [0, 0.5).
    pub noise_rate: f64,
    /// Weight of the centering term (0 = off).
    pub center_coef: f64,
    /// Multiplier on the per-pair margins (0 ignores them).
    pub margin_scale: f64,
}

impl PairLossConfig {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("label smoothing", self.label_smoothing),
            ("noise rate", self.noise_rate),
        ] {
            if !(0.0..0.5).contains(&v) {
                return Err(AlgoError::Invalid(format!(
                    "{name} must be in [0, 0.5), got {v}"
                )));
            }
        }
        if !(self.center_coef >= 0.0 && self.margin_scale >= 0.0) {
            return Err(AlgoError::Invalid(format!(
                "center coefficient and margin scale must be >= 0, got {} and {}",
                self.center_coef, self.margin_scale
            )));
        }
        Ok(())
    }
}

/// The pairwise loss and its diagnostics.
#[derive(Debug)]
pub struct PairLoss {
    /// Scalar loss (with grad through both score tensors).
    pub loss: Tensor,
    /// Fraction of non-tie pairs ranked in the labelled direction (ties excluded; NaN when
    /// every pair is a tie).
    pub accuracy: f64,
    /// Mean of r_c - r_r.
    pub mean_margin: f64,
}

fn weighted_mean(x: &Tensor, weight: Option<&Tensor>) -> Tensor {
    match weight {
        Some(w) => {
            let w = w.to_kind(x.kind());
            (x * &w).sum(x.kind()) / w.sum(x.kind()).clamp_min(1e-12)
        }
        None => x.mean(x.kind()),
    }
}

/// Pairwise reward-model loss. Shapes: all `(batch,)`; `label` is P(chosen preferred).
pub fn pair_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    label: &Tensor,
    margin: Option<&Tensor>,
    weight: Option<&Tensor>,
    cfg: &PairLossConfig,
) -> Result<PairLoss> {
    check_same_shape("chosen scores", chosen, "rejected scores", rejected)?;
    check_same_shape("chosen scores", chosen, "labels", label)?;
    if let Some(m) = margin {
        check_same_shape("chosen scores", chosen, "margins", m)?;
    }
    if let Some(w) = weight {
        check_same_shape("chosen scores", chosen, "weights", w)?;
    }
    let kind = chosen.kind();
    let y = label.to_kind(kind);
    let y = &y * (1.0 - cfg.label_smoothing) + (1.0f64 - &y) * cfg.label_smoothing;
    let mut d = chosen - rejected;
    if let (Some(m), true) = (margin, cfg.margin_scale > 0.0) {
        let sign = label.to_kind(kind) * 2.0 - 1.0;
        d -= m.to_kind(kind) * sign * cfg.margin_scale;
    }
    let per_pair = if cfg.noise_rate > 0.0 {
        // P(observed label) = (1 - eps) s(d) + eps s(-d), mixed over soft labels
        let e = cfg.noise_rate;
        let p_c = d.sigmoid() * (1.0 - e) + (-&d).sigmoid() * e;
        let p_r: Tensor = p_c.ones_like() - &p_c;
        let y_r: Tensor = y.ones_like() - &y;
        -(&y * p_c.clamp_min(1e-12).log() + y_r * p_r.clamp_min(1e-12).log())
    } else {
        -(&y * d.log_sigmoid() + (1.0f64 - &y) * (-&d).log_sigmoid())
    };
    let mut loss = weighted_mean(&per_pair, weight);
    if cfg.center_coef > 0.0 {
        loss += weighted_mean(&(chosen + rejected).square(), weight) * cfg.center_coef;
    }
    let (accuracy, mean_margin) = tch::no_grad(|| {
        let diff = (chosen - rejected).detach().to_kind(Kind::Double);
        let lab = label.detach().to_kind(Kind::Double);
        let decided = lab.ne(0.5).to_kind(Kind::Double);
        let right = (diff.gt(0.0).to_kind(Kind::Double) * lab.gt(0.5).to_kind(Kind::Double)
            + diff.lt(0.0).to_kind(Kind::Double) * lab.lt(0.5).to_kind(Kind::Double))
            * &decided;
        let n = decided.sum(Kind::Double).double_value(&[]);
        let acc = if n > 0.0 {
            right.sum(Kind::Double).double_value(&[]) / n
        } else {
            f64::NAN
        };
        (acc, diff.mean(Kind::Double).double_value(&[]))
    });
    Ok(PairLoss {
        loss,
        accuracy,
        mean_margin,
    })
}

/// Binary cross-entropy of pointwise scores (logits, `(batch,)`) against targets in [0, 1]
/// (thumbs up = 1, down = 0, or a normalised rating), with optional weights.
pub fn rating_bce_loss(
    scores: &Tensor,
    targets: &Tensor,
    weight: Option<&Tensor>,
) -> Result<Tensor> {
    check_same_shape("scores", scores, "rating targets", targets)?;
    let per = scores.binary_cross_entropy_with_logits::<&Tensor>(
        &targets.to_kind(scores.kind()),
        None,
        None,
        Reduction::None,
    );
    Ok(weighted_mean(&per, weight))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masked::scalar;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn ln_sig(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn bradley_terry_with_soft_labels_and_ties() {
        let c = t(&[1.0, 0.0, 2.0]);
        let r = t(&[0.0, 1.0, 2.5]);
        let y = t(&[1.0, 1.0, 0.5]);
        let out = pair_loss(&c, &r, &y, None, None, &PairLossConfig::default()).unwrap();
        // -log s(1) = 0.3132617; -log s(-1) = 1.3132617; tie at d = -0.5:
        // -(0.5 log s(-0.5) + 0.5 log s(0.5)) = 0.7240769
        let expect = (-ln_sig(1.0) - ln_sig(-1.0) - 0.5 * (ln_sig(-0.5) + ln_sig(0.5))) / 3.0;
        assert!((scalar(&out.loss) - expect).abs() < 1e-6);
        assert!((expect - (0.313_261_7 + 1.313_261_7 + 0.724_076_9) / 3.0).abs() < 1e-6);
        assert!((out.accuracy - 0.5).abs() < 1e-12);
        assert!((out.mean_margin - (1.0 - 1.0 - 0.5) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn margin_smoothing_noise_centering_and_weights() {
        let c = t(&[1.0]);
        let r = t(&[0.0]);
        let y = t(&[1.0]);
        let m = t(&[0.5]);
        let cfg = PairLossConfig {
            margin_scale: 1.0,
            ..Default::default()
        };
        let out = pair_loss(&c, &r, &y, Some(&m), None, &cfg).unwrap();
        assert!((scalar(&out.loss) + ln_sig(0.5)).abs() < 1e-6);
        // label 0 flips the margin direction: d = 1 + 0.5, loss -log s(-1.5)
        let out = pair_loss(&c, &r, &t(&[0.0]), Some(&m), None, &cfg).unwrap();
        assert!((scalar(&out.loss) + ln_sig(-1.5)).abs() < 1e-6);
        // smoothing 0.1: -(0.9 log s(1) + 0.1 log s(-1))
        let cfg = PairLossConfig {
            label_smoothing: 0.1,
            ..Default::default()
        };
        let out = pair_loss(&c, &r, &y, None, None, &cfg).unwrap();
        assert!((scalar(&out.loss) + 0.9 * ln_sig(1.0) + 0.1 * ln_sig(-1.0)).abs() < 1e-6);
        // noise 0.2: -log(0.8 s(1) + 0.2 s(-1)) = -log(0.8*0.7310586 + 0.2*0.2689414)
        let cfg = PairLossConfig {
            noise_rate: 0.2,
            ..Default::default()
        };
        let out = pair_loss(&c, &r, &y, None, None, &cfg).unwrap();
        assert!((scalar(&out.loss) + (0.8 * 0.731_058_6 + 0.2 * 0.268_941_4f64).ln()).abs() < 1e-6);
        // centering 0.01 on (1 + 0)^2
        let cfg = PairLossConfig {
            center_coef: 0.01,
            ..Default::default()
        };
        let out = pair_loss(&c, &r, &y, None, None, &cfg).unwrap();
        assert!((scalar(&out.loss) + ln_sig(1.0) - 0.01).abs() < 1e-6);
        // weights: pair 2 counts three times
        let c2 = t(&[1.0, -1.0]);
        let r2 = t(&[0.0, 0.0]);
        let w = t(&[1.0, 3.0]);
        let out = pair_loss(
            &c2,
            &r2,
            &t(&[1.0, 1.0]),
            None,
            Some(&w),
            &PairLossConfig::default(),
        )
        .unwrap();
        assert!((scalar(&out.loss) - (-ln_sig(1.0) - 3.0 * ln_sig(-1.0)) / 4.0).abs() < 1e-6);
    }

    #[test]
    fn rating_bce_and_validation() {
        // BCE(logit 0, 1) = ln 2; BCE(logit 2, 0) = -log(1 - s(2)) = 2.1269280
        let l = rating_bce_loss(&t(&[0.0, 2.0]), &t(&[1.0, 0.0]), None).unwrap();
        assert!((scalar(&l) - (std::f64::consts::LN_2 + 2.126_928_0) / 2.0).abs() < 1e-6);
        let e = rating_bce_loss(&t(&[0.0]), &t(&[1.0, 0.0]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rating targets"), "{e}");
        assert!(PairLossConfig {
            noise_rate: 0.5,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
