//! CPU kernels for generation: the products of the decode steps' few rows by every weight
//! matrix ([`gemm`]) and attention of one new token over the KV cache ([`attention`]), and for
//! a Llama model the prompt's prefill as well.
//!
//! A decode step is small: with 16 sequences it multiplies 16 rows by each weight and attends
//! one query per head. libtorch's CPU paths are built for large work: MKL repacks the whole
//! weight on every call (39% of a decode step's time, `perf` on the `sampling` bench), and
//! SDPA issues one tiny GEMV per head. These kernels stream each weight once with the rows held
//! in SIMD registers, and attend in one pass. They apply only inside `generate` (a
//! [`DecodeThreads`] scope: up to 32 sequences, at least 8 for GPT-2), where the result needs
//! no autograd (grad mode off), to f32 CPU tensors, on x86-64 with AVX-512F or AVX2+FMA;
//! everywhere else (training, scoring, bf16, CUDA) libtorch computes as before. Results differ
//! from libtorch's by float rounding only (tests bound it). `RLHF_NO_DECODE_KERNELS=1` turns
//! them off (for A/B timing).
//!
//! A Llama model's `generate` opens the scope before the prefill ([`prefill_kernels`]): the
//! packed product beats MKL on the prefill's many rows too (AVX-512 and AVX2 alike),
//! attention has a many-query variant, and the row-wise ops split across the crew; the prefill
//! packs the weights the decode steps then read. Elsewhere, and for GPT-2, the scope opens after
//! the prefill.
//!
//! Threads: while [`DecodeThreads`] lives, libtorch runs single-threaded on the calling thread
//! and the kernels split work between that thread and a small [`crew`] of workers, as many
//! threads in all as libtorch had, which spin between the step's jobs. Both at once would
//! oversubscribe the cores: libtorch's idle OpenMP workers spin between its ops. A job is cut
//! into pieces that each thread takes from its own share first and then from the others'
//! ([`claimed`]), so a core that runs slower for a while (common on small VMs) does less.
//!
//! Besides the products and attention, a decode step's RMSNorms and rotary embeddings run as
//! single calls ([`elementwise`]); rotary embedding and SwiGLU's `silu(gate) * up` do so in
//! every forward without grad (prefill and scoring too: one pass beats libtorch's several at
//! any size). The weights are read from a copy packed for streaming, made on first use in the
//! scope and dropped with it, its memory kept for the next scope's copies ([`gemm`]). A
//! Llama-family layer's decode step runs as one call built from these pieces ([`layer`]), LoRA
//! included, so a step makes no libtorch calls inside its layers; GPT-2 layers use the pieces
//! op by op.

// unsafe is confined to this module: SIMD intrinsics, and reading or writing the f32 buffers of
// tensors checked to be f32, on the CPU, with the strides used.
#![allow(unsafe_code)]

pub(crate) mod attention;
mod crew;
pub(crate) mod elementwise;
pub(crate) mod gemm;
pub(crate) mod layer;

pub use crew::{take_times as crew_times, CrewTimes};

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use tch::{Device, Kind, Tensor};

/// Which SIMD kernels this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Simd {
    Avx512,
    Avx2,
}

/// The kernels' instruction set, or `None` (kernels off: another CPU, or
/// `RLHF_NO_DECODE_KERNELS` set). In test builds a path forced on this thread (the tests of
/// every path, see [`paths`]) comes first.
pub(crate) fn simd() -> Option<Simd> {
    static SIMD: OnceLock<Option<Simd>> = OnceLock::new();
    #[cfg(test)]
    if let Some(forced) = FORCED.get() {
        return Some(forced);
    }
    *SIMD.get_or_init(|| {
        if std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some() {
            return None;
        }
        let cpu = cpu_paths();
        // RLHF_DECODE_KERNELS=avx2 runs the AVX2 kernels on an AVX-512 CPU (to measure them
        // where no AVX2-only machine is at hand); a path the CPU lacks is ignored.
        let wanted = match std::env::var("RLHF_DECODE_KERNELS").as_deref() {
            Ok("avx2") => Some(Simd::Avx2),
            Ok("avx512") => Some(Simd::Avx512),
            _ => None,
        };
        wanted
            .filter(|p| cpu.contains(p))
            .or_else(|| cpu.first().copied())
    })
}

