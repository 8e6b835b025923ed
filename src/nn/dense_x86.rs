//! Products of a few rows of activations with dense f32 or f16 weights on x86-64 CPUs (AVX2,
//! FMA and F16C: nearly every x86-64 laptop of the last ten years).
//!
//! Decoding multiplies one row by every weight of the language model and the cross-attention
//! blocks, and a re-query's final prompt a few rows: reading the weights is all the work.
//! candle's dense products (the `gemm` crate) pack the weights for many-row products first;
//! here each weight row is read once, straight from where it is, and multiplied with every
//! activation row while it is in cache. f16 weights are widened to f32 as they are read (candle
//! rounds the activations to f16 and multiplies in f16 instead).
//!
//! Every output value is an f32 sum of products in a fixed order: 8 lanes, each summing every
//! 8th product in order, then the lanes, then the leftover columns; no two threads add into
//! one value, so results do not depend on the thread count.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};

/// Most rows of activations taken here with f32 weights; more go to candle's products, which
/// pack the weights once for all rows and are faster from about 48 rows on. f16 weights take
/// any number: candle's f16 products on a CPU were slower at every count (figures in
/// docs/performance.md).
pub const MAX_F32_ROWS: usize = 48;

/// Most rows of activations taken here for a weight of this type.
fn max_rows(dtype: DType) -> usize {
    match dtype {
        DType::F32 => MAX_F32_ROWS,
        _ => usize::MAX,
    }
}

/// Whether the CPU has the kernels and the environment does not ask for candle's
/// (`FLAMINGO_DENSE_KERNELS=candle`, for comparing).
pub fn available() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        cpu_has_them() && std::env::var("FLAMINGO_DENSE_KERNELS").map_or(true, |v| v != "candle")
    })
}

fn cpu_has_them() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `x · wᵀ` goes through [`matmul`]: a CPU f32 input, and a CPU f32 or f16 weight
/// [out, in] of the input's width, laid out contiguously; with an f32 weight, at most
/// [`MAX_F32_ROWS`] rows of input.
pub fn takes(x: &Tensor, w: &Tensor) -> bool {
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1).unwrap_or(1).max(1);
    available()
        && x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && matches!(w.dtype(), DType::F32 | DType::F16)
        && w.rank() == 2
        && w.is_contiguous()
        && x.dims().last() == w.dims().last()
        && (1..=max_rows(w.dtype())).contains(&rows)
}

/// `x · wᵀ` for [`takes`]: x [.., in], w [out, in], the result [.., out].
pub fn matmul(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (out, k) = w.dims2()?;
    let mut dims = x.dims().to_vec();
    let rows = x.elem_count() / k.max(1);
    let y = x
        .reshape((rows, k))?
        .contiguous()?
        .apply_op2_no_bwd(w, &FewRows)?;
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    y.reshape(dims)
}

struct FewRows;

impl CustomOp2 for FewRows {
    fn name(&self) -> &'static str {
        "few-row dense product"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = xl.shape().dims2()?;
        let (n, wk) = wl.shape().dims2()?;
        if k != wk {
            candle_core::bail!("{}: [{m}, {k}] by a [{n}, {wk}] weight", self.name());
        }
        let x = match (xs, xl.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("{} takes a contiguous f32 input", self.name()),
        };
        let w = match (ws, wl.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Weights::F32(&v[a..b]),
            (CpuStorage::F16(v), Some((a, b))) => Weights::F16(&v[a..b]),
            _ => candle_core::bail!("{} takes a contiguous f32 or f16 weight", self.name()),
        };
        let y = run(w, n, k, x, m)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }
}

