//! CPU work spread over threads: element-wise operations fused into one pass over memory
//! where candle composes them from separate single-threaded passes, and one-time work on the
//! weights.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use crate::error::{Error, Result};

/// Runs each task on a thread of its own and returns their results in order; a thread that
/// panics gives an error naming `what` it was doing.
pub fn in_parallel<T, F>(what: &str, tasks: Vec<F>) -> Result<Vec<T>>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    std::thread::scope(|s| {
        let handles: Vec<_> = tasks.into_iter().map(|t| s.spawn(t)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Candle(candle_core::Error::Msg(format!(
                        "a thread {what} panicked"
                    ))))
                })
            })
            .collect()
    })
}

/// `e^x` in plain float arithmetic that the compiler turns into vector code (std's `exp` is
/// one library call per element): x = n ln2 + r with |r| <= ln2/2, e^r from its Taylor
/// polynomial to degree 7 (error below 1e-8 relative), 2^n put in the exponent bits. Within a
/// few units in the last place of f32 everywhere; 0 below -87.3 (and for -inf, so that masked
/// scores weigh nothing), +inf above 88.7.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two, so that n * LN2_HI is exact for the n that occur.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let tiny = x < -87.3;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    // 2^n from the bits of n + 127 + ROUND (exact in f32: the integer n + 127, in [1, 255], is
    // in its lowest mantissa bits), shifted into the exponent; 255 gives +inf, as e^88.7 is.
    // No branch and no float-to-int cast, so that the loop stays vector code.
    let scale = f32::from_bits((n + (127.0 + ROUND)).to_bits() << 23);
    let y = p * scale;
    if tiny {
        0.0
    } else {
        y
    }
}

/// A pass over a chunk of rows: `o` from `i`.
pub(crate) trait Pass: Sync {
    fn run(&self, o: &mut [f32], i: &[f32]);
}

struct QuickGeluPass;

impl Pass for QuickGeluPass {
    #[inline(always)]
    fn run(&self, o: &mut [f32], i: &[f32]) {
        for (o, &v) in o.iter_mut().zip(i) {
            *o = v / (1.0 + exp_f32(-1.702 * v));
        }
    }
}

/// GELU with the exact (erf) form, `x/2 (1 + erf(x/√2))`, as PyTorch's `nn.GELU()`.
///
/// `1 + erf(u)` comes from the rational-times-exponential form of Abramowitz and Stegun
/// (7.1.26, absolute error below 1.5e-7 in erf): for u >= 0 it is `2 - q`, for u < 0 it is
/// `q`, with `q = P(t) e^{-u²}`, `t = 1 / (1 + p |u|)`; so large negative inputs keep their
/// small values instead of losing them to `1 - 1`. Branch-free, so the loop is vector code;
/// candle's `gelu_erf` calls the library's `erf` once per element.
struct GeluErfPass;

impl Pass for GeluErfPass {
    #[inline(always)]
    fn run(&self, o: &mut [f32], i: &[f32]) {
        const P: f32 = 0.327_591_1;
        const A: [f32; 5] = [
            0.254_829_6,
            -0.284_496_74,
            1.421_413_8,
            -1.453_152,
            1.061_405_4,
        ];
        for (o, &x) in o.iter_mut().zip(i) {
            let u = x * std::f32::consts::FRAC_1_SQRT_2;
            let a = u.abs();
            let t = 1.0 / (1.0 + P * a);
            let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
            let q = poly * exp_f32(-a * a);
            let one_plus_erf = if u >= 0.0 { 2.0 - q } else { q };
            *o = 0.5 * x * one_plus_erf;
        }
    }
}

/// Softmax of each `row`-long row.
pub(crate) struct SoftmaxPass {
    pub(crate) row: usize,
}

impl Pass for SoftmaxPass {
    #[inline(always)]
    fn run(&self, o: &mut [f32], i: &[f32]) {
        for (o, i) in o.chunks_mut(self.row).zip(i.chunks(self.row)) {
            // Eight running maxima and sums (vector lanes): speed, and a smaller rounding error.
            let mut lanes = [f32::NEG_INFINITY; 8];
            let mut blocks = i.chunks_exact(8);
            for b in &mut blocks {
                for (m, &v) in lanes.iter_mut().zip(b) {
                    *m = m.max(v);
                }
            }
            let max = blocks
                .remainder()
                .iter()
                .chain(&lanes)
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            // A row of -inf only (everything masked) gives NaN, as candle's does.
            for (o, &v) in o.iter_mut().zip(i) {
                *o = exp_f32(v - max);
            }
            let mut lanes = [0f32; 8];
            let mut blocks = o.chunks_exact(8);
            for b in &mut blocks {
                for (s, v) in lanes.iter_mut().zip(b) {
                    *s += v;
                }
            }
            let sum = lanes.iter().sum::<f32>() + blocks.remainder().iter().sum::<f32>();
            for o in o.iter_mut() {
                *o /= sum;
            }
        }
    }
}

