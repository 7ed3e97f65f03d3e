//! Policy and value losses with their diagnostics:
//! - PPO's clipped surrogate (Schulman et al. 2017) on per-token importance ratios
//!   pi/pi_old, averaged over response tokens, with clip fraction, approximate KL to the
//!   old policy and ratio statistics;
//! - the clipped value loss of PPO implementations (0.5 * max of the unclipped and clipped
//!   squared errors);
//! - GRPO's KL-in-the-loss term (k3 estimator against the reference, averaged over tokens).
//!
//! With a single pass over fresh samples the ratio is 1 and the surrogate's gradient is the
//! REINFORCE gradient -A * grad log pi, so REINFORCE and RLOO share it (token-averaged).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::kl::{kl_per_token, KlEstimator};
use crate::masked::{check_same_shape, masked_mean, scalar};

/// The clipped surrogate loss and its diagnostics (scalars as f64).
#[derive(Debug)]
pub struct PolicyLoss {
    /// Scalar loss tensor (with grad through `logp`).
    pub loss: Tensor,
    /// Fraction of response tokens where the clipped term was taken.
    pub clip_frac: f64,
    /// Mean k3 estimate of KL(pi_old || pi) over response tokens.
    pub approx_kl: f64,
    /// Mean importance ratio over response tokens.
    pub ratio_mean: f64,
    /// Largest importance ratio over response tokens.
    pub ratio_max: f64,
}

/// PPO clipped surrogate: mean over masked tokens of max(-A r, -A clip(r, 1-eps, 1+eps))
/// with r = exp(logp - old_logp). All inputs `(batch, tokens)`; `old_logp` and `advantages`
/// are treated as constants.
pub fn ppo_clipped_loss(
    logp: &Tensor,
    old_logp: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip_eps: f64,
) -> Result<PolicyLoss> {
    check_same_shape("logprobs", logp, "old_logprobs", old_logp)?;
    check_same_shape("logprobs", logp, "advantages", advantages)?;
    check_same_shape("logprobs", logp, "mask", mask)?;
    let m = mask.to_kind(logp.kind());
    let adv = advantages.detach().to_kind(logp.kind());
    let log_ratio = logp - old_logp.detach();
    let ratio = log_ratio.exp();
    let pg1 = -&adv * &ratio;
    let pg2 = -&adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps);
    let loss = masked_mean(&pg1.maximum(&pg2), &m);
    let (clip_frac, approx_kl, ratio_mean, ratio_max) = tch::no_grad(|| {
        let clipped = pg2.gt_tensor(&pg1).to_kind(logp.kind());
        let lr = log_ratio.detach();
        let k3 = (lr.exp() - 1.0) - &lr;
        let r = ratio.detach();
        let any = scalar(&m.sum(Kind::Float)) > 0.0;
        let rmax = if any {
            scalar(&r.masked_fill(&m.eq(0.0), f64::NEG_INFINITY).max())
        } else {
            1.0
        };
        (
            scalar(&masked_mean(&clipped, &m)),
            scalar(&masked_mean(&k3, &m)),
            scalar(&masked_mean(&r, &m)),
            rmax,
        )
    });
    Ok(PolicyLoss {
        loss,
        clip_frac,
        approx_kl,
        ratio_mean,
        ratio_max,
    })
}

/// The value loss and the fraction of positions where clipping was active.
#[derive(Debug)]
pub struct ValueLoss {
    /// Scalar loss tensor (with grad through `values`).
    pub loss: Tensor,
    /// Fraction of masked positions where the clipped error was larger.
    pub clip_frac: f64,
}

/// Clipped value loss: 0.5 * mean over masked positions of
/// max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2). `clip <= 0` disables clipping.
/// Works on `(batch, tokens)` (PPO) or `(batch,)` with a `(batch,)` mask (REINFORCE).
pub fn clipped_value_loss(
    values: &Tensor,
    old_values: &Tensor,
    returns: &Tensor,
    mask: &Tensor,
    clip: f64,
) -> Result<ValueLoss> {
    check_same_shape("values", values, "old_values", old_values)?;
    check_same_shape("values", values, "returns", returns)?;
    check_same_shape("values", values, "mask", mask)?;
    let m = mask.to_kind(values.kind());
    let ret = returns.detach();
    let err1 = (values - &ret).square();
    if clip <= 0.0 {
        return Ok(ValueLoss {
            loss: masked_mean(&err1, &m) * 0.5,
            clip_frac: 0.0,
        });
    }
    let old = old_values.detach();
    let clipped = &old + (values - &old).clamp(-clip, clip);
    let err2 = (clipped - &ret).square();
    let loss = masked_mean(&err1.maximum(&err2), &m) * 0.5;
    let clip_frac = tch::no_grad(|| {
        scalar(&masked_mean(
            &err2.gt_tensor(&err1).to_kind(values.kind()),
            &m,
        ))
    });
    Ok(ValueLoss { loss, clip_frac })
}