/// The SIMD paths this CPU can run, the fastest first.
fn cpu_paths() -> Vec<Simd> {
    let mut paths = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            paths.push(Simd::Avx512);
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            paths.push(Simd::Avx2);
        }
    }
    paths
}

#[cfg(test)]
thread_local! {
    /// A path [`simd`] returns on this thread instead of the CPU's best: set by the tests of
    /// every path ([`paths::for_each`]; only test builds have it, so the kernels' hot path
    /// reads no thread-local). The crew's workers are handed the caller's path.
    static FORCED: std::cell::Cell<Option<Simd>> = const { std::cell::Cell::new(None) };
}

/// Tests of every SIMD path: an AVX-512 CPU runs the AVX2 kernels too.
#[cfg(test)]
pub(crate) mod paths {
    use std::io::Write;

    use super::{cpu_paths, Simd, FORCED};

    /// Runs `check` once for each SIMD path, with that path forced on this thread (so
    /// `simd()`, the decode scopes and every kernel use it). A path this CPU cannot run, or
    /// every path when `RLHF_NO_DECODE_KERNELS` is set, is reported as skipped, naming `test`:
    /// written to the process's stderr past the test harness's capture, so `cargo test` shows
    /// it. Returns how many paths ran.
    pub(crate) fn for_each(test: &str, mut check: impl FnMut(Simd)) -> usize {
        let off = std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some();
        let cpu = cpu_paths();
        let mut ran = 0;
        for path in [Simd::Avx512, Simd::Avx2] {
            if off || !cpu.contains(&path) {
                let why = if off {
                    "RLHF_NO_DECODE_KERNELS is set"
                } else {
                    "this CPU lacks it"
                };
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test} on the {path:?} path: {why}"
                );
                continue;
            }
            let _forced = force(path);
            check(path);
            ran += 1;
        }
        ran
    }

    /// Forces `path` on this thread until the guard drops (also when a check panics).
    pub(crate) fn force(path: Simd) -> Forced {
        Forced(FORCED.replace(Some(path)))
    }

    /// Restores the thread's previous path when dropped.
    pub(crate) struct Forced(Option<Simd>);

    impl Drop for Forced {
        fn drop(&mut self) {
            FORCED.set(self.0);
        }
    }
}

/// The instruction set of the vectorised loops that run outside the kernels' scope too (the
/// sampler's weights and max): the kernels' path ([`simd`], so `RLHF_DECODE_KERNELS=avx2`
/// measures them on AVX2), else the CPU's best even with `RLHF_NO_DECODE_KERNELS` set (they
/// give the same bits on every path; turning them off would only slow the sampler down).
fn vector_path() -> Option<Simd> {
    static CPU: OnceLock<Option<Simd>> = OnceLock::new();
    simd().or_else(|| *CPU.get_or_init(|| cpu_paths().first().copied()))
}

/// True where the kernels cover a prompt's prefill too (its products of many rows run in the
/// packed kernels, on AVX-512 and AVX2 alike).
pub(crate) fn prefill_kernels() -> bool {
    simd().is_some()
}

/// All elements of `t` when it is a contiguous f32 CPU tensor, else `None`.
pub(crate) fn floats(t: &Tensor) -> Option<&[f32]> {
    if t.kind() != Kind::Float || t.device() != Device::Cpu || !t.is_contiguous() {
        return None;
    }
    if t.numel() == 0 {
        return Some(&[]);
    }
    // SAFETY: a contiguous f32 CPU tensor of numel elements (checked above), alive for the
    // borrow. The kernels read with grad off, from tensors of their own thread's forward, which
    // nothing writes meanwhile.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const f32, t.numel()) })
}

/// The bytes of `t` when it is a contiguous CPU tensor (any kind), else `None`.
pub(crate) fn bytes(t: &Tensor) -> Option<&[u8]> {
    if t.device() != Device::Cpu || !t.is_contiguous() {
        return None;
    }
    if t.numel() == 0 {
        return Some(&[]);
    }
    let len = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: a contiguous CPU tensor of numel elements of that size (checked above), alive
    // for the borrow; read only, by callers that hold the tensor and write nothing to it.
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, len) })
}