/// Runs `pass` built for AVX2 where the CPU has it (8 floats per instruction instead of the
/// baseline's 4), else as built.
pub(crate) fn wide<P: Pass>(pass: &P, o: &mut [f32], i: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // One copy of this for each pass, whose `run` is inlined into it: built for AVX2.
        #[target_feature(enable = "avx2")]
        fn avx2<P: Pass>(pass: &P, o: &mut [f32], i: &[f32]) {
            pass.run(o, i)
        }
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { avx2(pass, o, i) };
        return;
    }
    pass.run(o, i)
}

/// Runs `pass` over `src` into `out` in pieces of whole `chunk`s, on up to candle's thread
/// count of threads (one, for small inputs).
pub(crate) fn run_pass<P: Pass>(pass: &P, src: &[f32], out: &mut [f32], chunk: usize) {
    let threads = candle_core::utils::get_num_threads().max(1);
    // Below this a thread costs more than it saves.
    let per_thread = src.len().div_ceil(threads).max(1 << 15);
    let per_thread = per_thread.div_ceil(chunk) * chunk;
    if per_thread >= src.len() {
        wide(pass, out, src);
        return;
    }
    let pieces = src.len().div_ceil(per_thread);
    let dst = Shared::of(out);
    candle_core::utils::barrier_pool().execute_chunked(pieces, |range| {
        for piece in range {
            let start = piece * per_thread;
            let len = per_thread.min(src.len() - start);
            // SAFETY: piece `piece` of `out`, written by this unit only.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.at(start), len) };
            wide(pass, o, &src[start..start + len]);
        }
    });
}

/// Whether `x` takes the fused CPU passes below.
pub(crate) fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.is_contiguous() && x.rank() > 0
}

/// CLIP's QuickGELU, `x * sigmoid(1.702 x)`.
pub fn quick_gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    if fusable(x) {
        x.apply_op1_no_bwd(&Fused::QuickGelu)
    } else {
        x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
    }
}

/// The activation that follows the first projection of a feed-forward block. A quantized
/// product on our own kernels applies it as it writes its results
/// ([`crate::nn::linear::Linear::forward_then`]); elsewhere it is a pass of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x σ(1.702 x)`, OpenAI CLIP's.
    QuickGelu,
    /// GELU in its exact (erf) form, PyTorch's `nn.GELU()`.
    GeluErf,
}

impl Activation {
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => quick_gelu(x),
            Self::GeluErf => gelu_erf(x),
        }
    }

    /// `o` from `i` on the calling thread (a few values: a product's tile of results).
    pub(crate) fn run(self, o: &mut [f32], i: &[f32]) {
        match self {
            Self::QuickGelu => wide(&QuickGeluPass, o, i),
            Self::GeluErf => wide(&GeluErfPass, o, i),
        }
    }
}

/// GELU (erf form) in one vectorised pass over all threads ([`GeluErfPass`]); candle's own
/// for other devices, types and non-contiguous views.
pub fn gelu_erf(x: &Tensor) -> candle_core::Result<Tensor> {
    if fusable(x) {
        x.apply_op1_no_bwd(&Fused::GeluErf)
    } else {
        x.gelu_erf()
    }
}

/// Softmax over the last dimension: rows spread over threads, exponentials from [`exp_f32`];
/// candle's own for other devices, types and non-contiguous views.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    if fusable(x) {
        x.apply_op1_no_bwd(&Fused::Softmax)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// The values of a contiguous f32 CPU tensor, for the CPU custom ops; an error naming `op`
/// for any other.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("{op} takes a contiguous f32 tensor"),
    }
}