/// GRPO's KL term: mean over masked tokens of the k3 estimate of KL(pi || ref) (with grad
/// through `logp`; the reference is a constant).
pub fn kl_loss(logp: &Tensor, ref_logp: &Tensor, mask: &Tensor) -> Result<Tensor> {
    check_same_shape("logprobs", logp, "ref_logprobs", ref_logp)?;
    check_same_shape("logprobs", logp, "mask", mask)?;
    let k3 = kl_per_token(logp, &ref_logp.detach(), KlEstimator::K3);
    Ok(masked_mean(&k3, &mask.to_kind(logp.kind())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[f32]) -> Tensor {
        Tensor::from_slice(v).view([1, -1])
    }

    #[test]
    fn clipped_surrogate_hand_computed() {
        // ratios: e^0.5 = 1.6487 (A=+1: clipped to 1.2 -> -1.2), e^-0.5 = 0.6065 (A=+1:
        // unclipped -0.6065 is larger than -0.8), 1.0 (A=-2: 2.0), padding ignored.
        let logp = row(&[-0.5, -1.5, -1.0, 0.0]).set_requires_grad(true);
        let old = row(&[-1.0, -1.0, -1.0, -5.0]);
        let adv = row(&[1.0, 1.0, -2.0, 100.0]);
        let m = row(&[1.0, 1.0, 1.0, 0.0]);
        let out = ppo_clipped_loss(&logp, &old, &adv, &m, 0.2).unwrap();
        let expect = (-1.2 - (-0.5f64).exp() + 2.0) / 3.0;
        assert!(
            (scalar(&out.loss) - expect).abs() < 1e-6,
            "{}",
            scalar(&out.loss)
        );
        assert!((out.clip_frac - 1.0 / 3.0).abs() < 1e-6);
        assert!((out.ratio_mean - (0.5f64.exp() + (-0.5f64).exp() + 1.0) / 3.0).abs() < 1e-5);
        assert!((out.ratio_max - 0.5f64.exp()).abs() < 1e-5);
        // k3 of old||new with log ratio l: (e^l - 1) - l
        let k = |l: f64| l.exp() - 1.0 - l;
        assert!((out.approx_kl - (k(0.5) + k(-0.5)) / 3.0).abs() < 1e-6);
        // gradient: clipped token 0 has none; token 1: -A r / 3; token 2: -A r / 3
        out.loss.backward();
        let g = Vec::<f64>::try_from(logp.grad().to_kind(Kind::Double).flatten(0, -1)).unwrap();
        assert!(g[0].abs() < 1e-7 && g[3].abs() < 1e-7, "{g:?}");
        assert!((g[1] + (-0.5f64).exp() / 3.0).abs() < 1e-6, "{g:?}");
        assert!((g[2] - 2.0 / 3.0).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn value_loss_hand_computed() {
        // V = [1.0, 0.0], V_old = [0.5, 0.5], R = [2.0, 0.0], clip 0.2
        // pos 0: (1-2)^2 = 1 vs clipped 0.7 -> (0.7-2)^2 = 1.69 -> 1.69 (clipped)
        // pos 1: 0 vs clipped 0.3 -> 0.09 -> 0.09 (clipped)
        let v = row(&[1.0, 0.0]);
        let old = row(&[0.5, 0.5]);
        let r = row(&[2.0, 0.0]);
        let m = row(&[1.0, 1.0]);
        let out = clipped_value_loss(&v, &old, &r, &m, 0.2).unwrap();
        assert!((scalar(&out.loss) - 0.5 * (1.69 + 0.09) / 2.0).abs() < 1e-6);
        assert!((out.clip_frac - 1.0).abs() < 1e-9);
        let out = clipped_value_loss(&v, &old, &r, &m, 0.0).unwrap();
        assert!((scalar(&out.loss) - 0.25).abs() < 1e-6);
        assert_eq!(out.clip_frac, 0.0);
    }

    #[test]
    fn kl_loss_is_mean_k3() {
        let lp = row(&[-1.0, -2.0, 0.0]);
        let rf = row(&[-1.5, -1.0, 7.0]);
        let m = row(&[1.0, 1.0, 0.0]);
        let v = scalar(&kl_loss(&lp, &rf, &m).unwrap());
        let expect = ((-0.5f64).exp() - 1.0 + 0.5 + 1.0f64.exp() - 1.0 - 1.0) / 2.0;
        assert!((v - expect).abs() < 1e-6, "{v}");
    }
}
