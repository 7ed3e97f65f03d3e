//! `x W^T (+ b)` for the few-row products of incremental decoding on the CPU.
//!
//! A decode step multiplies a handful of rows (one per sequence) by every weight matrix of the
//! model. BLAS libraries are tuned for large products; with 16 rows libtorch's MKL sgemm reaches
//! about half of this machine's matmul rate (measured: 0.52 ms for 16 x 512 by 2816 x 512, where
//! this kernel takes 0.27 ms; `make bench` case `sampling`). The kernel here keeps the rows in
//! registers: `x` is transposed into (K, 16) panels, so one 16-lane vector holds column k of all
//! rows, and each weight row streams through once, contributing `W[n, k] * x[:, k]` by a
//! broadcast and one fused multiply-add. Output rows are split across the calling thread and a
//! small pool (see [`super::DecodeThreads`]).
//!
//! Used only where no autograd record is needed and the shapes suit it: grad mode off, f32,
//! CPU, contiguous weight, at most [`MAX_ROWS`] rows, and a CPU with AVX-512F or AVX2+FMA;
//! everywhere else (training, bf16, CUDA, prefill) libtorch computes the product. Sums run over k in order with
//! fused multiply-adds, so results differ from MKL's only by float rounding (~1e-6 relative).

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::{enabled, grad_enabled, split, Simd};

/// Rows of `x` (the product of its leading dimensions) up to which the kernel is used; above
/// it the weight would be streamed once per 16 rows and BLAS is as fast.
pub const MAX_ROWS: i64 = 32;

/// Lanes of a row panel: one AVX-512 vector, or two AVX2 vectors.
const LANES: usize = 16;

/// Weight rows per output tile.
const TILE: usize = 8;

/// A row panel (K, 16) and the output tiles (N, 16) of one product.
type Scratch = (Vec<[f32; LANES]>, Vec<[f32; LANES]>);

/// `x (..., in) W^T + bias` with `weight` (out, in): this module's kernel where it applies,
/// libtorch's `linear` everywhere else.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    try_linear(x, weight, bias).unwrap_or_else(|| x.linear(weight, bias))
}

/// The kernel's `linear`, or `None` when it does not apply (see the module docs).
fn try_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let simd = enabled()?;
    let dims = x.size();
    let k = *dims.last()?;
    let m: i64 = dims[..dims.len() - 1].iter().product();
    let wdims = weight.size();
    if m == 0
        || m > MAX_ROWS
        || wdims.len() != 2
        || wdims[1] != k
        || x.kind() != Kind::Float
        || weight.kind() != Kind::Float
        || x.device() != Device::Cpu
        || weight.device() != Device::Cpu
        || !weight.is_contiguous()
        || bias.is_some_and(|b| b.kind() != Kind::Float || b.device() != Device::Cpu)
        || grad_enabled()
    {
        return None;
    }
    let n = wdims[0];
    let x = x.contiguous();
    let (mu, ku, nu) = (m as usize, k as usize, n as usize);
    // SAFETY: `x` and `weight` are contiguous f32 CPU tensors of m*k and n*k elements, kept
    // alive (and unmodified: grad mode is off and nothing else runs on this thread) for the
    // borrow.
    let xs = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, mu * ku) };
    let ws = unsafe { std::slice::from_raw_parts(weight.data_ptr() as *const f32, nu * ku) };
    let out = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of m*n elements, owned here.
    let ys = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, mu * nu) };
    product(simd, xs, mu, ku, ws, nu, ys);
    let mut shape = dims;
    *shape.last_mut()? = n;
    let out = out.view(shape.as_slice());
    Some(match bias {
        Some(b) => out + b,
        None => out,
    })
}