/// A pointer that threads writing disjoint parts of one buffer may share.
pub(crate) struct Shared<T>(*mut T);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: its users (attention heads, fused passes, quantized products and their activations)
// give each worker its own part of the buffer to write, and read nothing another writes.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub(crate) fn of(v: &mut [T]) -> Self {
        Self(v.as_mut_ptr())
    }

    pub(crate) fn new(p: *mut T) -> Self {
        Self(p)
    }

    /// The address of element `i`.
    pub(crate) fn at(self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// The fused passes over a contiguous f32 CPU tensor.
enum Fused {
    QuickGelu,
    GeluErf,
    /// Over the last dimension.
    Softmax,
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        match self {
            Self::QuickGelu => "quick-gelu",
            Self::GeluErf => "gelu-erf",
            Self::Softmax => "softmax-rows",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, self.name())?;
        let mut out = vec![0f32; src.len()];
        match self {
            Self::QuickGelu => run_pass(&QuickGeluPass, src, &mut out, 1),
            Self::GeluErf => run_pass(&GeluErfPass, src, &mut out, 1),
            Self::Softmax => {
                let row = l.shape().dims().last().copied().unwrap_or(1).max(1);
                run_pass(&SoftmaxPass { row }, src, &mut out, row)
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Largest absolute difference of two tensors of the same shape (for the model's unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d: Vec<f32> = (a - b).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    d.into_iter().fold(0f32, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn exp_f32_is_within_a_few_ulp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1000.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(1000.0).is_infinite());
    }

    #[test]
    fn softmax_matches_candles() {
        let x = Tensor::randn(0f32, 4f32, (2, 16, 257, 257), &Device::Cpu).unwrap();
        // Both against softmax in f64: ours is no further off than candle's own f32 one.
        let exact = candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F64).unwrap())
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ours = max_abs_diff(&softmax_last_dim(&x).unwrap(), &exact);
        let candles = max_abs_diff(&candle_nn::ops::softmax_last_dim(&x).unwrap(), &exact);
        assert!(
            ours <= 2.0 * candles + 1e-7,
            "ours off by {ours}, candle's by {candles}"
        );
        // Masked entries (-inf) get 0, as in candle's.
        let m = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0]], &Device::Cpu).unwrap();
        let got: Vec<Vec<f32>> = softmax_last_dim(&m).unwrap().to_vec2().unwrap();
        assert_eq!(got[0][1], 0.0);
        assert!((got[0][0] + got[0][2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn gelu_erf_matches_candles() {
        // Wide enough for both tails, and every value a float can take near 0.
        let x = Tensor::randn(0f32, 4f32, (7, 4099), &Device::Cpu).unwrap();
        let exact = x
            .to_dtype(DType::F64)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ours = gelu_erf(&x).unwrap();
        // Absolute error against the f64 GELU, scaled by |x| where |x| > 1: the worst.
        let scale = x.abs().unwrap().maximum(1f32).unwrap();
        let worst_of = |t: &Tensor| -> f32 {
            ((t - &exact).unwrap().abs().unwrap() / &scale)
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let worst = worst_of(&ours);
        let candles = worst_of(&x.gelu_erf().unwrap());
        eprintln!("worst scaled error: ours {worst:e}, candle's f32 {candles:e}");
        // A few units in the last place (candle's own f32 one is about one).
        assert!(
            worst < 4e-7,
            "worst scaled error {worst} (candle's {candles})"
        );
        // Far tails: 0 below, x above; nothing becomes NaN.
        let t = Tensor::new(&[-100f32, -12.0, 0.0, 12.0, 100.0], &Device::Cpu).unwrap();
        let got: Vec<f32> = gelu_erf(&t).unwrap().to_vec1().unwrap();
        assert_eq!(got[2], 0.0);
        assert!(got[0].abs() < 1e-30 && got[1].abs() < 1e-30, "{got:?}");
        assert!(
            (got[3] - 12.0).abs() < 1e-5 && (got[4] - 100.0).abs() < 1e-4,
            "{got:?}"
        );
        // A view that is not contiguous takes candle's path, with the same numbers.
        let v = x.t().unwrap();
        let d = max_abs_diff(&gelu_erf(&v).unwrap().t().unwrap(), &ours);
        assert!(d < 1e-5, "max difference {d}");
    }

    #[test]
    fn quick_gelu_matches_its_composed_form() {
        let x = Tensor::randn(0f32, 3f32, (3, 257, 301), &Device::Cpu).unwrap();
        let fused = quick_gelu(&x).unwrap();
        let composed = (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap();
        let d = max_abs_diff(&fused, &composed);
        assert!(d < 1e-5, "max difference {d}");
        // A view that is not contiguous takes the composed path.
        let t = x.transpose(1, 2).unwrap();
        let viewed = quick_gelu(&t).unwrap().transpose(1, 2).unwrap();
        let d = max_abs_diff(&viewed, &fused);
        assert!(d < 1e-5, "max difference {d}");
    }
}
