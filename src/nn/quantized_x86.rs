//! Quantized (q8_0, q4k) products on x86-64 CPUs with AVX-512 VNNI: our own weight layouts
//! and kernels.
//!
//! candle's repacked VNNI kernels read a q8_0 weight at about half the machine's memory
//! bandwidth in one-row products, and its q4k ones slower still: with a single row there is
//! little arithmetic per byte, and their loops run one dependent chain of `vpdpbusd` at a time.
//! Decoding is nothing but such products, so here the same weights are laid out for streaming
//! and multiplied with several independent chains. Products of many rows (prompts, images)
//! take 4 rows at a time against 1 or 2 tiles (figures in docs/performance.md).
//!
//! Both layouts cut the output rows in tiles of 16 (one 512-bit register holds a tile's 16
//! sums) and keep each tile's blocks in order, in 64-byte lines. A "line" of weights holds 4
//! consecutive values of each of the 16 rows, row after row: one `vpdpbusd` multiplies it by 4
//! activations broadcast. Rows past the last whole tile are zero.
//!
//! - q8_0, per 32-value block of a tile: 8 lines of the weights plus 128, as bytes
//!   (`vpdpbusd` multiplies unsigned bytes by signed ones, so the activations stay signed and
//!   the extra `128 * sum(activations)` of each block is taken off), and the 16 f16 scales.
//! - q4k, per 256-value super-block of a tile: the 16 rows' `d` and `dmin` (f32), their 8
//!   sub-block scales and mins (the 6-bit fields unpacked to bytes), and 32 lines of nibbles:
//!   line (p, g) holds the bytes `32p + 4g .. 32p + 4g + 4` of each row's GGML block, whose
//!   low nibbles are values `64p + 4g ..` and high nibbles values `64p + 32 + 4g ..`. 4.75 bits
//!   a weight (GGML's q4k: 4.5; candle's repacked copy: 6).
//!
//! Activations are quantized per 32 values to signed bytes and a scale: finer than candle's
//! per-256 quantization, so products are at least as close to f32.

// Elsewhere only the fallback to candle's kernels is used: the layouts and activations are
// x86-64's alone.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};

use crate::error::{Error, Result};
use crate::nn::fused::Activation;
#[cfg(target_arch = "x86_64")]
use crate::nn::fused::Shared;

/// Output rows per tile: the 16 lanes of a 512-bit register.
const TILE: usize = 16;
/// Values per activation block (and q8_0 block, and q4k sub-block).
const BLOCK: usize = 32;
/// Bytes of a q8_0 block in GGML's layout: an f16 scale, 32 signed bytes.
const Q8_BLOCK: usize = 34;
/// Values per q4k super-block, and its bytes in GGML's layout: f16 d and dmin, 12 bytes of
/// 6-bit scales and mins, 128 bytes of nibbles.
const QK_K: usize = 256;
const Q4K_BLOCK: usize = 144;
/// Lines per q4k super-block of a tile: d, dmin, 2 of scales, 2 of mins, 32 of nibbles.
const Q4K_LINES: usize = 38;
/// Rows of activations a worker takes at a time in a many-row product.
const ROW_CHUNK: usize = 64;

/// Whether q8_0 and q4k weights go through the kernels here: the CPU has them, and the
/// environment does not ask for candle's (`FLAMINGO_QUANT_KERNELS=candle`, for comparing).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cpu_has_them() && std::env::var("FLAMINGO_QUANT_KERNELS").map_or(true, |v| v != "candle")
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Q8_0,
    Q4K,
}

impl Kind {
    /// Values per block of the layout.
    fn block(self) -> usize {
        match self {
            Kind::Q8_0 => BLOCK,
            Kind::Q4K => QK_K,
        }
    }

    /// Lines per block of a tile.
    fn lines(self) -> usize {
        match self {
            Kind::Q8_0 => 8,
            Kind::Q4K => Q4K_LINES,
        }
    }
}

/// A q8_0 or q4k weight [rows, cols] in the layouts above.
pub struct Packed {
    kind: Kind,
    rows: usize,
    cols: usize,
    tiles: usize,
    /// Blocks per row.
    kb: usize,
    /// [tile][block][lines of a block].
    lines: Vec<Line>,
    /// q8_0: [tile][block][16 rows], f16 bits. q4k: empty.
    scales: Vec<u16>,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed {:?} [{}, {}]", self.kind, self.rows, self.cols)
    }
}

