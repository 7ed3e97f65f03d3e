//! --verify: the unmerged model (base + adapter) and the merged folder as written are run on
//! the same sample inputs, and the largest absolute difference of their outputs (LM logits
//! for policies, score-head values at every position for reward models) is compared with a
//! tolerance relative to the output scale.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use rlhf_nn::Model;

use crate::output::OutputKind;

/// Sample token ids (batch 2, up to 16 tokens) drawn from `seed`, all positions attended.
pub fn sample_inputs(vocab: i64, max_len: i64, seed: u64, device: Device) -> (Tensor, Tensor) {
    let len = max_len.clamp(1, 16);
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let ids: Vec<i64> = (0..2 * len)
        .map(|_| {
            // splitmix64: a fixed, platform-independent draw.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % vocab.max(1) as u64) as i64
        })
        .collect();
    let ids = Tensor::from_slice(&ids).view([2, len]).to_device(device);
    let mask = Tensor::ones([2, len], (Kind::Int64, device));
    (ids, mask)
}

/// The outputs compared: LM logits (b, s, V) or head values (b, s), as f32 on the CPU.
pub fn outputs(
    model: &Model,
    adapter: Option<&str>,
    kind: OutputKind,
    inputs: &(Tensor, Tensor),
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let hidden = model.forward(&inputs.0, &inputs.1, adapter, false)?;
    let out = match kind {
        OutputKind::CausalLm => model.lm_logits(&hidden, adapter, false)?,
        OutputKind::SequenceClassification => model.head(adapter, &hidden)?,
    };
    Ok(out.to_kind(Kind::Float).to_device(Device::Cpu))
}

/// Result of a comparison.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Verification {
    pub max_abs_diff: f64,
    /// max |unmerged output|, at least 1: the tolerance is relative to it.
    pub scale: f64,
    pub tolerance: f64,
}

/// Compares merged with unmerged outputs; fails above `tolerance * scale`.
pub fn compare(unmerged: &Tensor, merged: &Tensor, tolerance: f64) -> Result<Verification> {
    if unmerged.size() != merged.size() {
        bail!(
            "verification: unmerged output shape {:?} but merged {:?}",
            unmerged.size(),
            merged.size()
        );
    }
    let max_abs_diff = (unmerged - merged).abs().max().double_value(&[]);
    let scale = unmerged.abs().max().double_value(&[]).max(1.0);
    let v = Verification {
        max_abs_diff,
        scale,
        tolerance,
    };
    // NaN differences fail too.
    if max_abs_diff.is_nan() || max_abs_diff > tolerance * scale {
        bail!(
            "verification failed: merged and unmerged outputs differ by up to {max_abs_diff:.3e} (output scale {scale:.3}, allowed {:.3e} = tolerance {tolerance:.1e} x scale)\n  hint: nothing was written; a bf16 output needs a looser --tolerance than f32",
            tolerance * scale
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_seeded_and_in_range() {
        let (a, m) = sample_inputs(50, 100, 3, Device::Cpu);
        let (b, _) = sample_inputs(50, 100, 3, Device::Cpu);
        assert_eq!(a.size(), vec![2, 16]);
        assert!(a.equal(&b));
        assert!(a.max().int64_value(&[]) < 50 && a.min().int64_value(&[]) >= 0);
        assert_eq!(m.sum(Kind::Int64).int64_value(&[]), 32);
        let (c, _) = sample_inputs(50, 4, 4, Device::Cpu);
        assert_eq!(c.size(), vec![2, 4]);
    }

    #[test]
    fn compare_uses_a_relative_tolerance() {
        let a = Tensor::from_slice(&[10.0f32, -20.0]);
        let b = Tensor::from_slice(&[10.001f32, -20.0]);
        let v = compare(&a, &b, 1e-4).unwrap();
        assert!((v.max_abs_diff - 1e-3).abs() < 1e-5 && v.scale == 20.0);
        let err = compare(&a, &b, 1e-5).unwrap_err().to_string();
        assert!(err.contains("verification failed"), "{err}");
        assert!(compare(&a, &Tensor::from_slice(&[1.0f32]), 1.0).is_err());
    }
}
