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
trait Pass: Sync {
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
struct SoftmaxPass {
    row: usize,
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

/// LayerNorm of each `weight.len()`-long row: `(x - mean) / sqrt(var + eps) * weight + bias`,
/// the mean and the variance in two passes over the row (candle's takes `E[x²] - mean²` in one,
/// which loses digits when the mean is large against the spread).
struct LayerNormPass<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
    eps: f32,
}

impl Pass for LayerNormPass<'_> {
    #[inline(always)]
    fn run(&self, o: &mut [f32], i: &[f32]) {
        /// Sum of `f` over a row, in eight running sums (vector lanes) for speed and a smaller
        /// rounding error.
        #[inline(always)]
        fn lanes_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
            let mut lanes = [0f32; 8];
            let mut blocks = row.chunks_exact(8);
            for b in &mut blocks {
                for (s, &v) in lanes.iter_mut().zip(b) {
                    *s += f(v);
                }
            }
            lanes.iter().sum::<f32>() + blocks.remainder().iter().map(|&v| f(v)).sum::<f32>()
        }
        let n = self.weight.len();
        for (o, i) in o.chunks_mut(n).zip(i.chunks(n)) {
            let mean = lanes_sum(i, |v| v) / n as f32;
            let var = lanes_sum(i, |v| (v - mean) * (v - mean)) / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for ((o, &x), (&w, &b)) in o.iter_mut().zip(i).zip(self.weight.iter().zip(self.bias)) {
                *o = (x - mean) * inv * w + b;
            }
        }
    }
}

/// LayerNorm over the last dimension. On the CPU in f32 its rows are spread over candle's
/// own thread pool ([`LayerNormPass`]); candle's version runs them on rayon's pool, whose
/// threads then compete for the cores with the pool that runs everything else.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    /// Weight and bias as plain values, for a CPU f32 model.
    cpu: Option<std::sync::Arc<(Vec<f32>, Vec<f32>)>>,
    eps: f32,
}

