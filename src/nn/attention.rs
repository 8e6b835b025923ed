//! Multi-head attention on the CPU: heads spread over candle's pool, queries, keys and values
//! read in place.

use candle_core::{CpuStorage, Layout, Shape, Tensor};

use super::fused::{contiguous_f32, softmax_last_dim, wide, Shared, SoftmaxPass};

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
    attention(Site::Vision, &q, &k, &v, (hd as f64).powf(-0.5), None)
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
    // SAFETY: the caller upholds this function's contract (# Safety above).
    unsafe {
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
}

/// Which attention a call of [`attention`] is, as a recording tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// The vision tower's self-attention over an image's patches.
    Vision,
    /// The perceiver's latents over an image's patches and themselves.
    Perceiver,
    /// Text over the images' latents (a gated cross-attention block).
    Cross,
    /// The language model's self-attention.
    SelfAttention,
}

/// One recorded attention: its site and weights `softmax(scale q kᵀ + bias)` [B, H, Tq, Tk]
/// in f32.
pub type Recorded = (Site, Tensor);

thread_local! {
    static RECORDING: std::cell::RefCell<Option<Vec<Recorded>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the weights of every [`attention`] it calls on this thread recorded, in call
/// order (like PyTorch's `output_attentions`, for explaining a caption; the ordinary path never
/// forms the weights). Recording is off again afterwards, also when `f` fails.
pub fn recording<R>(f: impl FnOnce() -> R) -> (R, Vec<Recorded>) {
    let before = RECORDING.with(|r| r.borrow_mut().replace(Vec::new()));
    let out = f();
    let recorded = RECORDING.with(|r| std::mem::replace(&mut *r.borrow_mut(), before));
    (out, recorded.unwrap_or_default())
}

/// Adds the weights of this call to the recording when one is on.
fn record(
    site: Site,
    q: &Tensor,
    k: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
) -> candle_core::Result<()> {
    if !RECORDING.with(|r| r.borrow().is_some()) {
        return Ok(());
    }
    let f32 = candle_core::DType::F32;
    let att = (q.to_dtype(f32)? * scale)?.matmul(&k.contiguous()?.to_dtype(f32)?.t()?)?;
    let att = match bias {
        Some(t) => att.broadcast_add(&t.to_dtype(f32)?)?,
        None => att,
    };
    let w = candle_nn::ops::softmax_last_dim(&att)?;
    RECORDING.with(|r| {
        if let Some(v) = r.borrow_mut().as_mut() {
            v.push((site, w));
        }
    });
    Ok(())
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
    site: Site,
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
    record(site, q, k, scale, bias)?;
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
    // SAFETY: the caller upholds this function's contract (# Safety above).
    unsafe {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::fused::max_abs_diff;
    use candle_core::{DType, Device};

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
                let got = attention(Site::SelfAttention, &q, &k, &v, 0.3, bias.as_ref()).unwrap();
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
            assert!(attention(Site::SelfAttention, &q, &k, &v, 0.3, Some(&wrong)).is_err());
        }
        // No keys: zeros.
        let q = r(&[1, 2, 3, 4]);
        let none = Tensor::zeros((1, 2, 0, 4), DType::F32, &dev).unwrap();
        let z = attention(Site::SelfAttention, &q, &none, &none, 1.0, None).unwrap();
        assert_eq!(z.dims(), &[1, 3, 8]);
        assert_eq!(max_abs_diff(&z, &z.zeros_like().unwrap()), 0.0);
    }
}
