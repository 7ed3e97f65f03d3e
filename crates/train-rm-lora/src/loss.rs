//! The stage's loss options and their mapping onto rlhf-algo's reward-model losses
//! (`rlhf_algo::rm_loss`: Bradley-Terry with soft labels, margin, smoothing, noise-robust
//! likelihood, centering; BCE for ratings).
//!
//! Flag semantics (as the papers state them):
//! - `--label-smoothing EPS`: targets y become y(1-EPS) + EPS/2, i.e. rlhf-algo's
//!   symmetric smoothing with eps = EPS/2.
//! - `--noise-robust EPS`: the labeller answers uniformly at random with probability EPS
//!   (Christiano et al. 2017 assume 10%), P(chosen) = (1-EPS) s(d) + EPS/2, which is
//!   rlhf-algo's flip model (1-e) s(d) + e s(-d) with e = EPS/2.
//! - Ties (label 0.5) get no margin and, without centering, zero gradient at equal scores.
//! - Ratings go through the same likelihood as a pair against a zero score (logit = reward,
//!   target = rating), so smoothing and the noise-robust variant apply to thumbs too; the
//!   centering term applies to pairs only.

use anyhow::Result;
use rlhf_algo::rm_loss::{pair_loss, PairLoss, PairLossConfig};
use tch::Tensor;

/// Loss options with the command line's semantics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossConfig {
    /// Label smoothing EPS in [0, 1).
    pub label_smoothing: f64,
    /// Probability of a random answer in [0, 1).
    pub noise_robust: f64,
    /// Scale applied to the `margin` column (0 = no margin).
    pub margin_scale: f64,
    /// Reward-centering coefficient (0 = off).
    pub center_coef: f64,
}

impl LossConfig {
    /// rlhf-algo's configuration for pairs.
    pub fn pair_config(&self) -> PairLossConfig {
        PairLossConfig {
            label_smoothing: self.label_smoothing / 2.0,
            noise_rate: self.noise_robust / 2.0,
            center_coef: self.center_coef,
            margin_scale: self.margin_scale,
        }
    }

    /// rlhf-algo's configuration for ratings (no margin, no centering).
    fn rating_config(&self) -> PairLossConfig {
        PairLossConfig {
            center_coef: 0.0,
            margin_scale: 0.0,
            ..self.pair_config()
        }
    }
}

/// Pair loss over `(n,)` tensors of chosen and rejected scores, labels, margins, weights.
pub fn pairs(
    r_chosen: &Tensor,
    r_rejected: &Tensor,
    label: &Tensor,
    margin: &Tensor,
    weight: &Tensor,
    cfg: &LossConfig,
) -> Result<PairLoss> {
    Ok(pair_loss(
        r_chosen,
        r_rejected,
        label,
        Some(margin),
        Some(weight),
        &cfg.pair_config(),
    )?)
}

