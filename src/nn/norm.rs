//! Normalisation layers.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::fused::{contiguous_f32, fusable, run_pass, Pass};

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

/// LayerNorm `name` over the last dimension of width `dim`; without `bias` it is weight-only
/// (a zero bias).
pub fn layer_norm(
    vb: &super::Vb,
    name: &str,
    dim: usize,
    eps: f64,
    bias: bool,
) -> crate::error::Result<LayerNorm> {
    let vb = vb.pp(name);
    let w = vb.get(&[dim], "weight")?;
    let b = if bias {
        vb.get(&[dim], "bias")?
    } else {
        w.zeros_like()?
    };
    Ok(LayerNorm::new(w, b, eps)?)
}

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · weight` (LLaMA's).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// RMSNorm `name` (its `weight`) of width `dim`.
    pub fn load(vb: &super::Vb, name: &str, dim: usize, eps: f64) -> crate::error::Result<Self> {
        Ok(Self {
            weight: vb.pp(name).get(&[dim], "weight")?,
            eps: eps as f32,
        })
    }
}

impl candle_core::Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::fused::max_abs_diff;
    use candle_core::Device;

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
}