impl LayerNorm {
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> candle_core::Result<Self> {
        let cpu = if weight.device().is_cpu() && weight.dtype() == candle_core::DType::F32 {
            Some(std::sync::Arc::new((weight.to_vec1()?, bias.to_vec1()?)))
        } else {
            None
        };
        Ok(Self {
            inner: candle_nn::LayerNorm::new(weight, bias, eps),
            cpu,
            eps: eps as f32,
        })
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.cpu {
            Some(p) if fusable(x) && x.dims().last() == Some(&p.0.len()) => {
                x.apply_op1_no_bwd(self)
            }
            _ => self.inner.forward(x),
        }
    }
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(s, l, self.name())?;
        let Some(p) = &self.cpu else {
            candle_core::bail!("layer-norm: no CPU weights")
        };
        let row = p.0.len().max(1);
        if src.len() % row != 0 {
            candle_core::bail!("layer-norm: {:?} against {row} weights", l.shape())
        }
        let pass = LayerNormPass {
            weight: &p.0,
            bias: &p.1,
            eps: self.eps,
        };
        let mut out = vec![0f32; src.len()];
        run_pass(&pass, src, &mut out, row);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Runs `pass` built for AVX2 where the CPU has it (8 floats per instruction instead of the
/// baseline's 4), else as built.
fn wide<P: Pass>(pass: &P, o: &mut [f32], i: &[f32]) {
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
fn run_pass<P: Pass>(pass: &P, src: &[f32], out: &mut [f32], chunk: usize) {
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
fn fusable(x: &Tensor) -> bool {
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
/// ([`crate::model::linear::Linear::forward_then`]); elsewhere it is a pass of its own.
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

/// Unmasked multi-head self-attention straight from a fused projection: `qkv` is
/// `[B, N, 3W]` (queries, keys, values side by side, each `heads` heads wide), the result
/// `[B, N, W]` with the heads side by side again, as the output projection takes it. The
/// heads are views of `qkv`, which [`attention`] reads in place on the CPU (candle would copy
/// each of q, k and v into heads-first order, multiply on one thread and copy the result back).
pub fn self_attention(qkv: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, n, w3) = qkv.dims3()?;
    if heads == 0 || w3 % (3 * heads) != 0 {
        candle_core::bail!("attention: {w3} columns do not hold q, k and v of {heads} heads")
    }
    let hd = w3 / 3 / heads;
    // [3, B, heads, N, hd]: rows of hd values at stride 3W. Each part is taken as a view
    // (`get` would copy it: it reshapes a non-contiguous narrow).
    let qkv = qkv
        .reshape((b, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    let part = |i| qkv.narrow(0, i, 1)?.squeeze(0);
    let (q, k, v) = (part(0)?, part(1)?, part(2)?);
    attention(&q, &k, &v, (hd as f64).powf(-0.5), None)
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
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

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

/// The sizes of one head's attention: `tq` queries and `tk` keys of `d` values, and the scale
/// of the queries.
struct HeadDims {
    tq: usize,
    tk: usize,
    d: usize,
    scale: f32,
}

/// One head's `softmax(scale q kᵀ + bias) v` on the calling thread: q, k and v are rows of `d`
/// values at the given row strides, `bias` (if any) `tq` rows of `tk` values one after
/// another, the output rows of `d` values at its row stride. Queries are scaled before the
/// product, as in candle's composed form (same rounding).
///
/// # Safety
/// Every row so addressed must lie inside its buffer, and no other thread may touch the
/// output rows.
unsafe fn one_head(
    &HeadDims { tq, tk, d, scale }: &HeadDims,
    (q, q_rs): (*const f32, usize),
    (k, k_rs): (*const f32, usize),
    (v, v_rs): (*const f32, usize),
    bias: Option<*const f32>,
    (o, o_rs): (*mut f32, usize),
) {
    // Scratch reused by each thread from one call to the next (fresh buffers of this size
    // would be new pages to clear on every call).
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        scratch.resize(2 * tq * tk + tq * d, 0.0);
        let (scores, rest) = scratch.split_at_mut(tq * tk);
        let (probs, q_scaled) = rest.split_at_mut(tq * tk);
        for (i, qs) in q_scaled.chunks_exact_mut(d).enumerate() {
            let row = std::slice::from_raw_parts(q.add(i * q_rs), d);
            for (a, &b) in qs.iter_mut().zip(row) {
                *a = b * scale;
            }
        }
        // scores = q kᵀ: k's rows are the columns of kᵀ.
        matmul(
            (tq, tk, d),
            (scores.as_mut_ptr(), tk),
            (q_scaled.as_ptr(), d),
            (k, 1, k_rs),
        );
        if let Some(bias) = bias {
            for (s, &b) in scores
                .iter_mut()
                .zip(std::slice::from_raw_parts(bias, tq * tk))
            {
                *s += b;
            }
        }
        wide(&SoftmaxPass { row: tk }, probs, scores);
        matmul((tq, d, tk), (o, o_rs), (probs.as_ptr(), tk), (v, v_rs, 1));
    })
}

/// Multi-head attention: `softmax(scale q kᵀ + bias) v` for queries `q` [B, H, Tq, D] over
/// keys and values `k`, `v` [B, H, Tk, D], with `bias` [B or 1, H or 1, Tq, Tk] added to the
/// scores; the result has the heads side by side again, [B, Tq, H·D], as an output
/// projection takes it. On the CPU the heads are spread over candle's pool and the queries,
/// keys and values read in place (views into a fused projection or a KV cache too); candle's
/// composed form multiplies one
/// head after another, on rayon's pool where a product is large, through five more
/// operations. Elsewhere candle's operations.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let tk = k.dim(2)?;
    if k.dims() != [b, h, tk, d] || v.dims() != [b, h, tk, d] {
        candle_core::bail!(
            "attention: queries {:?}, keys {:?}, values {:?}",
            q.dims(),
            k.dims(),
            v.dims()
        )
    }
    let bias_fits = |t: &Tensor| match t.dims4() {
        Ok((bb, bh, bq, bk)) => {
            (bb == 1 || bb == b) && (bh == 1 || bh == h) && (bq, bk) == (tq, tk)
        }
        Err(_) => false,
    };
    if let Some(t) = bias.filter(|t| !bias_fits(t)) {
        candle_core::bail!(
            "attention: a bias of {:?} for {:?} scores",
            t.dims(),
            [b, h, tq, tk]
        )
    }
    if b * h * tq * d == 0 || tk == 0 {
        // No keys: nothing to attend to (the callers zero such rows), as candle's product
        // over an empty dimension gives.
        return Tensor::zeros((b, tq, h * d), q.dtype(), q.device());
    }
    let on_cpu = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    let in_rows = |t: &Tensor| t.stride().last() == Some(&1);
    if [q, k, v].iter().all(|t| on_cpu(t) && in_rows(t))
        && bias.is_none_or(|t| on_cpu(t) && t.is_contiguous())
    {
        let bias = bias.cloned();
        return q.apply_op3_no_bwd(
            k,
            v,
            &Heads {
                scale: scale as f32,
                bias,
            },
        );
    }
    // candle's batched product takes a view (keys from a KV cache) only when just the heads
    // are batched.
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    let att = (q * scale)?.matmul(&k.t()?)?;
    let att = match bias {
        Some(t) => att.broadcast_add(&t.to_dtype(att.dtype())?)?,
        None => att,
    };
    let o = softmax_last_dim(&att)?.matmul(&v)?; // [B, H, Tq, D]
    o.transpose(1, 2)?.reshape((b, tq, h * d))
}

/// [`attention`] on the CPU.
struct Heads {
    scale: f32,
    bias: Option<Tensor>,
}

/// The values of a CPU f32 tensor from its first element on, and its strides.
fn strided_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<(&'a [f32], Vec<usize>)> {
    match s {
        CpuStorage::F32(data) => Ok((&data[l.start_offset()..], l.stride().to_vec())),
        _ => candle_core::bail!("{op} takes f32 tensors"),
    }
}

impl candle_core::CustomOp3 for Heads {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, q_st) = strided_f32(qs, ql, self.name())?;
        let (k, k_st) = strided_f32(ks, kl, self.name())?;
        let (v, v_st) = strided_f32(vs, vl, self.name())?;
        let (b, h, tq, d) = ql.shape().dims4()?;
        let tk = kl.shape().dims()[2];
        // The last element of each of q, k and v must lie inside its buffer.
        let end =
            |st: &[usize], rows: usize| (b - 1) * st[0] + (h - 1) * st[1] + (rows - 1) * st[2] + d;
        if tk == 0
            || end(&q_st, tq) > q.len()
            || end(&k_st, tk) > k.len()
            || end(&v_st, tk) > v.len()
        {
            candle_core::bail!("attention: queries, keys or values outside their buffer")
        }
        let guard = self.bias.as_ref().map(|t| t.storage_and_layout());
        let bias = match &guard {
            Some((storage, layout)) => match &**storage {
                candle_core::Storage::Cpu(s) => {
                    let data = contiguous_f32(s, layout, self.name())?;
                    let dims = layout.shape().dims();
                    Some((data, dims[0], dims[1]))
                }
                _ => candle_core::bail!("attention: the bias is not on the CPU"),
            },
            None => None,
        };
        let mut out = vec![0f32; b * tq * h * d];
        let dst = Shared::of(&mut out);
        let dims = HeadDims {
            tq,
            tk,
            d,
            scale: self.scale,
        };
        let one = |unit: usize| {
            let (bi, hi) = (unit / h, unit % h);
            let bias = bias.map(|(data, bb, bh)| {
                let at =
                    ((if bb == 1 { 0 } else { bi }) * bh + if bh == 1 { 0 } else { hi }) * tq * tk;
                data[at..].as_ptr()
            });
            // SAFETY: q, k and v lie inside their buffers (checked above) at their strides;
            // the bias, of the shape `attention` checked, is contiguous; this head's output is
            // tq rows of d values at row stride h·d inside `out`, written by this unit only.
            unsafe {
                one_head(
                    &dims,
                    (q[bi * q_st[0] + hi * q_st[1]..].as_ptr(), q_st[2]),
                    (k[bi * k_st[0] + hi * k_st[1]..].as_ptr(), k_st[2]),
                    (v[bi * v_st[0] + hi * v_st[1]..].as_ptr(), v_st[2]),
                    bias,
                    (dst.at(bi * tq * h * d + hi * d), h * d),
                )
            }
        };
        // Little work (a decoded token's heads) stays on this thread: waking the pool would
        // cost more.
        if tq * tk * d * h * b < 1 << 16 {
            (0..b * h).for_each(one);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(b * h, |units| units.for_each(one));
        }
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h * d))))
    }
}

