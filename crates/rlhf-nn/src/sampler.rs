//! Choosing the next token from one row of logits on the CPU: greedy, or temperature, top-k
//! and top-p (transformers' warper semantics: top-k keeps ties with the k-th value; top-p
//! keeps the smallest set whose probability reaches p, at least one token), drawn with the
//! row's own seeded generator. Returns the token and its log-probability under the
//! distribution actually sampled from.

use rand_chacha::ChaCha8Rng;

use crate::exp::exp_f64;

/// Decoding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Most tokens to generate per sequence.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Nucleus sampling mass (1.0 = off).
    pub top_p: f64,
    /// Tokens that end a sequence (included in the output).
    pub eos_ids: Vec<i32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            max_new_tokens: 128,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            eos_ids: vec![],
        }
    }
}

impl SamplingParams {
    /// Checks ranges; the message names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!(
                "temperature must be >= 0, found {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], found {}", self.top_p));
        }
        Ok(())
    }
}

/// log-softmax of `x` at `i`, in f64.
fn log_softmax_at(x: &[f32], i: usize) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
    x[i] as f64 - max - sum.ln()
}

/// First index of the maximum (torch.argmax's choice on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// Temperature sampling over the whole vocabulary without allocating: the same sums in the
/// same order as the general path below, so the same draw gives the same token and
/// log-probability. `None` when no logit is finite (the general path handles it).
fn sample_unfiltered(logits: &[f32], inv_t: f64, rng: &mut ChaCha8Rng) -> Option<(usize, f32)> {
    thread_local! {
        /// exp(scaled - max) per token (NaN for non-finite logits), reused across calls.
        static WEIGHTS: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The largest finite scaled logit. Scaling by inv_t > 0 is monotone (rounding included), so
    // it is the largest finite logit, scaled; unless that overflows (a tiny temperature), when
    // the largest finite scaled value is searched for directly.
    let max = match crate::decode_kernels::max_finite(logits) {
        None => return None,
        Some(m) if (m as f64 * inv_t).is_finite() => m as f64 * inv_t,
        Some(_) => logits
            .iter()
            .map(|&v| v as f64 * inv_t)
            .filter(|v| v.is_finite())
            .fold(f64::NEG_INFINITY, f64::max),
    };
    if max == f64::NEG_INFINITY {
        return None;
    }
    WEIGHTS.with_borrow_mut(|w| {
        w.clear();
        w.resize(logits.len(), 0.0);
        crate::decode_kernels::sampling_weights(logits, inv_t, max, w);
        let total: f64 = w.iter().filter(|x| !x.is_nan()).sum();
        let u = crate::rng::uniform(rng) * total;
        let mut acc = 0.0;
        let mut last = None;
        for (i, &x) in w.iter().enumerate() {
            if x.is_nan() {
                continue;
            }
            acc += x;
            last = Some((i, x));
            if u < acc {
                break;
            }
        }
        let (tok, x) = last?;
        Some((tok, (x / total).ln() as f32))
    })
}

/// Picks the next token from `logits` (one row, vocabulary order). Greedy rows report the
/// log-probability under the untempered softmax.
pub fn sample_row(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> (usize, f32) {
    if p.temperature == 0.0 {
        let t = argmax(logits);
        return (t, log_softmax_at(logits, t) as f32);
    }
    let inv_t = 1.0 / p.temperature;
    let filter = p.top_k > 0 || p.top_p < 1.0;
    if !filter {
        if let Some(drawn) = sample_unfiltered(logits, inv_t, rng) {
            return drawn;
        }
    }
    let scaled: Vec<f64> = logits.iter().map(|&v| v as f64 * inv_t).collect();
    // Candidate set: indices surviving top-k / top-p, as (index, scaled logit).
    let mut cand: Vec<(usize, f64)> = scaled
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, v)| v.is_finite())
        .collect();
    if cand.is_empty() {
        let t = argmax(logits);
        return (t, 0.0);
    }
    let filter = (p.top_k > 0 && p.top_k < cand.len()) || p.top_p < 1.0;
    if filter {
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            let kth = cand[p.top_k - 1].1;
            cand.retain(|(_, v)| *v >= kth);
        }
        if p.top_p < 1.0 {
            let max = cand[0].1;
            let w: Vec<f64> = cand.iter().map(|(_, v)| exp_f64(v - max)).collect();
            let total: f64 = w.iter().sum();
            // transformers removes tokens whose ascending cumulative mass is <= 1 - top_p;
            // in descending order: keep while the mass before this token is < top_p.
            let mut before = 0.0;
            let mut keep = 0;
            for wi in &w {
                if keep > 0 && before >= p.top_p * total {
                    break;
                }
                before += wi;
                keep += 1;
            }
            cand.truncate(keep.max(1));
        }
    }
    let max = cand.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = cand.iter().map(|(_, v)| exp_f64(v - max)).collect();
    let total: f64 = w.iter().sum();
    let u = crate::rng::uniform(rng) * total;
    let mut acc = 0.0;
    let mut pick = cand.len() - 1;
    for (j, wi) in w.iter().enumerate() {
        acc += wi;
        if u < acc {
            pick = j;
            break;
        }
    }
    let (tok, _) = cand[pick];
    (tok, (w[pick] / total).ln() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    #[test]
    fn greedy_and_filters() {
        let logits = [0.0f32, 3.0, 1.0, 2.0];
        let mut rng = rng_for(1, "t");
        let g = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let (t, lp) = sample_row(&logits, &g, &mut rng);
        assert_eq!(t, 1);
        let expect = 3.0 - (1f64 + 3f64.exp() + 1f64.exp() + 2f64.exp()).ln();
        assert!((lp as f64 - expect).abs() < 1e-6);
        // top_k = 1 is greedy with log-prob 0.
        let k1 = SamplingParams {
            top_k: 1,
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(sample_row(&logits, &k1, &mut rng), (1, 0.0));
        }
        // top_k = 2 only ever yields tokens 1 and 3, with the renormalised log-prob.
        let k2 = SamplingParams {
            top_k: 2,
            ..Default::default()
        };
        let z = 3f64.exp() + 2f64.exp();
        for _ in 0..50 {
            let (t, lp) = sample_row(&logits, &k2, &mut rng);
            assert!(t == 1 || t == 3);
            let want = (logits[t] as f64).exp() / z;
            assert!((lp as f64 - want.ln()).abs() < 1e-6);
        }
        // top_p small keeps only the most likely token.
        let p = SamplingParams {
            top_p: 0.1,
            ..Default::default()
        };
        assert_eq!(sample_row(&logits, &p, &mut rng).0, 1);
    }

    #[test]
    fn unfiltered_fast_path_draws_exactly_what_the_general_path_draws() {
        let mut r = rng_for(11, "logits");
        let mut logits: Vec<f32> = (0..500)
            .map(|_| (crate::rng::normal(&mut r) * 3.0) as f32)
            .collect();
        logits[7] = f32::NEG_INFINITY; // a banned token
        for temperature in [1.0, 0.7] {
            let fast = SamplingParams {
                temperature,
                ..Default::default()
            };
            // top_k = vocabulary size filters nothing but takes the general path.
            let general = SamplingParams {
                top_k: logits.len(),
                ..fast.clone()
            };
            let (mut a, mut b) = (rng_for(5, "s"), rng_for(5, "s"));
            for _ in 0..200 {
                let x = sample_row(&logits, &fast, &mut a);
                assert_eq!(x, sample_row(&logits, &general, &mut b));
                assert_ne!(x.0, 7);
            }
        }
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let logits = [0.0f32, (2.0f32).ln(), (3.0f32).ln()];
        let mut rng = rng_for(7, "f");
        let mut counts = [0usize; 3];
        let p = SamplingParams::default();
        for _ in 0..6000 {
            counts[sample_row(&logits, &p, &mut rng).0] += 1;
        }
        for (i, c) in counts.iter().enumerate() {
            let want = 1000.0 * (i + 1) as f64;
            assert!((*c as f64 - want).abs() < 150.0, "{counts:?}");
        }
    }
}
