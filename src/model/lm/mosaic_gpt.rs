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
    /// The LM repo's tensors under `names`.
    pub(super) fn tensors(&self, names: &Layout) -> Vec<(String, Vec<usize>)> {
        let d = self.d_model;
        let up = self.mlp_ratio * d;
        let (mlp, mlp_up, mlp_down) = names.mlp;
        let mut t = Vec::new();
        for i in 0..self.n_layers {
            let b = format!("transformer.blocks.{i}");
            t.push((format!("{b}.{}.weight", names.ln_1), vec![d]));
            t.push((format!("{b}.{}.weight", names.ln_2), vec![d]));
            if self.attn_qk_ln {
                t.push((format!("{b}.attn.q_ln.weight"), vec![d]));
                t.push((format!("{b}.attn.k_ln.weight"), vec![d]));
            }
            t.push((format!("{b}.attn.Wqkv.weight"), vec![3 * d, d]));
            t.push((format!("{b}.attn.out_proj.weight"), vec![d, d]));
            t.push((format!("{b}.{mlp}.{mlp_up}.weight"), vec![up, d]));
            t.push((format!("{b}.{mlp}.{mlp_down}.weight"), vec![d, up]));
        }
        t.push((format!("transformer.{}.weight", names.ln_f), vec![d]));
        t
    }

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
        self.tensors(&MOSAIC_GPT)
    }

    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(MosaicGpt::load(lm, ckpt, self, &MOSAIC_GPT)?))
    }
}

/// The key names and ALiBi slopes of a MosaicGPT-style decoder: MosaicGPT's own, or MPT's
/// (the same block under other names, [`super::mpt`]).
pub(super) struct Layout {
    pub ln_1: &'static str,
    pub ln_2: &'static str,
    /// The MLP module and its two projections.
    pub mlp: (&'static str, &'static str, &'static str),
    pub ln_f: &'static str,
    /// MPT's `gen_slopes` rounds the head count up to a power of two (and interleaves);
    /// MosaicGPT's takes it as it is.
    pub power_of_two_slopes: bool,
}

pub(super) const MOSAIC_GPT: Layout = Layout {
    ln_1: "ln_1",
    ln_2: "ln_2",
    mlp: ("mlp", "mlp_up", "mlp_down"),
    ln_f: "ln_f",
    power_of_two_slopes: false,
};

/// ALiBi slopes of `h` heads: `2^(-i·max/n)` for `i = 1..=n`; with `power_of_two`, `n` is `h`
/// rounded up to a power of two and, when rounded, the odd entries come first.
fn alibi_slopes(h: usize, bias_max: f64, power_of_two: bool) -> Vec<f32> {
    let n = if power_of_two {
        h.next_power_of_two()
    } else {
        h
    };
    let all: Vec<f32> = (1..=n)
        .map(|i| 1.0 / 2f32.powf(i as f32 * (bias_max as f32 / n as f32)))
        .collect();
    if n == h {
        return all;
    }
    all.iter()
        .skip(1)
        .step_by(2)
        .chain(all.iter().step_by(2))
        .copied()
        .take(h)
        .collect()
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
    fn load(vb: &Vb, cfg: &MosaicGptConfig, names: &Layout) -> Result<Self> {
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
        let (mlp, up, down) = names.mlp;
        let m = vb.pp(mlp);
        Ok(Self {
            ln_1: layer_norm(vb, names.ln_1, d, LN_EPS, false)?,
            wqkv: Linear::load(&a, "Wqkv", d, 3 * d, false)?,
            q_ln,
            k_ln,
            out_proj: Linear::load(&a, "out_proj", d, d, false)?,
            ln_2: layer_norm(vb, names.ln_2, d, LN_EPS, false)?,
            mlp_up: Linear::load(&m, up, d, cfg.mlp_ratio * d, false)?,
            mlp_down: Linear::load(&m, down, cfg.mlp_ratio * d, d, false)?,
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
    /// `vb` points at the LM's root (keys `transformer.*`, named as `names` says); the
    /// embedding, [vocab, d_model], is the checkpoint's `embed` (resized), and the output
    /// projection is tied to it.
    pub(super) fn load(vb: &Vb, ckpt: &Vb, cfg: &MosaicGptConfig, names: &Layout) -> Result<Self> {
        // Read once: a second read while the first is held would double its ~0.8 GB (7B).
        let wte = ckpt.get_rows(cfg.d_model, "embed")?;
        let t = vb.pp("transformer");
        let blocks = (0..cfg.n_layers)
            .map(|i| Block::load(&t.pp(format!("blocks.{i}")), cfg, names))
            .collect::<Result<Vec<_>>>()?;
        let slopes = alibi_slopes(cfg.n_heads, cfg.alibi_bias_max, names.power_of_two_slopes);
        Ok(Self {
            ln_f: layer_norm(&t, names.ln_f, cfg.d_model, LN_EPS, false)?,
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
        super::embed_rows(&self.wte, ids)
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
            rotary: None,
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
        let scale = self
            .cfg
            .softmax_scale
            .unwrap_or(1.0 / ((d / nh) as f64).sqrt());
        let o = cache.attend(&q, k, v, scale, &step.bias)?;
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

#[cfg(test)]
mod tests {
    use super::alibi_slopes;

    #[test]
    fn slopes_follow_both_reference_rules() {
        // MosaicGPT: 2^(-8i/h).
        let s = alibi_slopes(6, 8.0, false);
        for (i, v) in s.iter().enumerate() {
            assert!((v - 2f32.powf(-8.0 * (i + 1) as f32 / 6.0)).abs() < 1e-7);
        }
        // MPT's gen_slopes for 6 heads: 8 slopes 2^(-i), odd ones first, the first 6.
        let want: Vec<f32> = [2, 4, 6, 8, 1, 3].iter().map(|&i| 2f32.powi(-i)).collect();
        assert_eq!(alibi_slopes(6, 8.0, true), want);
        // A power of two is the same either way.
        assert_eq!(alibi_slopes(32, 8.0, true), alibi_slopes(32, 8.0, false));
    }
}