/// All elements of `t`, to write.
///
/// # Safety
/// `t` is a contiguous f32 CPU tensor (a fresh output, or a buffer this thread owns), and
/// nothing else reads or writes it while the slice lives.
#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn floats_mut(t: &Tensor) -> &mut [f32] {
    if t.numel() == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel())
}

/// True while libtorch records gradients.
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: at_grad_set_enabled sets the thread-local grad mode and returns the previous
    // value; setting it straight back leaves the state unchanged.
    unsafe {
        let prev = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(prev);
        prev != 0
    }
}

/// The sampler's weights: `w[i] = exp(logits[i] * inv_t - max)`, NaN where the scaled logit is
/// not finite. The same bits whichever loop runs (see [`crate::exp`]); the loop is compiled for
/// [`vector_path`]'s instruction set and vectorised.
pub(crate) fn sampling_weights(logits: &[f32], inv_t: f64, max: f64, w: &mut [f64]) {
    #[inline(always)]
    fn body(logits: &[f32], inv_t: f64, max: f64, w: &mut [f64]) {
        for (o, &v) in w.iter_mut().zip(logits) {
            let s = v as f64 * inv_t;
            let e = crate::exp::exp_f64(s - max);
            *o = if s.is_finite() { e } else { f64::NAN };
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn body_avx512(logits: &[f32], inv_t: f64, max: f64, w: &mut [f64]) {
        body(logits, inv_t, max, w)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn body_avx2(logits: &[f32], inv_t: f64, max: f64, w: &mut [f64]) {
        body(logits, inv_t, max, w)
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `vector_path()` chose the path after detecting its instruction set.
    match vector_path() {
        Some(Simd::Avx512) => return unsafe { body_avx512(logits, inv_t, max, w) },
        Some(Simd::Avx2) => return unsafe { body_avx2(logits, inv_t, max, w) },
        None => {}
    }
    body(logits, inv_t, max, w)
}

/// The largest finite value of `x` (`None` when none is), in 16 lanes: vectorised, where a
/// fold of `f32::max` runs one compare after another (8192 of them per sampled row).
pub(crate) fn max_finite(x: &[f32]) -> Option<f32> {
    #[inline(always)]
    fn body(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = x.chunks_exact(16);
        let mut best = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| {
            if v.is_finite() && v > m {
                v
            } else {
                m
            }
        });
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = if v.is_finite() && v > *l { v } else { *l };
            }
        }
        for l in lanes {
            best = if l > best { l } else { best };
        }
        best
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn body_avx512(x: &[f32]) -> f32 {
        body(x)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn body_avx2(x: &[f32]) -> f32 {
        body(x)
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `vector_path()` chose the path after detecting its instruction set.
    let best = match vector_path() {
        Some(Simd::Avx512) => unsafe { body_avx512(x) },
        Some(Simd::Avx2) => unsafe { body_avx2(x) },
        None => body(x),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let best = body(x);
    (best != f32::NEG_INFINITY).then_some(best)
}

/// Runs `work(range)` over consecutive ranges covering `0..len` (each a whole multiple of
/// `align` long, but the last), one per thread of the [`crew`]: the first on the calling thread.
pub(crate) fn ranges(len: usize, align: usize, work: impl Fn(Range<usize>) + Sync) {
    let Some(crew) = crew::crew() else {
        return work(0..len);
    };
    let per = (len.div_ceil(crew.parts()).div_ceil(align) * align).max(1);
    if per >= len {
        return work(0..len);
    }
    crew.run(&|p| {
        let start = (p * per).min(len);
        let end = (start + per).min(len);
        if start < end {
            work(start..end);
        }
    });
}

/// Pieces a [`claimed`] job is cut into: enough that the thread that finishes first waits
/// for at most about one piece of the other's, few enough that each piece still streams
/// (a decode step's 512-column products take one 32-column tile a piece).
const PIECES: usize = 16;

/// Length of each of [`PIECES`] pieces of `len` items, a whole multiple of `align`.
fn piece_len(len: usize, align: usize) -> usize {
    (len.div_ceil(PIECES).div_ceil(align) * align).max(1)
}

/// Runs `work(next)` once per thread of the [`crew`] (the first on the calling thread), where
/// `next()` hands out ranges of `0..len` (each a whole multiple of `align` long, but the last)
/// until all are handed out, then `None`. `0..len` is cut into [`PIECES`] pieces and each
/// thread starts with an equal share of consecutive pieces, which it takes front to back (one
/// stream through the weights, as a fixed split reads them); a thread that has finished its
/// own takes the last piece left of another's share. So a thread that runs faster does more:
/// on a small VM, in 30 runs of `generate` with a fixed split, one thread's parts took 0-47%
/// longer than the other's (over 10% in 13 runs), and the other waited up to 28% of the call
/// (docs/performance.md).
pub(crate) fn claimed<W>(len: usize, align: usize, work: W)
where
    W: Fn(&mut dyn FnMut() -> Option<Range<usize>>) + Sync,
{
    claimed_on(crew::crew(), len, align, work)
}

/// [`claimed`] on `crew` (`None`: all on the calling thread).
fn claimed_on<W>(crew: Option<&crew::Crew>, len: usize, align: usize, work: W)
where
    W: Fn(&mut dyn FnMut() -> Option<Range<usize>>) + Sync,
{
    let chunk = piece_len(len, align);
    let count = len.div_ceil(chunk);
    let Some(crew) = crew.filter(|_| count > 1) else {
        let mut all = (len > 0).then_some(0..len);
        return work(&mut || all.take());
    };
    let parts = crew.parts();
    let per = count.div_ceil(parts);
    // Each share's pieces not yet taken, as `first | last << 32` (first..last).
    let shares: Vec<AtomicU64> = (0..parts)
        .map(|p| {
            let (first, last) = ((p * per).min(count), ((p + 1) * per).min(count));
            AtomicU64::new(first as u64 | (last as u64) << 32)
        })
        .collect();
    // The first piece left of `share` (its owner), or the last one (another thread).
    let take = |share: &AtomicU64, front: bool| {
        let mut now = share.load(Ordering::Relaxed);
        loop {
            let (first, last) = (now & u32::MAX as u64, now >> 32);
            if first >= last {
                return None;
            }
            let (piece, next) = match front {
                true => (first, (first + 1) | last << 32),
                false => (last - 1, first | (last - 1) << 32),
            };
            match share.compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(piece as usize),
                Err(seen) => now = seen,
            }
        }
    };
    crew.run(&|p| {
        work(&mut || {
            let piece = take(&shares[p], true)
                .or_else(|| (1..parts).find_map(|i| take(&shares[(p + i) % parts], false)))?;
            Some(piece * chunk..((piece + 1) * chunk).min(len))
        })
    });
}

/// Runs `work(first, part)` over the parts of `items` that [`claimed`] hands out (whole
/// multiples of `align`, but the last); `first` is the part's offset in `items`.
pub(crate) fn split<T: Send>(items: &mut [T], align: usize, work: impl Fn(usize, &mut [T]) + Sync) {
    if crew::crew().is_none() {
        return work(0, items);
    }
    let chunk = piece_len(items.len(), align);
    let parts: Vec<Mutex<(usize, &mut [T])>> = items
        .chunks_mut(chunk)
        .enumerate()
        .map(|(i, part)| Mutex::new((i * chunk, part)))
        .collect();
    claimed(parts.len(), 1, |next| {
        while let Some(r) = next() {
            for part in &parts[r] {
                let mut part = part.lock().unwrap_or_else(|e| e.into_inner());
                let first = part.0;
                work(first, part.1);
            }
        }
    });
}

/// Elements from which [`split_large`] splits: a decode step's activations (16 x 512 to
/// 16 x 1408) stay on the calling thread (splitting them gained nothing measurable); a
/// prefill's (1024 x 512 and up) are split.
const LARGE: usize = 1 << 15;

/// Runs `work(first, part)` over `items` as [`split`] does when there are at least [`LARGE`]
/// of them and the crew is this thread's (a decode scope); else over all of them here.
pub(crate) fn split_large<T: Send>(
    items: &mut [T],
    align: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    if items.len() >= LARGE && DECODING.get() {
        split(items, align, work)
    } else {
        work(0, items)
    }
}

thread_local! {
    /// True inside a [`DecodeThreads`] scope that turned the kernels on.
    static DECODING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The kernels' instruction set when they are on for this thread: inside the decode steps of
/// `generate` (a [`DecodeThreads`] scope), on a CPU they support.
pub(crate) fn enabled() -> Option<Simd> {
    if DECODING.get() {
        simd()
    } else {
        None
    }
}

/// Fewest sequences for which the op-by-op kernels pay (GPT-2): measured when its products ran
/// on a 16-lane row panel that was mostly padding for small batches, with libtorch's per-op
/// costs on top; small batches were slower with the kernels than without (docs/performance.md;
/// not re-measured since the products read packed weights). Fused Llama layers pay from one
/// sequence.
const MIN_ROWS: usize = 8;

/// The decode steps of `generate`: turns the kernels on for this thread while it lives, when
/// they suit `rows` sequences of a `kind` model on `device`, and then makes libtorch
/// single-threaded (see the module docs). Outside such a scope every product and attention is
/// libtorch's.
pub(crate) struct DecodeThreads {
    /// Whether the kernels were turned on (and the previous state to restore).
    on: Option<bool>,
    /// libtorch's thread count to restore.
    restore: Option<i32>,
    /// Keeps the crew spinning between the step's jobs.
    _hot: Option<crew::Hot>,
}

impl DecodeThreads {
    /// The scope for `rows` sequences of a model run op by op (at least [`MIN_ROWS`]).
    pub fn enter(rows: i64, kind: Kind, device: Device) -> Self {
        Self::enter_from(MIN_ROWS, rows, kind, device)
    }

    /// The scope for a model whose decode layers run fused ([`layer`]): from one sequence.
    pub fn enter_fused(rows: i64, kind: Kind, device: Device) -> Self {
        Self::enter_from(1, rows, kind, device)
    }

    fn enter_from(min_rows: usize, rows: i64, kind: Kind, device: Device) -> Self {
        let applies = simd().is_some()
            && (min_rows..=gemm::MAX_ROWS as usize).contains(&(rows.max(0) as usize))
            && kind == Kind::Float
            && device == Device::Cpu;
        if !applies {
            return DecodeThreads {
                on: None,
                restore: None,
                _hot: None,
            };
        }
        let on = Some(DECODING.replace(true));
        let threads = tch::get_num_threads();
        let Some(crew) = (threads > 1).then(crew::crew).flatten() else {
            return DecodeThreads {
                on,
                restore: None,
                _hot: None,
            };
        };
        let hot = crew::Hot::new(crew);
        tch::set_num_threads(1);
        DecodeThreads {
            on,
            restore: Some(threads),
            _hot: Some(hot),
        }
    }

    /// True when the kernels are on and own the threads (libtorch runs single-threaded).
    pub fn active(&self) -> bool {
        self.restore.is_some()
    }
}

impl Drop for DecodeThreads {
    fn drop(&mut self) {
        if self.on.is_some() {
            gemm::forget_packed();
        }
        if let Some(previous) = self.on {
            DECODING.set(previous);
        }
        if let Some(n) = self.restore {
            tch::set_num_threads(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every index of `0..len` once, in ranges that start at a multiple of `align`, on one
    /// thread or two; and a thread slowed down leaves pieces of its share to the other.
    #[test]
    fn claimed_ranges_cover_everything_once_and_the_faster_thread_takes_more() {
        use std::sync::atomic::AtomicUsize;
        // Its own crew: another test's job on a shared one would make this thread run every part.
        let two = crew::two(1);
        for crew in [None, Some(two)] {
            for (len, align) in [
                (0, 1),
                (1, 1),
                (5, 1),
                (16, 1),
                (17, 3),
                (512, 32),
                (2816, 32),
                (8192, 32),
            ] {
                let hits: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
                claimed_on(crew, len, align, |next| {
                    while let Some(r) = next() {
                        assert_eq!(r.start % align, 0, "{r:?}");
                        assert!(!r.is_empty() && r.end <= len, "{r:?} of {len}");
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                    "{len} {align}"
                );
            }
        }
        let caller = std::thread::current().id();
        for slow_caller in [true, false] {
            let by_caller = AtomicUsize::new(0);
            claimed_on(Some(two), PIECES, 1, |next| {
                let here = std::thread::current().id() == caller;
                while next().is_some() {
                    if here {
                        by_caller.fetch_add(1, Ordering::Relaxed);
                    }
                    if here == slow_caller {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
            });
            let n = by_caller.load(Ordering::Relaxed);
            let share = PIECES / two.parts();
            match slow_caller {
                true => assert!(
                    n < share,
                    "the slow calling thread took {n} of {PIECES} pieces"
                ),
                false => assert!(
                    n > share,
                    "the fast calling thread took {n} of {PIECES} pieces"
                ),
            }
        }
    }

    /// The sampler's weights and max and SwiGLU, compiled for each SIMD path, give the bits
    /// of the plain loops written out here (no fused multiply-add, see [`crate::exp`]).
    #[test]
    fn vectorised_loops_give_the_plain_loops_bits_on_every_path() {
        let mut rng = crate::rng::rng_for(4, "loops");
        let mut draw = || (crate::rng::normal(&mut rng) * 6.0) as f32;
        let logits: Vec<f32> = (0..1003)
            .map(|i| {
                if i % 97 == 3 {
                    f32::NEG_INFINITY
                } else {
                    draw()
                }
            })
            .collect();
        let (gate, up): (Vec<f32>, Vec<f32>) = (0..1003).map(|_| (draw(), draw())).unzip();
        let (inv_t, max) = (1.0 / 0.7, 8.0);
        let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let plain_w: Vec<f64> = logits
            .iter()
            .map(|&v| {
                let s = v as f64 * inv_t;
                let e = crate::exp::exp_f64(s - max);
                if s.is_finite() {
                    e
                } else {
                    f64::NAN
                }
            })
            .collect();
        let plain_max = logits
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        let plain_swiglu: Vec<f32> = gate
            .iter()
            .zip(&up)
            .map(|(&g, &u)| g / (1.0 + crate::exp::exp_f32(-g)) * u)
            .collect();
        let ran = paths::for_each("vectorised_loops_give_the_plain_loops_bits", |path| {
            let mut w = vec![0f64; logits.len()];
            sampling_weights(&logits, inv_t, max, &mut w);
            assert_eq!(bits64(&w), bits64(&plain_w), "{path:?}: sampling weights");
            assert_eq!(max_finite(&logits), Some(plain_max), "{path:?}: max");
            let mut y = vec![0f32; gate.len()];
            elementwise::swiglu_rows(path, &gate, &up, &mut y);
            assert_eq!(bits32(&y), bits32(&plain_swiglu), "{path:?}: swiglu");
        });
        assert!(
            ran > 0
                || std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some()
                || !cfg!(target_arch = "x86_64")
        );
    }

    #[test]
    fn max_finite_skips_infinities_and_nan_at_any_length() {
        let mut rng = crate::rng::rng_for(2, "max");
        for len in [0usize, 1, 5, 16, 17, 100, 8192] {
            let mut x: Vec<f32> = (0..len)
                .map(|_| crate::rng::normal(&mut rng) as f32 * 4.0)
                .collect();
            // Non-finite values, the largest of all among them, at varying places.
            for (i, v) in [f32::INFINITY, f32::NAN, f32::NEG_INFINITY]
                .into_iter()
                .enumerate()
            {
                if len > 3 {
                    x[(i * 7 + len / 2) % len] = v;
                }
            }
            let want = x
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))));
            assert_eq!(max_finite(&x), want, "length {len}");
        }
        assert_eq!(
            max_finite(&[f32::NAN, f32::NEG_INFINITY, f32::INFINITY]),
            None
        );
        assert_eq!(max_finite(&[f32::NEG_INFINITY, -3.0]), Some(-3.0));
    }
}
