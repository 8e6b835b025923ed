//! MosaicGPT, the remote-code LM of `anas-awadalla/mpt-1b-redpajama-200b`
//! (docs/openflamingo.md §5.1):
//! pre-norm blocks, fused QKV with q/k LayerNorm, ALiBi, no biases, tied output embedding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use serde_json::Value;

use super::{causal_bias, Decoder, LayerCache, LmSpec, Step};
use crate::error::{Error, Result};
use crate::nn::fused::Activation;
use crate::nn::norm::{layer_norm, LayerNorm};
use crate::nn::{split_heads, HasLinears, Linear, Vb};

const LN_EPS: f64 = 1e-5;

/// MosaicGPT (`model_type: mosaic_gpt`), the LM of OpenFlamingo-3B (docs/openflamingo.md §5.1).
#[derive(Clone, Debug, PartialEq)]
pub struct MosaicGptConfig {
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub mlp_ratio: usize,
    pub max_seq_len: usize,
    pub vocab_size: usize,
    pub alibi: bool,
    pub alibi_bias_max: f64,
    pub attn_qk_ln: bool,
    pub no_bias: bool,
    pub softmax_scale: Option<f64>,
    pub attn_clip_qkv: Option<f64>,
    pub logit_scale: Option<f64>,
}

impl MosaicGptConfig {
    /// The released `anas-awadalla/mpt-1b-redpajama-200b` shape.
    pub fn mpt_1b() -> Self {
        Self {
            d_model: 2048,
            n_heads: 16,
            n_layers: 24,
            mlp_ratio: 4,
            max_seq_len: 2048,
            vocab_size: 50432,
            alibi: true,
            alibi_bias_max: 8.0,
            attn_qk_ln: true,
            no_bias: true,
            softmax_scale: None,
            attn_clip_qkv: None,
            logit_scale: None,
        }
    }

    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let u = |k: &str| -> Result<usize> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("`{k}` missing or not an integer")))
        };
        let b = |k: &str, d: bool| v.get(k).and_then(Value::as_bool).unwrap_or(d);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let cfg = Self {
            d_model: u("d_model")?,
            n_heads: u("n_heads")?,
            n_layers: u("n_layers")?,
            mlp_ratio: v.get("mlp_ratio").and_then(Value::as_u64).unwrap_or(4) as usize,
            max_seq_len: v.get("max_seq_len").and_then(Value::as_u64).unwrap_or(2048) as usize,
            vocab_size: u("vocab_size")?,
            alibi: b("alibi", false),
            alibi_bias_max: f("alibi_bias_max").unwrap_or(8.0),
            attn_qk_ln: b("attn_qk_ln", false),
            no_bias: b("no_bias", false),
            softmax_scale: f("softmax_scale"),
            attn_clip_qkv: f("attn_clip_qkv"),
            logit_scale: match v.get("logit_scale") {
                Some(Value::String(s)) if s == "inv_sqrt_d_model" => {
                    Some(1.0 / (u("d_model")? as f64).sqrt())
                }
                Some(x) => x.as_f64(),
                None => None,
            },
        };
        if cfg.n_heads == 0 || !cfg.d_model.is_multiple_of(cfg.n_heads) {
            return Err(bad("d_model must be a multiple of n_heads".into()));
        }
        if !cfg.alibi {
            return Err(bad(
                "MosaicGPT without ALiBi (learned positions) is not supported; the released OpenFlamingo LMs use ALiBi"
                    .into(),
            ));
        }
        if !cfg.no_bias {
            return Err(bad(
                "MosaicGPT with biases is not supported; the released OpenFlamingo LMs have no_bias=true".into(),
            ));
        }
        Ok(cfg)
    }
}

impl MosaicGptConfig {
    /// [`super::Family::parse`] for this family.
    pub fn parse(v: &Value, path: &Path) -> Result<Arc<dyn LmSpec>> {
        Ok(Arc::new(Self::from_value(v, path)?))
    }
}

impl LmSpec for MosaicGptConfig {
    fn family(&self) -> &'static str {
        "MosaicGPT"
    }

    fn hidden_size(&self) -> usize {
        self.d_model
    }

    fn n_layers(&self) -> usize {
        self.n_layers
    }

    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    fn lm_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let up = self.mlp_ratio * d;
        let mut t = Vec::new();
        for i in 0..self.n_layers {
            let b = format!("transformer.blocks.{i}");
            t.push((format!("{b}.ln_1.weight"), vec![d]));
            t.push((format!("{b}.ln_2.weight"), vec![d]));
            if self.attn_qk_ln {
                t.push((format!("{b}.attn.q_ln.weight"), vec![d]));
                t.push((format!("{b}.attn.k_ln.weight"), vec![d]));
            }
            t.push((format!("{b}.attn.Wqkv.weight"), vec![3 * d, d]));
            t.push((format!("{b}.attn.out_proj.weight"), vec![d, d]));
            t.push((format!("{b}.mlp.mlp_up.weight"), vec![up, d]));
            t.push((format!("{b}.mlp.mlp_down.weight"), vec![d, up]));
        }
        t.push(("transformer.ln_f.weight".into(), vec![d]));
        t
    }

    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>> {
        let embed = ckpt.get_any("embed")?;
        let vocab = embed.dim(0)?;
        let embed = ckpt.get(&[vocab, self.d_model], "embed")?;
        Ok(Box::new(MosaicGpt::load(lm, self, embed)?))
    }
}

struct Block {
    ln_1: LayerNorm,
    wqkv: Linear,
    q_ln: Option<LayerNorm>,
    k_ln: Option<LayerNorm>,
    out_proj: Linear,
    ln_2: LayerNorm,
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
    ln_f: LayerNorm,
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
    fn load(vb: &Vb, cfg: &MosaicGptConfig, wte: Tensor) -> Result<Self> {
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
                Linear::derived(vb, "lm_head.tied", d, vocab, &|| Ok(wte.clone()))?
            },
            wte,
            blocks,
            slopes,
        })
    }
}

impl Decoder for MosaicGpt {
    fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    fn vocab_size(&self) -> usize {
        self.wte.dim(0).unwrap_or(0)
    }

    fn max_seq_len(&self) -> usize {
        self.cfg.max_seq_len
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        Ok(self
            .wte
            .index_select(&flat, 0)?
            .reshape((b, t, self.cfg.d_model))?)
    }

    /// ALiBi + causal (+ key padding) bias.
    fn step(
        &self,
        _batch: usize,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<Step> {
        Ok(Step {
            bias: causal_bias(past, s_q, key_mask, Some(&self.slopes), device)?,
            positions: Vec::new(),
        })
    }

    fn block(&self, i: usize, x: &Tensor, step: &Step, cache: &mut LayerCache) -> Result<Tensor> {
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
        let o = crate::nn::attention::attention(&q, &k, &v, scale, Some(&step.bias))?;
        let x = (x + blk.out_proj.forward(&o)?)?;
        let m = blk
            .mlp_up
            .forward_then(&blk.ln_2.forward(&x)?, Activation::GeluErf)?;
        Ok((&x + blk.mlp_down.forward(&m)?)?)
    }

    /// Final norm and tied output projection.
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.ln_f.forward(x)?;
        let logits = self.head.forward(&x)?;
        Ok(match self.cfg.logit_scale {
            Some(s) => (logits * s)?,
            None => logits,
        })
    }
}
