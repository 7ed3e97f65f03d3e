//! AdamW over two parameter groups: matrices (embeddings, projections, LoRA factors) with
//! weight decay, and vectors (norm weights, biases) without, as is usual for transformers.
//! Gradient clipping uses the global norm over both groups. The saved state prefixes each
//! group's entries so the two can be told apart on resume.

use rlhf_algo::optim::{AdamW, AdamWConfig};
use rlhf_algo::AlgoError;
use tch::Tensor;

const GROUP_PREFIX: [&str; 2] = ["decay/", "no_decay/"];

/// The optimiser of one training run.
#[derive(Debug)]
pub struct Optimizer {
    groups: Vec<(&'static str, AdamW)>,
    params: Vec<(String, Tensor)>,
}

impl Optimizer {
    /// Splits `params` by dimension (>= 2: decay) and builds one AdamW per non-empty group.
    pub fn new(
        params: Vec<(String, Tensor)>,
        decay: AdamWConfig,
        no_decay: AdamWConfig,
    ) -> Optimizer {
        let (mat, vec): (Vec<_>, Vec<_>) = params
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .partition(|(_, t)| t.dim() >= 2);
        let mut groups = Vec::new();
        if !mat.is_empty() {
            groups.push((GROUP_PREFIX[0], AdamW::new(mat, decay)));
        }
        if !vec.is_empty() {
            groups.push((GROUP_PREFIX[1], AdamW::new(vec, no_decay)));
        }
        Optimizer { groups, params }
    }

    /// The trainable tensors, named.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of trainable scalars.
    pub fn numel(&self) -> usize {
        self.groups.iter().map(|(_, g)| g.numel()).sum()
    }

    /// Zeroes all gradients.
    pub fn zero_grad(&mut self) {
        for (_, g) in &mut self.groups {
            g.zero_grad();
        }
    }

    /// Clips the global gradient norm to `max` (0: no clipping) and returns the norm
    /// before clipping (as `torch.nn.utils.clip_grad_norm_`).
    pub fn clip_grad_norm(&mut self, max: f64) -> f64 {
        let norm = self
            .groups
            .iter()
            .map(|(_, g)| g.grad_norm().powi(2))
            .sum::<f64>()
            .sqrt();
        if max > 0.0 && norm.is_finite() {
            let coef = max / (norm + 1e-6);
            if coef < 1.0 {
                let _guard = tch::no_grad_guard();
                for (_, p) in &self.params {
                    let mut g = p.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
        }
        norm
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        for (_, g) in &mut self.groups {
            g.step(lr);
        }
    }

    /// Moments and step counts of every group, names prefixed by group.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|(prefix, g)| {
                g.state()
                    .into_iter()
                    .map(move |(n, t)| (format!("{prefix}{n}"), t))
            })
            .collect()
    }

    /// Restores what [`Optimizer::state`] saved.
    pub fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<(), AlgoError> {
        for (prefix, g) in &mut self.groups {
            let mine: Vec<(String, Tensor)> = state
                .iter()
                .filter_map(|(n, t)| {
                    n.strip_prefix(*prefix)
                        .map(|rest| (rest.to_string(), t.shallow_clone()))
                })
                .collect();
            g.load_state(&mine)?;
        }
        let known = state
            .iter()
            .filter(|(n, _)| self.groups.iter().any(|(p, _)| n.starts_with(*p)))
            .count();
        if known != state.len() {
            return Err(AlgoError::mismatch(
                "optimizer state groups",
                self.groups
                    .iter()
                    .map(|(p, _)| p.trim_end_matches('/'))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{} entries of other groups", state.len() - known),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

    fn shallow(p: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        p.iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    }

    fn params() -> Vec<(String, Tensor)> {
        vec![
            (
                "w".into(),
                Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0])
                    .view([2, 2])
                    .set_requires_grad(true),
            ),
            (
                "b".into(),
                Tensor::from_slice(&[0.5f32, -0.5]).set_requires_grad(true),
            ),
        ]
    }

    fn loss(p: &[(String, Tensor)]) -> Tensor {
        (&p[0].1 * &p[0].1).sum(Kind::Float) * 3.0 + (&p[1].1 * &p[1].1).sum(Kind::Float) * 4.0
    }

    #[test]
    fn global_clipping_and_decay_only_on_matrices() {
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let p = params();
        let mut opt = Optimizer::new(
            shallow(&p),
            cfg,
            AdamWConfig {
                weight_decay: 0.0,
                ..cfg
            },
        );
        loss(&p).backward();
        // grads: 6 w = [6, 12, 18, 24], 8 b = [4, -4]; norm = sqrt(36+144+324+576+16+16)
        let expected = (36.0f64 + 144.0 + 324.0 + 576.0 + 32.0).sqrt();
        let norm = opt.clip_grad_norm(1.0);
        assert!((norm - expected).abs() < 1e-4, "{norm}");
        let after: f64 = opt
            .params()
            .iter()
            .map(|(_, t)| t.grad().norm().double_value(&[]).powi(2))
            .sum();
        assert!((after.sqrt() - 1.0).abs() < 1e-4);
        // Zero gradients: only weight decay moves parameters.
        opt.zero_grad();
        opt.step(0.1);
        let w = Vec::<f32>::try_from(&p[0].1.detach().view([-1])).unwrap();
        let b = Vec::<f32>::try_from(&p[1].1.detach()).unwrap();
        assert!((w[0] - 0.95).abs() < 1e-6, "{w:?}");
        assert_eq!(b, vec![0.5, -0.5]);
    }

    #[test]
    fn state_round_trips_through_prefixed_names() {
        let cfg = AdamWConfig::default();
        let p = params();
        let mut opt = Optimizer::new(shallow(&p), cfg, cfg);
        loss(&p).backward();
        opt.step(0.01);
        let st = opt.state();
        assert!(st.iter().any(|(n, _)| n == "decay/w.exp_avg"));
        assert!(st.iter().any(|(n, _)| n == "no_decay/b.exp_avg_sq"));
        let q = params();
        let mut opt2 = Optimizer::new(q, cfg, cfg);
        opt2.load_state(&st).unwrap();
        for ((n1, a), (n2, b)) in st.iter().zip(opt2.state()) {
            assert_eq!(*n1, n2);
            assert!(a.equal(&b), "{n1}");
        }
        let mut extra = st;
        extra.push(("other/x".into(), Tensor::from_slice(&[1.0f32])));
        assert!(opt2.load_state(&extra).is_err());
    }
}