/// `y (m, n) = x (m, k) w^T` with `w` (n, k), all row-major.
fn product(simd: Simd, x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    thread_local! {
        /// Panel and tiles buffers reused across calls: a decode step makes dozens of products.
        static SCRATCH: std::cell::RefCell<Scratch> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with_borrow_mut(|(panel, tiles)| {
        panel.resize(k, [0.0; LANES]);
        tiles.resize(n, [0.0; LANES]);
        for r0 in (0..m).step_by(LANES) {
            let rows = LANES.min(m - r0);
            for (kk, p) in panel.iter_mut().enumerate() {
                for (i, v) in p.iter_mut().enumerate() {
                    *v = if i < rows { x[(r0 + i) * k + kk] } else { 0.0 };
                }
            }
            let panel = &panel[..];
            split(&mut tiles[..], TILE, |first, out| {
                block(simd, panel, &w[first * k..(first + out.len()) * k], k, out)
            });
            for i in 0..rows {
                let row = &mut y[(r0 + i) * n..(r0 + i + 1) * n];
                for (v, t) in row.iter_mut().zip(tiles.iter()) {
                    *v = t[i];
                }
            }
        }
    });
}

/// `out[j] = sum_k w[j, k] * panel[k]` (16 lanes) for the weight rows `w` (out.len(), k).
fn block(simd: Simd, panel: &[[f32; LANES]], w: &[f32], k: usize, out: &mut [[f32; LANES]]) {
    debug_assert_eq!(w.len(), out.len() * k);
    debug_assert_eq!(panel.len(), k);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `simd()` chose the variant after detecting the CPU features it needs; the
    // slices' lengths are checked above.
    unsafe {
        match simd {
            Simd::Avx512 => x86::block_avx512(panel, w, k, out),
            Simd::Avx2 => x86::block_avx2(panel, w, k, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (simd, panel, w, k, out);
        unreachable!("no SIMD kernel is selected on this architecture");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{LANES, TILE};

    /// One output row the plain way (tails of fewer than TILE rows).
    fn row(panel: &[[f32; LANES]], w: &[f32]) -> [f32; LANES] {
        let mut acc = [0f32; LANES];
        for (wk, p) in w.iter().zip(panel) {
            for (a, v) in acc.iter_mut().zip(p) {
                *a = wk.mul_add(*v, *a);
            }
        }
        acc
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block_avx512(
        panel: &[[f32; LANES]],
        w: &[f32],
        k: usize,
        out: &mut [[f32; LANES]],
    ) {
        let xp = panel.as_ptr() as *const f32;
        let mut j = 0;
        while j + TILE <= out.len() {
            let wp = w.as_ptr().add(j * k);
            let mut acc = [_mm512_setzero_ps(); TILE];
            for kk in 0..k {
                let xv = _mm512_loadu_ps(xp.add(kk * LANES));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(r * k + kk)), xv, *a);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(j + r) as *mut f32, *a);
            }
            j += TILE;
        }
        for (jj, o) in out.iter_mut().enumerate().skip(j) {
            *o = row(panel, &w[jj * k..(jj + 1) * k]);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block_avx2(
        panel: &[[f32; LANES]],
        w: &[f32],
        k: usize,
        out: &mut [[f32; LANES]],
    ) {
        // Half a tile of weight rows at a time: 2 x 4 accumulators of 8 lanes.
        const R: usize = TILE / 2;
        let xp = panel.as_ptr() as *const f32;
        let mut j = 0;
        while j + R <= out.len() {
            let wp = w.as_ptr().add(j * k);
            let mut lo = [_mm256_setzero_ps(); R];
            let mut hi = [_mm256_setzero_ps(); R];
            for kk in 0..k {
                let xl = _mm256_loadu_ps(xp.add(kk * LANES));
                let xh = _mm256_loadu_ps(xp.add(kk * LANES + 8));
                for r in 0..R {
                    let s = _mm256_set1_ps(*wp.add(r * k + kk));
                    lo[r] = _mm256_fmadd_ps(s, xl, lo[r]);
                    hi[r] = _mm256_fmadd_ps(s, xh, hi[r]);
                }
            }
            for r in 0..R {
                let o = out.as_mut_ptr().add(j + r) as *mut f32;
                _mm256_storeu_ps(o, lo[r]);
                _mm256_storeu_ps(o.add(8), hi[r]);
            }
            j += R;
        }
        for (jj, o) in out.iter_mut().enumerate().skip(j) {
            *o = row(panel, &w[jj * k..(jj + 1) * k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|kk| x[i * k + kk] as f64 * w[j * k + kk] as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn matches_f64_reference_for_every_variant_and_ragged_shapes() {
        let mut rng = crate::rng::rng_for(3, "skinny");
        let mut r = || crate::rng::uniform(&mut rng) as f32 - 0.5;
        let mut variants = vec![];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                variants.push(Simd::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                variants.push(Simd::Avx2);
            }
        }
        // Rows below, at and above one panel; weight rows not a multiple of the tile or chunk.
        for (m, k, n) in [
            (1, 7, 3),
            (5, 33, 71),
            (16, 64, 130),
            (17, 40, 9),
            (32, 96, 200),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
            let want = reference(&x, m, k, &w, n);
            for &s in &variants {
                let mut y = vec![f32::NAN; m * n];
                product(s, &x, m, k, &w, n, &mut y);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-5,
                        "{s:?} {m}x{k}x{n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn linear_applies_only_without_grad_and_matches_libtorch() {
        let x = Tensor::randn([3, 2, 48], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([70, 48], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([70], (Kind::Float, Device::Cpu));
        // Grad mode on: never used (the product must be recorded by autograd).
        assert!(try_linear(&x, &w, Some(&b)).is_none());
        let _guard = tch::no_grad_guard();
        // Outside the decode steps of generate: libtorch's.
        assert!(try_linear(&x, &w, Some(&b)).is_none());
        let _decode = crate::decode_kernels::DecodeThreads::enter(8, Kind::Float, Device::Cpu);
        let want = x.linear(&w, Some(&b));
        match try_linear(&x, &w, Some(&b)) {
            Some(y) => {
                assert_eq!(y.size(), want.size());
                let d = (y - &want).abs().max().double_value(&[]);
                assert!(d < 1e-4, "max difference {d}");
            }
            None => assert!(
                crate::decode_kernels::simd().is_none(),
                "kernel refused a supported product"
            ),
        }
        // Too many rows, or another dtype: libtorch's.
        let tall = Tensor::randn([MAX_ROWS + 1, 48], (Kind::Float, Device::Cpu));
        assert!(try_linear(&tall, &w, None).is_none());
        assert!(try_linear(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double), None).is_none());
    }
}
