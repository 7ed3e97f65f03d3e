//! Attention of one new token per sequence over the KV cache: for each (sequence, head),
//! softmax(q k^T / sqrt(d) + mask) v in one pass over the cached keys and values, read in place
//! from the cache views. libtorch's SDPA does the same with a GEMV per head and block.

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::{enabled, floats, floats_mut, grad_enabled, split, Simd};
use crate::error::Result;

/// Scaled dot-product attention with an additive mask, as
/// `Tensor::scaled_dot_product_attention(q, k, v, Some(mask), 0.0, false, None, gqa)`:
/// q (b, h, t, d), k and v (b, kv_heads, T, d), mask broadcastable to (b, 1, t, T). Inside a
/// decode scope (f32 CPU tensors without grad) this module's kernel computes it, for the decode
/// steps (t = 1) and for the prompt's prefill; everywhere else libtorch.
pub(crate) fn sdpa(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, gqa: bool) -> Result<Tensor> {
    if let Some(out) = try_decode(q, k, v, mask).or_else(|| try_prefill(q, k, v, mask)) {
        return Ok(out);
    }
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        Some(mask),
        0.0,
        false,
        None,
        gqa,
    )?)
}

/// A 4-d f32 CPU tensor's elements, read through its strides.
pub(super) struct View<'a> {
    data: &'a [f32],
    stride: [usize; 4],
    /// Size of the first dimension.
    size0: usize,
}

impl<'a> View<'a> {
    /// `None` unless `t` is f32 on the CPU with non-negative strides and unit stride in the
    /// last dimension.
    pub(super) fn of(t: &'a Tensor) -> Option<View<'a>> {
        if t.kind() != Kind::Float || t.device() != Device::Cpu || t.dim() != 4 {
            return None;
        }
        let size = t.size();
        let st = t.stride();
        if st.iter().any(|&s| s < 0) || (size[3] > 1 && st[3] != 1) {
            return None;
        }
        let extent = 1 + size
            .iter()
            .zip(&st)
            .map(|(&n, &s)| (n.max(1) - 1) * s)
            .sum::<i64>();
        // SAFETY: data_ptr points at the view's first element (storage offset included); the
        // view reaches `extent` elements from it, all inside its storage, which `t` keeps alive
        // for 'a. Nothing writes to it meanwhile: this runs with grad off on inputs owned by the
        // caller's forward.
        let data =
            unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, extent as usize) };
        Some(View {
            data,
            stride: std::array::from_fn(|i| st[i] as usize),
            size0: size[0] as usize,
        })
    }

    /// The `len` elements starting at index (a, b, c, 0).
    pub(super) fn row(&self, a: usize, b: usize, c: usize, len: usize) -> &'a [f32] {
        let o = a * self.stride[0] + b * self.stride[1] + c * self.stride[2];
        &self.data[o..o + len]
    }

    /// Rows (a, b, j, 0..d) for j < `count` (at least 1), bounds checked here once.
    fn rows(&self, a: usize, b: usize, count: usize, d: usize) -> Rows<'a> {
        let o = a * self.stride[0] + b * self.stride[1];
        let stride = self.stride[2];
        Rows {
            data: &self.data[o..o + (count - 1) * stride + d],
            stride,
        }
    }
}

/// Rows of d floats `stride` apart: the cached keys or values of one (sequence, kv head).
#[derive(Clone, Copy)]
struct Rows<'a> {
    /// From row 0 to the end of the last row.
    data: &'a [f32],
    stride: usize,
}