/// `dst = lhs · rhs` for `(m, n, k)` on the calling thread: `dst` (m x n) and `lhs` (m x k)
/// are rows at the given row strides, `rhs` (k x n) element (i, j) is at `i * rs + j * cs`.
///
/// # Safety
/// Every element so addressed must lie inside its buffer, and no other thread may touch the
/// part of `dst` written.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs): (*const f32, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
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
    fn layer_norm_matches_candles_and_the_exact_one() {
        let dev = Device::Cpu;
        // Rows with a mean far from zero, widths that fill no vector, one row and many.
        for (rows, n) in [(1, 2048), (7, 1030), (257, 1024)] {
            let x = (Tensor::randn(0f32, 1f32, (rows, n), &dev).unwrap() + 6.0).unwrap();
            let w = Tensor::randn(1f32, 0.5f32, n, &dev).unwrap();
            let b = Tensor::randn(0f32, 0.5f32, n, &dev).unwrap();
            let ours = LayerNorm::new(w.clone(), b.clone(), 1e-5).unwrap();
            let candles = candle_nn::LayerNorm::new(w.clone(), b.clone(), 1e-5);
            // In f64, two passes.
            let (xs, ws, bs): (Vec<Vec<f32>>, Vec<f32>, Vec<f32>) = (
                x.to_vec2().unwrap(),
                w.to_vec1().unwrap(),
                b.to_vec1().unwrap(),
            );
            let exact: Vec<f32> = xs
                .iter()
                .flat_map(|r| {
                    let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                    let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                    let inv = 1.0 / (var + 1e-5).sqrt();
                    r.iter().zip(ws.iter().zip(&bs)).map(move |(&v, (&w, &b))| {
                        ((v as f64 - mean) * inv * w as f64 + b as f64) as f32
                    })
                })
                .collect();
            let exact = Tensor::from_vec(exact, (rows, n), &dev).unwrap();
            use candle_core::Module;
            let got = ours.forward(&x).unwrap();
            let off = max_abs_diff(&got, &exact);
            let theirs = max_abs_diff(&candles.forward(&x).unwrap(), &exact);
            assert!(off < 2e-5, "{rows}x{n}: off by {off}");
            assert!(
                off <= theirs + 1e-6,
                "{rows}x{n}: {off} vs candle's {theirs}"
            );
        }
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
    fn attention_in_place_matches_candles_composed_attention() {
        // Odd sizes: rows that fill no vector, heads that do not split evenly over threads.
        for (b, n, heads, hd) in [(2, 257, 5, 16), (1, 7, 3, 8)] {
            let w3 = 3 * heads * hd;
            let qkv = Tensor::randn(0f32, 2f32, (b, n, w3), &Device::Cpu).unwrap();
            let fused = self_attention(&qkv, heads).unwrap();
            // candle's composed form: q, k and v copied into heads-first order.
            let composed = {
                let parts = qkv
                    .reshape((b, n, 3, heads, hd))
                    .unwrap()
                    .permute((2, 0, 3, 1, 4))
                    .unwrap();
                let part = |i| parts.get(i).unwrap().contiguous().unwrap();
                let q = (part(0) * (hd as f64).powf(-0.5)).unwrap();
                let att = q.matmul(&part(1).t().unwrap()).unwrap();
                candle_nn::ops::softmax_last_dim(&att)
                    .unwrap()
                    .matmul(&part(2))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((b, n, heads * hd))
                    .unwrap()
            };
            assert_eq!(fused.dims(), &[b, n, heads * hd]);
            let d = max_abs_diff(&fused, &composed);
            assert!(d < 1e-5, "max difference {d}");
        }
        let bad = Tensor::zeros((1, 4, 10), DType::F32, &Device::Cpu).unwrap();
        assert!(self_attention(&bad, 3).is_err());
    }

    #[test]
    fn multi_head_attention_matches_candles_composed_form() {
        let dev = Device::Cpu;
        let r = |shape: &[usize]| Tensor::randn(0f32, 1f32, shape, &dev).unwrap();
        // (B, H, Tq, Tk, D): one decoded token (on the calling thread) and a prompt (pool).
        for (b, h, tq, tk, d) in [(2, 3, 1, 9, 8), (2, 5, 37, 41, 16)] {
            let q = r(&[b, h, tq, d]);
            // Keys and values as views into buffers with room (a KV cache): strided rows.
            let (kb, vb) = (r(&[b, h, tk + 7, d]), r(&[b, h, tk + 7, d]));
            let (k, v) = (kb.narrow(2, 0, tk).unwrap(), vb.narrow(2, 0, tk).unwrap());
            for bias in [None, Some(r(&[1, h, tq, tk])), Some(r(&[b, 1, tq, tk]))] {
                let got = attention(&q, &k, &v, 0.3, bias.as_ref()).unwrap();
                let mut att = (&q * 0.3)
                    .unwrap()
                    .matmul(&k.contiguous().unwrap().t().unwrap())
                    .unwrap();
                if let Some(t) = &bias {
                    att = att.broadcast_add(t).unwrap();
                }
                let want = candle_nn::ops::softmax_last_dim(&att)
                    .unwrap()
                    .matmul(&v.contiguous().unwrap())
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((b, tq, h * d))
                    .unwrap();
                let diff = max_abs_diff(&got, &want);
                assert!(diff < 1e-5, "{b}x{h}x{tq}x{tk}x{d}: {diff}");
            }
            let wrong = r(&[b, h, tq + 1, tk]);
            assert!(attention(&q, &k, &v, 0.3, Some(&wrong)).is_err());
        }
        // No keys: zeros.
        let q = r(&[1, 2, 3, 4]);
        let none = Tensor::zeros((1, 2, 0, 4), DType::F32, &dev).unwrap();
        let z = attention(&q, &none, &none, 1.0, None).unwrap();
        assert_eq!(z.dims(), &[1, 3, 8]);
        assert_eq!(max_abs_diff(&z, &z.zeros_like().unwrap()), 0.0);
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
