//! MosaicGPT (the remote-code LM of `anas-awadalla/mpt-1b-redpajama-200b`, SPEC §6.1):
//! pre-norm blocks, fused QKV with q/k LayerNorm, ALiBi, no biases, tied output embedding.

use candle_core::{Device, Module, Tensor};

use crate::error::Result;
use crate::model::config::MosaicGptConfig;
use crate::model::linear::{layer_norm, HasLinears, Linear};
use crate::model::ops::Activation;
use crate::model::perceiver::split_heads;
use crate::model::weights::Vb;

use super::{AttnBias, LayerCache};

const LN_EPS: f64 = 1e-5;

struct Block {
    ln_1: crate::model::ops::LayerNorm,
    wqkv: Linear,
    q_ln: Option<crate::model::ops::LayerNorm>,
    k_ln: Option<crate::model::ops::LayerNorm>,
    out_proj: Linear,
    ln_2: crate::model::ops::LayerNorm,
    mlp_up: Linear,
    mlp_down: Linear,
}

impl Block {
    fn load(vb: &Vb, cfg: &MosaicGptConfig) -> Result<Self> {
        let d = cfg.d_model;
        let a = vb.pp("attn");
        let (q_ln, k_ln) = if cfg.attn_qk_ln {
            (
                Some(layer_norm(&a, "q_ln", d, LN_EPS, false)?),
                Some(layer_norm(&a, "k_ln", d, LN_EPS, false)?),
            )
        } else {
            (None, None)
        };
        let m = vb.pp("mlp");
        Ok(Self {
            ln_1: layer_norm(vb, "ln_1", d, LN_EPS, false)?,
            wqkv: Linear::load(&a, "Wqkv", d, 3 * d, false)?,
            q_ln,
            k_ln,
            out_proj: Linear::load(&a, "out_proj", d, d, false)?,
            ln_2: layer_norm(vb, "ln_2", d, LN_EPS, false)?,
            mlp_up: Linear::load(&m, "mlp_up", d, cfg.mlp_ratio * d, false)?,
            mlp_down: Linear::load(&m, "mlp_down", cfg.mlp_ratio * d, d, false)?,
        })
    }
}

pub struct MosaicGpt {
    cfg: MosaicGptConfig,
    wte: Tensor,
    /// The tied output projection (the same matrix as `wte`, convertible on its own).
    head: Linear,
    blocks: Vec<Block>,
    ln_f: crate::model::ops::LayerNorm,
    slopes: Vec<f32>,
}

impl HasLinears for MosaicGpt {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.head];
        for b in &mut self.blocks {
            v.extend([&mut b.wqkv, &mut b.out_proj, &mut b.mlp_up, &mut b.mlp_down]);
        }
        v
    }
}

impl MosaicGpt {
    /// `vb` points at the LM's root (keys `transformer.*`); `wte` is the (resized) embedding
    /// from the OpenFlamingo checkpoint, [vocab, d_model].
    pub fn load(vb: &Vb, cfg: &MosaicGptConfig, wte: Tensor) -> Result<Self> {
        let t = vb.pp("transformer");
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::load(&t.pp(format!("blocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let h = cfg.n_heads;
        let slopes = (1..=h)
            .map(|i| {
                let m = i as f32 * (cfg.alibi_bias_max as f32 / h as f32);
                1.0 / 2f32.powf(m)
            })
            .collect();
        Ok(Self {
            ln_f: layer_norm(&t, "ln_f", cfg.d_model, LN_EPS, false)?,
            cfg: cfg.clone(),
            head: {
                let (vocab, d) = wte.dims2()?;
                Linear::derived(vb, "lm_head.tied", d, vocab, || Ok(wte.clone()))?
            },
            wte,
            blocks,
            slopes,
        })
    }

    pub fn config(&self) -> &MosaicGptConfig {
        &self.cfg
    }

    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.wte.dim(0).unwrap_or(0)
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self
            .wte
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.d_model))?)
    }

    /// ALiBi + causal (+ key padding) bias for `s_q` new tokens after `past` cached ones.
    /// `key_mask[b][k]` false marks a padding key.
    pub fn attn_bias(
        &self,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<AttnBias> {
        let h = self.cfg.n_heads;
        let s_k = past + s_q;
        let batch = key_mask.map(|m| m.len()).unwrap_or(1);
        let mut v = vec![0f32; batch * h * s_q * s_k];
        for b in 0..batch {
            for (hi, slope) in self.slopes.iter().enumerate() {
                for i in 0..s_q {
                    let row = ((b * h + hi) * s_q + i) * s_k;
                    for k in 0..s_k {
                        let masked = k > past + i || key_mask.map(|m| !m[b][k]).unwrap_or(false);
                        v[row + k] = if masked {
                            f32::MIN
                        } else {
                            (k as f32 - (s_k as f32 - 1.0)) * slope
                        };
                    }
                }
            }
        }
        Ok(AttnBias(Tensor::from_vec(v, (batch, h, s_q, s_k), device)?))
    }

    /// One decoder block with its KV cache.
    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        bias: &AttnBias,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        let blk = &self.blocks[i];
        let d = self.cfg.d_model;
        let nh = self.cfg.n_heads;
        let a = blk.ln_1.forward(x)?;
        let qkv = blk.wqkv.forward(&a)?;
        let qkv = match self.cfg.attn_clip_qkv {
            Some(c) => qkv.clamp(-c, c)?,
            None => qkv,
        };
        let mut q = qkv.narrow(2, 0, d)?;
        let mut k = qkv.narrow(2, d, d)?;
        let v = qkv.narrow(2, 2 * d, d)?;
        if let (Some(qn), Some(kn)) = (&blk.q_ln, &blk.k_ln) {
            q = qn.forward(&q.contiguous()?)?;
            k = kn.forward(&k.contiguous()?)?;
        }
        let q = split_heads(&q, nh)?;
        let k = split_heads(&k, nh)?;
        let v = split_heads(&v, nh)?;
        let (k, v) = cache.append(k, v)?;
        let scale = self
            .cfg
            .softmax_scale
            .unwrap_or(1.0 / ((d / nh) as f64).sqrt());
        let o = crate::model::ops::attention(&q, &k, &v, scale, Some(&bias.0))?;
        let x = (x + blk.out_proj.forward(&o)?)?;
        let m = blk
            .mlp_up
            .forward_then(&blk.ln_2.forward(&x)?, Activation::GeluErf)?;
        Ok((&x + blk.mlp_down.forward(&m)?)?)
    }

    /// Final norm and tied output projection: [B, T, d] → [B, T, vocab].
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_f.forward(x)?;
        let logits = self.head.forward(&x)?;
        Ok(match self.cfg.logit_scale {
            Some(s) => (logits * s)?,
            None => logits,
        })
    }
}
