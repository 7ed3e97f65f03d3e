//! `x W^T (+ b)` for the few-row products of incremental decoding on the CPU.
//!
//! A decode step multiplies a handful of rows (one per sequence) by every weight matrix of the
//! model. BLAS libraries are tuned for large products; with 16 rows libtorch's MKL sgemm reaches
//! about half of the machine's matmul rate (figures: docs/performance.md). The kernels here stream each
//! weight once and keep the rows' sums in registers. Output columns are split across the
//! calling thread and the decode crew (see [`super::DecodeThreads`]).
//!
//! The weights are read from a copy packed 32 output columns to a tile ([`pack`]), aligned to
//! cache lines and prefetched into L2 ahead of use: two AVX-512 vectors (four AVX2 ones) hold a
//! tile's 32 weights of input column k, and each row's `x[i, k]` is broadcast and multiplied
//! into them, two accumulators per row, so a tile costs as many multiply-adds per column as
//! there are rows (a batch of 4 does a quarter of the work of 16). Weights of fewer than 32
//! rows (LoRA's A up to rank 16) are not packed: `x` is transposed into (k, 16) panels, one
//! vector holding column k of all rows, and each weight value is broadcast.
//!
//! Used only inside a decode scope where no autograd record is needed and the shapes suit it:
//! grad mode off, f32, CPU, contiguous weight, a CPU with AVX-512F or AVX2+FMA, and at most
//! [`MAX_ROWS`] rows, or any number with the packed kernel (a Llama prefill); everywhere else
//! (training, scoring, bf16, CUDA) libtorch computes the product. Sums run over k in order
//! with fused multiply-adds, so results differ from MKL's only by float rounding (~1e-6
//! relative).

#![allow(unsafe_code)]

use tch::{Device, Kind, Tensor};

use std::collections::HashMap;
use std::rc::Rc;

use super::{claimed, enabled, floats, floats_mut, grad_enabled, ranges, split, Simd};

/// Rows of `x` (the product of its leading dimensions) up to which the panel kernels are used;
/// above it they stream the weight once per 16 rows and BLAS is as fast. The packed kernels
/// (weights of at least [`PACKED_COLS`] rows) take any number of rows: a prompt's prefill
/// inside a decode scope, where they beat MKL on the `sampling` bench's shapes
/// (docs/performance.md).
pub const MAX_ROWS: i64 = 32;

/// Lanes of a row panel: one AVX-512 vector, or two AVX2 vectors.
const LANES: usize = 16;

/// Weight rows per output tile of the panel kernels.
const TILE: usize = 8;

/// Output columns per tile of packed weights: two AVX-512 vectors, four AVX2 ones. With 16 (one
/// AVX-512 vector, a broadcast per multiply-add) the kernel ran at about half the FMA rate on
/// an Emerald Rapids Xeon (docs/performance.md).
const PACKED_COLS: usize = 32;

/// Rows the AVX2 packed kernel multiplies half a tile by at once (the AVX-512 one takes 14).
const AVX2_ROWS: usize = 6;

/// Columns of a packed tile the AVX2 kernel multiplies all rows by before the next ones (16 KB
/// of weights).
const AVX2_BLOCK: usize = 128;

// The AVX2 kernel's prefetches of "the block ahead" are `x86::PREFETCH` floats ahead.
#[cfg(target_arch = "x86_64")]
const _: () = assert!(x86::PREFETCH == AVX2_BLOCK * PACKED_COLS);

/// `x (..., in) W^T + bias` with `weight` (out, in): this module's kernel where it applies,
/// libtorch's `linear` everywhere else.
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    try_linear(x, weight, bias).unwrap_or_else(|| x.linear(weight, bias))
}

/// `y + scale * x W^T` with `y` (..., out), `x` (..., in) and `weight` (out, in) (a LoRA's
/// delta on its module's output), in `y`'s kind. Where this module's kernel applies, its
/// product, scaled and added; elsewhere one libtorch `addmm` (the scale and the sum inside
/// the product: no pass over the output to scale it and none to add it, forward or backward;
/// the scale multiplies `x`, of LoRA's rank columns, instead: exact for a power of two, as
/// alpha / rank usually is, one rounding of difference otherwise).
pub(crate) fn add_scaled_linear(y: Tensor, x: &Tensor, weight: &Tensor, scale: f64) -> Tensor {
    if let Some(delta) = try_linear(x, weight, None) {
        let kind = y.kind();
        return y + (delta * scale).to_kind(kind);
    }
    let (ys, xs) = (y.size(), x.size());
    let (out, k) = (*ys.last().unwrap_or(&0), *xs.last().unwrap_or(&0));
    if y.kind() != x.kind() || y.kind() != weight.kind() || ys.len() != xs.len() {
        let kind = y.kind();
        return y + (x.linear(weight, None::<&Tensor>) * scale).to_kind(kind);
    }
    y.reshape([-1, out])
        .addmm(&(x.reshape([-1, k]) * scale), &weight.tr())
        .view(ys.as_slice())
}

/// The kernel's `linear`, or `None` when it does not apply (see the module docs).
fn try_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let simd = enabled()?;
    let dims = x.size();
    let k = *dims.last()?;
    let m: i64 = dims[..dims.len() - 1].iter().product();
    let wdims = weight.size();
    if m == 0
        || wdims.len() != 2
        || wdims[1] != k
        || (m > MAX_ROWS && wdims[0] < PACKED_COLS as i64)
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
    let (xs, ws) = (floats(&x)?, floats(weight)?);
    let out = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
    // SAFETY: `out` is a fresh contiguous f32 tensor of m*n elements, owned here.
    let ys = unsafe { floats_mut(&out) };
    matmul(simd, xs, mu, ku, ws, nu, ys);
    let mut shape = dims;
    *shape.last_mut()? = n;
    let out = out.view(shape.as_slice());
    Some(match bias {
        Some(b) => out + b,
        None => out,
    })
}

