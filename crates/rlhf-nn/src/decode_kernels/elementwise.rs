//! The row-wise ops of a forward without grad, each in one call: RMSNorm, rotary embedding and
//! SwiGLU's `silu(gate) * up`.
//!
//! On a decode step's 16 x 512 activations every libtorch op costs a few microseconds of
//! dispatch and allocation for well under one of arithmetic, and RMSNorm is 8 ops, RoPE 7
//! (per layer: two of each). These compute the same formulas in one pass on f32 CPU tensors
//! without grad. RMSNorm runs inside the decode scope only: it sums the squares in another
//! order, a float-rounding difference (tests bound it). RoPE rounds exactly as libtorch's ops
//! do (the same multiplications and additions, unfused), so its result is bit-identical, and
//! it runs at any size, prefill and scoring included; so does SwiGLU, whose one pass
//! replaced libtorch's two (SiLU, then the product, through a fresh intermediate).

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::attention::View;
use super::{enabled, floats, floats_mut, grad_enabled, simd, split_large, Simd, LARGE};
use crate::exp::exp_f32;

/// `weight * (x * rsqrt(mean(x^2, -1) + eps))`, as `layers::RmsNorm` computes it, for x (..., n).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Tensor> {
    enabled()?;
    let dims = x.size();
    let n = *dims.last()?;
    let rows: i64 = dims[..dims.len() - 1].iter().product();
    if n == 0
        || rows == 0
        || x.kind() != Kind::Float
        || x.device() != Device::Cpu
        || weight.kind() != Kind::Float
        || weight.device() != Device::Cpu
        || weight.size() != [n]
        || !weight.is_contiguous()
        || grad_enabled()
    {
        return None;
    }
    let x = x.contiguous();
    let (xs, ws) = (floats(&x)?, floats(weight)?);
    let out = Tensor::empty(dims.as_slice(), (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of rows*n elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    let n = n as usize;
    split_large(ys, n, |first, part| {
        rms_norm_rows(&xs[first..first + part.len()], ws, eps, part)
    });
    Some(out)
}

/// RMSNorm of each row of `xs` (rows of `weight.len()`) into `ys`.
pub(super) fn rms_norm_rows(xs: &[f32], weight: &[f32], eps: f64, ys: &mut [f32]) {
    let n = weight.len();
    for (xr, yr) in xs.chunks_exact(n).zip(ys.chunks_exact_mut(n)) {
        let inv = 1.0 / (mean_square(xr) + eps as f32).sqrt();
        for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *y = w * (v * inv);
        }
    }
}

/// mean(x^2), summed in 16 lanes (vectorises).
fn mean_square(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    (lanes.iter().sum::<f32>() + tail) / x.len() as f32
}

/// `x * cos + rotate_half(x) * sin` for x (b, heads, t, d) (any strides) and cos, sin
/// (b, 1, t, d), as `layers::apply_rope`; the result is contiguous.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Option<Tensor> {
    simd()?;
    let xs = x.size();
    if xs.len() != 4 || xs[3] % 2 != 0 || grad_enabled() {
        return None;
    }
    let (b, h, t, d) = (xs[0], xs[1], xs[2], xs[3]);
    if cos.size() != [b, 1, t, d] || sin.size() != [b, 1, t, d] {
        return None;
    }
    let (xv, cv, sv) = (View::of(x)?, View::of(cos)?, View::of(sin)?);
    let out = Tensor::empty([b, h, t, d], (Kind::Float, Device::Cpu));
    let (h, t, d) = (h as usize, t as usize, d as usize);
    // SAFETY: `out` is a fresh contiguous f32 tensor of b*h*t*d elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    // In whole heads: t rows of d.
    split_large(ys, t * d, |first, part| {
        for (head, ys) in (first / (t * d)..).zip(part.chunks_exact_mut(t * d)) {
            let (bi, hi) = (head / h, head % h);
            for (ti, y) in ys.chunks_exact_mut(d).enumerate() {
                let (c, s) = (cv.row(bi, 0, ti, d), sv.row(bi, 0, ti, d));
                rope_row(xv.row(bi, hi, ti, d), c, s, y);
            }
        }
    });
    Some(out)
}