/// A q4k sub-block's 6-bit scale and min from the 12 packed bytes (GGML's packing).
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl Packed {
    /// Repacks a q8_0 or q4k CPU weight; None for any other weight, or where [`available`] is
    /// false.
    pub fn pack(q: &QTensor) -> Result<Option<Self>> {
        let kind = match q.dtype() {
            GgmlDType::Q8_0 => Kind::Q8_0,
            GgmlDType::Q4K => Kind::Q4K,
            _ => return Ok(None),
        };
        if !q.device().is_cpu() || !available() {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        if rows == 0 || cols == 0 || !cols.is_multiple_of(kind.block()) {
            return Ok(None);
        }
        let data = q.data()?;
        let kb = cols / kind.block();
        let block_bytes = match kind {
            Kind::Q8_0 => Q8_BLOCK,
            Kind::Q4K => Q4K_BLOCK,
        };
        if data.len() < rows * kb * block_bytes {
            return Err(Error::Candle(candle_core::Error::Msg(format!(
                "a {kind:?} weight [{rows}, {cols}] holds {} bytes, {} expected",
                data.len(),
                rows * kb * block_bytes
            ))));
        }
        let tiles = rows.div_ceil(TILE);
        let per = kind.lines();
        // Padding rows: zero weights (q8_0 stores them as 128) and zero scales.
        let fill = if kind == Kind::Q8_0 { 128 } else { 0 };
        let mut lines = vec![Line([fill; 64]); tiles * kb * per];
        let mut scales = vec![
            0u16;
            if kind == Kind::Q8_0 {
                tiles * kb * TILE
            } else {
                0
            }
        ];
        for row in 0..rows {
            let (t, r) = (row / TILE, row % TILE);
            for b in 0..kb {
                let src = &data[(row * kb + b) * block_bytes..][..block_bytes];
                let at = t * kb + b;
                let block = &mut lines[at * per..(at + 1) * per];
                match kind {
                    Kind::Q8_0 => {
                        scales[at * TILE + r] = u16::from_le_bytes([src[0], src[1]]);
                        for (line, four) in block.iter_mut().zip(src[2..].chunks_exact(4)) {
                            // Plus 128 on each signed byte: its top bit flipped.
                            let v = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
                            line.0[r * 4..r * 4 + 4]
                                .copy_from_slice(&(v ^ 0x8080_8080).to_le_bytes());
                        }
                    }
                    Kind::Q4K => {
                        let f16 = |i: usize| half::f16::from_le_bytes([src[i], src[i + 1]]);
                        let (d, dmin) = (f16(0).to_f32(), f16(2).to_f32());
                        block[0].0[r * 4..r * 4 + 4].copy_from_slice(&d.to_le_bytes());
                        block[1].0[r * 4..r * 4 + 4].copy_from_slice(&dmin.to_le_bytes());
                        for j in 0..8 {
                            let (sc, m) = q4k_scale_min(j, &src[4..16]);
                            // Byte j * 16 + r of lines 2-3 (scales) and 4-5 (mins).
                            let at = j * TILE + r;
                            block[2 + at / 64].0[at % 64] = sc;
                            block[4 + at / 64].0[at % 64] = m;
                        }
                        for (line, four) in block[6..].iter_mut().zip(src[16..].chunks_exact(4)) {
                            line.0[r * 4..r * 4 + 4].copy_from_slice(four);
                        }
                    }
                }
            }
        }
        Ok(Some(Self {
            kind,
            rows,
            cols,
            tiles,
            kb,
            lines,
            scales,
        }))
    }

    /// Bytes held (padding rows included).
    pub fn bytes(&self) -> usize {
        self.lines.len() * 64 + self.scales.len() * 2
    }

    /// `then(x[m, cols] · selfᵀ)`: m rows of `rows` values.
    pub fn matmul(&self, x: &[f32], m: usize, then: Epilogue) -> Result<Vec<f32>> {
        let (n, k) = (self.rows, self.cols);
        let bad = |what: String| {
            Err(Error::Candle(candle_core::Error::Msg(format!(
                "{what} for a [{n}, {k}] weight"
            ))))
        };
        if x.len() != m * k {
            return bad(format!("a [{m}, {}] input", x.len() / m.max(1)));
        }
        if let Some(b) = then.bias.filter(|b| b.len() != n) {
            return bad(format!("a bias of {}", b.len()));
        }
        if m == 0 {
            return Ok(Vec::new());
        }
        #[cfg(target_arch = "x86_64")]
        {
            if cpu_has_them() {
                let acts = Acts::quantize(x, m, k);
                let mut out = Vec::with_capacity(m * n);
                // SAFETY: the CPU has the features (checked just now); `acts` holds m rows of
                // `k` values; `out` has room for m rows of `n`, and the kernels write every
                // one of them (the tiles cover every column of every row) before the length
                // takes them in. No zeros written first: that ran on the calling thread while
                // the other waited (2.4 % of an image encode's samples in a profile).
                unsafe {
                    x86::run(self, &acts, &then, out.as_mut_ptr());
                    out.set_len(m * n);
                }
                return Ok(out);
            }
        }
        Err(Error::Candle(candle_core::Error::Msg(
            "the quantized kernels need a CPU with AVX-512 VNNI".into(),
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
    /// [m][blocks] sums of the block's bytes.
    sum: Vec<i32>,
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
            sum: vec![0; m * kb],
        };
        let (q, d, c) = (
            Shared::of(&mut acts.q),
            Shared::of(&mut acts.d),
            Shared::of(&mut acts.sum),
        );
        let one_row = |r: usize| {
            // SAFETY: row r's slices, written by this call only (rows are split between
            // workers); available() was checked by the caller.
            unsafe {
                x86::quantize_row(
                    &x[r * k..(r + 1) * k],
                    std::slice::from_raw_parts_mut(q.at(r * k), k),
                    std::slice::from_raw_parts_mut(d.at(r * kb), kb),
                    std::slice::from_raw_parts_mut(c.at(r * kb), kb),
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

/// What a product does to its results as it writes them: adds a bias (one value per weight
/// row), then applies an activation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub act: Option<Activation>,
}

/// A product and its epilogue as a candle op: [.., cols] f32 in, [.., rows] f32 out.
pub struct Product<'a> {
    pub weight: &'a Packed,
    pub then: Epilogue<'a>,
}

impl CustomOp1 for Product<'_> {
    fn name(&self) -> &'static str {
        "quantized matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::nn::fused::contiguous_f32(s, l, self.name())?;
        let dims = l.shape().dims();
        let Some((&k, lead)) = dims.split_last() else {
            candle_core::bail!("{} takes a tensor of at least one dimension", self.name())
        };
        let w = self.weight;
        if k != w.cols {
            candle_core::bail!("{}: {dims:?} against [{}, {k}]", self.name(), w.rows)
        }
        let m: usize = lead.iter().product();
        let out = w
            .matmul(x, m, self.then)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = w.rows;
        }
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Acts, Epilogue, Kind, Packed, Shared, BLOCK, Q4K_LINES, QK_K, ROW_CHUNK, TILE};
    use std::arch::x86_64::*;

    /// Quantizes one row: per block of 32, scale = max|x| / 127, values rounded to nearest.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BW.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [i8], d: &mut [f32], c: &mut [i32]) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            for ((xs, qs), (d, c)) in x
                .chunks_exact(BLOCK)
                .zip(q.chunks_exact_mut(BLOCK))
                .zip(d.iter_mut().zip(c.iter_mut()))
            {
                let lo = _mm512_loadu_ps(xs.as_ptr());
                let hi = _mm512_loadu_ps(xs.as_ptr().add(16));
                let amax =
                    _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
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
                *c = _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
            }
        }
    }

    /// q8_0: `MR` rows of activations from `row0` against `NT` tiles from `tile0`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; activation rows `row0..row0 + MR` and weight tiles
    /// `tile0..tile0 + NT` exist, and `out` has room for those rows of `w.rows` values, written by
    /// this caller only.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q8_0<const MR: usize, const NT: usize>(
        w: &Packed,
        a: &Acts,
        then: &Epilogue,
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let kb = w.kb;
            let lines = w.lines.as_ptr();
            let scales = w.scales.as_ptr();
            let mut acc = [[_mm512_setzero_ps(); NT]; MR];
            for b in 0..kb {
                // Each sum starts at the weights' offset times the activations' sum, taken off.
                let mut isum = [[_mm512_setzero_si512(); NT]; MR];
                for (i, row) in isum.iter_mut().enumerate() {
                    let c = _mm512_set1_epi32(-128 * *a.sum.get_unchecked((row0 + i) * kb + b));
                    for s in row.iter_mut() {
                        *s = c;
                    }
                }
                for g in 0..8 {
                    let mut wv = [_mm512_setzero_si512(); NT];
                    for (t, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_load_si512(
                            lines.add(((tile0 + t) * kb + b) * 8 + g) as *const _
                        );
                    }
                    for (i, row) in isum.iter_mut().enumerate() {
                        let av = bcast4(a, row0 + i, b * BLOCK + g * 4);
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
                        *acc =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(*s), _mm512_mul_ps(*dw, da), *acc);
                    }
                }
            }
            store(w, then, &acc, row0, tile0, out);
        }
    }

    /// q4k: `MR` rows of activations from `row0` against `NT` tiles from `tile0`.
    ///
    /// # Safety
    /// As for [`q8_0`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q4k<const MR: usize, const NT: usize>(
        w: &Packed,
        a: &Acts,
        then: &Epilogue,
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let (kb, ab) = (w.kb, a.k / BLOCK);
            let nibble = _mm512_set1_epi8(0x0F);
            let mut acc = [[_mm512_setzero_ps(); NT]; MR];
            for sb in 0..kb {
                let mut base = [w.lines.as_ptr(); NT];
                for (t, p) in base.iter_mut().enumerate() {
                    *p = p.add(((tile0 + t) * kb + sb) * Q4K_LINES);
                }
                // Two sub-blocks at a time: the low and high nibbles of the same lines.
                for pair in 0..4 {
                    let mut lo = [[_mm512_setzero_si512(); NT]; MR];
                    let mut hi = [[_mm512_setzero_si512(); NT]; MR];
                    for g in 0..8 {
                        let mut wl = [_mm512_setzero_si512(); NT];
                        let mut wh = [_mm512_setzero_si512(); NT];
                        for t in 0..NT {
                            let v = _mm512_load_si512(base[t].add(6 + pair * 8 + g) as *const _);
                            wl[t] = _mm512_and_si512(v, nibble);
                            wh[t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
                        }
                        for i in 0..MR {
                            let at = sb * QK_K + pair * 64 + g * 4;
                            let (al, ah) = (bcast4(a, row0 + i, at), bcast4(a, row0 + i, at + 32));
                            for t in 0..NT {
                                lo[i][t] = _mm512_dpbusd_epi32(lo[i][t], wl[t], al);
                                hi[i][t] = _mm512_dpbusd_epi32(hi[i][t], wh[t], ah);
                            }
                        }
                    }
                    for (half, isum) in [(0, &lo), (1, &hi)] {
                        let j = pair * 2 + half;
                        // This sub-block's scale and min of each row, times d and dmin.
                        let mut sc = [_mm512_setzero_ps(); NT];
                        let mut mn = [_mm512_setzero_ps(); NT];
                        for t in 0..NT {
                            let bytes = |line: usize| {
                                let at = (base[t].add(line) as *const u8).add((j * TILE) % 64);
                                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                                    at as *const __m128i,
                                )))
                            };
                            let d = _mm512_load_ps(base[t] as *const f32);
                            let dmin = _mm512_load_ps(base[t].add(1) as *const f32);
                            sc[t] = _mm512_mul_ps(bytes(2 + j * TILE / 64), d);
                            mn[t] = _mm512_mul_ps(bytes(4 + j * TILE / 64), dmin);
                        }
                        for i in 0..MR {
                            let blk = (row0 + i) * ab + sb * 8 + j;
                            let da = *a.d.get_unchecked(blk);
                            let (da_v, dsum) = (
                                _mm512_set1_ps(da),
                                _mm512_set1_ps(da * *a.sum.get_unchecked(blk) as f32),
                            );
                            for t in 0..NT {
                                let f = _mm512_cvtepi32_ps(isum[i][t]);
                                acc[i][t] =
                                    _mm512_fmadd_ps(f, _mm512_mul_ps(sc[t], da_v), acc[i][t]);
                                acc[i][t] = _mm512_fnmadd_ps(mn[t], dsum, acc[i][t]);
                            }
                        }
                    }
                }
            }
            store(w, then, &acc, row0, tile0, out);
        }
    }

    /// 4 activation bytes of row `row` from value `at`, in every 32-bit lane.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, and values `at..at + 4` of row `row` lie inside `a`.
    #[inline(always)]
    unsafe fn bcast4(a: &Acts, row: usize, at: usize) -> __m512i {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let p = a.q.as_ptr().add(row * a.k + at);
            _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32))
        }
    }

    /// Writes the sums of `MR` rows by `NT` tiles (the valid rows of a part tile only),
    /// through the epilogue.
    ///
    /// # Safety
    /// The CPU has AVX-512 F; `out` has room for rows `row0..row0 + MR` of `w.rows` values,
    /// written by this caller only.
    #[inline(always)]
    unsafe fn store<const MR: usize, const NT: usize>(
        w: &Packed,
        then: &Epilogue,
        acc: &[[__m512; NT]; MR],
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let n = w.rows;
            for t in 0..NT {
                let first = (tile0 + t) * TILE;
                let valid = (n - first).min(TILE);
                let mask: __mmask16 = if valid == TILE {
                    0xFFFF
                } else {
                    (1u16 << valid) - 1
                };
                let bias = match then.bias {
                    Some(b) => _mm512_maskz_loadu_ps(mask, b.as_ptr().add(first)),
                    None => _mm512_setzero_ps(),
                };
                for (i, acc_row) in acc.iter().enumerate() {
                    let mut v = _mm512_add_ps(acc_row[t], bias);
                    if let Some(act) = then.act {
                        let (mut x, mut y) = ([0f32; TILE], [0f32; TILE]);
                        _mm512_storeu_ps(x.as_mut_ptr(), v);
                        act.run(&mut y, &x);
                        v = _mm512_loadu_ps(y.as_ptr());
                    }
                    _mm512_mask_storeu_ps(out.add((row0 + i) * n + first), mask, v);
                }
            }
        }
    }

    /// `mr` (1..=4) rows against `nt` tiles (q8_0: 1, 2 or 4; q4k: 1 or 2).
    ///
    /// # Safety
    /// As for [`q8_0`], with `mr` and `nt` for `MR` and `NT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn dispatch(
        mr: usize,
        nt: usize,
        w: &Packed,
        a: &Acts,
        then: &Epilogue,
        row0: usize,
        tile0: usize,
        out: *mut f32,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            match (w.kind, mr, nt) {
                (Kind::Q8_0, 1, 4) => q8_0::<1, 4>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 1, 2) => q8_0::<1, 2>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 1, _) => q8_0::<1, 1>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 2, 2) => q8_0::<2, 2>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 2, _) => q8_0::<2, 1>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 3, 2) => q8_0::<3, 2>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, 3, _) => q8_0::<3, 1>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, _, 2) => q8_0::<4, 2>(w, a, then, row0, tile0, out),
                (Kind::Q8_0, _, _) => q8_0::<4, 1>(w, a, then, row0, tile0, out),
                (Kind::Q4K, 1, 2) => q4k::<1, 2>(w, a, then, row0, tile0, out),
                (Kind::Q4K, 1, _) => q4k::<1, 1>(w, a, then, row0, tile0, out),
                (Kind::Q4K, 2, _) => q4k::<2, 1>(w, a, then, row0, tile0, out),
                (Kind::Q4K, 3, _) => q4k::<3, 1>(w, a, then, row0, tile0, out),
                (Kind::Q4K, _, _) => q4k::<4, 1>(w, a, then, row0, tile0, out),
            }
        }
    }

    /// The whole product over candle's thread pool; every value of `out` is written.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI; `a` has the weight's width, a bias in `then` one
    /// value per weight row; `out` has room for `a.m` rows of `w.rows` values.
    pub(super) unsafe fn run(w: &Packed, a: &Acts, then: &Epilogue, out: *mut f32) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let out = Shared::new(out);
            let pool = candle_core::utils::barrier_pool();
            let m = a.m;
            // Tiles a row takes at a time: as many independent chains as the registers allow.
            let (few_rows, many_rows) = match w.kind {
                Kind::Q8_0 => (4, 2),
                Kind::Q4K => (2, 1),
            };
            // `mr` rows against the tiles from `tile0` on, `most` at a time (a rest of 3: 2 + 1).
            let tiles_from = |mr: usize, row: usize, tile0: usize, most: usize| {
                let end = w.tiles.min(tile0 + most);
                let mut t = tile0;
                while t < end {
                    let step = match end - t {
                        4.. => 4,
                        2 | 3 => 2,
                        _ => 1,
                    }
                    .min(most);
                    dispatch(mr, step, w, a, then, row, t, out.at(0));
                    t += step;
                }
            };
            if m <= 2 {
                // Few rows (decoding): each row alone against a group of tiles.
                pool.execute_chunked(w.tiles.div_ceil(few_rows), |range| {
                    for g in range {
                        for row in 0..m {
                            tiles_from(1, row, g * few_rows, few_rows);
                        }
                    }
                });
                return;
            }
            // Many rows: units of (a group of tiles, 64 rows), tile-major so that a worker walking
            // its range keeps the same tiles of weights in cache over the row chunks.
            let groups = w.tiles.div_ceil(many_rows);
            let chunks = m.div_ceil(ROW_CHUNK);
            pool.execute_chunked(groups * chunks, |range| {
                for unit in range {
                    let (group, chunk) = (unit / chunks, unit % chunks);
                    let end = m.min((chunk + 1) * ROW_CHUNK);
                    let mut row = chunk * ROW_CHUNK;
                    while row < end {
                        let mr = (end - row).min(4);
                        tiles_from(mr, row, group * many_rows, many_rows);
                        row += mr;
                    }
                }
            });
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The product in f64 of candle's dequantized weight and the activations as quantized
    /// here.
    fn reference(q: &QTensor, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = q.shape().dims2().unwrap();
        let w: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let acts = Acts::quantize(x, m, k);
        let a: Vec<f64> = (0..m * k)
            .map(|i| acts.q[i] as f64 * acts.d[i / BLOCK] as f64)
            .collect();
        let mut out = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let dot: f64 = (0..k).map(|i| w[j * k + i] as f64 * a[r * k + i]).sum();
                out[r * n + j] = dot as f32;
            }
        }
        out
    }

    #[test]
    fn products_match_the_dequantized_weights_and_f32() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        // 40 rows: two whole tiles and a part; 1..=70 rows of activations: each kernel shape.
        let cases = [
            (GgmlDType::Q8_0, 40, 96),
            (GgmlDType::Q8_0, 72, 256),
            (GgmlDType::Q8_0, 16, 32),
            (GgmlDType::Q4K, 40, 512),
            (GgmlDType::Q4K, 88, 256),
        ];
        for (dtype, n, k) in cases {
            let w = Tensor::randn(0f32, 1f32, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let packed = Packed::pack(&q).unwrap().unwrap();
            for m in [1, 2, 3, 5, 70] {
                let x = Tensor::randn(0f32, 1f32, (m, k), &dev).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let got = packed.matmul(&xs, m, Epilogue::default()).unwrap();
                let want = reference(&q, &xs, m);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dtype:?} [{n}, {k}] m={m} at {i}: {g} vs {w}"
                    );
                }
                // And close to f32 (both quantizations' error).
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
                let bound = if dtype == GgmlDType::Q8_0 { 0.02 } else { 0.12 };
                assert!(
                    err <= bound * norm,
                    "{dtype:?} [{n}, {k}] m={m}: {err} vs {norm}"
                );
            }
        }
    }

    #[test]
    fn only_q8_0_and_q4k_cpu_weights_are_packed() {
        let w = Tensor::randn(0f32, 1f32, (16, 256), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q6K).unwrap();
        assert!(Packed::pack(&q).unwrap().is_none());
        for d in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let q = QTensor::quantize(&w, d).unwrap();
            assert_eq!(Packed::pack(&q).unwrap().is_some(), available());
        }
    }
}