/// `y (m, n) = x (m, k) w^T` with `w` (n, k) a weight of the decode scope, all row-major: read
/// from its packed copy where the kernel uses one ([`packed_weights`]).
pub(super) fn matmul(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    y: &mut [f32],
) {
    let packed = packed_weights(w, n, k);
    product(
        simd,
        x,
        m,
        k,
        (w, packed.as_deref().map(Packed::tiles)),
        n,
        y,
    );
}

/// `y (m, n) = x (m, k) w^T` with `w` (n, k), all row-major; `packed`, when given, holds the
/// same weights' whole tiles in the [`pack`] layout and is read instead of `w` for them.
fn product(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    (w, packed): (&[f32], Option<&[f32]>),
    n: usize,
    y: &mut [f32],
) {
    assert!(x.len() >= m * k && w.len() >= n * k && y.len() >= m * n);
    if m == 0 || k == 0 {
        // an empty sum (the kernels below take at least one row and one column)
        y[..m * n].fill(0.0);
        return;
    }
    match packed {
        Some(p) => product_packed(simd, x, m, k, (w, p), n, y),
        None => product_panel(simd, x, m, k, w, n, y),
    }
}

/// [`product`] from packed weights: each thread takes ranges of whole tiles of [`PACKED_COLS`]
/// output columns as [`claimed`] hands them out ([`x86::packed_tiles`]); a tile's 32 columns
/// fill two AVX-512 vectors (14 rows at a time; AVX2: 16 columns in two vectors, 6 rows at a
/// time), and each row of `x` is broadcast a value at a time, so `x` is read where it lies (no
/// panel) and each accumulator is one output row's slice, stored straight into `y`. The
/// `n % PACKED_COLS` last columns, which `p` does not hold, are plain dot products over `w`.
fn product_packed(
    simd: Simd,
    x: &[f32],
    m: usize,
    k: usize,
    (w, p): (&[f32], &[f32]),
    n: usize,
    y: &mut [f32],
) {
    let whole = n - n % PACKED_COLS;
    assert_eq!(p.len(), whole * k);
    thread_local! {
        /// This thread's copy of `x` with padded rows, reused across calls.
        static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        /// The calling thread's copy shared with the crew (many rows), reused across calls.
        static SHARED_ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// The shared copy's address, read by every thread of the product.
    #[derive(Clone, Copy)]
    struct Rows(*const f32);
    // SAFETY: the buffer is written before the product's job starts and only read during it;
    // the calling thread keeps it alive and untouched until the job has ended.
    unsafe impl Send for Rows {}
    // SAFETY: as above.
    unsafe impl Sync for Rows {}
    // Rows a whole number of cache lines plus one apart: at the plain stride of k = 512 floats
    // (2 KB) the 16 rows' current lines all fall in 2 of the L1 cache's 64 sets.
    let stride = k.next_multiple_of(LANES) + LANES;
    // Many rows (a prefill): one padded copy, made across the crew, that every thread reads;
    // a copy per thread cost the thread whose rows were elsewhere (another core's cache)
    // noticeably more than the other. Few rows: a copy per thread, made where it is read.
    let shared = (m > MAX_ROWS as usize).then(|| {
        SHARED_ROWS.with_borrow_mut(|xs| {
            if xs.len() < m * stride {
                xs.resize(m * stride, 0.0);
            }
            split(&mut xs[..m * stride], stride, |first, part| {
                pad_rows(&x[first / stride * k..m * k], (k, stride), part)
            });
            Rows(xs.as_ptr())
        })
    });
    let out = Out(y.as_mut_ptr());
    claimed(n, PACKED_COLS, |next| {
        // Copied in, as in `product_panel`.
        let (out, n, k) = (out, n, k);
        let xs = match shared {
            Some(Rows(p)) => p,
            None => ROWS.with_borrow_mut(|xs| {
                if xs.len() < m * stride {
                    xs.resize(m * stride, 0.0);
                }
                pad_rows(&x[..m * k], (k, stride), &mut xs[..m * stride]);
                xs.as_ptr()
            }),
        };
        while let Some(cols) = next() {
            let (j0, j1) = (cols.start.min(whole), cols.end.min(whole));
            // (Only x86-64 has packed kernels: `simd()` is `None` elsewhere and nothing gets here.)
            #[cfg(target_arch = "x86_64")]
            if j0 < j1 {
                // A prefill's many rows a block at a time, so that the block's rows stay in L2
                // while this thread's tiles pass (all rows of a 64-token batch of 16 are 2 MB at
                // k = 512, a core's whole L2 on the Xeon this was measured on).
                let block = x86::row_block(simd);
                for r0 in (0..m).step_by(block) {
                    let (rows, tiles) = ((m - r0).min(block), &p[j0 * k..j1 * k]);
                    // SAFETY: `simd()` detected the instruction set of `simd`'s kernel; the rows
                    // r0.. of the padded copy of x (this thread's, or the shared one: k floats
                    // each, `stride` apart, untouched until the product ends) and the tiles j0..j1
                    // (k x 32 each) are inside their buffers; those rows' columns j0..j1 are
                    // inside y (m, n), asserted in `product`, and this thread alone writes columns
                    // `cols`.
                    unsafe {
                        x86::packed_tiles(
                            simd,
                            rows,
                            xs.add(r0 * stride),
                            (k, stride),
                            tiles,
                            out.at(r0 * n + j0),
                            n,
                        )
                    };
                }
            }
            for jj in cols.start.max(whole)..cols.end {
                let wr = &w[jj * k..(jj + 1) * k];
                for i in 0..m {
                    let xr = &x[i * k..(i + 1) * k];
                    let v = wr
                        .iter()
                        .zip(xr)
                        .fold(0f32, |a, (&wv, &xv)| wv.mul_add(xv, a));
                    // SAFETY: (i, jj) is inside y (m, n); this thread alone writes `cols`.
                    unsafe { out.write(i * n + jj, v) };
                }
            }
        }
    });
}

/// Copies rows of `k` floats from `src` into `dst` at `stride` floats apart, as many as both
/// hold.
fn pad_rows(src: &[f32], (k, stride): (usize, usize), dst: &mut [f32]) {
    for (d, s) in dst.chunks_exact_mut(stride).zip(src.chunks_exact(k)) {
        d[..k].copy_from_slice(s);
    }
}

/// [`product`] without packed weights: `x` is transposed into (k, 16) row panels, one vector
/// holding column k of all rows, and each weight row streams through once, broadcast a value
/// at a time into [`TILE`] accumulators (weights of fewer than [`PACKED_COLS`] rows, such as
/// LoRA's A).
fn product_panel(simd: Simd, x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    thread_local! {
        /// The row panel, reused across calls: a decode step makes dozens of products.
        static PANEL: std::cell::RefCell<Vec<[f32; LANES]>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let out = Out(y.as_mut_ptr());
    PANEL.with_borrow_mut(|buf| {
        // Grown only: products of different k alternate within a step.
        if buf.len() < k {
            buf.resize(k, [0.0; LANES]);
        }
        let panel = &mut buf[..k];
        for r0 in (0..m).step_by(LANES) {
            let rows = LANES.min(m - r0);
            if rows < LANES {
                panel.fill([0.0; LANES]);
            }
            transpose_rows(simd, &x[r0 * k..(r0 + rows) * k], k, panel);
            let panel = &*panel;
            // Each thread computes whole tiles of output columns and writes them into `y`.
            ranges(n, TILE, |cols| {
                // Copied in: read through the closure's borrows, they were reloaded after every
                // store to `y` (which might alias them, as far as the compiler knows).
                let (out, n, r0, rows) = (out, n, r0, rows);
                let mut tile = [[0f32; LANES]; TILE];
                for j in cols.clone().step_by(TILE) {
                    let t = TILE.min(cols.end - j);
                    block(simd, panel, &w[j * k..(j + t) * k], k, &mut tile[..t]);
                    for i in 0..rows {
                        let at = (r0 + i) * n + j;
                        for (c, lanes) in tile[..t].iter().enumerate() {
                            // SAFETY: (r0 + i, j + c) is inside y (m, n), asserted in
                            // `product`; this thread alone writes columns `cols`, and `y`
                            // outlives `ranges`.
                            unsafe { out.write(at + c, lanes[i]) };
                        }
                    }
                }
            });
        }
    });
}

/// `panel[kk][i] = x[i * k + kk]` for the rows of `x` (at most LANES of k floats): 16 x 16
/// blocks transposed in registers with AVX-512 when there are 16 rows, element by element
/// otherwise (and for the last k % 16 columns).
fn transpose_rows(simd: Simd, x: &[f32], k: usize, panel: &mut [[f32; LANES]]) {
    let rows = x.len() / k;
    assert!(rows <= LANES && panel.len() >= k);
    let mut k0 = 0;
    #[cfg(target_arch = "x86_64")]
    if simd == Simd::Avx512 && rows == LANES {
        while k0 + LANES <= k {
            // SAFETY: AVX-512F detected by `simd()`; rows 0..16 of columns k0..k0+16 are inside
            // x (16 * k floats), and panel rows k0..k0+16 inside panel.
            unsafe { x86::transpose16_avx512(x.as_ptr().add(k0), k, panel[k0..].as_mut_ptr()) };
            k0 += LANES;
        }
    }
    let _ = simd;
    // The rest in blocks of LANES columns, so the panel rows being written stay in L1.
    for c0 in (k0..k).step_by(LANES) {
        let c1 = (c0 + LANES).min(k);
        for i in 0..rows {
            for (p, &v) in panel[c0..c1].iter_mut().zip(&x[i * k + c0..i * k + c1]) {
                p[i] = v;
            }
        }
    }
}

/// Weight tiles packed for streaming: for each tile of [`PACKED_COLS`] weight rows (output
/// columns), element `(j0 + c, k)` at `j0 * K + k * PACKED_COLS + c`, so a tile's k-th column is
/// two 64-byte vectors and a product reads the whole matrix front to back in one stream. Only
/// whole tiles; the `n % PACKED_COLS` last rows stay in `w`.
/// Packed tiles read faster than row-major weights, and prefetching into L2 faster than into
/// L1 (docs/performance.md).
fn pack(w: &[f32], n: usize, k: usize) -> Packed {
    const C: usize = PACKED_COLS;
    let len = (n - n % C) * k;
    // Every element is written below, so a spare buffer's old contents do not matter.
    let mut buf = SPARE
        .with_borrow_mut(|spare| {
            let i = spare.iter().position(|b| b.len() == len + ALIGN_SLACK)?;
            Some(spare.swap_remove(i))
        })
        .unwrap_or_else(|| vec![0f32; len + ALIGN_SLACK]);
    let off = buf.as_ptr().align_offset(64);
    split(&mut buf[off..off + len], C * k, |first, part| {
        for (t, tile) in part.chunks_exact_mut(C * k).enumerate() {
            let rows = &w[(first / k + t * C) * k..][..C * k];
            // Written in order, the tile's 32 source rows read a column at a time: their
            // current cache lines (2 KB) stay in L1 for 16 columns each.
            for (kk, col) in tile.chunks_exact_mut(C).enumerate() {
                for (c, v) in col.iter_mut().enumerate() {
                    *v = rows[c * k + kk];
                }
            }
        }
    });
    Packed { buf, off, len }
}

/// Floats a packed copy's buffer holds beyond its tiles, so that the tiles can start at a
/// 64-byte boundary wherever the allocator put the buffer.
const ALIGN_SLACK: usize = 15;

/// A packed copy of a weight ([`pack`]): its tiles start at a 64-byte boundary, so no vector
/// load of a tile's column straddles two cache lines (a large buffer comes from `mmap` 16
/// bytes past a page boundary; loads across two lines halved the 32-column kernel's rate on
/// AVX-512, docs/performance.md).
struct Packed {
    /// The buffer: `len + ALIGN_SLACK` floats.
    buf: Vec<f32>,
    /// Where the tiles start in `buf`.
    off: usize,
    /// Floats of the tiles.
    len: usize,
}

impl Packed {
    /// The tiles.
    fn tiles(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }
}

/// A weight's address, rows and columns.
type PackKey = (usize, usize, usize);

thread_local! {
    /// The packed copies of the weights multiplied in the current decode scope, by (address,
    /// rows, columns); cleared when the scope ends ([`forget_packed`]).
    static PACKED: std::cell::RefCell<HashMap<PackKey, Rc<Packed>>> =
        std::cell::RefCell::new(HashMap::new());

    /// The buffers of the last scope's packed copies, for the next scope's to reuse: freshly
    /// allocated, a copy's memory costs a page fault per 4 KB on first write (a `generate` on
    /// a ~30M Llama packs about 100 MB). Kept until the next scope ends, so a process that samples holds
    /// the copies between calls as well as during them.
    static SPARE: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The packed copy of `w` (n, k) for the packed kernels, made on first use in a decode scope.
/// Inside the scope the weights are the model's and do not change (no training runs in
/// `generate`), so the address identifies them; the copies last until the scope ends, a second
/// copy of the weights `generate` multiplies.
fn packed_weights(w: &[f32], n: usize, k: usize) -> Option<Rc<Packed>> {
    if n < PACKED_COLS {
        return None;
    }
    let key = (w.as_ptr() as usize, n, k);
    Some(PACKED.with_borrow_mut(|m| {
        m.entry(key)
            .or_insert_with(|| Rc::new(pack(w, n, k)))
            .clone()
    }))
}

/// Drops this thread's packed weights (at the end of a decode scope), keeping their buffers
/// as the spares of the next scope (and dropping the unused spares of this one).
pub(super) fn forget_packed() {
    let done: Vec<Vec<f32>> = PACKED.with_borrow_mut(|m| {
        m.drain()
            .filter_map(|(_, p)| Rc::try_unwrap(p).ok().map(|p| p.buf))
            .collect()
    });
    SPARE.set(done);
}

/// `y`'s buffer, written by several threads at disjoint columns.
#[derive(Clone, Copy)]
struct Out(*mut f32);

impl Out {
    /// The address of element `i` (inside the buffer).
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// `i` is inside the buffer, and no other thread accesses element `i` meanwhile.
    unsafe fn write(self, i: usize, v: f32) {
        *self.0.add(i) = v;
    }
}

// SAFETY: each thread writes only its own columns (see `product`).
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

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

    use super::{Simd, AVX2_BLOCK, AVX2_ROWS, LANES, PACKED_COLS, TILE};

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

    /// Writes `out[j][i] = x[i * stride + j]` for i, j < 16: sixteen rows of 16 floats
    /// transposed in registers (64 shuffles).
    ///
    /// # Safety
    /// AVX-512F; `x` is readable at `i * stride + j` and `out` writable for 16 rows.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose16_avx512(x: *const f32, stride: usize, out: *mut [f32; LANES]) {
        let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(x.add(i * stride)));
        // Pairs of rows interleaved 32 bits at a time, then 64: u[4g + c] holds, per 128-bit
        // lane l, rows 4g..4g+4 of column 4l + c.
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
            let (lo_ab, hi_ab) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let (lo_cd, hi_cd) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            let pd = |v: __m512| _mm512_castps_pd(v);
            let ps = |v: __m512d| _mm512_castpd_ps(v);
            u[4 * g] = ps(_mm512_unpacklo_pd(pd(lo_ab), pd(lo_cd)));
            u[4 * g + 1] = ps(_mm512_unpackhi_pd(pd(lo_ab), pd(lo_cd)));
            u[4 * g + 2] = ps(_mm512_unpacklo_pd(pd(hi_ab), pd(hi_cd)));
            u[4 * g + 3] = ps(_mm512_unpackhi_pd(pd(hi_ab), pd(hi_cd)));
        }
        for c in 0..4 {
            // Lanes regrouped: v0 = rows 0-7 of columns c and c + 8, v1 of c + 4 and c + 12;
            // w0, w1 the same for rows 8-15.
            let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let v1 = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            let w0 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
            let o = |j: usize| out.add(j) as *mut f32;
            _mm512_storeu_ps(o(c), _mm512_shuffle_f32x4::<0x88>(v0, w0));
            _mm512_storeu_ps(o(c + 8), _mm512_shuffle_f32x4::<0xdd>(v0, w0));
            _mm512_storeu_ps(o(c + 4), _mm512_shuffle_f32x4::<0x88>(v1, w1));
            _mm512_storeu_ps(o(c + 12), _mm512_shuffle_f32x4::<0xdd>(v1, w1));
        }
    }

    /// How far ahead of the tile column being read the packed kernels prefetch, in floats
    /// (16 KB; in a C model of the 16-column kernel 8-64 KB ahead ran alike).
    pub(super) const PREFETCH: usize = 4096;

    /// Bytes of one column k of a packed tile (two cache lines).
    const COL_BYTES: usize = PACKED_COLS * 4;

    /// Rows a pass of the AVX-512 kernel multiplies a tile by: 28 accumulators (two vectors a
    /// row), the tile column's two vectors and the broadcast take 31 of the 32 registers.
    const AVX512_ROWS: usize = 14;

    /// Columns k of the tiles the AVX-512 kernel multiplies a decode step's rows by before the
    /// next ones (16 KB of a tile, the rows' 512 bytes each).
    const AVX512_BLOCK: usize = 128;

    // A decode step's block of a tile is as long as the prefetch distance, so prefetching the
    // next tile's block at the same column stays `PREFETCH` floats ahead of the reads.
    const _: () = assert!(PREFETCH == AVX512_BLOCK * PACKED_COLS);

    /// `y[i * n + 32 j + c] = sum_kk tiles[j][kk * 32 + c] * x[i * stride + kk]` for the `m`
    /// rows and every tile j of `tiles` (`tiles.len() / (32 k)` whole tiles). Sums run over k
    /// in order, on both paths (the same bits).
    ///
    /// AVX-512: [`AVX512_ROWS`] rows a pass, each column of the tile two vector loads and two
    /// fused multiply-adds per row with the row's `x[i, k]` broadcast. A decode step's few rows
    /// (at most [`super::MAX_ROWS`]) take [`AVX512_BLOCK`] columns k of every tile at a time,
    /// each tile's partial sums kept in `y` between blocks, so the later passes over a block
    /// and the rows' block (8 KB for 16 rows) stay in L1 while the tiles stream past, and the
    /// passes share out the prefetches of the next tile's block into L2. A prefill's many rows
    /// (a [`row_block`] of them per call) take whole tiles, the first pass prefetching the
    /// next tile. A partial sum stored and loaded back is the same float, so blocks do not
    /// change the bits.
    ///
    /// AVX2, whose registers hold [`super::AVX2_ROWS`] rows of 16 columns: each tile as two
    /// halves of 16 columns, [`AVX2_BLOCK`] columns of both halves at a time for all rows, so
    /// the weights stream from memory while every pass runs (the prefetches of the block ahead
    /// spread evenly over the passes), not in the first pass only. That is for a decode step's
    /// few rows; a prefill's many rows take each half whole a pass, each pass prefetching its
    /// half's line of the column `PREFETCH` floats ahead (blocks of all rows re-streamed the
    /// rows' copy per block: the prefill measured slower).
    ///
    /// # Safety
    /// The CPU has `simd`'s instruction set (AVX-512F, or AVX2 and FMA); m and k at least 1;
    /// `x` readable at `i * stride + kk` for i < m, kk < k, `tiles` whole k x 32 tiles, and `y`
    /// readable and writable at `i * n + c` for i < m and the tiles' columns c by this thread
    /// alone (the kernels read back the partial sums they wrote there).
    pub(super) unsafe fn packed_tiles(
        simd: Simd,
        m: usize,
        x: *const f32,
        (k, stride): (usize, usize),
        tiles: &[f32],
        y: *mut f32,
        n: usize,
    ) {
        let size = k * PACKED_COLS;
        assert_eq!(tiles.len() % size, 0);
        let count = tiles.len() / size;
        match simd {
            Simd::Avx512 => packed_tiles_avx512(m, x, (k, stride), (tiles.as_ptr(), count), y, n),
            Simd::Avx2 => {
                for j in 0..count {
                    let t = tiles.as_ptr().add(j * size);
                    packed_tile_avx2(m, x, (k, stride), t, y.add(j * PACKED_COLS), n);
                }
            }
        }
    }

    /// Rows of a prefill [`packed_tiles`] takes at a time: whole passes of the kernel (8 of
    /// [`AVX512_ROWS`], 18 of [`super::AVX2_ROWS`]). `packed_product_rate` with 1024 rows,
    /// three alternating runs: 268-299 GFLOP/s in blocks of 112 rows against 163-254 all at once
    /// (AVX-512); AVX2 on the same Xeon 111-158 in blocks of 108 against 98-145.
    pub(super) fn row_block(simd: Simd) -> usize {
        match simd {
            Simd::Avx512 => 8 * AVX512_ROWS,
            Simd::Avx2 => 18 * AVX2_ROWS,
        }
    }

    /// [`packed_tiles`] with AVX-512 (`count` tiles from `t`).
    #[target_feature(enable = "avx512f")]
    unsafe fn packed_tiles_avx512(
        m: usize,
        x: *const f32,
        (k, stride): (usize, usize),
        (t, count): (*const f32, usize),
        y: *mut f32,
        n: usize,
    ) {
        let size = k * PACKED_COLS;
        let passes = m.div_ceil(AVX512_ROWS);
        let per = m.div_ceil(passes);
        let few = m <= super::MAX_ROWS as usize;
        let block = if few { AVX512_BLOCK } else { k };
        // Bytes (16.16 fixed point) each pass's prefetch moves on per column when a decode
        // step's passes share out the next block's cache lines (`PF_SPREAD`).
        let step = (COL_BYTES << 16) / passes;
        for k0 in (0..k).step_by(block) {
            let cols = (k0, (k0 + block).min(k));
            for j in 0..count {
                let tile = t.add(j * size);
                // What the kernel reads next: the next tile's block, or after the last tile
                // the first one's next block (past the end, only a hint).
                let next = if j + 1 < count {
                    tile.wrapping_add(size + k0 * PACKED_COLS)
                } else {
                    t.wrapping_add(cols.1 * PACKED_COLS)
                } as *const i8;
                let y = y.add(j * PACKED_COLS);
                for (pass, r0) in (0..m).step_by(per).enumerate() {
                    let pf = next.wrapping_add(pass * block * COL_BYTES / passes);
                    let args = (
                        x.add(r0 * stride),
                        stride,
                        tile,
                        (pf, step),
                        y.add(r0 * n),
                        n,
                    );
                    let rows = (m - r0).min(per);
                    macro_rules! rows {
                        ($pf:ident: $($r:literal)*) => {
                            match rows {
                                $($r => packed_rows_avx512::<$r, $pf>(cols, args, k0 > 0),)*
                                _ => unreachable!("more rows than the kernel's registers hold"),
                            }
                        };
                    }
                    if few && passes > 1 {
                        rows!(PF_SPREAD: 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
                    } else if pass == 0 {
                        rows!(PF_LINES: 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
                    } else {
                        rows!(PF_NONE: 1 2 3 4 5 6 7 8 9 10 11 12 13 14);
                    }
                }
            }
        }
    }

    /// [`packed_rows_avx512`]'s prefetches: none.
    const PF_NONE: u8 = 0;
    /// One a column, `step` (16.16 fixed point) bytes on from the last: the passes over a block
    /// share its cache lines out, so the next block streams in while every pass runs. A decode
    /// step's 16 rows read weights from memory at 14-15 GB/s with all of a block's lines
    /// prefetched in the first pass, 17.0-17.8 with them shared out (`packed_product_rate`,
    /// interleaved runs; one pass of 4 rows streams at 23-28).
    const PF_SPREAD: u8 = 1;
    /// Both cache lines of the column `pf` points to (one pass, or a prefill's first).
    const PF_LINES: u8 = 2;

    /// The arguments of [`packed_rows_avx512`] after its columns: the rows `x` and their stride,
    /// the tile, where column `k0`'s prefetch goes and how far each column moves it, the
    /// output and its row length.
    type Avx512Args = (
        *const f32,
        usize,
        *const f32,
        (*const i8, usize),
        *mut f32,
        usize,
    );

    /// [`packed_tiles`]' AVX-512 kernel for `R` rows and the tile's columns `k0..k1`: `2R`
    /// accumulators (each row's 32 columns), starting from zero or, with `resume`, from the
    /// partial sums in `y`; per column k of the tile two vector loads and `2R` fused
    /// multiply-adds with `x[i, k]` broadcast, and the prefetches into L2 that `PF` says.
    #[target_feature(enable = "avx512f")]
    unsafe fn packed_rows_avx512<const R: usize, const PF: u8>(
        (k0, k1): (usize, usize),
        (x, stride, t, (pf, step), y, n): Avx512Args,
        resume: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if resume {
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm512_loadu_ps(y.add(i * n));
                a[1] = _mm512_loadu_ps(y.add(i * n + LANES));
            }
        }
        for kk in k0..k1 {
            // Past the end of the weights it is only a hint, and `wrapping_add` keeps the
            // address arithmetic defined.
            if PF == PF_SPREAD {
                _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(((kk - k0) * step) >> 16));
            } else if PF == PF_LINES {
                let ahead = pf.wrapping_add((kk - k0) * COL_BYTES);
                _mm_prefetch::<_MM_HINT_T1>(ahead);
                _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64));
            }
            let w0 = _mm512_loadu_ps(t.add(kk * PACKED_COLS));
            let w1 = _mm512_loadu_ps(t.add(kk * PACKED_COLS + LANES));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*x.add(i * stride + kk));
                a[0] = _mm512_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm512_fmadd_ps(w1, xv, a[1]);
            }
        }
        for (i, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.add(i * n), a[0]);
            _mm512_storeu_ps(y.add(i * n + LANES), a[1]);
        }
    }

    /// [`packed_tiles`] with AVX2 for one tile at `t`.
    unsafe fn packed_tile_avx2(
        m: usize,
        x: *const f32,
        (k, stride): (usize, usize),
        t: *const f32,
        y: *mut f32,
        n: usize,
    ) {
        const HALVES: usize = PACKED_COLS / 16;
        let passes = m.div_ceil(AVX2_ROWS) * HALVES;
        let few = m <= super::MAX_ROWS as usize;
        let block = if few { AVX2_BLOCK } else { k };
        // Bytes (16.16 fixed point) each pass's prefetch moves on per column: a block's
        // cache lines (two per column) shared out over its passes (with many rows, each
        // half's line of a column in every pass over the half: `avx2_rows::<false>`).
        let step = (COL_BYTES << 16) / passes;
        for k0 in (0..k).step_by(block) {
            let cols = (k0, (k0 + block).min(k));
            let ahead = t.wrapping_add((k0 + PREFETCH / PACKED_COLS) * PACKED_COLS) as *const i8;
            for h in 0..HALVES {
                for r0 in (0..m).step_by(AVX2_ROWS) {
                    let (x, y) = (x.add(r0 * stride), y.add(r0 * n + h * 16));
                    let pf = if few {
                        let pass = h * m.div_ceil(AVX2_ROWS) + r0 / AVX2_ROWS;
                        ahead.wrapping_add(pass * block * COL_BYTES / passes)
                    } else {
                        ahead.wrapping_add(h * 64)
                    };
                    let rows = (m - r0).min(AVX2_ROWS);
                    let args = ((x, stride), t.add(h * 16), cols, y, n, (pf, step));
                    if few {
                        avx2_rows::<true>(rows, args);
                    } else {
                        avx2_rows::<false>(rows, args);
                    }
                }
            }
        }
    }

    /// The arguments of [`packed_rows_avx2`].
    type Avx2Args = (
        (*const f32, usize),
        *const f32,
        (usize, usize),
        *mut f32,
        usize,
        (*const i8, usize),
    );

    /// [`packed_rows_avx2`] for `rows` (1..=[`super::AVX2_ROWS`]) rows.
    ///
    /// # Safety
    /// As [`packed_rows_avx2`]'s, for `rows` rows.
    unsafe fn avx2_rows<const SPREAD: bool>(rows: usize, a: Avx2Args) {
        match rows {
            1 => packed_rows_avx2::<1, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            2 => packed_rows_avx2::<2, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            3 => packed_rows_avx2::<3, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            4 => packed_rows_avx2::<4, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            5 => packed_rows_avx2::<5, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            6 => packed_rows_avx2::<6, SPREAD>(a.0, a.1, a.2, a.3, a.4, a.5),
            _ => unreachable!("more rows than the kernel's registers hold"),
        }
    }

    /// [`packed_tile`]'s AVX2 kernel for `R` rows and the tile's columns `k0..k1`: a tile's
    /// column is two 8-lane vectors, so `2R` accumulators, two loads and `2R` fused
    /// multiply-adds per column (`R` up to [`super::AVX2_ROWS`]: 12 accumulators, the two weight
    /// vectors and the broadcast fill the 16 registers). The accumulators start from zero at
    /// column 0 and from `y` after it, so each lane's sum runs over k in order as in the
    /// AVX-512 kernel: the same bits. `pf`: where column `k0`'s prefetch goes, and how far
    /// (bytes, 16.16 fixed point) each column moves it when `SPREAD`; otherwise one cache line
    /// a column (no multiply in the loop: the prefill's many passes, where it measured 3-5%
    /// slower with one).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn packed_rows_avx2<const R: usize, const SPREAD: bool>(
        (x, stride): (*const f32, usize),
        t: *const f32,
        (k0, k1): (usize, usize),
        y: *mut f32,
        n: usize,
        (pf, step): (*const i8, usize),
    ) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        if k0 > 0 {
            for i in 0..R {
                lo[i] = _mm256_loadu_ps(y.add(i * n));
                hi[i] = _mm256_loadu_ps(y.add(i * n + 8));
            }
        }
        for kk in k0..k1 {
            // Past the end of the weights it is only a hint; `wrapping_add` keeps the address
            // arithmetic defined.
            let ahead = if SPREAD {
                ((kk - k0) * step) >> 16
            } else {
                (kk - k0) * COL_BYTES
            };
            _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(ahead));
            let wl = _mm256_loadu_ps(t.add(kk * PACKED_COLS));
            let wh = _mm256_loadu_ps(t.add(kk * PACKED_COLS + 8));
            for i in 0..R {
                let xv = _mm256_set1_ps(*x.add(i * stride + kk));
                lo[i] = _mm256_fmadd_ps(wl, xv, lo[i]);
                hi[i] = _mm256_fmadd_ps(wh, xv, hi[i]);
            }
        }
        for i in 0..R {
            _mm256_storeu_ps(y.add(i * n), lo[i]);
            _mm256_storeu_ps(y.add(i * n + 8), hi[i]);
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
        crate::decode_kernels::paths::for_each("gemm_matches_f64_reference", |path| {
            variants.push(path)
        });
        // Rows below, at and above one panel; weight rows not a multiple of the tile or chunk.
        for (m, k, n) in [
            (1, 7, 3),
            (5, 33, 71),
            (16, 64, 130),
            (17, 40, 9),
            (17, 40, 48),
            (32, 96, 200),
            // Columns past one AVX2 block (and a ragged last block), few rows and many.
            (16, 300, 40),
            (40, 300, 40),
            // Three passes of the AVX-512 kernel over three tiles, a block at a time; many rows.
            (29, 300, 100),
            (70, 130, 100),
            (130, 64, 70),
        ] {
            let x: Vec<f32> = (0..m * k).map(|_| r()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
            let want = reference(&x, m, k, &w, n);
            let packed = pack(&w, n, k);
            for &s in &variants {
                for p in [None, Some(packed.tiles())] {
                    let mut y = vec![f32::NAN; m * n];
                    product(s, &x, m, k, (&w, p), n, &mut y);
                    for (a, b) in y.iter().zip(&want) {
                        assert!(
                            (*a as f64 - b).abs() < 1e-5,
                            "{s:?} packed {} {m}x{k}x{n}: {a} vs {b}",
                            p.is_some()
                        );
                    }
                }
            }
        }
    }

    /// What makes batching safe for sampling: a row's products have the same bits alone, in a
    /// batch of any size (past one register block and past the panel kernels' limit), packed
    /// or not, and on either SIMD path.
    #[test]
    fn a_row_has_the_same_bits_alone_in_any_batch_and_on_every_path() {
        let mut rng = crate::rng::rng_for(5, "invariant");
        let mut r = || crate::rng::uniform(&mut rng) as f32 - 0.5;
        // 77 outputs: two whole packed tiles and a tail of 13; panel tiles of 8 (AVX-512) and
        // 4 (AVX2) with tails of 5 and 1. 200 inputs: the packed kernels' two blocks of
        // columns for few rows (128 and a ragged 72), their sums carried from one to the next.
        let (k, n) = (200, 77);
        let w: Vec<f32> = (0..n * k).map(|_| r()).collect();
        let packed = pack(&w, n, k);
        let x: Vec<f32> = (0..130 * k).map(|_| r()).collect();
        let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        // Each row alone, on the first path, from the plain (panel) kernel.
        let mut alone: Option<Vec<Vec<u32>>> = None;
        let ran = crate::decode_kernels::paths::for_each("gemm_rows_invariant", |s| {
            let want = alone.get_or_insert_with(|| {
                (0..130)
                    .map(|i| {
                        let mut y = vec![f32::NAN; n];
                        product(s, &x[i * k..(i + 1) * k], 1, k, (&w, None), n, &mut y);
                        bits(&y)
                    })
                    .collect()
            });
            // 130: a prefill's two blocks of rows on either path.
            for m in [1, 5, 6, 7, 14, 15, 16, 17, 29, 33, 70, 130] {
                for p in [None, Some(packed.tiles())] {
                    if p.is_none() && m > MAX_ROWS as usize {
                        continue;
                    }
                    let mut y = vec![f32::NAN; m * n];
                    product(s, &x, m, k, (&w, p), n, &mut y);
                    for (i, row) in y.chunks_exact(n).enumerate() {
                        assert_eq!(
                            bits(row),
                            want[i],
                            "{s:?} packed {} m {m} row {i}",
                            p.is_some()
                        );
                    }
                }
            }
        });
        assert!(
            ran > 0
                || std::env::var_os("RLHF_NO_DECODE_KERNELS").is_some()
                || !cfg!(target_arch = "x86_64")
        );
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
        let tall = Tensor::randn([MAX_ROWS * 3 + 5, 48], (Kind::Float, Device::Cpu));
        let test = "linear_matches_libtorch";
        crate::decode_kernels::paths::for_each(test, |path| {
            let _decode = crate::decode_kernels::DecodeThreads::enter(8, Kind::Float, Device::Cpu);
            let want = x.linear(&w, Some(&b));
            let y = try_linear(&x, &w, Some(&b)).expect("kernel refused a supported product");
            assert_eq!(y.size(), want.size());
            let d = (y - &want).abs().max().double_value(&[]);
            assert!(d < 1e-4, "{path:?}: max difference {d}");
            // Many rows: the packed kernel's for weights of 16 rows or more.
            let y = try_linear(&tall, &w, Some(&b)).expect("packed kernel refused many rows");
            let d = (y - tall.linear(&w, Some(&b)))
                .abs()
                .max()
                .double_value(&[]);
            assert!(d < 1e-4, "{path:?} many rows: max difference {d}");
            // Many rows by a weight too short to pack, and another dtype: libtorch's.
            assert!(try_linear(&tall, &w.narrow(0, 0, 8), None).is_none());
            let (xd, wd) = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
            assert!(try_linear(&xd, &wd, None).is_none());
        });
    }
}

