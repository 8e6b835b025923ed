//! The one linear-layer type of the model. Every projection goes through it, so that weight
//! formats (f32, f16, q8_0, q4k) are a change in this file only.

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use std::sync::Arc;

use super::dense_x86 as dcpu;
use super::fused::Activation;
use super::mapped::FilePages;
use super::quantized_x86::{self as qcpu, Packed};
use super::Vb;
use crate::error::Result;
use crate::types::WeightFormat;

/// What a linear layer does, as far as the mixed formats care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A feed-forward (MLP) projection of the language model or a cross-attention block:
    /// read once per generated token.
    FeedForward,
    /// The output projection onto the vocabulary.
    Output,
    /// Attention, cross-attention and everything else.
    Other,
}

impl Role {
    /// The role of the layer named `name` in the weight files (`…mlp.…`, `…ffn.…`, `…ff.…`
    /// outside the vision tower and the perceiver: feed-forward; `lm_head`, `embed_out`:
    /// output). The vision tower and the perceiver run once per image, not per token: their
    /// feed-forwards count as "other".
    pub fn of(name: &str) -> Self {
        // A model-cache name carries its section (`lm/…`).
        let name = name.rsplit('/').next().unwrap_or(name);
        let parts: Vec<&str> = name.split('.').collect();
        if parts
            .iter()
            .any(|p| p.starts_with("lm_head") || *p == "embed_out")
        {
            return Self::Output;
        }
        let per_image = matches!(parts.first(), Some(&"visual") | Some(&"perceiver"));
        if !per_image && parts.iter().any(|p| matches!(*p, "mlp" | "ffn" | "ff")) {
            return Self::FeedForward;
        }
        Self::Other
    }
}

/// The format a layer of `role` gets in `fmt`: the mixed format's choice per role, the others
/// as they are.
pub fn format_for(fmt: WeightFormat, role: Role) -> WeightFormat {
    match (fmt, role) {
        (WeightFormat::Q4KM, Role::FeedForward) => WeightFormat::Q4K,
        (WeightFormat::Q4KM, _) => WeightFormat::Q8_0,
        (f, _) => f,
    }
}

/// How a linear layer's weight is held once converted (what the model cache stores).
#[derive(Clone, Debug)]
pub enum LinearWeight {
    Dense(Tensor),
    F16(Tensor),
    /// With the file pages the blocks are read from, where they are read in place.
    Quantized(std::sync::Arc<QTensor>, Option<FilePages>),
}

impl LinearWeight {
    /// Bytes the weight holds.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) | Self::F16(t) => tensor_bytes(t),
            Self::Quantized(q, _) => q.storage_size_in_bytes(),
        }
    }
}

#[derive(Clone, Debug)]
enum Weight {
    Dense(Tensor),
    Matmul(QMatMul),
    /// A quantized CPU weight cut in two (see [`split_rows`]): the rows that fill whole tiles
    /// of candle's repacked kernels, and the few left over.
    Split(QMatMul, QMatMul),
    /// A q8_0 or q4k CPU weight in the layout of our own kernels ([`qcpu`]), made by
    /// [`Linear::prepare`], with the layer's bias, which the kernels add as they write.
    Packed(Arc<Packed>, Option<Arc<[f32]>>),
}

/// Rows per tile of candle's repacked x86 kernels.
const TILE_ROWS: usize = 16;

