//! Advantage estimators of the four policy-gradient algorithms:
//! - GAE(gamma, lambda) over per-token rewards and critic values (Schulman et al. 2016),
//!   for PPO;
//! - the learned-baseline advantage of REINFORCE (PERL: return minus the critic's value);
//! - RLOO's leave-one-out baseline over the K samples of a prompt (Ahmadian et al. 2024):
//!   A_i = R_i - mean_{j != i} R_j;
//! - GRPO's group-normalised advantage (Shao et al. 2024, DeepSeekMath):
//!   A_i = (R_i - mean_g R) / (std_g R + eps), with the unbiased group standard deviation.
//!
//! Sequences are rows of `(batch, tokens)` tensors whose response positions are marked by
//! a mask (contiguous per row, starting anywhere: prompts have different lengths).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::error::{AlgoError, Result};
use crate::masked::check_same_shape;

/// GAE advantages and returns (`advantages + values`), both `(batch, tokens)`, 0 on
/// padding. The recursion runs right to left within each row's masked span:
/// delta_t = r_t + gamma * V_{t+1} - V_t (V = 0 after the last response token),
/// A_t = delta_t + gamma * lambda * A_{t+1}.
pub fn gae(
    rewards: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    gamma: f64,
    lambda: f64,
) -> Result<(Tensor, Tensor)> {
    check_same_shape("rewards", rewards, "values", values)?;
    check_same_shape("rewards", rewards, "mask", mask)?;
    let size = rewards.size();
    let (b, t) = (size[0] as usize, size[1] as usize);
    let to_vec = |x: &Tensor| -> Result<Vec<f64>> {
        Vec::<f64>::try_from(
            x.detach()
                .to_kind(Kind::Double)
                .to_device(tch::Device::Cpu)
                .flatten(0, -1),
        )
        .map_err(|e| AlgoError::tch("reading tensor for GAE", e))
    };
    let r = to_vec(rewards)?;
    let v = to_vec(values)?;
    let m = to_vec(mask)?;
    let mut adv = vec![0.0f64; b * t];
    for row in 0..b {
        let o = row * t;
        let mut last = 0.0;
        for i in (0..t).rev() {
            let (m_next, v_next) = if i + 1 < t {
                (m[o + i + 1], v[o + i + 1])
            } else {
                (0.0, 0.0)
            };
            let delta = r[o + i] * m[o + i] + gamma * v_next * m_next - v[o + i] * m[o + i];
            last = delta + gamma * lambda * m_next * last;
            adv[o + i] = last * m[o + i];
        }
    }
    let device = rewards.device();
    let kind = rewards.kind();
    let adv = Tensor::from_slice(&adv)
        .view([size[0], size[1]])
        .to_kind(kind)
        .to_device(device);
    let ret = &adv + values.detach() * mask.to_kind(kind);
    Ok((adv, ret))
}

/// Groups the sample indices by group key (a prompt id), in key order.
fn groups(keys: &[usize]) -> BTreeMap<usize, Vec<usize>> {
    let mut g: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &k) in keys.iter().enumerate() {
        g.entry(k).or_default().push(i);
    }
    g
}

fn check_group_sizes(
    what: &str,
    keys: &[usize],
    rewards: &[f64],
) -> Result<BTreeMap<usize, Vec<usize>>> {
    if keys.len() != rewards.len() {
        return Err(AlgoError::mismatch(
            format!("{what}: number of group keys"),
            rewards.len(),
            keys.len(),
        ));
    }
    let g = groups(keys);
    if let Some((k, members)) = g.iter().find(|(_, m)| m.len() < 2) {
        return Err(AlgoError::Invalid(format!(
            "{what} needs at least 2 samples per prompt, but group {k} has {}\n  hint: sample several responses per prompt (sample-rollouts --samples-per-prompt K, K >= 2)",
            members.len()
        )));
    }
    Ok(g)
}

/// RLOO advantages: each sample's reward minus the mean reward of the other samples of
/// its prompt (equivalently K/(K-1) * (R_i - mean)). `keys[i]` is sample i's group.
pub fn rloo_advantages(rewards: &[f64], keys: &[usize]) -> Result<Vec<f64>> {
    let g = check_group_sizes("RLOO", keys, rewards)?;
    let mut out = vec![0.0; rewards.len()];
    for members in g.values() {
        let k = members.len() as f64;
        let sum: f64 = members.iter().map(|&i| rewards[i]).sum();
        for &i in members {
            out[i] = rewards[i] - (sum - rewards[i]) / (k - 1.0);
        }
    }
    Ok(out)
}

/// GRPO advantages: (R_i - group mean) / (group std + eps), unbiased std (as TRL).
/// A group whose rewards are all equal gets advantage 0.
pub fn grpo_advantages(rewards: &[f64], keys: &[usize], eps: f64) -> Result<Vec<f64>> {
    let g = check_group_sizes("GRPO", keys, rewards)?;
    let mut out = vec![0.0; rewards.len()];
    for members in g.values() {
        let k = members.len() as f64;
        let mean = members.iter().map(|&i| rewards[i]).sum::<f64>() / k;
        let var = members
            .iter()
            .map(|&i| (rewards[i] - mean).powi(2))
            .sum::<f64>()
            / (k - 1.0);
        let std = var.sqrt();
        for &i in members {
            out[i] = if std > 0.0 {
                (rewards[i] - mean) / (std + eps)
            } else {
                0.0
            };
        }
    }
    Ok(out)
}

