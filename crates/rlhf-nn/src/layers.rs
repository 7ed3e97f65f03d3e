//! Building blocks shared by both families: a linear layer that applies the active LoRA
//! adapter, RMSNorm, LayerNorm, rotary embeddings (with Llama 3 scaling), and the attention
//! mask / position computation for padded batches.

use tch::{Kind, Tensor};

use crate::config::{ModelConfig, RopeScaling};
use crate::decode_kernels::layer::{LoraOn, Proj};
use crate::lora::Adapter;

/// Several linears sharing an input, run as one GEMM: `weight` is the row-wise
/// concatenation, and each member's own `weight` / `bias` are views into it (so merging into a
/// member, or an optimiser step on the fused leaf, is seen by both).
pub(crate) struct Fused {
    /// (sum of outs, in): the leaf tensor.
    pub weight: Tensor,
    /// (sum of outs,), when the members have biases.
    pub bias: Option<Tensor>,
}

impl Fused {
    /// Concatenates `members` (same input size) and re-points their tensors at views.
    pub fn new(members: &mut [&mut Linear]) -> Self {
        let ws: Vec<&Tensor> = members.iter().map(|l| &l.weight).collect();
        let weight = Tensor::cat(&ws, 0);
        let bias = if members.iter().all(|l| l.bias.is_some()) {
            let bs: Vec<&Tensor> = members.iter().filter_map(|l| l.bias.as_ref()).collect();
            Some(Tensor::cat(&bs, 0))
        } else {
            None
        };
        let mut off = 0;
        for l in members.iter_mut() {
            let n = l.weight.size()[0];
            l.weight = weight.narrow(0, off, n);
            if let Some(b) = &bias {
                l.bias = Some(b.narrow(0, off, n));
            }
            off += n;
        }
        Fused { weight, bias }
    }

    /// `x` (..., in) -> each member's output (base plus its LoRA delta), in order.
    pub fn forward(&self, x: &Tensor, members: &[&Linear], ctx: Ctx) -> Vec<Tensor> {
        let y = crate::decode_kernels::gemm::linear(x, &self.weight, self.bias.as_ref());
        let last = y.dim() as i64 - 1;
        let sizes: Vec<i64> = members.iter().map(|l| l.out_features()).collect();
        // One split rather than a `narrow` per member: in a training forward each narrow's
        // backward writes its gradient into a zeroed tensor of y's whole size and autograd adds
        // those up; the split's backward concatenates the members' gradients once.
        y.split_with_sizes(sizes.as_slice(), last)
            .into_iter()
            .zip(members)
            .map(|(part, l)| {
                // Contiguous either way, so later kernels take the same (vectorised) path with and
                // without an adapter: a fresh adapter then reproduces the base bit for bit.
                crate::decode_kernels::elementwise::contiguous(&l.add_lora(part, x, ctx))
            })
            .collect()
    }
}

/// A product for the fused decode layer ([`crate::decode_kernels::layer`]): `weight` and
/// `bias` with the LoRA factors the active adapter puts on `members` (consecutive output
/// columns, in order). `None` in a training forward with LoRA dropout (not computed there).
pub(crate) fn step_proj<'a>(
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    members: &[&'a Linear],
    ctx: Ctx<'a>,
) -> Option<Proj<'a>> {
    let mut lora = Vec::new();
    if let Some(adapter) = ctx.adapter {
        if ctx.train && adapter.config.dropout > 0.0 {
            return None;
        }
        let mut first = 0;
        for l in members {
            if let Some(pair) = adapter.pair(l.id) {
                lora.push(LoraOn {
                    first: first as usize,
                    a: &pair.a,
                    b: &pair.b,
                    scale: adapter.scale,
                });
            }
            first += l.out_features();
        }
    }
    Some(Proj { weight, bias, lora })
}

/// Per-forward context: the active adapter (None = base = reference policy) and train mode
/// (LoRA dropout on).
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub adapter: Option<&'a Adapter>,
    pub train: bool,
}