/// candle's repacked x86 kernels take q8_0/q4k weights in whole tiles of 16 rows (and rows of
/// whole 256-value blocks); a weight with a few rows more, like the 50280-row output
/// projection, goes through its generic kernels instead, several times slower
/// (docs/performance.md). Such a CPU weight is cut into the rows that fill
/// tiles and the rest, the first read in place from the file pages where it was (only where
/// candle's kernels are used: ours pad the last tile).
fn split_rows(
    q: &QTensor,
    pages: Option<&FilePages>,
) -> Result<Option<(QTensor, QTensor, Option<FilePages>)>> {
    let (rows, cols) = q.shape().dims2()?;
    let main = rows - rows % TILE_ROWS;
    let dtype = q.dtype();
    if !q.device().is_cpu()
        || main == rows
        || main == 0
        || !matches!(dtype, GgmlDType::Q8_0 | GgmlDType::Q4K)
        || !cols.is_multiple_of(256)
    {
        return Ok(None);
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let at = main * row_bytes;
    if let Some(p) = pages {
        let parts = (p.sub(0, at), p.sub(at, (rows - main) * row_bytes));
        let (Some(a), Some(b)) = parts else {
            return Ok(None);
        };
        let head = crate::nn::mapped::qtensor(dtype, &[main, cols], a.clone());
        let tail = crate::nn::mapped::qtensor(dtype, &[rows - main, cols], b);
        return Ok(head.zip(tail).map(|(h, t)| (h, t, Some(a))));
    }
    let data = q.data()?;
    if data.len() != rows * row_bytes {
        return Ok(None);
    }
    let cpu = &Device::Cpu;
    let head = qtensor_from_ggml(dtype, &data[..at], vec![main, cols], cpu)?;
    let tail = qtensor_from_ggml(dtype, &data[at..], vec![rows - main, cols], cpu)?;
    Ok(Some((head, tail, None)))
}

#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    role: Role,
    /// The file pages a quantized weight is read from in place (see [`Linear::prepare`]).
    pages: Option<FilePages>,
    bias: Option<Tensor>,
    in_dim: usize,
    out_dim: usize,
}

/// Converts a dense f32 [out, in] weight to `fmt`. A quantized format whose block does not
/// divide the input width falls back to q8_0, then to f16.
pub fn convert_weight(w: Tensor, fmt: WeightFormat) -> Result<LinearWeight> {
    let w = w.to_dtype(DType::F32)?;
    let in_dim = w.dims().last().copied().unwrap_or(0);
    let fits = |d: GgmlDType| in_dim.is_multiple_of(d.block_size());
    let q = |d: GgmlDType| -> Result<LinearWeight> {
        let threads = candle_core::utils::get_num_threads();
        Ok(LinearWeight::Quantized(
            std::sync::Arc::new(quantize(&w, d, threads)?),
            None,
        ))
    };
    Ok(match fmt {
        WeightFormat::F32 => LinearWeight::Dense(w),
        WeightFormat::F16 => LinearWeight::F16(w.to_dtype(DType::F16)?),
        WeightFormat::Q4K if fits(GgmlDType::Q4K) => q(GgmlDType::Q4K)?,
        WeightFormat::Q4K | WeightFormat::Q8_0 if fits(GgmlDType::Q8_0) => q(GgmlDType::Q8_0)?,
        // A mixed format is resolved per layer (`format_for`); given whole, its finer part.
        WeightFormat::Q4KM => return convert_weight(w, WeightFormat::Q8_0),
        _ => LinearWeight::F16(w.to_dtype(DType::F16)?),
    })
}

/// Quantizes a [rows, cols] f32 weight (`cols` a multiple of the block) with up to `parts`
/// threads, each taking a band of rows: a block never spans two rows, so the bytes are those
/// of quantizing it whole (candle quantizes on one thread, which dominated first loads).
pub fn quantize(w: &Tensor, d: GgmlDType, parts: usize) -> Result<QTensor> {
    let (rows, cols) = w.dims2()?;
    let parts = parts.clamp(1, rows.max(1));
    let device = w.device();
    // The threads below touch CPU tensors only (a GPU weight comes over once, here).
    let cpu = w.to_device(&Device::Cpu)?;
    let bytes = if parts == 1 || rows * cols < (1 << 18) {
        let q = QTensor::quantize(&cpu, d)?;
        if device.is_cpu() {
            return Ok(q);
        }
        q.data()?.into_owned()
    } else {
        let band = rows.div_ceil(parts);
        let cpu = &cpu;
        let tasks: Vec<_> = (0..rows)
            .step_by(band)
            .map(|start| {
                let n = band.min(rows - start);
                move || -> Result<Vec<u8>> {
                    let rows: Vec<f32> = cpu.narrow(0, start, n)?.flatten_all()?.to_vec1()?;
                    let t = Tensor::from_vec(rows, (n, cols), &Device::Cpu)?;
                    Ok(QTensor::quantize(&t, d)?.data()?.into_owned())
                }
            })
            .collect();
        crate::nn::fused::in_parallel("quantizing a weight", tasks)?.concat()
    };
    // Built from the bytes, a GPU copy is zero-padded as when it comes from a GGUF file;
    // candle's own quantize leaves the padding after the last block uninitialised, and its
    // matmul kernels read it when a row is shorter than their tile (tiny widths): NaN logits.
    Ok(qtensor_from_ggml(d, &bytes, vec![rows, cols], device)?)
}

