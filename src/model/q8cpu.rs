//! q8_0 products on x86-64 CPUs with AVX-512 VNNI: our own weight layout and kernels.
//!
//! candle's repacked VNNI kernels read a q8_0 weight at about half this machine's memory
//! bandwidth in one-row products (13 GB/s on one core, 22 on two, where a plain read runs at 26
//! and 45): with a single row there is little arithmetic per byte, and their loop runs one
//! dependent chain of `vpdpbusd` at a time. Decoding is nothing but such products, so here the
//! same weights are laid out for streaming and multiplied with several independent chains.
//!
//! Layout: the output rows in tiles of 16 (one 512-bit register holds a tile's 16 sums), each
//! tile's 32-value blocks in order. A block of a tile is eight 64-byte lines (line `g` holds
//! values `4g..4g+4` of each of the 16 rows, row after row) and 16 f16 scales. The weights are
//! stored plus 128, as bytes: `vpdpbusd` multiplies unsigned bytes by signed ones, so the
//! activations stay signed, and the extra `128 * sum(activations)` of each block is taken off
//! before the products are scaled. Rows past the last whole tile are zero.
//!
//! Activations are quantized per 32 values (the q8_0 block) to signed bytes and a scale: finer
//! than candle's per-256 quantization, so products are at least as close to f32.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use crate::error::{Error, Result};

/// Output rows per tile: the 16 lanes of a 512-bit register.
const TILE: usize = 16;
/// Values per q8_0 block.
const BLOCK: usize = 32;
/// Bytes of a q8_0 block in candle's (GGML's) layout: an f16 scale, 32 signed bytes.
const GGML_BLOCK: usize = 34;
/// Rows of activations a worker takes at a time in a many-row product.
const ROW_CHUNK: usize = 64;

/// Whether q8_0 weights go through the kernels here: the CPU has them, and the environment
/// does not ask for candle's (`FLAMINGO_Q8_KERNELS=candle`, for comparing the two).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cpu_has_them() && std::env::var("FLAMINGO_Q8_KERNELS").map_or(true, |v| v != "candle")
    })
}

fn cpu_has_them() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One 64-byte line of weights, aligned so that each load is one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// A q8_0 weight [rows, cols] in the layout above.
pub struct PackedQ8 {
    rows: usize,
    cols: usize,
    tiles: usize,
    /// Blocks per row.
    kb: usize,
    /// [tile][block][8 lines].
    lines: Vec<Line>,
    /// [tile][block][16 rows], f16 bits.
    scales: Vec<u16>,
}

impl std::fmt::Debug for PackedQ8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQ8 [{}, {}]", self.rows, self.cols)
    }
}

impl PackedQ8 {
    /// Repacks a q8_0 CPU weight; None for any other weight, or where [`available`] is false.
    pub fn pack(q: &QTensor) -> Result<Option<Self>> {
        if q.dtype() != GgmlDType::Q8_0 || !q.device().is_cpu() || !available() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        if rows == 0 || cols == 0 || !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let data = q.data()?;
        let kb = cols / BLOCK;
        if data.len() < rows * kb * GGML_BLOCK {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "a q8_0 weight [{rows}, {cols}] holds {} bytes, {} expected",
                data.len(),
                rows * kb * GGML_BLOCK
            ))));
        }
        let tiles = rows.div_ceil(TILE);
        // Padding rows: zero weights (stored as 128) and zero scales.
        let mut lines = vec![Line([128; 64]); tiles * kb * 8];
        let mut scales = vec![0u16; tiles * kb * TILE];
        for row in 0..rows {
            let (t, r) = (row / TILE, row % TILE);
            for b in 0..kb {
                let src = &data[(row * kb + b) * GGML_BLOCK..][..GGML_BLOCK];
                let at = t * kb + b;
                scales[at * TILE + r] = u16::from_le_bytes([src[0], src[1]]);
                for (g, four) in src[2..].chunks_exact(4).enumerate() {
                    let line = &mut lines[at * 8 + g].0[r * 4..r * 4 + 4];
                    for (dst, &v) in line.iter_mut().zip(four) {
                        *dst = (v as i8 as i16 + 128) as u8;
                    }
                }
            }
        }
        Ok(Some(Self {
            rows,
            cols,
            tiles,
            kb,
            lines,
            scales,
        }))
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held (padding rows included).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.scales.len() * 2
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        let (n, k) = (self.rows, self.cols);
        if x.len() != m * k || out.len() != m * n {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "a [{m}, {}] input and [{m}, {}] output for a [{n}, {k}] weight",
                x.len() / m.max(1),
                out.len() / m.max(1)
            ))));
        }
        if m == 0 {
            return Ok(());
        }
        #[cfg(target_arch = "x86_64")]
        {
            if cpu_has_them() {
                let acts = Acts::quantize(x, m, k);
                // SAFETY: the CPU has the features (checked just now); `acts` holds m rows of
                // `k` values, `out` m rows of `n`.
                unsafe { x86::run(self, &acts, out) };
                return Ok(());
            }
        }
        Err(Error::Candle(candle_core::Error::Msg(
            "the q8_0 kernels need a CPU with AVX-512 VNNI".into(),
        )))
    }
}

