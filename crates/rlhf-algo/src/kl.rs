//! Per-token KL estimators between the policy and the reference (the base model with the
//! adapter switched off), and the KL-penalised per-token reward of RLHF (Ziegler et al.
//! 2019; Stiennon et al. 2020): r_t = -beta * kl_t, with the sequence score added at the
//! last response token.
//!
//! Estimators of KL(pi || ref) from samples of pi, with log-ratio l = log pi - log ref
//! (J. Schulman, "Approximating KL divergence", 2020):
//! k1 = l (unbiased, high variance, can be negative), k2 = l^2 / 2 (biased, low variance),
//! k3 = exp(-l) - 1 + l (unbiased, always >= 0; the GRPO loss term).

use std::fmt;
use std::str::FromStr;

use tch::Tensor;

use crate::error::Result;
use crate::masked::{check_same_shape, last_positions};

/// Which per-token KL estimator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log pi - log ref.
    K1,
    /// (log pi - log ref)^2 / 2.
    K2,
    /// exp(log ref - log pi) - 1 - (log ref - log pi).
    K3,
}

impl FromStr for KlEstimator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "k1" => Ok(KlEstimator::K1),
            "k2" => Ok(KlEstimator::K2),
            "k3" => Ok(KlEstimator::K3),
            other => Err(format!(
                "unknown KL estimator `{other}`; expected k1, k2 or k3"
            )),
        }
    }
}

impl fmt::Display for KlEstimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KlEstimator::K1 => "k1",
            KlEstimator::K2 => "k2",
            KlEstimator::K3 => "k3",
        })
    }
}

/// Per-token KL estimate from policy and reference log-probabilities of the sampled tokens
/// (same shape in, same shape out).
pub fn kl_per_token(logp: &Tensor, ref_logp: &Tensor, estimator: KlEstimator) -> Tensor {
    let l = logp - ref_logp;
    match estimator {
        KlEstimator::K1 => l,
        KlEstimator::K2 => l.square() * 0.5,
        KlEstimator::K3 => (-&l).exp() - 1.0 + l,
    }
}

/// The per-token rewards of KL-regularised RLHF and the per-token KL they used.
#[derive(Debug)]
pub struct PenalisedRewards {
    /// `(batch, tokens)`: -beta * kl_t on response tokens, plus `score_coef * score` at the
    /// last response token; 0 on padding.
    pub rewards: Tensor,
    /// `(batch, tokens)`: the per-token KL estimate, 0 on padding.
    pub kl: Tensor,
}

/// r_t = -beta * kl_t over the response, with `score_coef * score_i` added at each row's
/// last response token. PPO uses `score_coef = 1`; PERL's REINFORCE objective
/// (1 - beta) * reward - beta * KL uses `score_coef = 1 - beta`.
///
/// Shapes: `logp`, `ref_logp`, `mask` `(batch, tokens)`; `scores` `(batch,)`.
pub fn kl_penalised_rewards(
    logp: &Tensor,
    ref_logp: &Tensor,
    mask: &Tensor,
    scores: &Tensor,
    beta: f64,
    score_coef: f64,
    estimator: KlEstimator,
) -> Result<PenalisedRewards> {
    check_same_shape("logprobs", logp, "ref_logprobs", ref_logp)?;
    check_same_shape("logprobs", logp, "mask", mask)?;
    let b = logp.size()[0];
    if scores.size() != [b] {
        return Err(crate::AlgoError::mismatch(
            "shape of `scores`",
            format!("[{b}]"),
            format!("{:?}", scores.size()),
        ));
    }
    let m = mask.to_kind(logp.kind());
    let kl = kl_per_token(logp, ref_logp, estimator) * &m;
    let last = last_positions(&m)?.unsqueeze(1);
    let score_at_end = (scores.to_kind(logp.kind()) * score_coef).unsqueeze(1);
    let rewards = (&kl * -beta).scatter_add(1, &last, &score_at_end);
    Ok(PenalisedRewards { rewards, kl })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let n = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([-1, n])
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn estimator_values() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0, -0.5]);
        let rf = Tensor::from_slice(&[-1.5f32, -1.0, -0.5]);
        // l = 0.5, -1.0, 0
        assert_eq!(
            vals(&kl_per_token(&lp, &rf, KlEstimator::K1)),
            vec![0.5, -1.0, 0.0]
        );
        assert_eq!(
            vals(&kl_per_token(&lp, &rf, KlEstimator::K2)),
            vec![0.125, 0.5, 0.0]
        );
        // k3: exp(-0.5) - 1 + 0.5 = 0.1065306597; exp(1) - 1 - 1 = 0.7182818285
        let k3 = vals(&kl_per_token(&lp, &rf, KlEstimator::K3));
        assert!((k3[0] - 0.106_530_659_7).abs() < 1e-6, "{k3:?}");
        assert!((k3[1] - 0.718_281_828_5).abs() < 1e-6, "{k3:?}");
        assert_eq!(k3[2], 0.0);
    }

    #[test]
    fn penalised_rewards_put_score_at_last_token() {
        // row 0: response at positions 1..=2; row 1: positions 0..=3
        let lp = t2(&[&[-9.0, -1.0, -2.0, -9.0], &[-1.0, -1.0, -1.0, -1.0]]);
        let rf = t2(&[&[-3.0, -1.5, -1.0, -3.0], &[-1.0, -2.0, -1.0, -0.5]]);
        let m = t2(&[&[0.0, 1.0, 1.0, 0.0], &[1.0, 1.0, 1.0, 1.0]]);
        let s = Tensor::from_slice(&[2.0f32, -1.0]);
        let out = kl_penalised_rewards(&lp, &rf, &m, &s, 0.1, 1.0, KlEstimator::K1).unwrap();
        // kl row 0: 0, 0.5, -1.0, 0; row 1: 0, 1, 0, -0.5
        assert_eq!(
            vals(&out.kl),
            vec![0.0, 0.5, -1.0, 0.0, 0.0, 1.0, 0.0, -0.5]
        );
        let r = vals(&out.rewards);
        let expect = [0.0, -0.05, 0.1 + 2.0, 0.0, 0.0, -0.1, 0.0, 0.05 - 1.0];
        for (a, b) in r.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
        // PERL weighting: (1 - beta) * score
        let out = kl_penalised_rewards(&lp, &rf, &m, &s, 0.1, 0.9, KlEstimator::K1).unwrap();
        assert!((vals(&out.rewards)[2] - (0.1 + 1.8)).abs() < 1e-6);
    }

    #[test]
    fn penalised_rewards_check_shapes() {
        let a = t2(&[&[0.0, 1.0]]);
        let e = kl_penalised_rewards(
            &a,
            &a,
            &a,
            &Tensor::from_slice(&[1.0f32, 2.0]),
            0.1,
            1.0,
            KlEstimator::K1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("shape of `scores`: expected [1], found [2]"),
            "{e}"
        );
    }
}
