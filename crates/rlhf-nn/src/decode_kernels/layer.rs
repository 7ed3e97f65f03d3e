//! A whole Llama decoder layer for one decode step, in one call.
//!
//! Run op by op, a decode step's layer is about 30 libtorch calls on 16 x 512 activations
//! (norms, the fused projections' narrow and contiguous copies, rotary embedding, the cache
//! writes, residual adds, SiLU and product), each costing a few microseconds of dispatch and
//! allocation for far less arithmetic: about a fifth of a decode step went to them
//! (docs/performance.md). Here the layer is one pass over plain f32 buffers: the
//! products and attention run on the decode crew ([`super::gemm`], [`super::attention`]), the
//! rest on the calling thread, and the new key and value are written into the cache in place.
//!
//! It applies where the op-by-op kernels do (a decode scope, f32 CPU tensors, grad off) and
//! computes the same formulas: LoRA deltas `scale * B (A x)` added after the bias, RMSNorm and
//! rotary embedding through the same row functions as [`super::elementwise`], SiLU as libtorch
//! writes it (`x / (1 + e^-x)`). The result differs from the op-by-op path by float rounding
//! (products and exponentials), which the tests bound.

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::attention::{attend_cached, prefetch, Shape, View};
use super::elementwise::{rms_norm_rows, rope_row, swiglu_rows};
use super::gemm::{matmul, MAX_ROWS};
use super::{enabled, floats, floats_mut, grad_enabled, Simd};

/// One product of the layer: the base weight (out, in), its bias, and the active adapter's
/// LoRA factors on a range of its output columns.
pub(crate) struct Proj<'a> {
    pub weight: &'a Tensor,
    pub bias: Option<&'a Tensor>,
    pub lora: Vec<LoraOn<'a>>,
}

/// LoRA factors added to output columns `first..first + b.rows` of a product.
pub(crate) struct LoraOn<'a> {
    pub first: usize,
    /// (r, in).
    pub a: &'a Tensor,
    /// (cols, r).
    pub b: &'a Tensor,
    pub scale: f64,
}