/// Activations quantized per 32 values.
struct Acts {
    m: usize,
    k: usize,
    /// [m][k] signed bytes.
    q: Vec<i8>,
    /// [m][blocks] scales.
    d: Vec<f32>,
    /// [m][blocks] `-128 * sum(q)` of the block: the correction for the weights' offset.
    c: Vec<i32>,
}

impl Acts {
    #[cfg(target_arch = "x86_64")]
    fn quantize(x: &[f32], m: usize, k: usize) -> Self {
        let kb = k / BLOCK;
        let mut acts = Acts {
            m,
            k,
            q: vec![0; m * k],
            d: vec![0.0; m * kb],
            c: vec![0; m * kb],
        };
        let (q, d, c) = (
            Addr::of(&mut acts.q),
            Addr::of(&mut acts.d),
            Addr::of(&mut acts.c),
        );
        let one_row = |r: usize| {
            // SAFETY: row r's slices, written by this call only (rows are split between
            // workers); available() was checked by the caller.
            unsafe {
                x86::quantize_row(
                    &x[r * k..(r + 1) * k],
                    std::slice::from_raw_parts_mut(q.ptr::<i8>().add(r * k), k),
                    std::slice::from_raw_parts_mut(d.ptr::<f32>().add(r * kb), kb),
                    std::slice::from_raw_parts_mut(c.ptr::<i32>().add(r * kb), kb),
                )
            }
        };
        if m == 1 {
            one_row(0);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(m, |rows| rows.for_each(one_row));
        }
        acts
    }
}

/// A buffer's address, for workers that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Addr(usize);

impl Addr {
    fn of<T>(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr() as usize)
    }

    fn ptr<T>(self) -> *mut T {
        self.0 as *mut T
    }
}