impl Linear {
    /// A layer from a weight already in its format.
    pub fn from_weight(w: LinearWeight, bias: Option<Tensor>) -> Result<Self> {
        let (weight, pages, dims) = match w {
            LinearWeight::Dense(t) => {
                let d = t.dims2()?;
                (Weight::Dense(t), None, d)
            }
            LinearWeight::F16(t) => {
                let d = t.dims2()?;
                (Weight::Matmul(QMatMul::TensorF16(t)), None, d)
            }
            LinearWeight::Quantized(q, pages) => {
                let d = q.shape().dims2()?;
                // Our own kernels take whole weights (they pad the last tile).
                let split = if qcpu::available() {
                    None
                } else {
                    split_rows(&q, pages.as_ref())?
                };
                match split {
                    Some((head, tail, pages)) => (
                        Weight::Split(QMatMul::from_qtensor(head)?, QMatMul::from_qtensor(tail)?),
                        pages,
                        d,
                    ),
                    None => (Weight::Matmul(QMatMul::from_arc(q)?), pages, d),
                }
            }
        };
        Ok(Self {
            weight,
            role: Role::Other,
            pages,
            bias,
            in_dim: dims.1,
            out_dim: dims.0,
        })
    }

    /// `name.weight` of shape [out, in] and, if `bias`, `name.bias` of shape [out], the
    /// weight in the store's format.
    pub fn load(vb: &Vb, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let vb = vb.pp(name);
        Self::load_parts(&vb, "weight", bias.then_some("bias"), in_dim, out_dim)
    }

    /// A layer whose weight and bias tensors have the given names.
    pub fn load_parts(
        vb: &Vb,
        weight: &str,
        bias: Option<&str>,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let w = vb.linear_weight(weight, &[out_dim, in_dim])?;
        let b = bias.map(|b| vb.get(&[out_dim], b)).transpose()?;
        let mut l = Self::from_weight(w, b)?;
        l.role = Role::of(&vb.full(weight));
        Ok(l)
    }

    /// A layer whose [out, in] weight is computed by `make` (a reshaped convolution, a tied
    /// embedding); the model cache keeps it under `key`.
    pub fn derived(
        vb: &Vb,
        key: &str,
        in_dim: usize,
        out_dim: usize,
        make: &dyn Fn() -> Result<Tensor>,
    ) -> Result<Self> {
        let w = vb.derived_linear_weight(key, &[out_dim, in_dim], make)?;
        let mut l = Self::from_weight(w, None)?;
        l.role = Role::of(&vb.full(key));
        Ok(l)
    }

    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// Converts a dense f32 weight to `fmt` (weights already converted stay as they are).
    pub fn convert(&mut self, fmt: WeightFormat) -> Result<()> {
        let Weight::Dense(w) = &self.weight else {
            return Ok(());
        };
        if fmt == WeightFormat::F32 {
            return Ok(());
        }
        let role = self.role;
        *self = Self::from_weight(
            convert_weight(w.clone(), format_for(fmt, role))?,
            self.bias.take(),
        )?;
        self.role = role;
        Ok(())
    }