/// A Llama layer's weights, in the layout of `llama::LlamaLayer`: q, k, v fused into one
/// product (rows q | k | v), gate and up into another (rows gate | up).
pub(crate) struct LlamaWeights<'a> {
    pub input_norm: (&'a Tensor, f64),
    pub post_norm: (&'a Tensor, f64),
    pub qkv: Proj<'a>,
    pub o: Proj<'a>,
    pub gate_up: Proj<'a>,
    pub down: Proj<'a>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The step's inputs besides the weights.
pub(crate) struct StepInputs<'a> {
    /// (b, 1, hidden).
    pub x: &'a Tensor,
    /// Rotary cos and sin of each row's position, (b, 1, 1, head_dim).
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    /// Additive mask over the cached positions and the new one, (b or 1, 1, 1, pos + 1).
    pub mask: &'a Tensor,
    /// This layer's key and value buffers (b, kv_heads, capacity, head_dim).
    pub cache: (&'a Tensor, &'a Tensor),
    /// Where the new token's key and value go: the number of cached positions.
    pub pos: usize,
}

/// The layer's output `x + attn + mlp` (b, 1, hidden), with the new key and value written at
/// `pos` in the cache; `None` (nothing written) where the kernels do not apply.
pub(crate) fn llama_step(w: &LlamaWeights, io: &StepInputs) -> Option<Tensor> {
    let simd = enabled()?;
    let dims = io.x.size();
    if dims.len() != 3 || dims[1] != 1 || grad_enabled() {
        return None;
    }
    let (b, hidden) = (dims[0] as usize, dims[2] as usize);
    let (nh, nkv, d) = (w.heads, w.kv_heads, w.head_dim);
    if b == 0 || b > MAX_ROWS as usize || nkv == 0 || nh % nkv != 0 || d % 2 != 0 {
        return None;
    }
    let (qn, kvn) = (nh * d, nkv * d);
    let inter = *w.down.weight.size().get(1)? as usize;
    let in_norm = shaped(w.input_norm.0, &[hidden])?;
    let post_norm = shaped(w.post_norm.0, &[hidden])?;
    let qkv = Ready::of(&w.qkv, qn + 2 * kvn, hidden)?;
    let o = Ready::of(&w.o, hidden, qn)?;
    let gate_up = Ready::of(&w.gate_up, 2 * inter, hidden)?;
    let down = Ready::of(&w.down, hidden, inter)?;
    let x = io.x.contiguous();
    let xs = shaped(&x, &[b, 1, hidden])?;
    let rows = [b as i64, 1, 1, d as i64];
    if io.cos.size() != rows || io.sin.size() != rows {
        return None;
    }
    let (cos, sin) = (View::of(io.cos)?, View::of(io.sin)?);
    let len = io.pos + 1;
    let ms = io.mask.size();
    if ms.len() != 4 || !(ms[0] == 1 || ms[0] == b as i64) || ms[1..] != [1, 1, len as i64] {
        return None;
    }
    let mask = View::of(io.mask)?;
    let (kc, vc) = io.cache;
    let cap = *kc.size().get(2)? as usize;
    let cache_shape = [b, nkv, cap, d];
    if len > cap {
        return None;
    }
    // Checked here, before anything is written.
    shaped(kc, &cache_shape)?;
    shaped(vc, &cache_shape)?;

    // Attention block. The cache's lines at `pos`, written after the q/k/v product, are
    // fetched while it runs (otherwise 2 x b x kv_heads scattered rows miss when written).
    for buf in [floats(kc)?, floats(vc)?] {
        for row in 0..b * nkv {
            let at = (row * cap + io.pos) * d;
            prefetch(&buf[at..at + d]);
        }
    }
    let mut h = vec![0f32; b * hidden];
    rms_norm_rows(xs, in_norm, w.input_norm.1, &mut h);
    let qkv_out = qkv.run(simd, &h, b);
    let mut q = vec![0f32; b * qn];
    {
        // SAFETY: both caches are contiguous f32 CPU tensors of b*nkv*cap*d elements (checked
        // above), owned by the caller's KvCache, which nothing else reads or writes meanwhile
        // (grad off, one thread runs this layer); these borrows end before the views below.
        let kbuf = unsafe { floats_mut(kc) };
        let vbuf = unsafe { floats_mut(vc) };
        let width = qn + 2 * kvn;
        for (bi, row) in qkv_out.chunks_exact(width).enumerate() {
            let (c, s) = (cos.row(bi, 0, 0, d), sin.row(bi, 0, 0, d));
            for (hh, qr) in q[bi * qn..(bi + 1) * qn].chunks_exact_mut(d).enumerate() {
                rope_row(&row[hh * d..(hh + 1) * d], c, s, qr);
            }
            for g in 0..nkv {
                let at = ((bi * nkv + g) * cap + io.pos) * d;
                let kr = &row[qn + g * d..qn + (g + 1) * d];
                rope_row(kr, c, s, &mut kbuf[at..at + d]);
                vbuf[at..at + d].copy_from_slice(&row[qn + kvn + g * d..qn + kvn + (g + 1) * d]);
            }
        }
    }
    let (keys, values) = (View::of(kc)?, View::of(vc)?);
    let mut attn = vec![0f32; b * qn];
    let shape = Shape {
        heads: nh,
        kv_heads: nkv,
        head_dim: d,
        len,
    };
    attend_cached(simd, &q, (&keys, &values), &mask, shape, &mut attn);
    let mut x1 = o.run(simd, &attn, b);
    for (y, &v) in x1.iter_mut().zip(xs) {
        *y += v;
    }

    // MLP block: down(silu(gate) * up).
    rms_norm_rows(&x1, post_norm, w.post_norm.1, &mut h);
    let gu = gate_up.run(simd, &h, b);
    let mut act = vec![0f32; b * inter];
    for (a, row) in act.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
        let (gate, up) = row.split_at(inter);
        swiglu_rows(simd, gate, up, a);
    }
    let mlp = down.run(simd, &act, b);
    let out = Tensor::empty([b as i64, 1, hidden as i64], (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of b*hidden elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    for ((y, &r), &m) in ys.iter_mut().zip(&x1).zip(&mlp) {
        *y = r + m;
    }
    #[cfg(test)]
    FUSED_STEPS.set(FUSED_STEPS.get() + 1);
    Some(out)
}

#[cfg(test)]
thread_local! {
    /// Layers computed by [`llama_step`] on this thread (tests check that it ran).
    static FUSED_STEPS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Layers computed by [`llama_step`] on this thread so far.
#[cfg(test)]
pub(crate) fn fused_steps() -> usize {
    FUSED_STEPS.get()
}

/// A product's checked buffers.
struct Ready<'a> {
    w: &'a [f32],
    n: usize,
    k: usize,
    bias: Option<&'a [f32]>,
    lora: Vec<LoraReady<'a>>,
}

struct LoraReady<'a> {
    first: usize,
    cols: usize,
    r: usize,
    a: &'a [f32],
    b: &'a [f32],
    scale: f32,
}

impl<'a> Ready<'a> {
    /// `p`'s buffers when they are f32 CPU contiguous with weight (n, k).
    fn of(p: &'a Proj, n: usize, k: usize) -> Option<Ready<'a>> {
        let lora = p
            .lora
            .iter()
            .map(|l| {
                let (r, cols) = (*l.a.size().first()? as usize, *l.b.size().first()? as usize);
                (l.first + cols <= n).then_some(())?;
                Some(LoraReady {
                    first: l.first,
                    cols,
                    r,
                    a: shaped(l.a, &[r, k])?,
                    b: shaped(l.b, &[cols, r])?,
                    scale: l.scale as f32,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Ready {
            w: shaped(p.weight, &[n, k])?,
            n,
            k,
            bias: match p.bias {
                Some(t) => Some(shaped(t, &[n])?),
                None => None,
            },
            lora,
        })
    }

    /// `x (m, k) -> x W^T + bias + scale * (x A^T) B^T` on the LoRA columns, as
    /// `layers::Linear` computes it.
    fn run(&self, simd: Simd, x: &[f32], m: usize) -> Vec<f32> {
        let n = self.n;
        let mut y = vec![0f32; m * n];
        matmul(simd, x, m, self.k, self.w, n, &mut y);
        if let Some(bias) = self.bias {
            for row in y.chunks_exact_mut(n) {
                for (v, &c) in row.iter_mut().zip(bias) {
                    *v += c;
                }
            }
        }
        for l in &self.lora {
            let mut down = vec![0f32; m * l.r];
            matmul(simd, x, m, self.k, l.a, l.r, &mut down);
            let mut delta = vec![0f32; m * l.cols];
            matmul(simd, &down, m, l.r, l.b, l.cols, &mut delta);
            for (row, dr) in y.chunks_exact_mut(n).zip(delta.chunks_exact(l.cols)) {
                for (v, &dv) in row[l.first..l.first + l.cols].iter_mut().zip(dr) {
                    *v += dv * l.scale;
                }
            }
        }
        y
    }
}

/// The elements of `t` when it is a contiguous f32 CPU tensor of exactly `shape`.
fn shaped<'a>(t: &'a Tensor, shape: &[usize]) -> Option<&'a [f32]> {
    let size = t.size();
    if size.len() != shape.len() || size.iter().zip(shape).any(|(&a, &b)| a != b as i64) {
        return None;
    }
    floats(t)
}
