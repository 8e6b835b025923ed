//! Perceiver resampler: the patch tokens of each image → a fixed set of latents
//! (docs/openflamingo.md §3).

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::nn::fused::Activation;
use crate::nn::norm::layer_norm;
use crate::nn::Vb;
use crate::nn::{split_heads, HasLinears, Linear};

const LN_EPS: f64 = 1e-5;
pub const HEADS: usize = 8;
pub const DIM_HEAD: usize = 64;
const FF_MULT: usize = 4;

/// LayerNorm → Linear(dim→4dim) → GELU(erf) → Linear(4dim→dim), no biases in the linears.
pub(crate) struct FeedForward {
    norm: crate::nn::norm::LayerNorm,
    up: Linear,
    down: Linear,
}

impl FeedForward {
    /// `vb` is the Sequential: `0` LayerNorm, `1` up, `3` down.
    pub(crate) fn load(vb: &Vb, dim: usize) -> Result<Self> {
        Ok(Self {
            norm: layer_norm(vb, "0", dim, LN_EPS, true)?,
            up: Linear::load(vb, "1", dim, dim * FF_MULT, false)?,
            down: Linear::load(vb, "3", dim * FF_MULT, dim, false)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(x)?;
        let h = self.up.forward_then(&h, Activation::GeluErf)?;
        self.down.forward(&h)
    }
}

struct PerceiverAttention {
    norm_media: crate::nn::norm::LayerNorm,
    norm_latents: crate::nn::norm::LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
}

impl PerceiverAttention {
    fn load(vb: &Vb, dim: usize) -> Result<Self> {
        let inner = HEADS * DIM_HEAD;
        Ok(Self {
            norm_media: layer_norm(vb, "norm_media", dim, LN_EPS, true)?,
            norm_latents: layer_norm(vb, "norm_latents", dim, LN_EPS, true)?,
            to_q: Linear::load(vb, "to_q", dim, inner, false)?,
            to_kv: Linear::load(vb, "to_kv", dim, 2 * inner, false)?,
            to_out: Linear::load(vb, "to_out", inner, dim, false)?,
        })
    }

    /// x: [n, v, dim] media tokens, latents: [n, l, dim] → [n, l, dim]
    fn forward(&self, x: &Tensor, latents: &Tensor) -> Result<Tensor> {
        let inner = HEADS * DIM_HEAD;
        let x = self.norm_media.forward(x)?;
        let lat = self.norm_latents.forward(latents)?;
        let q = self.to_q.forward(&lat)?;
        let kv_in = Tensor::cat(&[&x, &lat], 1)?;
        let kv = self.to_kv.forward(&kv_in)?;
        let k = kv.narrow(2, 0, inner)?;
        let v = kv.narrow(2, inner, inner)?;
        let (q, k, v) = (
            split_heads(&q, HEADS)?,
            split_heads(&k, HEADS)?,
            split_heads(&v, HEADS)?,
        );
        let scale = (DIM_HEAD as f64).powf(-0.5);
        self.to_out.forward(&crate::nn::attention::attention(
            crate::nn::attention::Site::Perceiver,
            &q,
            &k,
            &v,
            scale,
            None,
        )?)
    }
}

impl FeedForward {
    pub(crate) fn linears_mut(&mut self) -> [&mut Linear; 2] {
        [&mut self.up, &mut self.down]
    }
}

impl HasLinears for PerceiverResampler {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for (a, f) in &mut self.layers {
            v.extend([&mut a.to_q, &mut a.to_kv, &mut a.to_out]);
            v.extend(f.linears_mut());
        }
        v
    }
}

pub struct PerceiverResampler {
    latents: Tensor,
    layers: Vec<(PerceiverAttention, FeedForward)>,
    norm: crate::nn::norm::LayerNorm,
    dim: usize,
}

/// The tensors of OpenFlamingo's perceiver (depth 6, 64 latents) for media of width `dim`,
/// with their shapes, under `perceiver.`.
pub fn tensor_shapes(dim: usize) -> Vec<(String, Vec<usize>)> {
    let inner = HEADS * DIM_HEAD;
    let mut t = vec![("latents".to_string(), vec![64, dim])];
    for i in 0..6 {
        let b = format!("layers.{i}");
        for ln in ["0.norm_media", "0.norm_latents", "1.0"] {
            t.push((format!("{b}.{ln}.weight"), vec![dim]));
            t.push((format!("{b}.{ln}.bias"), vec![dim]));
        }
        t.push((format!("{b}.0.to_q.weight"), vec![inner, dim]));
        t.push((format!("{b}.0.to_kv.weight"), vec![2 * inner, dim]));
        t.push((format!("{b}.0.to_out.weight"), vec![dim, inner]));
        t.push((format!("{b}.1.1.weight"), vec![FF_MULT * dim, dim]));
        t.push((format!("{b}.1.3.weight"), vec![dim, FF_MULT * dim]));
    }
    t.push(("norm.weight".into(), vec![dim]));
    t.push(("norm.bias".into(), vec![dim]));
    t
}

impl PerceiverResampler {
    /// `vb` points at `perceiver`; depth and latent count come from the tensors.
    pub fn load(vb: &Vb, dim: usize) -> Result<Self> {
        let latents = vb.get_any("latents")?;
        let n_latents = latents.dim(0)?;
        let latents = vb.get(&[n_latents, dim], "latents")?;
        let mut layers = Vec::new();
        let mut i = 0;
        while vb.contains(&format!("layers.{i}.0.to_q.weight")) {
            let l = vb.pp(format!("layers.{i}"));
            layers.push((
                PerceiverAttention::load(&l.pp("0"), dim)?,
                FeedForward::load(&l.pp("1"), dim)?,
            ));
            i += 1;
        }
        if layers.is_empty() {
            // Surface the first expected name in the error.
            vb.get(&[HEADS * DIM_HEAD, dim], "layers.0.0.to_q.weight")?;
        }
        Ok(Self {
            latents,
            layers,
            norm: layer_norm(vb, "norm", dim, LN_EPS, true)?,
            dim,
        })
    }

    pub fn num_latents(&self) -> usize {
        self.latents.dim(0).unwrap_or(0)
    }

    /// x: [n_images, v, dim] → [n_images, num_latents, dim]
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let l = self.num_latents();
        let mut lat = self
            .latents
            .unsqueeze(0)?
            .broadcast_as((n, l, self.dim))?
            .contiguous()?;
        for (attn, ff) in &self.layers {
            lat = (attn.forward(x, &lat)? + &lat)?;
            lat = (ff.forward(&lat)? + &lat)?;
        }
        Ok(self.norm.forward(&lat)?)
    }
}
