//! The small row-wise ops of a decode step, each in one call: RMSNorm and rotary embedding.
//!
//! On a decode step's 16 x 512 activations every libtorch op costs a few microseconds of
//! dispatch and allocation for well under one of arithmetic, and RMSNorm is 8 ops, RoPE 7
//! (per layer: two of each). These compute the same formulas in one pass, inside the decode
//! scope only, on f32 CPU tensors without grad. RoPE rounds exactly as libtorch's ops do (the
//! same multiplications and additions, unfused), so its result is bit-identical; RMSNorm sums
//! the squares in another order, a float-rounding difference (tests bound it).

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::attention::View;
use super::{enabled, floats, floats_mut, gemm::MAX_ROWS, grad_enabled};

/// `weight * (x * rsqrt(mean(x^2, -1) + eps))`, as `layers::RmsNorm` computes it, for x (..., n).
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Tensor> {
    enabled()?;
    let dims = x.size();
    let n = *dims.last()?;
    let rows: i64 = dims[..dims.len() - 1].iter().product();
    if n == 0
        || rows == 0
        || rows > MAX_ROWS
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
    rms_norm_rows(xs, ws, eps, ys);
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
    enabled()?;
    let xs = x.size();
    if xs.len() != 4 || xs[3] % 2 != 0 || grad_enabled() {
        return None;
    }
    let (b, h, t, d) = (xs[0], xs[1], xs[2], xs[3]);
    if b * t > MAX_ROWS || cos.size() != [b, 1, t, d] || sin.size() != [b, 1, t, d] {
        return None;
    }
    let (xv, cv, sv) = (View::of(x)?, View::of(cos)?, View::of(sin)?);
    let out = Tensor::empty([b, h, t, d], (Kind::Float, Device::Cpu));
    let (h, t, d) = (h as usize, t as usize, d as usize);
    // SAFETY: `out` is a fresh contiguous f32 tensor of b*h*t*d elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    for (row, y) in ys.chunks_exact_mut(d).enumerate() {
        let (bi, hi, ti) = (row / (h * t), row / t % h, row % t);
        let (xr, c, s) = (
            xv.row(bi, hi, ti, d),
            cv.row(bi, 0, ti, d),
            sv.row(bi, 0, ti, d),
        );
        rope_row(xr, c, s, y);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_kernels::DecodeThreads;
    use crate::layers::{apply_rope, RmsNorm};

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
        assert!(rope(&q, &cos, &sin).is_none());
        let want_norm = norm.forward(&x);
        let want_rope = apply_rope(&q, &cos, &sin);
        let _decode = DecodeThreads::enter(16, Kind::Float, Device::Cpu);
        if crate::decode_kernels::simd().is_none() {
            return;
        }
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
        // Not for other kinds or too many rows.
        assert!(rms_norm(&x.to_kind(Kind::Double), &norm.weight, 1e-5).is_none());
        let tall = Tensor::randn([MAX_ROWS + 1, 96], opts);
        assert!(rms_norm(&tall, &norm.weight, 1e-5).is_none());
    }
}