/// Rating loss: binary cross-entropy with the reward as logit and the rating as target.
pub fn ratings(
    reward: &Tensor,
    rating: &Tensor,
    weight: &Tensor,
    cfg: &LossConfig,
) -> Result<Tensor> {
    let zero = reward.zeros_like();
    Ok(pair_loss(
        reward,
        &zero,
        rating,
        None,
        Some(weight),
        &cfg.rating_config(),
    )?
    .loss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    fn value(x: &Tensor) -> f64 {
        x.double_value(&[])
    }

    fn softplus(x: f64) -> f64 {
        (1.0 + x.exp()).ln()
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    fn loss_of(rc: &[f32], rr: &[f32], y: &[f32], cfg: &LossConfig) -> f64 {
        let n = rc.len();
        let out = pairs(
            &t(rc),
            &t(rr),
            &t(y),
            &t(&vec![0.0; n]),
            &t(&vec![1.0; n]),
            cfg,
        )
        .unwrap();
        value(&out.loss)
    }

    #[test]
    fn tie_gives_zero_gradient_at_equal_scores_in_every_variant() {
        let variants = [
            LossConfig::default(),
            LossConfig {
                label_smoothing: 0.1,
                ..Default::default()
            },
            LossConfig {
                noise_robust: 0.1,
                ..Default::default()
            },
            LossConfig {
                margin_scale: 2.0,
                ..Default::default()
            },
        ];
        for cfg in variants {
            let rc = t(&[0.7, -1.3]).set_requires_grad(true);
            let rr = t(&[0.7, -1.3]).set_requires_grad(true);
            let out = pairs(
                &rc,
                &rr,
                &t(&[0.5, 0.5]),
                &t(&[3.0, 1.0]),
                &t(&[1.0, 2.0]),
                &cfg,
            )
            .unwrap();
            out.loss.backward();
            for g in [rc.grad(), rr.grad()] {
                let g: Vec<f32> = Vec::try_from(&g).unwrap();
                assert!(g.iter().all(|x| x.abs() < 1e-7), "{cfg:?}: {g:?}");
            }
            // A strict preference at equal scores does push them apart.
            let rc = t(&[0.7]).set_requires_grad(true);
            let out = pairs(&rc, &t(&[0.7]), &t(&[1.0]), &t(&[0.0]), &t(&[1.0]), &cfg).unwrap();
            out.loss.backward();
            assert!(value(&rc.grad().sum(Kind::Float)) < -0.1, "{cfg:?}");
        }
    }

    #[test]
    fn flag_semantics_match_the_papers() {
        // Plain Bradley-Terry: -log s(1) = softplus(-1).
        let plain = loss_of(&[1.0], &[0.0], &[1.0], &LossConfig::default());
        assert!((plain - softplus(-1.0)).abs() < 1e-6);
        // Smoothing 0.1 on y = 1: target 0.95.
        let cfg = LossConfig {
            label_smoothing: 0.1,
            ..Default::default()
        };
        let expect = 0.95 * softplus(-2.0) + 0.05 * softplus(2.0);
        assert!((loss_of(&[2.0], &[0.0], &[1.0], &cfg) - expect).abs() < 1e-6);
        // Christiano et al.: 10% random answers, P = 0.9 s(d) + 0.05.
        let cfg = LossConfig {
            noise_robust: 0.1,
            ..Default::default()
        };
        let expect = -(0.9 * sigmoid(1.5) + 0.05).ln();
        assert!((loss_of(&[1.5], &[0.0], &[1.0], &cfg) - expect).abs() < 1e-6);
        // A confidently wrong pair costs at most about -log(0.05) under the noise model.
        let wrong = loss_of(&[-30.0], &[0.0], &[1.0], &cfg);
        assert!((wrong - -(0.05f64).ln()).abs() < 1e-4, "{wrong}");
    }

    #[test]
    fn ratings_are_binary_cross_entropy() {
        let cfg = LossConfig {
            center_coef: 1.0,
            margin_scale: 1.0,
            ..Default::default()
        };
        // BCE(logit 0, target 0) = ln 2; BCE(logit 2, target 1) = softplus(-2); weights 1, 3.
        let l = ratings(&t(&[0.0, 2.0]), &t(&[0.0, 1.0]), &t(&[1.0, 3.0]), &cfg).unwrap();
        let expect = (2f64.ln() + 3.0 * softplus(-2.0)) / 4.0;
        assert!(
            (value(&l) - expect).abs() < 1e-6,
            "{} vs {expect}",
            value(&l)
        );
        // Gradient of BCE is sigmoid(r) - y.
        let r = t(&[0.3]).set_requires_grad(true);
        ratings(&r, &t(&[1.0]), &t(&[1.0]), &LossConfig::default())
            .unwrap()
            .backward();
        let g = value(&r.grad().sum(Kind::Float));
        assert!((g - (sigmoid(0.3) - 1.0)).abs() < 1e-6);
    }
}
