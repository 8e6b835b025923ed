//! GPT-NeoX, the language model of the OpenFlamingo-4B models (RedPajama-INCITE-3B;
//! docs/openflamingo.md §5.3): sequential residual, LayerNorms and projections with biases, q/k/v
//! interleaved per head in one projection, rotary embedding (rotate half) on the first
//! `rotary_pct` of each head, exact-GELU MLP, untied output projection `embed_out`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Module, Tensor};
use serde_json::Value;

use super::{embed_rows, Decoder, LayerCache, LmSpec, Step};
use crate::error::{Error, Result};
use crate::nn::fused::Activation;
use crate::nn::norm::{layer_norm, LayerNorm};
use crate::nn::rotary::Rotary;
use crate::nn::{HasLinears, Linear, Vb};

/// `model_type: gpt_neox` of the LM repo's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct GptNeoXConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub vocab_size: usize,
    pub rotary_pct: f64,
    pub rotary_emb_base: f64,
    pub layer_norm_eps: f64,
}

impl GptNeoXConfig {
    /// RedPajama-INCITE-3B's shape.
    pub fn redpajama_3b() -> Self {
        Self {
            hidden_size: 2560,
            num_attention_heads: 32,
            num_hidden_layers: 32,
            intermediate_size: 10240,
            max_position_embeddings: 2048,
            vocab_size: 50432,
            rotary_pct: 1.0,
            rotary_emb_base: 10000.0,
            layer_norm_eps: 1e-5,
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
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            vocab_size: u("vocab_size")?,
            rotary_pct: f("rotary_pct", 1.0),
            rotary_emb_base: f("rotary_emb_base", 10000.0),
            layer_norm_eps: f("layer_norm_eps", 1e-5),
        };
        let h = cfg.num_attention_heads;
        if h == 0 || !cfg.hidden_size.is_multiple_of(h) {
            return Err(bad(
                "hidden_size must be a multiple of num_attention_heads".into()
            ));
        }
        if v.get("use_parallel_residual").and_then(Value::as_bool) == Some(true) {
            return Err(bad(
                "GPT-NeoX with a parallel residual is not supported; RedPajama-INCITE uses the sequential one".into(),
            ));
        }
        if v.get("hidden_act")
            .and_then(Value::as_str)
            .is_some_and(|a| a != "gelu")
        {
            return Err(bad("only hidden_act \"gelu\" is supported".into()));
        }
        Ok(Arc::new(cfg))
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn rotary_dims(&self) -> usize {
        (self.head_dim() as f64 * self.rotary_pct) as usize
    }
}

impl LmSpec for GptNeoXConfig {
    fn family(&self) -> &'static str {
        "GPT-NeoX"
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
            let b = format!("gpt_neox.layers.{i}");
            for ln in ["input_layernorm", "post_attention_layernorm"] {
                t.push((format!("{b}.{ln}.weight"), vec![d]));
                t.push((format!("{b}.{ln}.bias"), vec![d]));
            }
            for (name, out, inp) in [
                ("attention.query_key_value", 3 * d, d),
                ("attention.dense", d, d),
                ("mlp.dense_h_to_4h", m, d),
                ("mlp.dense_4h_to_h", d, m),
            ] {
                t.push((format!("{b}.{name}.weight"), vec![out, inp]));
                t.push((format!("{b}.{name}.bias"), vec![out]));
            }
        }
        t.push(("gpt_neox.final_layer_norm.weight".into(), vec![d]));
        t.push(("gpt_neox.final_layer_norm.bias".into(), vec![d]));
        t
    }

    fn checkpoint_tensors(&self, vocab: usize) -> Vec<(String, Vec<usize>)> {
        vec![
            ("embed".into(), vec![vocab, self.hidden_size]),
            ("embed_out".into(), vec![vocab, self.hidden_size]),
        ]
    }

    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(GptNeoX::load(lm, ckpt, self)?))
    }
}

struct Layer {
    ln_1: LayerNorm,
    qkv: Linear,
    dense: Linear,
    ln_2: LayerNorm,
    up: Linear,
    down: Linear,
}

pub struct GptNeoX {
    cfg: GptNeoXConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    ln_f: LayerNorm,
    head: Linear,
    rotary: Rotary,
}

impl HasLinears for GptNeoX {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.head];
        for l in &mut self.layers {
            v.extend([&mut l.qkv, &mut l.dense, &mut l.up, &mut l.down]);
        }
        v
    }
}

impl GptNeoX {
    /// `lm` is the LM repo (`gpt_neox.*`), `ckpt` the checkpoint: `embed` and `embed_out`
    /// (when the checkpoint lacks `embed_out`, the LM repo's, cut to the vocabulary).
    fn load(lm: &Vb, ckpt: &Vb, cfg: &GptNeoXConfig) -> Result<Self> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        // Read once: a second read while the first is held would double its ~0.8 GB (7B).
        let embed = ckpt.get_rows(d, "embed")?;
        let vocab = embed.dim(0)?;
        let g = lm.pp("gpt_neox");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let b = g.pp(format!("layers.{i}"));
                let a = b.pp("attention");
                let m = b.pp("mlp");
                Ok(Layer {
                    ln_1: layer_norm(&b, "input_layernorm", d, eps, true)?,
                    qkv: Linear::load(&a, "query_key_value", d, 3 * d, true)?,
                    dense: Linear::load(&a, "dense", d, d, true)?,
                    ln_2: layer_norm(&b, "post_attention_layernorm", d, eps, true)?,
                    up: Linear::load(&m, "dense_h_to_4h", d, cfg.intermediate_size, true)?,
                    down: Linear::load(&m, "dense_4h_to_h", cfg.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = if ckpt.contains("embed_out") {
            Linear::load_parts(ckpt, "embed_out", None, d, vocab)?
        } else {
            let repo = lm.clone();
            Linear::derived(lm, "embed_out.resized", d, vocab, &|| {
                let w = repo.fetch(&[cfg.vocab_size, d], "embed_out.weight")?;
                super::rows_for_vocab(&w, vocab)
            })?
        };
        Ok(Self {
            ln_f: layer_norm(&g, "final_layer_norm", d, eps, true)?,
            rotary: Rotary::new(cfg.rotary_dims(), cfg.rotary_emb_base),
            cfg: cfg.clone(),
            embed,
            layers,
            head,
        })
    }
}

impl Decoder for GptNeoX {
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
        let (b, t, d) = x.dims3()?;
        let nh = self.cfg.num_attention_heads;
        let hd = d / nh;
        // [B, T, heads, 3·head_dim]: each head's q, k and v side by side.
        let qkv = l
            .qkv
            .forward(&l.ln_1.forward(x)?)?
            .reshape((b, t, nh, 3 * hd))?
            .transpose(1, 2)?;
        let q = qkv.narrow(3, 0, hd)?;
        let k = qkv.narrow(3, hd, hd)?;
        let v = qkv.narrow(3, 2 * hd, hd)?.contiguous()?;
        let (q, k) = match &step.rotary {
            Some((cos, sin)) => (
                self.rotary.apply(&q, cos, sin)?,
                self.rotary.apply(&k, cos, sin)?,
            ),
            None => (q.contiguous()?, k.contiguous()?),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let o = cache.attend(&q, k, v, scale, &step.bias)?;
        let x = (x + l.dense.forward(&o)?)?;
        let m =
            l.up.forward_then(&l.ln_2.forward(&x)?, Activation::GeluErf)?;
        Ok((&x + l.down.forward(&m)?)?)
    }

    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.head.forward(&self.ln_f.forward(x)?)
    }
}
