//! Attention of one new token per sequence over the KV cache: for each (sequence, head),
//! softmax(q k^T / sqrt(d) + mask) v in one pass over the cached keys and values, read in place
//! from the cache views. libtorch's SDPA does the same with a GEMV per head and block.

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::{enabled, floats, floats_mut, grad_enabled, split, Simd};
use crate::error::Result;
use crate::exp::exp_f32;

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
                    keys: rows(&kv, bi, g, d),
                    values: rows(&vv, bi, g, d),
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
                keys: rows(keys, bi, g, d),
                values: rows(values, bi, g, d),
                next_keys: (i + 1 < tasks).then(|| rows(keys, next / kvh, next % kvh, d)),
                mask: mask.row(if shared_mask { 0 } else { bi }, 0, 0, len),
                scale,
                d,
            };
            attend(simd, &heads, &mut scores, y);
        }
    });
}

/// Row j (d floats) of (sequence `bi`, kv head `g`) in a cache view.
fn rows<'a>(view: &'a View<'a>, bi: usize, g: usize, d: usize) -> impl Fn(usize) -> &'a [f32] {
    move |j| view.row(bi, g, j, d)
}

/// Asks for `row` to be brought into L2 ahead of its use (a hint: no effect on results).
#[inline(always)]
pub(super) fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(16) {
        // SAFETY: a prefetch only hints the cache; the address is inside `row`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(line.as_ptr() as *const i8)
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// The query heads of one (sequence, kv head) and what they attend over.
struct Heads<'a, K, V> {
    /// rep * d: the group's queries, one after the other.
    q: &'a [f32],
    /// Cached key j (d floats).
    keys: K,
    /// Cached value j (d floats).
    values: V,
    /// Cached key j of the group this thread attends next, if any: its keys are prefetched
    /// while this group's values are read (and this group's values while its keys are), so the
    /// thread reads one continuous stream instead of restarting at every block.
    next_keys: Option<K>,
    /// Additive mask over the cached positions (0, or the most negative float for pads).
    mask: &'a [f32],
    scale: f32,
    d: usize,
}

/// `y_r = softmax_j(q_r . k_j * scale + mask_j) . v_j` for every query head r of the group;
/// `scores` holds rep * len floats, `y` rep * d.
fn attend<'a, K, V>(simd: Simd, heads: &Heads<'a, K, V>, scores: &mut [f32], y: &mut [f32])
where
    K: Fn(usize) -> &'a [f32],
    V: Fn(usize) -> &'a [f32],
{
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `simd()` chose the variant after detecting the CPU features it enables.
    unsafe {
        match simd {
            Simd::Avx512 => attend_avx512(heads, scores, y),
            Simd::Avx2 => attend_avx2(heads, scores, y),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = simd;
        attend_body(heads, scores, y, dot)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn attend_avx512<'a, K, V>(heads: &Heads<'a, K, V>, scores: &mut [f32], y: &mut [f32])
where
    K: Fn(usize) -> &'a [f32],
    V: Fn(usize) -> &'a [f32],
{
    attend_body(heads, scores, y, |a, b| x86::dot_avx512(a, b))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<'a, K, V>(heads: &Heads<'a, K, V>, scores: &mut [f32], y: &mut [f32])
where
    K: Fn(usize) -> &'a [f32],
    V: Fn(usize) -> &'a [f32],
{
    attend_body(heads, scores, y, |a, b| x86::dot_avx2(a, b))
}

#[inline(always)]
fn attend_body<'a, K, V>(
    heads: &Heads<'a, K, V>,
    scores: &mut [f32],
    y: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) where
    K: Fn(usize) -> &'a [f32],
    V: Fn(usize) -> &'a [f32],
{
    let (d, len) = (heads.d, heads.mask.len());
    let rep = heads.q.len() / d;
    // scores[r * len + j]
    for j in 0..len {
        let k = (heads.keys)(j);
        prefetch((heads.values)(j));
        for r in 0..rep {
            scores[r * len + j] =
                dot(&heads.q[r * d..(r + 1) * d], k) * heads.scale + heads.mask[j];
        }
    }
    let mut inv = vec![0f32; rep];
    for (r, row) in scores.chunks_mut(len).take(rep).enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for s in row.iter_mut() {
            *s = exp_f32(*s - max);
        }
        let total: f32 = row.iter().sum();
        inv[r] = 1.0 / total;
    }
    y.fill(0.0);
    for j in 0..len {
        let v = (heads.values)(j);
        if let Some(next) = &heads.next_keys {
            prefetch(next(j));
        }
        for r in 0..rep {
            let p = scores[r * len + j];
            if p == 0.0 {
                continue; // masked (pads): exp underflows to exactly 0
            }
            for (o, vj) in y[r * d..(r + 1) * d].iter_mut().zip(v) {
                *o = p.mul_add(*vj, *o);
            }
        }
    }
    for (r, yr) in y.chunks_mut(d).enumerate() {
        for o in yr.iter_mut() {
            *o *= inv[r];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `a . b` with 16-lane fused multiply-adds and one horizontal sum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let x = _mm512_loadu_ps(a.as_ptr().add(i));
            let y = _mm512_loadu_ps(b.as_ptr().add(i));
            acc = _mm512_fmadd_ps(x, y, acc);
            i += 16;
        }
        let mut s = _mm512_reduce_add_ps(acc);
        while i < n {
            s = a[i].mul_add(b[i], s);
            i += 1;
        }
        s
    }

    /// `a . b` with 8-lane fused multiply-adds and one horizontal sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let x = _mm256_loadu_ps(a.as_ptr().add(i));
            let y = _mm256_loadu_ps(b.as_ptr().add(i));
            acc = _mm256_fmadd_ps(x, y, acc);
            i += 8;
        }
        let hi = _mm256_extractf128_ps(acc, 1);
        let v = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
        let v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
        let mut s = _mm_cvtss_f32(v);
        while i < n {
            s = a[i].mul_add(b[i], s);
            i += 1;
        }
        s
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