/// One head's rotary embedding: `y = x * cos + rotate_half(x) * sin`, rounded as libtorch's
/// unfused ops round it.
pub(super) fn rope_row(x: &[f32], cos: &[f32], sin: &[f32], y: &mut [f32]) {
    let half = y.len() / 2;
    let ((x1, x2), (c1, c2), (s1, s2)) = (x.split_at(half), cos.split_at(half), sin.split_at(half));
    let (y1, y2) = y.split_at_mut(half);
    for (i, (o1, o2)) in y1.iter_mut().zip(y2.iter_mut()).enumerate() {
        *o1 = x1[i] * c1[i] + -x2[i] * s1[i];
        *o2 = x2[i] * c2[i] + x1[i] * s2[i];
    }
}

/// `t.contiguous()`, with a large f32 CPU tensor of rows at one stride (a fused projection's
/// output part in a prefill) copied across the crew inside a decode scope, where libtorch's
/// copy runs single-threaded.
pub(crate) fn contiguous(t: &Tensor) -> Tensor {
    try_contiguous(t).unwrap_or_else(|| t.contiguous())
}

fn try_contiguous(t: &Tensor) -> Option<Tensor> {
    enabled()?;
    let (size, stride) = (t.size(), t.stride());
    let n = *size.last()? as usize;
    if t.is_contiguous() || t.kind() != Kind::Float || t.device() != Device::Cpu || n == 0 {
        return None;
    }
    // Rows (all leading dimensions) `step` apart, each n unit-stride floats.
    let step = *stride.get(stride.len().checked_sub(2)?)?;
    let rows: i64 = size[..size.len() - 1].iter().product();
    let collapses = (0..size.len() - 1)
        .all(|i| stride[i] == step * size[i + 1..size.len() - 1].iter().product::<i64>());
    if stride.last() != Some(&1) || step < n as i64 || !collapses || rows as usize * n < LARGE {
        return None;
    }
    let rows4 = t.f_view([rows, 1, 1, n as i64]).ok()?;
    let view = View::of(&rows4)?;
    let out = Tensor::empty(size.as_slice(), (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of rows*n elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    split_large(ys, n, |first, part| {
        for (i, y) in (first / n..).zip(part.chunks_exact_mut(n)) {
            y.copy_from_slice(view.row(i, 0, 0, n));
        }
    });
    Some(out)
}

/// `silu(gate) * up` for two f32 CPU tensors of one shape, as `gate.silu() * up`.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> Option<Tensor> {
    let simd = simd()?;
    if gate.size() != up.size() || grad_enabled() {
        return None;
    }
    let (g, u) = (floats(gate)?, floats(up)?);
    let out = Tensor::empty(gate.size().as_slice(), (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of as many elements as `gate`, owned here.
    let ys = unsafe { floats_mut(&out) };
    split_large(ys, 16, |first, part| {
        let span = first..first + part.len();
        swiglu_rows(simd, &g[span.clone()], &u[span], part)
    });
    Some(out)
}

/// `y = silu(gate) * up`, with `silu(g) = g / (1 + e^-g)` as libtorch writes it; the loop is
/// compiled for the path's instruction set, and vectorises (the same bits on every path: see
/// [`crate::exp`]).
pub(super) fn swiglu_rows(simd: Simd, gate: &[f32], up: &[f32], y: &mut [f32]) {
    #[inline(always)]
    fn body(gate: &[f32], up: &[f32], y: &mut [f32]) {
        for ((o, &g), &u) in y.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp_f32(-g)) * u;
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn body_avx512(gate: &[f32], up: &[f32], y: &mut [f32]) {
        body(gate, up, y)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn body_avx2(gate: &[f32], up: &[f32], y: &mut [f32]) {
        body(gate, up, y)
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `simd()` chose the path after detecting its instruction set.
    unsafe {
        match simd {
            Simd::Avx512 => body_avx512(gate, up, y),
            Simd::Avx2 => body_avx2(gate, up, y),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = simd;
        body(gate, up, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_kernels::DecodeThreads;
    use crate::layers::RmsNorm;

    #[test]
    fn apply_only_in_decode_scope_and_match_libtorch() {
        let _guard = tch::no_grad_guard();
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([16, 1, 96], opts) * 3;
        let norm = RmsNorm {
            weight: Tensor::randn([96], opts),
            eps: 1e-5,
        };
        // (b, t, heads, d) transposed to (b, heads, t, d): a strided view, as in the models.
        let q = Tensor::randn([16, 1, 6, 32], opts).transpose(1, 2);
        let pos = Tensor::randn([16, 1, 32], opts) * 10;
        let (cos, sin) = (pos.cos().unsqueeze(1), pos.sin().unsqueeze(1));
        assert!(rms_norm(&x, &norm.weight, norm.eps).is_none());
        let want_norm = norm.forward(&x);
        // libtorch's ops, as with grad on (where the kernels never apply).
        let want_rope = {
            let d = q.size()[3];
            let (x1, x2) = (q.narrow(3, 0, d / 2), q.narrow(3, d / 2, d / 2));
            &q * &cos + Tensor::cat(&[&(-x2), &x1], 3) * &sin
        };
        let gate = Tensor::randn([3, 70, 40], opts) * 4;
        let up = Tensor::randn([3, 70, 40], opts);
        let want_swiglu = gate.silu() * &up;
        tch::with_grad(|| {
            assert!(rope(&q, &cos, &sin).is_none(), "rope with grad on");
            assert!(swiglu(&gate, &up).is_none(), "swiglu with grad on");
        });
        let test = "elementwise_kernels_match_libtorch";
        crate::decode_kernels::paths::for_each(test, |_| {
            // RoPE and SwiGLU apply outside the decode scope too, at any size.
            let got = rope(&q, &cos, &sin).expect("rope without grad");
            assert!(
                got.equal(&want_rope.contiguous()),
                "rope is not bit-identical"
            );
            let got = swiglu(&gate, &up).expect("swiglu without grad");
            let diff = (&got - &want_swiglu).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "swiglu differs by {diff}");
            let _decode = DecodeThreads::enter(16, Kind::Float, Device::Cpu);
            let got = rms_norm(&x, &norm.weight, norm.eps).expect("decode-scope rms_norm");
            let diff = (&got - &want_norm).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "rms_norm differs by {diff}");
            // Through the layer too.
            assert!(
                (norm.forward(&x) - &want_norm)
                    .abs()
                    .max()
                    .double_value(&[])
                    < 1e-5
            );
            let got = rope(&q, &cos, &sin).expect("decode-scope rope");
            assert_eq!(got.size(), want_rope.size());
            assert!(
                got.equal(&want_rope.contiguous()),
                "rope is not bit-identical"
            );
            // Not for other kinds.
            assert!(rms_norm(&x.to_kind(Kind::Double), &norm.weight, 1e-5).is_none());
        });
    }

    /// A prefill's sizes: in a decode scope the work is split across the crew, with the
    /// same results.
    #[test]
    fn large_inputs_split_across_the_crew_give_the_same_results() {
        let _guard = tch::no_grad_guard();
        let test = "large_elementwise_inputs_split_across_the_crew";
        crate::decode_kernels::paths::for_each(test, |_| split_inputs_give_the_same_results());
    }

    fn split_inputs_give_the_same_results() {
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([7, 61, 96], opts) * 3;
        let weight = Tensor::randn([96], opts);
        let q = Tensor::randn([7, 61, 6, 32], opts).transpose(1, 2);
        let pos = Tensor::randn([7, 61, 32], opts) * 10;
        let (cos, sin) = (pos.cos().unsqueeze(1), pos.sin().unsqueeze(1));
        let (gate, up) = (
            Tensor::randn([7, 61, 96], opts),
            Tensor::randn([7, 61, 96], opts),
        );
        assert!(x.numel() >= super::super::LARGE);
        let plain_rope = rope(&q, &cos, &sin).unwrap();
        let plain_swiglu = swiglu(&gate, &up).unwrap();
        let want_norm = {
            let inv = (x.square().mean_dim(-1, true, Kind::Float) + 1e-5).rsqrt();
            &weight * (&x * inv)
        };
        // A fused projection's output part: rows of 96 at a stride of 200.
        let part = Tensor::randn([7, 61, 200], opts).narrow(2, 40, 96);
        assert!(try_contiguous(&part).is_none(), "outside a decode scope");
        let _decode = DecodeThreads::enter(16, Kind::Float, Device::Cpu);
        let copy = try_contiguous(&part).expect("a large row-strided copy in scope");
        assert!(copy.is_contiguous() && copy.equal(&part));
        assert!(
            try_contiguous(&part.transpose(0, 1)).is_none(),
            "rows not at one stride"
        );
        assert!(rope(&q, &cos, &sin).unwrap().equal(&plain_rope));
        assert!(swiglu(&gate, &up).unwrap().equal(&plain_swiglu));
        let got = rms_norm(&x, &weight, 1e-5).expect("rms_norm of many rows in scope");
        let diff = (&got - &want_norm).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "rms_norm differs by {diff}");
    }
}
