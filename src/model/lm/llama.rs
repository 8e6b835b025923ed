//! LLaMA, the language model of the v1 OpenFlamingo-9B (docs/openflamingo.md §5.4): RMSNorm,
//! rotary embedding (rotate half on the HF-permuted q/k weights), SiLU-gated MLP, no biases,
//! untied `lm_head`. The checkpoint resized the vocabulary to 32003 rows but never saved
//! `lm_head`: the added tokens' rows are zero here (docs/openflamingo.md §6.3).

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use serde_json::Value;

use super::{embed_rows, Decoder, LayerCache, LmSpec, Step};
use crate::error::{Error, Result};
use crate::nn::norm::RmsNorm;
use crate::nn::rotary::Rotary;
use crate::nn::{split_heads, HasLinears, Linear, Vb};

/// `model_type: llama` of the LM repo's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

impl LlamaConfig {
    /// LLaMA-7B's shape.
    pub fn llama_7b() -> Self {
        Self {
            hidden_size: 4096,
            num_attention_heads: 32,
            num_hidden_layers: 32,
            intermediate_size: 11008,
            max_position_embeddings: 2048,
            vocab_size: 32000,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
        }
    }

    /// [`super::Family::parse`] for this family.
    pub fn parse(v: &Value, path: &Path) -> Result<Arc<dyn LmSpec>> {
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
        let f = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let cfg = Self {
            hidden_size: u("hidden_size")?,
            num_attention_heads: u("num_attention_heads")?,
            num_hidden_layers: u("num_hidden_layers")?,
            intermediate_size: u("intermediate_size")?,
            // decapoda-era configs call it `max_sequence_length`.
            max_position_embeddings: v
                .get("max_position_embeddings")
                .or_else(|| v.get("max_sequence_length"))
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            vocab_size: u("vocab_size")?,
            rms_norm_eps: f("rms_norm_eps", 1e-6),
            rope_theta: f("rope_theta", 10000.0),
        };
        let h = cfg.num_attention_heads;
        if h == 0 || !cfg.hidden_size.is_multiple_of(h) {
            return Err(bad(
                "hidden_size must be a multiple of num_attention_heads".into()
            ));
        }
        if v.get("num_key_value_heads")
            .and_then(Value::as_u64)
            .is_some_and(|k| k as usize != h)
        {
            return Err(bad(
                "grouped-query attention (num_key_value_heads) is not supported; LLaMA-7B has none"
                    .into(),
            ));
        }
        if v.get("rope_scaling").is_some_and(|r| !r.is_null()) {
            return Err(bad("rope_scaling is not supported".into()));
        }
        Ok(Arc::new(cfg))
    }
}

impl LmSpec for LlamaConfig {
    fn family(&self) -> &'static str {
        "LLaMA"
    }

    fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    fn n_layers(&self) -> usize {
        self.num_hidden_layers
    }

    fn max_seq_len(&self) -> usize {
        self.max_position_embeddings
    }

    fn lm_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let (d, m) = (self.hidden_size, self.intermediate_size);
        let mut t = Vec::new();
        for i in 0..self.num_hidden_layers {
            let b = format!("model.layers.{i}");
            t.push((format!("{b}.input_layernorm.weight"), vec![d]));
            t.push((format!("{b}.post_attention_layernorm.weight"), vec![d]));
            for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
                t.push((format!("{b}.self_attn.{p}.weight"), vec![d, d]));
            }
            t.push((format!("{b}.mlp.gate_proj.weight"), vec![m, d]));
            t.push((format!("{b}.mlp.up_proj.weight"), vec![m, d]));
            t.push((format!("{b}.mlp.down_proj.weight"), vec![d, m]));
        }
        t.push(("model.norm.weight".into(), vec![d]));
        t.push(("lm_head.weight".into(), vec![self.vocab_size, d]));
        t
    }

    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(Llama::load(lm, ckpt, self)?))
    }
}

struct Layer {
    ln_1: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_2: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    head: Linear,
    rotary: Rotary,
}

impl HasLinears for Llama {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.head];
        for l in &mut self.layers {
            v.extend([
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.o,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        v
    }
}

impl Llama {
    /// `lm` is the LM repo (`model.*`, `lm_head`), `ckpt` the checkpoint (its `embed`).
    fn load(lm: &Vb, ckpt: &Vb, cfg: &LlamaConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let m = cfg.intermediate_size;
        let eps = cfg.rms_norm_eps;
        // Read once: a second read while the first is held would double its ~0.8 GB (7B).
        let embed = ckpt.get_rows(d, "embed")?;
        let vocab = embed.dim(0)?;
        let g = lm.pp("model");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let b = g.pp(format!("layers.{i}"));
                let a = b.pp("self_attn");
                let p = b.pp("mlp");
                Ok(Layer {
                    ln_1: RmsNorm::load(&b, "input_layernorm", d, eps)?,
                    q: Linear::load(&a, "q_proj", d, d, false)?,
                    k: Linear::load(&a, "k_proj", d, d, false)?,
                    v: Linear::load(&a, "v_proj", d, d, false)?,
                    o: Linear::load(&a, "o_proj", d, d, false)?,
                    ln_2: RmsNorm::load(&b, "post_attention_layernorm", d, eps)?,
                    gate: Linear::load(&p, "gate_proj", d, m, false)?,
                    up: Linear::load(&p, "up_proj", d, m, false)?,
                    down: Linear::load(&p, "down_proj", m, d, false)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let repo = lm.clone();
        let head = Linear::derived(lm, "lm_head.resized", d, vocab, &|| {
            let w = repo.fetch(&[cfg.vocab_size, d], "lm_head.weight")?;
            super::rows_for_vocab(&w, vocab)
        })?;
        Ok(Self {
            norm: RmsNorm::load(&g, "norm", d, eps)?,
            rotary: Rotary::new(d / cfg.num_attention_heads, cfg.rope_theta),
            cfg: cfg.clone(),
            embed,
            layers,
            head,
        })
    }
}

impl Decoder for Llama {
    fn n_layers(&self) -> usize {
        self.layers.len()
    }

    fn vocab_size(&self) -> usize {
        self.embed.dim(0).unwrap_or(0)
    }

    fn max_seq_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        embed_rows(&self.embed, ids)
    }

    /// Causal (+ padding) bias and the rotary tables of the new positions.
    fn step(
        &self,
        batch: usize,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<Step> {
        Step::rotary(&self.rotary, batch, past, s_q, key_mask, device)
    }

    fn block(&self, i: usize, x: &Tensor, step: &Step, cache: &mut LayerCache) -> Result<Tensor> {
        let l = &self.layers[i];
        let nh = self.cfg.num_attention_heads;
        let h = l.ln_1.forward(x)?;
        let q = split_heads(&l.q.forward(&h)?, nh)?;
        let k = split_heads(&l.k.forward(&h)?, nh)?;
        let v = split_heads(&l.v.forward(&h)?, nh)?;
        let (q, k) = match &step.rotary {
            Some((cos, sin)) => (
                self.rotary.apply(&q, cos, sin)?,
                self.rotary.apply(&k, cos, sin)?,
            ),
            None => (q, k),
        };
        let scale = 1.0 / (self.rotary.dim() as f64).sqrt();
        let o = cache.attend(&q, k, v, scale, &step.bias)?;
        let x = (x + l.o.forward(&o)?)?;
        let h = l.ln_2.forward(&x)?;
        let gated = (candle_nn::ops::silu(&l.gate.forward(&h)?)? * l.up.forward(&h)?)?;
        Ok((&x + l.down.forward(&gated)?)?)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.norm.forward(x)?)
    }
}
