//! AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019) on named tch
//! tensors, written here rather than taken from tch's wrapped optimiser so that its moments
//! and step count can be saved and restored (resume, and state carried across PPO
//! iterations). The update matches `torch.optim.AdamW`:
//!
//! ```text
//! p <- p * (1 - lr * wd)
//! m <- b1 m + (1 - b1) g            v <- b2 v + (1 - b2) g^2
//! p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//! ```
//!
//! Moments are kept in f32 whatever the parameter dtype.

use tch::{Kind, Tensor};

use crate::error::{AlgoError, Result};

/// AdamW hyperparameters (the learning rate here is the default; `step` takes the
/// scheduled one).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// torch's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges (betas in [0, 1), eps > 0, lr and weight decay >= 0).
    pub fn validate(&self) -> Result<()> {
        let ok = self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(AlgoError::Invalid(format!(
                "invalid AdamW settings {self:?}: need lr >= 0, 0 <= beta1, beta2 < 1, eps > 0, weight_decay >= 0"
            )))
        }
    }
}

/// One trainable tensor with its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over a fixed list of named parameters (shallow clones sharing the model's storage).
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: u64,
}

/// Whether weight decay applies to `param`: weight matrices (and LoRA factors, heads)
/// decay; vectors (norm scales, biases) do not, as in most LLM training recipes.
pub fn decays(param: &Tensor) -> bool {
    param.dim() >= 2
}

/// Name of the step-count entry in [`AdamW::state`].
pub const STEP_KEY: &str = "__step__";

impl AdamW {
    /// An optimiser over `params` (names must be unique; they key the saved state).
    pub fn new(params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> AdamW {
        let slots = params
            .into_iter()
            .map(|(name, param)| {
                let exp_avg = Tensor::zeros(param.size(), (Kind::Float, param.device()));
                let exp_avg_sq = exp_avg.zeros_like();
                Slot {
                    name,
                    param,
                    exp_avg,
                    exp_avg_sq,
                }
            })
            .collect();
        AdamW {
            cfg,
            slots,
            step: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of optimiser steps taken (including steps restored by `load_state`).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Names of the parameters, in order.
    pub fn names(&self) -> Vec<&str> {
        self.slots.iter().map(|s| s.name.as_str()).collect()
    }

    /// Number of scalar parameters optimised.
    pub fn numel(&self) -> usize {
        self.slots.iter().map(|s| s.param.numel()).sum()
    }

    /// Bytes training holds for the optimised parameters: the weights, their gradients
    /// (counted at the weights' size whether or not a backward pass has run) and the two
    /// moments. What grows with the number of trained parameters (PERL's memory argument),
    /// unlike the frozen weights and the process's fixed footprint.
    pub fn trained_state_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        self.slots
            .iter()
            .map(|s| 2 * bytes(&s.param) + bytes(&s.exp_avg) + bytes(&s.exp_avg_sq))
            .sum()
    }

    /// Zeroes every parameter's gradient.
    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            s.param.zero_grad();
        }
    }

    /// The global L2 norm of all gradients (0 when none is defined).
    pub fn grad_norm(&self) -> f64 {
        let _guard = tch::no_grad_guard();
        let mut sq = 0.0f64;
        for s in &self.slots {
            let g = s.param.grad();
            if g.defined() {
                let n = g.to_kind(Kind::Double).norm().double_value(&[]);
                sq += n * n;
            }
        }
        sq.sqrt()
    }

    /// Scales gradients so their global L2 norm is at most `max` (as
    /// `torch.nn.utils.clip_grad_norm_`: factor max / (norm + 1e-6) when below 1) and
    /// returns the norm before clipping. `max <= 0` or infinite only measures.
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self.grad_norm();
        if max > 0.0 && max.is_finite() && norm.is_finite() {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                let _guard = tch::no_grad_guard();
                for s in &self.slots {
                    let mut g = s.param.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
        }
        norm
    }