/// The product as a candle op: [.., cols] f32 in, [.., rows] f32 out.
impl CustomOp1 for PackedQ8 {
    fn name(&self) -> &'static str {
        "q8_0 matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("{} takes a contiguous f32 tensor", self.name())
        };
        let dims = l.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("{} takes a tensor of at least one dimension", self.name())
        };
        if k != self.cols {
            candle_core::bail!("{}: {dims:?} against [{}, {k}]", self.name(), self.rows)
        }
        let m: usize = lead.iter().product();
        let mut out = vec![0f32; m * self.rows];
        self.matmul(&data[start..end], m, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.rows;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Acts, Addr, PackedQ8, BLOCK, ROW_CHUNK, TILE};
    use std::arch::x86_64::*;

    /// Quantizes one row: per block of 32, scale = max|x| / 127, values rounded to nearest.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], c: &mut [i32]) {
        for ((xs, qs), (d, c)) in x
            .chunks_exact(BLOCK)
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(d.iter_mut().zip(c.iter_mut()))
        {
            let lo = _mm512_loadu_ps(xs.as_ptr());
            let hi = _mm512_loadu_ps(xs.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
            let scale = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let inv = _mm512_set1_ps(inv);
            let qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv));
            let qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
            _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtsepi32_epi8(qlo));
            _mm_storeu_si128(
                qs.as_mut_ptr().add(16) as *mut __m128i,
                _mm512_cvtsepi32_epi8(qhi),
            );
            *d = scale;
            *c = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
        }
    }

    /// `MR` rows of activations from `row0` against `NT` tiles from `tile0`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel<const MR: usize, const NT: usize>(
        w: &PackedQ8,
        a: &Acts,
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        let (kb, k, n) = (w.kb, a.k, w.rows);
        let lines = w.lines.as_ptr();
        let scales = w.scales.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); NT]; MR];
        for b in 0..kb {
            let mut isum = [[_mm512_setzero_si512(); NT]; MR];
            for (i, row) in isum.iter_mut().enumerate() {
                let c = _mm512_set1_epi32(*a.c.get_unchecked((row0 + i) * kb + b));
                for s in row.iter_mut() {
                    *s = c;
                }
            }
            for g in 0..8 {
                let mut wv = [_mm512_setzero_si512(); NT];
                for (t, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_load_si512(lines.add(((tile0 + t) * kb + b) * 8 + g) as *const _);
                }
                for (i, row) in isum.iter_mut().enumerate() {
                    let at = a.q.as_ptr().add((row0 + i) * k + b * BLOCK + g * 4);
                    let av = _mm512_set1_epi32(std::ptr::read_unaligned(at as *const i32));
                    for (s, v) in row.iter_mut().zip(wv.iter()) {
                        *s = _mm512_dpbusd_epi32(*s, *v, av);
                    }
                }
            }
            let mut dw = [_mm512_setzero_ps(); NT];
            for (t, v) in dw.iter_mut().enumerate() {
                let at = scales.add(((tile0 + t) * kb + b) * TILE);
                *v = _mm512_cvtph_ps(_mm256_loadu_si256(at as *const __m256i));
            }
            for (i, (acc_row, s_row)) in acc.iter_mut().zip(isum.iter()).enumerate() {
                let da = _mm512_set1_ps(*a.d.get_unchecked((row0 + i) * kb + b));
                for ((acc, s), dw) in acc_row.iter_mut().zip(s_row.iter()).zip(dw.iter()) {
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), _mm512_mul_ps(*dw, da), *acc);
                }
            }
        }
        for (i, acc_row) in acc.iter().enumerate() {
            for (t, v) in acc_row.iter().enumerate() {
                let first = (tile0 + t) * TILE;
                let valid = (n - first).min(TILE);
                let mask: __mmask16 = if valid == TILE {
                    0xFFFF
                } else {
                    (1u16 << valid) - 1
                };
                _mm512_mask_storeu_ps(out.add((row0 + i) * n + first), mask, *v);
            }
        }
    }

    /// `mr` (1..=4) rows against `nt` (1, 2 or 4) tiles.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dispatch(
        mr: usize,
        nt: usize,
        w: &PackedQ8,
        a: &Acts,
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        match (mr, nt) {
            (1, 4) => kernel::<1, 4>(w, a, row0, tile0, out),
            (1, 2) => kernel::<1, 2>(w, a, row0, tile0, out),
            (1, _) => kernel::<1, 1>(w, a, row0, tile0, out),
            (2, 2) => kernel::<2, 2>(w, a, row0, tile0, out),
            (2, _) => kernel::<2, 1>(w, a, row0, tile0, out),
            (3, 2) => kernel::<3, 2>(w, a, row0, tile0, out),
            (3, _) => kernel::<3, 1>(w, a, row0, tile0, out),
            (_, 2) => kernel::<4, 2>(w, a, row0, tile0, out),
            _ => kernel::<4, 1>(w, a, row0, tile0, out),
        }
    }

    /// The whole product over candle's thread pool.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `a` has the weight's width; `out` holds `a.m` rows
    /// of `w.rows` values.
    pub(super) unsafe fn run(w: &PackedQ8, a: &Acts, out: &mut [f32]) {
        let out = Addr::of(out);
        let pool = candle_core::utils::barrier_pool();
        let m = a.m;
        if m <= 2 {
            // Few rows (decoding): 4 tiles at a time, 4 independent chains per row.
            let groups = w.tiles.div_ceil(4);
            pool.execute_chunked(groups, |range| {
                for g in range {
                    let tile0 = g * 4;
                    let nt = (w.tiles - tile0).min(4);
                    for row in 0..m {
                        // A 3-tile rest runs as 2 + 1.
                        let mut t = tile0;
                        while t < tile0 + nt {
                            let step = match tile0 + nt - t {
                                4.. => 4,
                                2 | 3 => 2,
                                _ => 1,
                            };
                            dispatch(1, step, w, a, row, t, out.ptr());
                            t += step;
                        }
                    }
                }
            });
            return;
        }
        // Many rows: units of (2 tiles, 64 rows), tile-major so that a worker walking its
        // range keeps the same two tiles of weights in cache over the row chunks.
        let pairs = w.tiles.div_ceil(2);
        let chunks = m.div_ceil(ROW_CHUNK);
        pool.execute_chunked(pairs * chunks, |range| {
            for unit in range {
                let (pair, chunk) = (unit / chunks, unit % chunks);
                let tile0 = pair * 2;
                let nt = (w.tiles - tile0).min(2);
                let end = m.min((chunk + 1) * ROW_CHUNK);
                let mut row = chunk * ROW_CHUNK;
                while row < end {
                    let mr = (end - row).min(4);
                    dispatch(mr, nt, w, a, row, tile0, out.ptr());
                    row += mr;
                }
            }
        });
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The product in f64 from the weight's blocks and the activations as quantized here.
    fn reference(q: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = q.shape().dims2().unwrap();
        let data = q.data().unwrap();
        let kb = k / BLOCK;
        let acts = Acts::quantize(x, m, k);
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for b in 0..kb {
                    let blk = &data[(j * kb + b) * GGML_BLOCK..][..GGML_BLOCK];
                    let dw = half::f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                    let dot: i64 = (0..BLOCK)
                        .map(|i| blk[2 + i] as i8 as i64 * acts.q[r * k + b * BLOCK + i] as i64)
                        .sum();
                    sum += dw * acts.d[r * kb + b] as f64 * dot as f64;
                }
                out[r * n + j] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn products_match_the_blocks_and_f32() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        // 40 rows: two whole tiles and a part; 1..=70 rows of activations: each kernel shape.
        for (n, k) in [(40, 96), (72, 256), (16, 32)] {
            let w = Tensor::randn(0f32, 1f32, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
            let packed = PackedQ8::pack(&q).unwrap().unwrap();
            for m in [1, 2, 3, 5, 70] {
                let x = Tensor::randn(0f32, 1f32, (m, k), &dev).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut got = vec![0f32; m * n];
                packed.matmul(&xs, m, &mut got).unwrap();
                let want = reference(&q, &xs, m);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "[{n}, {k}] m={m} at {i}: {g} vs {w}"
                    );
                }
                // And close to f32 (the quantized activations' error only).
                let f32_out: Vec<f32> = x
                    .matmul(&w.t().unwrap())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let norm = f32_out.iter().map(|v| v * v).sum::<f32>().sqrt();
                let err = got
                    .iter()
                    .zip(&f32_out)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
                    .sqrt();
                assert!(err <= 0.02 * norm, "[{n}, {k}] m={m}: {err} vs {norm}");
            }
        }
    }

    #[test]
    fn only_q8_0_cpu_weights_are_packed() {
        let w = Tensor::randn(0f32, 1f32, (16, 256), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(PackedQ8::pack(&q).unwrap().is_none());
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        assert_eq!(PackedQ8::pack(&q).unwrap().is_some(), available());
    }
}