/// The packed product's rate on a decode step's shape (16 rows by a 1408 x 512 weight, as
/// llama-30m's gate and up projections), over 40 such weights (115 MB, so that they stream from
/// memory as in a decode step), split across the crew (libtorch's thread count): a bench, not
/// a check.
/// `scripts/cargo.sh test --release -p rlhf-nn --lib packed_product_rate -- --ignored
/// --nocapture`; `RATE_ROWS` (16), `RATE_WEIGHTS` (40; 1 keeps the weight in cache) and
/// `RATE_PATH` (`avx2` or `avx512`, else this CPU's best).
#[cfg(test)]
mod rate {
    use super::*;

    #[test]
    #[ignore = "a bench: run it by name with --ignored"]
    fn packed_product_rate() {
        let Some(best) = super::super::simd() else {
            eprintln!("packed_product_rate: skipped, no decode kernels on this CPU");
            return;
        };
        let simd = match std::env::var("RATE_PATH").as_deref() {
            Ok("avx2") => Simd::Avx2,
            Ok("avx512") => Simd::Avx512,
            _ => best,
        };
        let m: usize = std::env::var("RATE_ROWS").map_or(16, |v| v.parse().expect("RATE_ROWS"));
        let weights: usize =
            std::env::var("RATE_WEIGHTS").map_or(40, |v| v.parse().expect("RATE_WEIGHTS"));
        let (k, n) = (512, 1408);
        let w: Vec<Vec<f32>> = (0..weights)
            .map(|l| (0..n * k).map(|i| ((i + l) % 7) as f32 * 0.1).collect())
            .collect();
        let packed: Vec<Packed> = w.iter().map(|w| pack(w, n, k)).collect();
        let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32).collect();
        let mut y = vec![0f32; m * n];
        for round in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..10 {
                for (w, p) in w.iter().zip(&packed) {
                    product(simd, &x, m, k, (w, Some(p.tiles())), n, &mut y);
                }
            }
            let s = t.elapsed().as_secs_f64();
            let flops = (2 * m * k * n * weights * 10) as f64;
            let bytes = (n * k * 4 * weights * 10) as f64;
            eprintln!(
                "packed_product_rate {simd:?} {m} rows, round {round}: {:.1} GFLOP/s, weights {:.1} GB/s",
                flops / s / 1e9,
                bytes / s / 1e9
            );
        }
    }
}