/// A linear layer, weight stored (out, in) whatever the checkpoint layout (GPT-2's Conv1D is
/// transposed on load and back on save).
pub(crate) struct Linear {
    /// Index into an adapter's per-module LoRA table.
    pub id: usize,
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    /// (out, in).
    pub weight: Tensor,
    /// (out,).
    pub bias: Option<Tensor>,
    /// Stored (in, out) in the checkpoint (GPT-2 Conv1D; PEFT's fan_in_fan_out).
    pub conv1d: bool,
}

impl Linear {
    /// `x` (..., in) -> (..., out), plus `scale * B(A(dropout(x)))` when the active adapter
    /// targets this module.
    pub fn forward(&self, x: &Tensor, ctx: Ctx) -> Tensor {
        let y = crate::decode_kernels::gemm::linear(x, &self.weight, self.bias.as_ref());
        self.add_lora(y, x, ctx)
    }

    /// `y + scale * B(A(dropout(x)))` when the active adapter targets this module, else `y`
    /// (used after a fused projection computed the base output of several modules at once).
    pub fn add_lora(&self, y: Tensor, x: &Tensor, ctx: Ctx) -> Tensor {
        let Some(adapter) = ctx.adapter else { return y };
        let Some(pair) = adapter.pair(self.id) else {
            return y;
        };
        let xin = x.to_kind(pair.a.kind());
        let xin = if ctx.train && adapter.config.dropout > 0.0 {
            xin.dropout(adapter.config.dropout, true)
        } else {
            xin
        };
        // The decode kernels' products inside a decode scope (each row computed alike whatever
        // the batch), libtorch's everywhere else.
        use crate::decode_kernels::gemm::{add_scaled_linear, linear};
        add_scaled_linear(y, &linear(&xin, &pair.a, None), &pair.b, adapter.scale)
    }

    pub fn in_features(&self) -> i64 {
        self.weight.size()[1]
    }

    pub fn out_features(&self) -> i64 {
        self.weight.size()[0]
    }
}

/// RMSNorm computed in f32 like transformers' LlamaRMSNorm, cast back before the weight.
pub(crate) struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        if let Some(y) = crate::decode_kernels::elementwise::rms_norm(x, &self.weight, self.eps) {
            return y;
        }
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let var = h.square().mean_dim(-1, true, Kind::Float);
        let h = h * (var + self.eps).rsqrt();
        &self.weight * h.to_kind(kind)
    }
}

/// LayerNorm with weight and bias.
pub(crate) struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = self.weight.size()[0];
        x.layer_norm([n], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// Rotary embedding inverse frequencies (f32, head_dim/2), as transformers computes them.
pub(crate) struct Rope {
    inv_freq: Tensor,
    /// The same values, for [`Rope::cos_sin_host`].
    host: Vec<f32>,
}

impl Rope {
    pub fn new(cfg: &ModelConfig, device: tch::Device) -> Self {
        let d = cfg.head_dim;
        let base = cfg.rope_theta;
        let mut inv: Vec<f32> = (0..d / 2)
            .map(|i| {
                // transformers: 1 / base ** (arange(0, d, 2).float() / d), computed in f32.
                let e = ((2 * i) as f32) / (d as f32);
                1.0 / (base as f32).powf(e)
            })
            .collect();
        match &cfg.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => {
                for f in inv.iter_mut() {
                    *f /= *factor as f32;
                }
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                let (factor, lo, hi, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_max_position_embeddings as f32,
                );
                let low_wavelen = old / lo;
                let high_wavelen = old / hi;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let smooth = (old / wavelen - lo) / (hi - lo);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen; // wavelen is finite
                    *f = if medium { smoothed } else { scaled };
                }
            }
        }
        Rope {
            inv_freq: Tensor::from_slice(&inv).to_device(device),
            host: inv,
        }
    }

    /// cos and sin for `positions` (b, t) i64: each (b, 1, t, head_dim) in `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(kind).unsqueeze(1),
            emb.sin().to_kind(kind).unsqueeze(1),
        )
    }

    /// [`Rope::cos_sin`] for one token per row at `positions` (b), computed on the host: a
    /// decode step's cos and sin, (b, 1, 1, head_dim) each, in `kind` on `device`. The
    /// products round as libtorch's f32 products do; `cos` and `sin` are libm's, which may
    /// differ from libtorch's vectorised ones in the last bit.
    pub fn cos_sin_host(
        &self,
        positions: &[i64],
        kind: Kind,
        device: tch::Device,
    ) -> (Tensor, Tensor) {
        let half = self.host.len();
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions.len() * 2 * half),
            Vec::with_capacity(positions.len() * 2 * half),
        );
        for &p in positions {
            let start = cos.len();
            for &f in &self.host {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
            cos.extend_from_within(start..);
            sin.extend_from_within(start..);
        }
        let shape = [positions.len() as i64, 1, 1, 2 * half as i64];
        let to = |v: Vec<f32>| {
            Tensor::from_slice(&v)
                .view(shape)
                .to_device(device)
                .to_kind(kind)
        };
        (to(cos), to(sin))
    }
}