    /// One AdamW update at learning rate `lr`. Parameters without a gradient are left
    /// untouched (their moments too), as in torch.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let t = self.step as i32;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(t);
        let bc2 = 1.0 - beta2.powi(t);
        for s in &mut self.slots {
            let g = s.param.grad();
            if !g.defined() {
                continue;
            }
            let g = g.to_kind(Kind::Float);
            let mut p = s.param.to_kind(Kind::Float);
            if weight_decay != 0.0 && decays(&s.param) {
                p *= 1.0 - lr * weight_decay;
            }
            let _ = s.exp_avg.g_mul_scalar_(beta1);
            let _ = s.exp_avg.g_add_(&(&g * (1.0 - beta1)));
            let _ = s.exp_avg_sq.g_mul_scalar_(beta2);
            let _ = s.exp_avg_sq.g_add_(&(&g * &g * (1.0 - beta2)));
            let denom = (&s.exp_avg_sq / bc2).sqrt() + eps;
            let update = (&s.exp_avg / &denom) * (lr / bc1);
            let new = p - update;
            s.param.copy_(&new.to_kind(s.param.kind()));
        }
    }

    /// The moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) and the step count
    /// ([`STEP_KEY`], an i64 scalar), as CPU tensors ready for safetensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.slots.len() + 1);
        for s in &self.slots {
            out.push((
                format!("{}.exp_avg", s.name),
                s.exp_avg.to_device(tch::Device::Cpu).contiguous(),
            ));
            out.push((
                format!("{}.exp_avg_sq", s.name),
                s.exp_avg_sq.to_device(tch::Device::Cpu).contiguous(),
            ));
        }
        out.push((
            STEP_KEY.to_string(),
            Tensor::from_slice(&[self.step as i64]),
        ));
        out
    }

    /// Restores moments and step count saved by [`AdamW::state`]. Every parameter must
    /// have both moments with its shape; extra entries are an error too (a state saved
    /// for different parameters).
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let find = |key: &str| state.iter().find(|(n, _)| n == key).map(|(_, t)| t);
        let step = find(STEP_KEY).ok_or_else(|| {
            AlgoError::mismatch("optimizer state", format!("a `{STEP_KEY}` entry"), "none")
        })?;
        let step = step
            .f_int64_value(&[0])
            .map_err(|e| AlgoError::tch("reading optimizer step", e))?;
        let expected = 2 * self.slots.len() + 1;
        if state.len() != expected {
            return Err(AlgoError::mismatch(
                "optimizer state entries",
                format!(
                    "{expected} (2 moments for each of {} tensors + step)",
                    self.slots.len()
                ),
                state.len(),
            ));
        }
        for s in &mut self.slots {
            for (suffix, dst) in [
                ("exp_avg", &mut s.exp_avg),
                ("exp_avg_sq", &mut s.exp_avg_sq),
            ] {
                let key = format!("{}.{suffix}", s.name);
                let src = find(&key).ok_or_else(|| {
                    AlgoError::mismatch("optimizer state", format!("an entry `{key}`"), "none")
                })?;
                if src.size() != dst.size() {
                    return Err(AlgoError::mismatch(
                        format!("shape of optimizer state `{key}`"),
                        format!("{:?}", dst.size()),
                        format!("{:?}", src.size()),
                    ));
                }
                *dst = src.to_kind(Kind::Float).to_device(dst.device());
            }
        }
        self.step = u64::try_from(step)
            .map_err(|_| AlgoError::mismatch("optimizer step", "a count >= 0", step))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A (1, n) matrix: weight decay applies to matrices.
    fn param(values: &[f32]) -> Tensor {
        Tensor::from_slice(values)
            .view([1, -1])
            .set_requires_grad(true)
    }

    fn set_grad(p: &Tensor, g: &[f32]) {
        // d/dp sum(p * g) = g
        let loss = (p * Tensor::from_slice(g)).sum(Kind::Float);
        loss.backward();
    }

    fn values(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).detach().view(-1)).unwrap()
    }

    fn cfg() -> AdamWConfig {
        AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }

    #[test]
    fn two_steps_match_hand_computed_update() {
        let p = param(&[1.0, -2.0]);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg());
        set_grad(&p, &[0.5, -0.1]);
        opt.step(0.1);
        // step 1: mhat = g, vhat = g^2 -> p(1 - lr wd) - lr g / (|g| + eps)
        // 1 * 0.999 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.89900000200
        // -2 * 0.999 + 0.1 * 0.1 / (0.1 + 1e-8) = -1.89800000990
        let v = values(&p);
        assert!((v[0] - 0.899_000_002).abs() < 1e-6, "{v:?}");
        assert!((v[1] + 1.898_000_01).abs() < 1e-6, "{v:?}");
        opt.zero_grad();
        set_grad(&p, &[-0.2, 0.3]);
        opt.step(0.05);
        // step 2 (w[0]): m = 0.9*0.05 + 0.1*(-0.2) = 0.025, v = 0.999*2.5e-4 + 0.001*0.04
        // = 2.8975e-4; mhat = 0.025/0.19 = 0.131578947, vhat = 2.8975e-4/0.001999 = 0.144947474
        // p = 0.899000002*(1 - 0.0005) - 0.05*0.131578947/(0.380719... + 1e-8) = 0.88127021
        let v = values(&p);
        assert!((v[0] - 0.881_270_21).abs() < 1e-6, "{v:?}");
        // w[1]: m = 0.9*(-0.01) + 0.03 = 0.021, v = 0.999*1e-5 + 0.001*0.09 = 9.999e-5
        // mhat = 0.110526316, vhat = 0.050020010; p = -1.8980000099*0.9995 - 0.05*0.110526316/0.223651
        // = -1.92176050 (torch.optim.AdamW gives the same to 1e-7)
        assert!((v[1] + 1.921_760_50).abs() < 1e-6, "{v:?}");
        assert_eq!(opt.step_count(), 2);
    }

    #[test]
    fn trained_state_bytes_counts_weights_gradients_and_both_moments() {
        let w = Tensor::zeros([3, 4], (Kind::BFloat16, tch::Device::Cpu)).set_requires_grad(true);
        let b = param(&[1.0, 2.0]);
        let opt = AdamW::new(vec![("w".into(), w), ("b".into(), b)], cfg());
        // bf16 weight: 12 x (2 weight + 2 gradient + 4 + 4 moments); f32 bias: 2 x 16
        assert_eq!(opt.trained_state_bytes(), 12 * 12 + 2 * 16);
    }

    #[test]
    fn vectors_do_not_decay() {
        let bias = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("b".into(), bias.shallow_clone())], cfg());
        set_grad(&bias, &[0.5, -0.1]);
        opt.step(0.1);
        // no decay: 1 - 0.1 * 0.5 / (0.5 + 1e-8), -2 + 0.1 * 0.1 / (0.1 + 1e-8)
        let v = values(&bias);
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 1.9).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn clip_returns_pre_clip_norm_and_scales() {
        let p = param(&[0.0, 0.0]);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg());
        set_grad(&p, &[3.0, 4.0]);
        let n = opt.clip_grad_norm(1.0);
        assert!((n - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
        let g = values(&p.grad());
        assert!(
            (g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5,
            "{g:?}"
        );
        // below the limit: untouched
        assert!((opt.clip_grad_norm(10.0) - 1.0).abs() < 1e-5);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn zero_learning_rate_and_no_grad_leave_params_unchanged() {
        let p = param(&[1.0, 2.0]);
        let q = param(&[3.0]);
        let mut opt = AdamW::new(
            vec![
                ("p".into(), p.shallow_clone()),
                ("q".into(), q.shallow_clone()),
            ],
            cfg(),
        );
        set_grad(&p, &[1.0, 1.0]);
        opt.step(0.0);
        assert_eq!(values(&p), vec![1.0, 2.0]);
        assert_eq!(values(&q), vec![3.0]);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let run = |split: bool| -> Vec<f64> {
            let p = param(&[0.5, -0.5, 2.0]);
            let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg());
            let grads = [[0.1f32, 0.2, -0.3], [0.4, -0.1, 0.2], [-0.2, 0.3, 0.1]];
            for (i, g) in grads.iter().enumerate() {
                if split && i == 2 {
                    let state = opt.state();
                    let p2 = param(&values(&p).iter().map(|&x| x as f32).collect::<Vec<_>>());
                    let mut opt2 = AdamW::new(vec![("w".into(), p2.shallow_clone())], cfg());
                    opt2.load_state(&state).unwrap();
                    assert_eq!(opt2.step_count(), 2);
                    set_grad(&p2, g);
                    opt2.step(0.1);
                    return values(&p2);
                }
                opt.zero_grad();
                set_grad(&p, g);
                opt.step(0.1);
            }
            values(&p)
        };
        assert_eq!(run(false), run(true));
    }

    #[test]
    fn load_state_rejects_wrong_shapes_and_names() {
        let p = param(&[1.0, 2.0]);
        let mut opt = AdamW::new(vec![("w".into(), p.shallow_clone())], cfg());
        let other = AdamW::new(vec![("w".into(), param(&[1.0, 2.0, 3.0]))], cfg());
        let e = opt.load_state(&other.state()).unwrap_err().to_string();
        assert!(e.contains("shape of optimizer state `w.exp_avg`"), "{e}");
        let other = AdamW::new(vec![("v".into(), param(&[1.0, 2.0]))], cfg());
        let e = opt.load_state(&other.state()).unwrap_err().to_string();
        assert!(e.contains("`w.exp_avg`"), "{e}");
    }
}