/// Sizes `[b, heads, t, d, kv_heads, len]` of an attention the kernels take: q (b, h, t, d),
/// k and v (b, kv_heads, len, d) with h a multiple of kv_heads, mask (b or 1, 1, t, len), grad
/// mode off; `None` otherwise.
fn shapes(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Option<[usize; 6]> {
    let (qs, ks, ms) = (q.size(), k.size(), mask.size());
    if qs.len() != 4 || ks.len() != 4 || ms.len() != 4 || v.size() != ks {
        return None;
    }
    let (b, h, t, d) = (qs[0], qs[1], qs[2], qs[3]);
    let (kvh, len) = (ks[1], ks[2]);
    if ks[0] != b
        || ks[3] != d
        || kvh == 0
        || h % kvh != 0
        || len == 0
        || !(ms[0] == 1 || ms[0] == b)
        || ms[1..] != [1, t, len]
        || grad_enabled()
    {
        return None;
    }
    Some([b, h, t, d, kvh, len].map(|x| x as usize))
}

fn try_decode(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Option<Tensor> {
    let simd = enabled()?;
    let [b, h, t, d, kvh, len] = shapes(q, k, v, mask)?;
    if t != 1 {
        return None;
    }
    let q = q.contiguous();
    let (qs, kv, vv, mv) = (floats(&q)?, View::of(k)?, View::of(v)?, View::of(mask)?);
    let out = Tensor::empty(
        [b as i64, h as i64, 1, d as i64],
        (Kind::Float, Device::Cpu),
    );
    // SAFETY: `out` is a fresh contiguous f32 tensor of b*h*d elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    let shape = Shape {
        heads: h,
        kv_heads: kvh,
        head_dim: d,
        len,
    };
    attend_cached(simd, qs, (&kv, &vv), &mv, shape, ys);
    Some(out)
}

/// The prefill's attention (t > 1 new tokens per sequence, inside a decode scope): every
/// query attends as a decode step's does ([`attend`]), over the keys up to its last unmasked
/// one (the causal mask's most negative entries past it would weigh exactly 0), so a prompt
/// of t tokens costs about t^2 / 2 key reads per head instead of t^2. One task per (sequence,
/// kv head), split across the crew. It is about as fast as libtorch's SDPA on two threads,
/// and inside the scope libtorch would run on one (docs/performance.md).
fn try_prefill(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Option<Tensor> {
    let simd = enabled()?;
    let [b, h, t, d, kvh, len] = shapes(q, k, v, mask)?;
    if t < 2 {
        return None;
    }
    let q = q.contiguous();
    let (qs, kv, vv, mv) = (floats(&q)?, View::of(k)?, View::of(v)?, View::of(mask)?);
    let out = Tensor::empty([b, h, t, d].map(|x| x as i64), (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of b*h*t*d elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    let rep = h / kvh;
    let shared_mask = mv.size0 == 1;
    let scale = 1.0 / (d as f32).sqrt();
    // A task's output: its rep query heads (consecutive in `ys`), each t x d.
    let unit = rep * t * d;
    split(ys, unit, |first, part| {
        let mut scores = vec![0f32; rep * len];
        let (mut qi, mut yi) = (vec![0f32; rep * d], vec![0f32; rep * d]);
        for (u, out) in part.chunks_mut(unit).enumerate() {
            let task = first / unit + u;
            let (bi, g) = (task / kvh, task % kvh);
            for i in 0..t {
                for r in 0..rep {
                    let at = ((bi * h + g * rep + r) * t + i) * d;
                    qi[r * d..(r + 1) * d].copy_from_slice(&qs[at..at + d]);
                }
                let row = mv.row(if shared_mask { 0 } else { bi }, 0, i, len);
                let upto = row
                    .iter()
                    .rposition(|&m| m != f32::MIN)
                    .map_or(len, |j| j + 1);
                let heads = Heads {
                    q: &qi,
                    keys: kv.rows(bi, g, upto, d),
                    values: vv.rows(bi, g, upto, d),
                    next_keys: None,
                    mask: &row[..upto],
                    scale,
                    d,
                };
                attend(simd, &heads, &mut scores[..rep * upto], &mut yi);
                for r in 0..rep {
                    out[(r * t + i) * d..(r * t + i + 1) * d]
                        .copy_from_slice(&yi[r * d..(r + 1) * d]);
                }
            }
        }
    });
    Some(out)
}

/// Sizes of a decode step's attention.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Cached positions attended (the new token's included).
    pub len: usize,
}

/// `ys` (b, heads, d) = attention of the queries `q` (b, heads, d) over the first `len` keys
/// and values of the views (b, kv_heads, >= len, d), with the additive `mask` (b or 1, 1, 1,
/// >= len). Split by (sequence, kv head) across the crew.
pub(super) fn attend_cached(
    simd: Simd,
    q: &[f32],
    (keys, values): (&View, &View),
    mask: &View,
    shape: Shape,
    ys: &mut [f32],
) {
    let Shape {
        heads: h,
        kv_heads: kvh,
        head_dim: d,
        len,
    } = shape;
    let rep = h / kvh;
    let shared_mask = mask.size0 == 1;
    let scale = 1.0 / (d as f32).sqrt();
    // One item per (sequence, kv head): its `rep` query heads' outputs, rep * d floats. The
    // heads of a group share keys and values, so each cached row is read once for all of them.
    let group = rep * d;
    split(ys, group, |first, part| {
        let mut scores = vec![0f32; rep * len];
        let tasks = part.len() / group;
        for (i, y) in part.chunks_mut(group).enumerate() {
            let task = first / group + i;
            let (bi, g) = (task / kvh, task % kvh);
            let next = task + 1;
            let heads = Heads {
                q: &q[task * group..(task + 1) * group],
                keys: keys.rows(bi, g, len, d),
                values: values.rows(bi, g, len, d),
                next_keys: (i + 1 < tasks).then(|| keys.rows(next / kvh, next % kvh, len, d)),
                mask: mask.row(if shared_mask { 0 } else { bi }, 0, 0, len),
                scale,
                d,
            };
            attend(simd, &heads, &mut scores, y);
        }
    });
}

/// Asks for `row` to be brought into L2 ahead of its use (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; the addresses are inside `row`.
    unsafe {
        x86::prefetch_floats(row.as_ptr(), row.len())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The query heads of one (sequence, kv head) and what they attend over.
struct Heads<'a> {
    /// rep * d: the group's queries, one after the other.
    q: &'a [f32],
    /// The cached keys, one row per position of `mask`.
    keys: Rows<'a>,
    /// The cached values, likewise.
    values: Rows<'a>,
    /// The keys of the group this thread attends next, if any (as many rows): they are
    /// prefetched while this group's values are read (and this group's values while its keys
    /// are), so the thread reads one continuous stream instead of restarting at every group.
    next_keys: Option<Rows<'a>>,
    /// Additive mask over the cached positions (0, or the most negative float for pads).
    mask: &'a [f32],
    scale: f32,
    d: usize,
}

/// `y_r = softmax_j(q_r . k_j * scale + mask_j) . v_j` for every query head r of the group;
/// `scores` holds rep * len floats, `y` rep * d.
///
/// Each score is a dot product summed in 16-lane (AVX2: 8-lane) pieces in order and then
/// across the lanes; each output element sums `p_j v_j` over j in order with fused
/// multiply-adds, skipping the positions whose weight is exactly 0 (pads), and is then
/// multiplied by the inverse of the weights' sum. The kernels read the rows through pointers
/// checked once here and keep a head's output in registers over all positions.
fn attend(simd: Simd, heads: &Heads, scores: &mut [f32], y: &mut [f32]) {
    let (d, len) = (heads.d, heads.mask.len());
    let rep = heads.q.len() / d.max(1);
    assert!(d > 0 && len > 0 && heads.q.len() == rep * d);
    assert!(scores.len() >= rep * len && y.len() >= rep * d);
    for rows in [
        Some(&heads.keys),
        Some(&heads.values),
        heads.next_keys.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(rows.data.len() >= (len - 1) * rows.stride + d);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `simd()` chose the variant after detecting the CPU features it enables; the
    // asserts above are the kernels' bounds.
    unsafe {
        match simd {
            Simd::Avx512 => x86::attend_avx512(heads, scores, y),
            Simd::Avx2 => x86::attend_avx2(heads, scores, y),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (simd, heads, scores, y);
        unreachable!("the decode kernels run on x86-64 only");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Heads;
    use crate::exp::exp_f32;

    /// Hints the `n` floats from `p` into L2, a cache line (16 floats) at a time from `p` (no
    /// effect on results; any address is allowed).
    #[inline(always)]
    pub(super) unsafe fn prefetch_floats(p: *const f32, n: usize) {
        for o in (0..n).step_by(16) {
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(o) as *const i8);
        }
    }

    /// The softmax weights of each head's scores in place (unnormalised: `e^(s - max)`), and
    /// the inverse of each head's sum of them in `inv`.
    #[inline(always)]
    fn softmax_weights(scores: &mut [f32], len: usize, inv: &mut [f32]) {
        for (row, inv) in scores.chunks_mut(len).zip(inv.iter_mut()) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for s in row.iter_mut() {
                *s = exp_f32(*s - max);
            }
            let total: f32 = row.iter().sum();
            *inv = 1.0 / total;
        }
    }

    /// The body of [`super::attend`] for one instruction set of `$lanes`-float vectors: `$dot`
    /// one key's score, `$dots` a block of `$lanes` keys' scores with the same bits, `$weighted`
    /// a head's output from its weights.
    macro_rules! attend_kernel {
        ($name:ident, $feature:literal, $dot:ident, $dots:ident, $weighted:ident, $lanes:literal) => {
            /// [`super::attend`] with this instruction set.
            ///
            /// # Safety
            /// The CPU has the instruction set; the bounds [`super::attend`] asserts hold.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(heads: &Heads, scores: &mut [f32], y: &mut [f32]) {
                let (d, len) = (heads.d, heads.mask.len());
                let rep = heads.q.len() / d;
                let q = heads.q.as_ptr();
                let (kp, ks) = (heads.keys.data.as_ptr(), heads.keys.stride);
                let (vp, vs) = (heads.values.data.as_ptr(), heads.values.stride);
                let mask = heads.mask.as_ptr();
                let sp = scores.as_mut_ptr();
                // Whole blocks of `$lanes` keys at once where d is whole vectors; the rest one
                // by one.
                let blocked = if d % $lanes == 0 {
                    len - len % $lanes
                } else {
                    0
                };
                for j0 in (0..blocked).step_by($lanes) {
                    for j in j0..j0 + $lanes {
                        prefetch_floats(vp.add(j * vs), d);
                    }
                    for r in 0..rep {
                        let at = sp.add(r * len + j0);
                        $dots(
                            q.add(r * d),
                            (kp.add(j0 * ks), ks),
                            d,
                            mask.add(j0),
                            heads.scale,
                            at,
                        );
                    }
                }
                for j in blocked..len {
                    let k = kp.add(j * ks);
                    prefetch_floats(vp.add(j * vs), d);
                    let m = *mask.add(j);
                    for r in 0..rep {
                        *sp.add(r * len + j) = $dot(q.add(r * d), k, d) * heads.scale + m;
                    }
                }
                let mut inv = [0f32; 16];
                let mut inv_heap = Vec::new();
                let inv: &mut [f32] = if rep <= inv.len() {
                    &mut inv[..rep]
                } else {
                    inv_heap.resize(rep, 0.0);
                    &mut inv_heap
                };
                softmax_weights(&mut scores[..rep * len], len, inv);
                let next = heads
                    .next_keys
                    .as_ref()
                    .map_or((std::ptr::null(), 0), |n| (n.data.as_ptr(), n.stride));
                // Heads two at a time; the next group's keys are prefetched during the first
                // pass.
                for r in (0..rep).step_by(2) {
                    let pf = if r == 0 { next } else { (std::ptr::null(), 0) };
                    let heads = &inv[r..(r + 2).min(rep)];
                    let (p, out) = (sp.add(r * len), y.as_mut_ptr().add(r * d));
                    $weighted((p, len), (vp, vs), d, pf, out, heads);
                }
            }
        };
    }

    attend_kernel!(
        attend_avx512,
        "avx512f",
        dot_avx512,
        dots_avx512,
        weighted_avx512,
        16
    );
    attend_kernel!(
        attend_avx2,
        "avx2,fma",
        dot_avx2,
        dots_avx2,
        weighted_avx2,
        8
    );

    /// `out[j] = (q . k_j) * scale + mask[j]` for 16 keys `k_j` (`d` floats at `keys.0 + j *
    /// keys.1`, d a multiple of 16), with the bits of [`dot_avx512`] for each: every key's
    /// 16-lane sums run over the pieces of d in order, then the 16 keys' lane sums are added
    /// across in one tree whose pairs are those of [`dot_avx512`]'s horizontal sum (lane i with
    /// i + 8, then i + 4, i + 2, i + 1), the keys side by side instead of one after the other.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dots_avx512(
        q: *const f32,
        (k, ks): (*const f32, usize),
        d: usize,
        mask: *const f32,
        scale: f32,
        out: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); 16];
        for c in (0..d).step_by(16) {
            let qc = _mm512_loadu_ps(q.add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k.add(j * ks + c)), *a);
            }
        }
        // Keys (2m, 2m + 1): lane i of each half is key's x_i + x_(i+8).
        let p: [__m512; 8] = std::array::from_fn(|m| {
            let (a, b) = (acc[2 * m], acc[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            )
        });
        // Keys 4m..4m + 4, a 128-bit quarter each: lane i of it y_i + y_(i+4).
        let q4: [__m512; 4] = std::array::from_fn(|m| {
            let (a, b) = (p[2 * m], p[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
            )
        });
        // Quarter t: keys t and 4 + t (from r[0]) or 8 + t and 12 + t (r[1]), z_i + z_(i+2).
        let r: [__m512; 2] = std::array::from_fn(|m| {
            let (a, b) = (q4[2 * m], q4[2 * m + 1]);
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        });
        // Lane 4t + u: key t + 4u's w_0 + w_1.
        let s = _mm512_add_ps(
            _mm512_shuffle_ps::<0b10_00_10_00>(r[0], r[1]),
            _mm512_shuffle_ps::<0b11_01_11_01>(r[0], r[1]),
        );
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let s = _mm512_permutexvar_ps(order, s);
        let s = _mm512_add_ps(
            _mm512_mul_ps(s, _mm512_set1_ps(scale)),
            _mm512_loadu_ps(mask),
        );
        _mm512_storeu_ps(out, s);
    }

    /// [`dots_avx512`] with AVX2 for 8 keys (d a multiple of 8), with the bits of [`dot_avx2`]
    /// for each: lane i added to i + 4, then i + 2, then i + 1.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dots_avx2(
        q: *const f32,
        (k, ks): (*const f32, usize),
        d: usize,
        mask: *const f32,
        scale: f32,
        out: *mut f32,
    ) {
        let mut acc = [_mm256_setzero_ps(); 8];
        for c in (0..d).step_by(8) {
            let qc = _mm256_loadu_ps(q.add(c));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k.add(j * ks + c)), *a);
            }
        }
        // Keys (2m, 2m + 1), a 128-bit half each: lane i of it x_i + x_(i+4).
        let p: [__m256; 4] = std::array::from_fn(|m| {
            let (a, b) = (acc[2 * m], acc[2 * m + 1]);
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a, b),
                _mm256_permute2f128_ps::<0x31>(a, b),
            )
        });
        // Half h: keys h and 2 + h (from r[0]) or 4 + h and 6 + h (r[1]), y_i + y_(i+2).
        let r: [__m256; 2] = std::array::from_fn(|m| {
            let (a, b) = (p[2 * m], p[2 * m + 1]);
            _mm256_add_ps(
                _mm256_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm256_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        });
        // Lane 4h + u: key h + 2u's z_0 + z_1.
        let s = _mm256_add_ps(
            _mm256_shuffle_ps::<0b10_00_10_00>(r[0], r[1]),
            _mm256_shuffle_ps::<0b11_01_11_01>(r[0], r[1]),
        );
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let s = _mm256_permutevar8x32_ps(s, order);
        let s = _mm256_add_ps(
            _mm256_mul_ps(s, _mm256_set1_ps(scale)),
            _mm256_loadu_ps(mask),
        );
        _mm256_storeu_ps(out, s);
    }

    /// `a . b` over `n` floats with 16-lane fused multiply-adds and one horizontal sum (lane i
    /// added to i + 8, then i + 4, i + 2, i + 1: spelled out rather than
    /// `_mm512_reduce_add_ps`, whose order is the compiler's choice; [`dots_avx512`] adds in
    /// the same pairs).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc);
            i += 16;
        }
        let v8 = _mm512_castps512_ps256(_mm512_add_ps(
            acc,
            _mm512_shuffle_f32x4::<0b11_10_11_10>(acc, acc),
        ));
        let v = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps::<1>(v, v));
        let mut s = _mm_cvtss_f32(v);
        while i < n {
            s = (*a.add(i)).mul_add(*b.add(i), s);
            i += 1;
        }
        s
    }

    /// `a . b` over `n` floats with 8-lane fused multiply-adds and one horizontal sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(a: *const f32, b: *const f32, n: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc);
            i += 8;
        }
        let hi = _mm256_extractf128_ps(acc, 1);
        let v = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
        let mut s = _mm_cvtss_f32(v);
        while i < n {
            s = (*a.add(i)).mul_add(*b.add(i), s);
            i += 1;
        }
        s
    }

    /// A block's scores have the bits of one key's at a time, on each path this CPU runs.
    #[test]
    fn a_block_of_keys_scores_as_each_key_alone() {
        use crate::decode_kernels::{cpu_paths, Simd};
        let cpu = cpu_paths();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Magnitudes from 1e-3 to 1e3, both signs: sums that round.
            let m = (rng % 2001) as f32 / 1000.0 - 1.0;
            m * 10f32.powi((rng >> 32) as i32 % 7 - 3)
        };
        for d in [16usize, 32, 64, 128] {
            let ks = d + 16; // rows apart, as in a cache with room
            let q: Vec<f32> = (0..d).map(|_| next()).collect();
            let k: Vec<f32> = (0..16 * ks).map(|_| next()).collect();
            let mask: Vec<f32> = (0..16)
                .map(|j| if j % 5 == 0 { f32::MIN } else { next() })
                .collect();
            let scale = 0.125;
            let one = |dot: unsafe fn(*const f32, *const f32, usize) -> f32, j: usize| {
                // SAFETY: the CPU has the path (checked by the caller); rows are in bounds.
                unsafe { dot(q.as_ptr(), k.as_ptr().add(j * ks), d) * scale + mask[j] }
            };
            if cpu.contains(&Simd::Avx512) {
                let mut out = [0f32; 16];
                // SAFETY: AVX-512 present; 16 rows of d floats, ks apart, in `k`.
                unsafe {
                    dots_avx512(
                        q.as_ptr(),
                        (k.as_ptr(), ks),
                        d,
                        mask.as_ptr(),
                        scale,
                        out.as_mut_ptr(),
                    )
                };
                for (j, o) in out.iter().enumerate() {
                    assert_eq!(
                        o.to_bits(),
                        one(dot_avx512, j).to_bits(),
                        "avx512 d {d} key {j}"
                    );
                }
            } else {
                eprintln!("SKIPPED a_block_of_keys_scores_as_each_key_alone (avx512): no AVX-512 on this CPU");
            }
            if cpu.contains(&Simd::Avx2) {
                let mut out = [0f32; 8];
                for j0 in [0, 8] {
                    // SAFETY: AVX2 and FMA present; 8 rows of d floats from row j0.
                    unsafe {
                        dots_avx2(
                            q.as_ptr(),
                            (k.as_ptr().add(j0 * ks), ks),
                            d,
                            mask[j0..].as_ptr(),
                            scale,
                            out.as_mut_ptr(),
                        )
                    };
                    for (j, o) in out.iter().enumerate() {
                        assert_eq!(
                            o.to_bits(),
                            one(dot_avx2, j0 + j).to_bits(),
                            "avx2 d {d} key {}",
                            j0 + j
                        );
                    }
                }
            } else {
                eprintln!(
                    "SKIPPED a_block_of_keys_scores_as_each_key_alone (avx2): no AVX2 on this CPU"
                );
            }
        }
    }

    /// A [`weighted!`] pass's weights and their row length, values and their stride, rows to
    /// prefetch (with their stride) and head dimension, output and its row length.
    type WeightedArgs = (
        (*const f32, usize),
        (*const f32, usize),
        ((*const f32, usize), usize),
        (*mut f32, usize),
    );

    /// The outputs of `inv.len()` heads (1 or 2): `y[r d + c] = inv[r] * sum_j p[r len + j]
    /// v[j][c]` for c < d, the rows `v[j]` at `values.0 + j * values.1`; each sum over j in order
    /// with fused multiply-adds from 0, skipping weights of exactly 0. Two heads at once keep
    /// twice the independent sums in flight (each sum is a chain of dependent multiply-adds)
    /// and load each value once for both. `pf`: rows (d floats each, `pf.1` apart) to prefetch
    /// one per position, or a null pointer.
    macro_rules! weighted {
        ($name:ident, $block:ident, $feature:literal, $lanes:literal, $regs:literal, $vec:ty,
         $zero:ident, $set1:ident, $load:ident, $fma:ident, $mul:ident, $store:ident) => {
            /// See the `weighted!` macro.
            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn $name(
                (p, len): (*const f32, usize),
                (v, vs): (*const f32, usize),
                d: usize,
                pf: (*const f32, usize),
                y: *mut f32,
                inv: &[f32],
            ) {
                let heads = inv.len();
                let mut c0 = 0;
                while d - c0 >= $lanes {
                    // Up to `$regs` accumulators a pass, in registers over all positions.
                    let n = ((d - c0) / $lanes).min($regs / heads).min(8);
                    let pf = if c0 == 0 { pf } else { (std::ptr::null(), 0) };
                    let at = (v.add(c0), vs);
                    let out = (y.add(c0), d);
                    let args = ((p, len), at, (pf, d), out);
                    match (heads, n) {
                        (1, 1) => $block::<1, 1>(args, inv),
                        (1, 2) => $block::<1, 2>(args, inv),
                        (1, 3) => $block::<1, 3>(args, inv),
                        (1, 4) => $block::<1, 4>(args, inv),
                        (1, 5) => $block::<1, 5>(args, inv),
                        (1, 6) => $block::<1, 6>(args, inv),
                        (1, 7) => $block::<1, 7>(args, inv),
                        (1, 8) => $block::<1, 8>(args, inv),
                        (2, 1) => $block::<2, 1>(args, inv),
                        (2, 2) => $block::<2, 2>(args, inv),
                        (2, 3) => $block::<2, 3>(args, inv),
                        (2, 4) => $block::<2, 4>(args, inv),
                        (2, 5) => $block::<2, 5>(args, inv),
                        (2, 6) => $block::<2, 6>(args, inv),
                        (2, 7) => $block::<2, 7>(args, inv),
                        (2, 8) => $block::<2, 8>(args, inv),
                        _ => unreachable!("heads and columns past the registers"),
                    }
                    c0 += $lanes * n;
                }
                for (r, &inv) in inv.iter().enumerate() {
                    for c in c0..d {
                        let mut o = 0f32;
                        for j in 0..len {
                            let pj = *p.add(r * len + j);
                            if pj != 0.0 {
                                o = pj.mul_add(*v.add(j * vs + c), o);
                            }
                        }
                        *y.add(r * d + c) = o * inv;
                    }
                }
            }

            /// `R` heads and `N` vectors of columns of [`$name`] (head r's weights at `p + r
            /// len`, its output at `y + r * y.1`).
            #[inline]
            #[target_feature(enable = $feature)]
            unsafe fn $block<const R: usize, const N: usize>(
                ((p, len), (v, vs), ((pf, pfs), d), (y, ys)): WeightedArgs,
                inv: &[f32],
            ) {
                let mut acc: [[$vec; N]; R] = [[$zero(); N]; R];
                for j in 0..len {
                    if !pf.is_null() {
                        prefetch_floats(pf.add(j * pfs), d);
                    }
                    let row = v.add(j * vs);
                    let vals: [$vec; N] = std::array::from_fn(|n| $load(row.add(n * $lanes)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let pj = *p.add(r * len + j);
                        if pj == 0.0 {
                            continue; // masked (pads): exp underflows to exactly 0
                        }
                        let w = $set1(pj);
                        for (a, &x) in acc.iter_mut().zip(&vals) {
                            *a = $fma(w, x, *a);
                        }
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    let inv = $set1(inv[r]);
                    for (n, a) in acc.iter().enumerate() {
                        $store(y.add(r * ys + n * $lanes), $mul(*a, inv));
                    }
                }
            }
        };
    }

    weighted!(
        weighted_avx512,
        weighted_block_avx512,
        "avx512f",
        16,
        16,
        __m512,
        _mm512_setzero_ps,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_mul_ps,
        _mm512_storeu_ps
    );
    weighted!(
        weighted_avx2,
        weighted_block_avx2,
        "avx2,fma",
        8,
        8,
        __m256,
        _mm256_setzero_ps,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_mul_ps,
        _mm256_storeu_ps
    );
}

#[cfg(test)]
mod rate {
    use super::*;

    #[test]
    #[ignore = "a bench: run it by name with --ignored"]
    fn attention_rate() {
        let Some(best) = crate::decode_kernels::simd() else {
            eprintln!("attention_rate: skipped, no decode kernels on this CPU");
            return;
        };
        let var = |name: &str, default: usize| {
            std::env::var(name).map_or(default, |v| v.parse().expect(name))
        };
        let (len, layers, threads) = (
            var("RATE_LEN", 128),
            var("RATE_LAYERS", 8),
            var("RATE_THREADS", 2),
        );
        tch::set_num_threads(threads as i32);
        let simd = match std::env::var("RATE_PATH").as_deref() {
            Ok("avx2") => Simd::Avx2,
            Ok("avx512") => Simd::Avx512,
            _ => best,
        };
        let _guard = tch::no_grad_guard();
        let _decode = crate::decode_kernels::DecodeThreads::enter(16, Kind::Float, Device::Cpu);
        let (b, h, kvh, d, cap) = (16usize, 8usize, 4usize, 64usize, 192i64);
        let opts = (Kind::Float, Device::Cpu);
        let caches: Vec<(Tensor, Tensor)> = (0..layers)
            .map(|_| {
                let shape = [b as i64, kvh as i64, cap, d as i64];
                (Tensor::randn(shape, opts), Tensor::randn(shape, opts))
            })
            .collect();
        let q = Tensor::randn([b as i64, h as i64, 1, d as i64], opts);
        let mask = Tensor::zeros([b as i64, 1, 1, len as i64], opts);
        let shape = Shape {
            heads: h,
            kv_heads: kvh,
            head_dim: d,
            len,
        };
        let mut y = vec![0f32; b * h * d];
        let qs = floats(&q).unwrap();
        let mv = View::of(&mask).unwrap();
        let views: Vec<(Tensor, Tensor)> = caches
            .iter()
            .map(|(k, v)| (k.narrow(2, 0, len as i64), v.narrow(2, 0, len as i64)))
            .collect();
        let steps = 2000 / layers;
        for round in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..steps {
                for (k, v) in &views {
                    let (kv, vv) = (View::of(k).unwrap(), View::of(v).unwrap());
                    attend_cached(simd, qs, (&kv, &vv), &mv, shape, &mut y);
                }
            }
            let s = t.elapsed().as_secs_f64();
            let bytes = (steps * layers * b * kvh * len * d * 2 * 4) as f64;
            eprintln!(
                "attention_rate {simd:?} len {len}, {layers} layers, {threads} threads, round {round}: {:.1} GB/s, {:.3} ms a step of 8 layers",
                bytes / s / 1e9,
                s * 1e3 / (steps * layers) as f64 * 8.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libtorch(q: &Tensor, k: &Tensor, v: &Tensor, m: &Tensor, gqa: bool) -> Tensor {
        Tensor::scaled_dot_product_attention(q, k, v, Some(m), 0.0, false, None, gqa)
    }

    #[test]
    fn decode_attention_matches_sdpa_on_cache_views_with_padding_and_gqa() {
        let _guard = tch::no_grad_guard();
        let opts = (Kind::Float, Device::Cpu);
        let test = "decode_attention_matches_sdpa";
        crate::decode_kernels::paths::for_each(test, |path| {
            let _decode = crate::decode_kernels::DecodeThreads::enter(8, Kind::Float, Device::Cpu);
            for (b, h, kvh, d, len) in [(3, 4, 2, 16, 9), (2, 6, 6, 20, 33), (5, 8, 4, 64, 70)] {
                let q = Tensor::randn([b, h, 1, d], opts);
                // Views into a larger cache, as the KV cache hands them out.
                let kc = Tensor::randn([b, kvh, len + 7, d], opts);
                let vc = Tensor::randn([b, kvh, len + 7, d], opts);
                let (k, v) = (kc.narrow(2, 0, len), vc.narrow(2, 0, len));
                // Left padding: row i masks its first i positions.
                let keep = Tensor::arange(len, (Kind::Int64, Device::Cpu))
                    .unsqueeze(0)
                    .ge_tensor(&Tensor::arange(b, (Kind::Int64, Device::Cpu)).unsqueeze(1));
                let mask = Tensor::zeros([1], opts)
                    .where_scalarother(&keep, f32::MIN as f64)
                    .view([b, 1, 1, len]);
                let gqa = h != kvh;
                let want = libtorch(&q, &k, &v, &mask, gqa);
                let got = try_decode(&q, &k, &v, &mask).expect("kernel refused a decode step");
                let diff = (got - &want).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{path:?} ({b},{h},{kvh},{d},{len}): differs by {diff}"
                );
            }
        });
    }

    /// Several new tokens per row (a prefill, and a chunk after cached tokens): the causal
    /// mask with left padding (rows fully masked included), GQA, cache views.
    #[test]
    fn prefill_attention_matches_sdpa_with_causal_padded_masks() {
        let _guard = tch::no_grad_guard();
        let opts = (Kind::Float, Device::Cpu);
        let ints = (Kind::Int64, Device::Cpu);
        let test = "prefill_attention_matches_sdpa";
        crate::decode_kernels::paths::for_each(test, |path| {
            let _decode = crate::decode_kernels::DecodeThreads::enter(8, Kind::Float, Device::Cpu);
            for (b, h, kvh, d, past, t) in [
                (3, 4, 2, 16, 0, 9),
                (2, 6, 6, 20, 5, 7),
                (4, 8, 4, 64, 0, 33),
            ] {
                let len = past + t;
                let q = Tensor::randn([b, h, t, d], opts);
                let kc = Tensor::randn([b, kvh, len + 3, d], opts);
                let vc = Tensor::randn([b, kvh, len + 3, d], opts);
                let (k, v) = (kc.narrow(2, 0, len), vc.narrow(2, 0, len));
                // Row i has 2i pads on the left.
                let key_mask = Tensor::arange(len, ints)
                    .unsqueeze(0)
                    .ge_tensor(&(Tensor::arange(b, ints) * 2).unsqueeze(1))
                    .to_kind(Kind::Int64);
                let mask = crate::layers::attention_mask(&key_mask, t, past, Kind::Float);
                let want = libtorch(&q, &k, &v, &mask, h != kvh);
                let got = try_prefill(&q, &k, &v, &mask).expect("kernel refused a prefill");
                let diff = (got - &want).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{path:?} ({b},{h},{kvh},{d},{past},{t}): differs by {diff}"
                );
            }
        });
    }

    #[test]
    fn other_shapes_and_grad_mode_go_to_libtorch() {
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 2, 1, 8], opts);
        let k = Tensor::randn([2, 2, 5, 8], opts);
        let m = Tensor::zeros([2, 1, 1, 5], opts);
        let grad_off = tch::no_grad_guard();
        assert!(
            try_decode(&q, &k, &k, &m).is_none(),
            "outside a decode scope"
        );
        let decode = crate::decode_kernels::DecodeThreads::enter(8, Kind::Float, Device::Cpu);
        drop(grad_off);
        assert!(try_decode(&q, &k, &k, &m).is_none(), "grad mode on");
        let _grad_off = tch::no_grad_guard();
        let q3 = Tensor::randn([2, 2, 3, 8], opts);
        let m3 = Tensor::zeros([2, 1, 3, 5], opts);
        assert!(try_decode(&q3, &k, &k, &m3).is_none(), "several queries");
        let qd = q.to_kind(Kind::Double);
        let kd = k.to_kind(Kind::Double);
        assert!(try_decode(&qd, &kd, &kd, &m.to_kind(Kind::Double)).is_none());
        // And the public entry computes them all.
        let out = sdpa(&q3, &k, &k, &m3, false).unwrap();
        assert_eq!(out.size(), [2, 2, 3, 8]);
        drop(decode);
    }
}