/// REINFORCE with a learned baseline: A_i = R_i - V_i, where V_i is the critic's value
/// for the prompt (a detached `(batch,)` tensor) and R_i the KL-regularised return.
pub fn baseline_advantages(returns: &Tensor, baseline: &Tensor) -> Result<Tensor> {
    check_same_shape("returns", returns, "baseline", baseline)?;
    Ok(returns - baseline.detach())
}

/// Broadcasts per-sequence values `(batch,)` over the masked tokens: `(batch, tokens)`.
pub fn broadcast_to_tokens(per_seq: &Tensor, mask: &Tensor) -> Tensor {
    per_seq.to_kind(Kind::Float).unsqueeze(1) * mask.to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let n = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([-1, n])
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn gae_hand_computed() {
        // one row, 3 response tokens, gamma 0.9, lambda 0.8
        // r = [0, 0, 1], V = [0.5, 0.4, 0.3]
        // d2 = 1 - 0.3 = 0.7; d1 = 0 + 0.9*0.3 - 0.4 = -0.13; d0 = 0 + 0.9*0.4 - 0.5 = -0.14
        // A2 = 0.7; A1 = -0.13 + 0.72*0.7 = 0.374; A0 = -0.14 + 0.72*0.374 = 0.12928
        let r = t2(&[&[0.0, 0.0, 1.0]]);
        let v = t2(&[&[0.5, 0.4, 0.3]]);
        let m = t2(&[&[1.0, 1.0, 1.0]]);
        let (a, ret) = gae(&r, &v, &m, 0.9, 0.8).unwrap();
        close(&vals(&a), &[0.12928, 0.374, 0.7], 1e-6);
        close(&vals(&ret), &[0.62928, 0.774, 1.0], 1e-6);
    }

    #[test]
    fn gae_respects_offsets_and_padding() {
        // the same sequence shifted right by one (a prompt position) and padded, with junk
        // in the masked-out positions; gamma = lambda = 1 gives A_t = sum r - V_t
        let r = t2(&[&[5.0, 0.0, 0.0, 1.0, 7.0]]);
        let v = t2(&[&[9.0, 0.5, 0.4, 0.3, 9.0]]);
        let m = t2(&[&[0.0, 1.0, 1.0, 1.0, 0.0]]);
        let (a, _) = gae(&r, &v, &m, 0.9, 0.8).unwrap();
        close(&vals(&a), &[0.0, 0.12928, 0.374, 0.7, 0.0], 1e-6);
        let (a, _) = gae(&r, &v, &m, 1.0, 1.0).unwrap();
        close(&vals(&a), &[0.0, 0.5, 0.6, 0.7, 0.0], 1e-6);
        // lambda 0: one-step TD errors
        let (a, _) = gae(&r, &v, &m, 1.0, 0.0).unwrap();
        close(&vals(&a), &[0.0, -0.1, -0.1, 0.7, 0.0], 1e-6);
    }

    #[test]
    fn rloo_hand_computed() {
        // prompt 0: rewards 1, 2, 3 -> 1 - 2.5, 2 - 2, 3 - 1.5; prompt 1: 4, 0 -> 4, -4
        let a = rloo_advantages(&[1.0, 4.0, 2.0, 0.0, 3.0], &[0, 1, 0, 1, 0]).unwrap();
        close(&a, &[-1.5, 4.0, 0.0, -4.0, 1.5], 1e-12);
        let e = rloo_advantages(&[1.0, 2.0, 3.0], &[0, 0, 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("group 1 has 1"), "{e}");
    }

    #[test]
    fn grpo_hand_computed() {
        // group 1, 2, 3: mean 2, unbiased std 1 -> -1, 0, 1 (eps 0)
        let a = grpo_advantages(&[1.0, 2.0, 3.0, 5.0, 5.0], &[0, 0, 0, 1, 1], 0.0).unwrap();
        close(&a[..3], &[-1.0, 0.0, 1.0], 1e-12);
        assert_eq!(&a[3..], &[0.0, 0.0]);
        let a = grpo_advantages(&[1.0, 2.0, 3.0, 5.0, 5.0], &[0, 0, 0, 1, 1], 1e-4).unwrap();
        close(&a, &[-1.0 / 1.0001, 0.0, 1.0 / 1.0001, 0.0, 0.0], 1e-12);
        // 0, 1, 5: mean 2, unbiased var (4 + 1 + 9) / 2 = 7, std 2.6457513
        let a = grpo_advantages(&[0.0, 1.0, 5.0], &[3, 3, 3], 0.0).unwrap();
        close(&a, &[-0.755_928_946, -0.377_964_473, 1.133_893_419], 1e-8);
    }

    #[test]
    fn baseline_and_broadcast() {
        let a = baseline_advantages(
            &Tensor::from_slice(&[1.0f32, -1.0]),
            &Tensor::from_slice(&[0.25f32, 0.5]),
        )
        .unwrap();
        assert_eq!(vals(&a), vec![0.75, -1.5]);
        let m = t2(&[&[0.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        assert_eq!(
            vals(&broadcast_to_tokens(&a, &m)),
            vec![0.0, 0.75, 0.75, -1.5, -1.5, 0.0]
        );
    }
}