/// Applies rotary embedding to `x` (b, heads, t, d).
pub(crate) fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    if let Some(y) = crate::decode_kernels::elementwise::rope(x, cos, sin) {
        return y;
    }
    // rotate_half(x) * sin = roll(x, d/2) * [-sin_1, sin_2]: the same products (a sign flip is
    // exact), with one copy of `x` instead of a negation, two slices and a concatenation, and
    // a backward of as few ops (a training forward runs this four times a layer)
    let d = x.size()[3];
    let signed = Tensor::cat(&[-sin.narrow(3, 0, d / 2), sin.narrow(3, d / 2, d / 2)], 3);
    x * cos + x.roll([d / 2], [3]) * signed
}

/// Positions of each token among the non-pad tokens of its row: cumsum(mask) - 1 (pads get
/// 0), offset by `past` (b,) tokens already in the cache. `mask` is (b, t) with 1 = token.
pub(crate) fn positions(mask: &Tensor, past: Option<&Tensor>) -> Tensor {
    let p = (mask.cumsum(1, Kind::Int64) - 1).clamp_min(0);
    match past {
        Some(past) => p + past.unsqueeze(1),
        None => p,
    }
}

/// Additive attention mask (b, 1, t, T) in `kind`: 0 where query i (absolute index
/// `past_len + i`) may attend key j (j <= past_len + i and key_mask[j] = 1), the most
/// negative finite value elsewhere (finite, so fully masked pad rows give no NaN).
pub(crate) fn attention_mask(key_mask: &Tensor, t: i64, past_len: i64, kind: Kind) -> Tensor {
    let device = key_mask.device();
    let total = key_mask.size()[1];
    let q = Tensor::arange_start(past_len, past_len + t, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let causal = k.le_tensor(&q); // (t, T)
    let allowed = causal
        .unsqueeze(0)
        .logical_and(&key_mask.to_kind(Kind::Bool).unsqueeze(1));
    let zeros = Tensor::zeros([1], (kind, device));
    zeros
        .where_scalarother(&allowed, masked_value(kind))
        .unsqueeze(1)
}

/// The additive mask's value at masked positions: the most negative finite value of `kind`,
/// exactly (libtorch refuses a scalar that would overflow the type when it converts it, as its
/// CUDA kernels do; a rounded -3.3895314e38 for bf16 failed every bf16 forward on a GPU).
pub(crate) fn masked_value(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => half::bf16::MIN.to_f64(),
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    }
}

#[cfg(test)]
mod mask_tests {
    use super::*;

    /// libtorch's CUDA kernels convert the mask value with an overflow check and refused the
    /// rounded bf16 minimum; the CPU rounds it silently, so this checks that each kind's value
    /// is its own lowest exactly (the rounded one failed here too: it filled as another value).
    #[test]
    fn masked_value_converts_to_its_kind_exactly() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            let v = masked_value(kind);
            let t = Tensor::zeros([1], (kind, tch::Device::Cpu))
                .f_fill_(v)
                .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(t.double_value(&[0]), v, "{kind:?}");
        }
    }
}