    /// Makes the copy of a quantized CPU weight that its kernels read, now (see
    /// a model's `prepare_weights`): a q8_0 or q4k weight is repacked for our
    /// own kernels where the CPU has them ([`qcpu`]), any other is run once through candle so
    /// that candle makes its repacked copy. A weight read in place from the model cache then
    /// gives its file pages back, as the copy is read from now on (and should the blocks be
    /// read again, the file has them).
    pub fn prepare(&mut self) -> Result<()> {
        let packed = match &self.weight {
            Weight::Matmul(QMatMul::QTensor(q)) => Packed::pack(q)?,
            _ => None,
        };
        if let Some(packed) = packed {
            let bias = match &self.bias {
                Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?.into()),
                None => None,
            };
            self.weight = Weight::Packed(Arc::new(packed), bias);
            self.bias = None;
        } else {
            let m = match &self.weight {
                Weight::Matmul(m @ QMatMul::QTensor(q)) if q.device().is_cpu() => m,
                Weight::Split(m, _) => m,
                _ => return Ok(()),
            };
            m.forward(&Tensor::zeros((1, self.in_dim), DType::F32, &Device::Cpu)?)?;
        }
        if let Some(p) = &self.pages {
            p.release();
        }
        Ok(())
    }

    /// Bytes held by the weight.
    pub fn weight_bytes(&self) -> usize {
        let matmul = |m: &QMatMul| match m {
            QMatMul::QTensor(q) => q.storage_size_in_bytes(),
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => tensor_bytes(w),
        };
        match &self.weight {
            Weight::Dense(w) => tensor_bytes(w),
            Weight::Matmul(m) => matmul(m),
            Weight::Split(a, b) => matmul(a) + matmul(b),
            Weight::Packed(p, _) => p.bytes(),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_and(x, None)
    }

    /// `act(forward(x))`: on our quantized kernels in the same pass, as each tile of the
    /// product is written (no separate passes over the result for the bias and the
    /// activation).
    pub fn forward_then(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_and(x, Some(act))
    }

    fn forward_and(&self, x: &Tensor, act: Option<Activation>) -> Result<Tensor> {
        let y = match &self.weight {
            // A few rows (decoding, a short prompt): each weight row read once, in place.
            Weight::Dense(w) | Weight::Matmul(QMatMul::TensorF16(w)) if dcpu::takes(x, w) => {
                dcpu::matmul(x, w)?
            }
            Weight::Dense(w) => x.matmul(&transposed_for(w, x)?)?,
            // On a GPU an f16 weight multiplies in f16 (tensor cores, half the bytes read);
            // candle's own path would cast the whole weight to f32 on every call.
            Weight::Matmul(QMatMul::TensorF16(w)) if !w.device().is_cpu() => x
                .to_dtype(DType::F16)?
                .matmul(&transposed_for(w, x)?)?
                .to_dtype(x.dtype())?,
            Weight::Matmul(m) => m.forward(&x.contiguous()?)?,
            Weight::Split(head, tail) => {
                let x = x.contiguous()?;
                Tensor::cat(&[head.forward(&x)?, tail.forward(&x)?], D::Minus1)?
            }
            // The bias and the activation are the kernels' to apply.
            Weight::Packed(p, bias) => {
                let then = qcpu::Epilogue {
                    bias: bias.as_deref(),
                    act,
                };
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(&qcpu::Product { weight: p, then })?;
                return Ok(y.to_dtype(x.dtype())?);
            }
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match act {
            Some(act) => act.apply(&y)?,
            None => y,
        })
    }
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// The [out, in] weight `w` as the right-hand side of a product with `x` ([.., n, in]):
/// transposed, and broadcast over the leading dimensions of `x`.
fn transposed_for(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    Ok(match *x.dims() {
        [b1, b2, _, _] => w.broadcast_left((b1, b2))?.t()?,
        [b, _, _] => w.broadcast_left(b)?.t()?,
        _ => w.t()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_key_names_of_every_family() {
        for ff in [
            "xattn.7.ff.1",
            "lm/transformer.blocks.0.mlp.mlp_up.weight",
            "transformer.blocks.5.ffn.down_proj",
            "gpt_neox.layers.1.mlp.dense_h_to_4h",
            "model.layers.2.mlp.gate_proj",
        ] {
            assert_eq!(Role::of(ff), Role::FeedForward, "{ff}");
        }
        for out in ["lm_head.tied", "embed_out", "lm/lm_head.resized"] {
            assert_eq!(Role::of(out), Role::Output, "{out}");
        }
        for other in [
            "visual.transformer.resblocks.3.mlp.c_fc",
            "perceiver.layers.2.1.3",
            "perceiver.layers.2.0.to_kv",
            "xattn.3.attn.to_q",
            "transformer.blocks.0.attn.Wqkv",
            "visual.conv1.as_linear",
        ] {
            assert_eq!(Role::of(other), Role::Other, "{other}");
        }
        assert_eq!(
            format_for(WeightFormat::Q4KM, Role::FeedForward),
            WeightFormat::Q4K
        );
        assert_eq!(
            format_for(WeightFormat::Q4KM, Role::Output),
            WeightFormat::Q8_0
        );
    }

    #[test]
    fn quantizing_in_bands_gives_the_bytes_of_quantizing_whole() {
        let dev = Device::Cpu;
        // Rows that do not split evenly into the bands, too.
        let w = Tensor::randn(0f32, 1f32, (257, 1024), &dev).unwrap();
        for d in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let whole = QTensor::quantize(&w, d).unwrap();
            for parts in [2, 3, 8] {
                let banded = quantize(&w, d, parts).unwrap();
                assert_eq!(banded.shape(), whole.shape());
                assert_eq!(banded.dtype(), d);
                assert_eq!(
                    banded.data().unwrap(),
                    whole.data().unwrap(),
                    "{d:?} in {parts} bands"
                );
            }
        }
    }

    #[test]
    fn a_weight_cut_at_a_tile_gives_the_products_of_its_two_parts() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 5, 512), &dev).unwrap();
        // (The cut is made only where candle's kernels run these weights; it is built here
        // directly, so that it is checked on every CPU.)
        for d in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            // 40 rows: 32 that fill two tiles, 8 left over.
            let w = Tensor::randn(0f32, 1f32, (40, 512), &dev).unwrap();
            let q = std::sync::Arc::new(QTensor::quantize(&w, d).unwrap());
            let (head, tail, pages) = split_rows(&q, None).unwrap().unwrap();
            assert!(pages.is_none());
            let mut l = Linear {
                role: Role::Other,
                weight: Weight::Split(
                    QMatMul::from_qtensor(head).unwrap(),
                    QMatMul::from_qtensor(tail).unwrap(),
                ),
                pages: None,
                bias: None,
                in_dim: 512,
                out_dim: 40,
            };
            assert_eq!(l.weight_bytes(), q.storage_size_in_bytes());
            l.prepare().unwrap();
            let y = l.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 5, 40]);
            // Each part alone, as its own weight: the same numbers.
            for (start, n) in [(0, 32), (32, 8)] {
                // A fresh tensor: candle's quantize reads a view's whole storage.
                let v: Vec<f32> = w
                    .narrow(0, start, n)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let rows = Tensor::from_vec(v, (n, 512), &dev).unwrap();
                let part = QTensor::quantize(&rows, d).unwrap();
                let want = QMatMul::from_qtensor(part).unwrap().forward(&x).unwrap();
                let got = y.narrow(2, start, n).unwrap();
                let diff = crate::nn::fused::max_abs_diff(&got, &want);
                assert_eq!(diff, 0.0, "{d:?} rows {start}..{}", start + n);
            }
        }
        // A whole number of tiles is left as it is.
        let w = Tensor::randn(0f32, 1f32, (32, 512), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(split_rows(&q, None).unwrap().is_none());
    }

    #[test]
    fn a_prepared_quantized_weight_runs_on_our_kernels_close_to_candles() {
        if !qcpu::available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1f32, (2, 5, 512), &dev).unwrap();
        for (d, bound) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::Q4K, 0.05)] {
            // 40 rows: the last tile is part padding.
            let w = Tensor::randn(0f32, 1f32, (40, 512), &dev).unwrap();
            let q = std::sync::Arc::new(QTensor::quantize(&w, d).unwrap());
            let want = QMatMul::from_arc(q.clone()).unwrap().forward(&x).unwrap();
            let b = Tensor::randn(0f32, 1f32, 40, &dev).unwrap();
            let mut l =
                Linear::from_weight(LinearWeight::Quantized(q, None), Some(b.clone())).unwrap();
            assert!(matches!(l.weight, Weight::Matmul(_)), "{d:?}");
            let before = l.forward(&x).unwrap();
            l.prepare().unwrap();
            assert!(matches!(l.weight, Weight::Packed(..)), "{d:?}");
            let y = l.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 5, 40]);
            // The activation applied as the kernels write (after the bias) is the same pass.
            for act in [Activation::QuickGelu, Activation::GeluErf] {
                let fused = l.forward_then(&x, act).unwrap();
                let apart = act.apply(&y).unwrap();
                assert_eq!(crate::nn::fused::max_abs_diff(&fused, &apart), 0.0);
            }
            // Both quantize the activations (candle per 256 values, ours per 32): close, not
            // equal.
            let want = want.broadcast_add(&b).unwrap();
            let scale = crate::nn::fused::max_abs_diff(&want, &want.zeros_like().unwrap());
            let diff = crate::nn::fused::max_abs_diff(&y, &want);
            assert!(diff < bound * scale, "{d:?}: {diff} vs {scale}");
            assert_eq!(crate::nn::fused::max_abs_diff(&before, &want), 0.0, "{d:?}");
        }
    }
}