#[derive(Clone, Copy)]
enum Weights<'a> {
    F32(&'a [f32]),
    F16(&'a [half::f16]),
}

/// Weight rows a worker's block takes at a time.
const ROWS: usize = 4;

/// y[m, n] = x[m, k] · w[n, k]ᵀ.
fn run(w: Weights, n: usize, k: usize, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
    let len = match w {
        Weights::F32(v) => v.len(),
        Weights::F16(v) => v.len(),
    };
    if len != n * k || x.len() != m * k {
        candle_core::bail!("few-row dense product: sizes do not match");
    }
    if !cpu_has_them() {
        candle_core::bail!("few-row dense product: the CPU lacks AVX2, FMA or F16C");
    }
    #[cfg(target_arch = "x86_64")]
    {
        let mut y = vec![0f32; m * n];
        let dst = crate::nn::fused::Shared::of(&mut y);
        let blocks = n.div_ceil(ROWS);
        let some = |range: std::ops::Range<usize>| {
            for b in range {
                let rows = b * ROWS..(b * ROWS + ROWS).min(n);
                // SAFETY: the CPU has the features (checked above); the sizes were checked;
                // each block writes only its own columns of y.
                unsafe { x86::block(w, rows, k, x, m, dst) }
            }
        };
        // A small product stays on the calling thread.
        if n * k * m < 1 << 16 {
            some(0..blocks);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(blocks, some);
        }
        Ok(y)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("cpu_has_them is false off x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Weights, ROWS};
    use crate::nn::fused::Shared;
    use std::arch::x86_64::*;

    /// One product's operands: weights [n, k] (f32, or f16 when `HALF`), activations [m, k],
    /// results [m, n].
    #[derive(Clone, Copy)]
    struct Operands {
        w: *const u8,
        n: usize,
        k: usize,
        x: *const f32,
        y: Shared<f32>,
    }

    /// Output columns `rows` of every one of the m rows of y.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `w` holds n x k weights, `x` m x k values, `y` m x n;
    /// `rows` is within 0..n and no other thread writes those columns.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block(
        w: Weights,
        rows: std::ops::Range<usize>,
        k: usize,
        x: &[f32],
        m: usize,
        y: Shared<f32>,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let (wp, half, n) = match w {
                Weights::F32(v) => (v.as_ptr() as *const u8, false, v.len() / k.max(1)),
                Weights::F16(v) => (v.as_ptr() as *const u8, true, v.len() / k.max(1)),
            };
            let o = Operands {
                w: wp,
                n,
                k,
                x: x.as_ptr(),
                y,
            };
            if rows.len() < ROWS {
                // The last, short block: one weight row at a time.
                for r in rows {
                    for i in 0..m {
                        match half {
                            false => tile::<1, 1, false>(o, r, i),
                            true => tile::<1, 1, true>(o, r, i),
                        }
                    }
                }
                return;
            }
            // Two rows of activations at a time against the block's weight rows; after the first
            // pair, the weight rows come from cache.
            let mut i = 0;
            while i + 2 <= m {
                match half {
                    false => tile::<ROWS, 2, false>(o, rows.start, i),
                    true => tile::<ROWS, 2, true>(o, rows.start, i),
                }
                i += 2;
            }
            if i < m {
                match half {
                    false => tile::<ROWS, 1, false>(o, rows.start, i),
                    true => tile::<ROWS, 1, true>(o, rows.start, i),
                }
            }
        }
    }

    /// Eight weights from index `at` (f32, or f16 widened) as f32.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C, and weights `at..at + 8` lie inside the buffer at `p`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const HALF: bool>(p: *const u8, at: usize) -> __m256 {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(at * 2) as *const __m128i))
            } else {
                _mm256_loadu_ps(p.add(at * 4) as *const f32)
            }
        }
    }

    /// One weight at index `at` as f32.
    ///
    /// # Safety
    /// Weight `at` lies inside the buffer at `p`.
    #[inline]
    unsafe fn load1<const HALF: bool>(p: *const u8, at: usize) -> f32 {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            if HALF {
                half::f16::from_bits((p.add(at * 2) as *const u16).read_unaligned()).to_f32()
            } else {
                (p.add(at * 4) as *const f32).read_unaligned()
            }
        }
    }

    /// y[i + j, n0 + r] for the R weight rows from n0 and the M activation rows from i.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; weight rows `n0..n0 + R` and activation rows `i..i + M`
    /// lie inside their buffers, and no other thread writes the outputs of this tile.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const M: usize, const HALF: bool>(
        o: Operands,
        n0: usize,
        i: usize,
    ) {
        // SAFETY: the caller upholds this function's contract (# Safety above).
        unsafe {
            let k = o.k;
            let whole = k - k % 8;
            let mut acc = [[_mm256_setzero_ps(); M]; R];
            let mut c = 0;
            while c < whole {
                let mut xs = [_mm256_setzero_ps(); M];
                for (j, v) in xs.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(o.x.add((i + j) * k + c));
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    let wv = load8::<HALF>(o.w, (n0 + r) * k + c);
                    for (s, xv) in a.iter_mut().zip(&xs) {
                        *s = _mm256_fmadd_ps(wv, *xv, *s);
                    }
                }
                c += 8;
            }
            for (r, a) in acc.iter().enumerate() {
                for (j, s) in a.iter().enumerate() {
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), *s);
                    let mut sum: f32 = lanes.iter().sum();
                    for cc in whole..k {
                        sum += load1::<HALF>(o.w, (n0 + r) * k + cc) * *o.x.add((i + j) * k + cc);
                    }
                    *o.y.at((i + j) * o.n + n0 + r) = sum;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Largest difference relative to the largest value.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        (d / s).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn few_rows_give_candles_products() {
        if !available() {
            eprintln!("skipped: this CPU lacks AVX2, FMA or F16C");
            return;
        }
        let dev = Device::Cpu;
        // Widths that are not a multiple of 8, weights whose rows do not fill the last block
        // of 4, and products large enough to run on the thread pool.
        for (n, k) in [(3, 7), (5, 8), (37, 1029), (301, 1024)] {
            let w = Tensor::randn(0f32, 1f32, (n, k), &dev).unwrap();
            let w16 = w.to_dtype(DType::F16).unwrap();
            let w16_wide = w16.to_dtype(DType::F32).unwrap();
            for m in [1, 2, 3, 17, MAX_F32_ROWS] {
                let x = Tensor::randn(0f32, 1f32, (m, k), &dev).unwrap();
                assert!(takes(&x, &w) && takes(&x, &w16));
                let want = x.matmul(&w.t().unwrap()).unwrap();
                let got = matmul(&x, &w).unwrap();
                assert!(rel(&got, &want) < 1e-5, "f32 [{n}, {k}], {m} rows");
                // f16 weights against the same weights widened, the activations not rounded.
                let want = x.matmul(&w16_wide.t().unwrap()).unwrap();
                let got = matmul(&x, &w16).unwrap();
                assert!(rel(&got, &want) < 1e-5, "f16 [{n}, {k}], {m} rows");
            }
        }
        // Leading dimensions are kept; too many rows are not taken.
        let w = Tensor::randn(0f32, 1f32, (6, 16), &dev).unwrap();
        let x = Tensor::randn(0f32, 1f32, (2, 3, 16), &dev).unwrap();
        let want = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        let got = matmul(&x, &w).unwrap();
        assert_eq!(got.dims(), &[2, 3, 6]);
        assert!(rel(&got, &want) < 1e-5);
        let many = Tensor::zeros((MAX_F32_ROWS + 1, 16), DType::F32, &dev).unwrap();
        assert!(!takes(&many, &w));
        assert!(takes(&many, &w.to_dtype(DType::F16).unwrap()));
    }
}
