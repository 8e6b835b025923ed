//! MPT, mosaicml's decoder, the language model of OpenFlamingo-9B-vitl-mpt7b (MPT-7B;
//! docs/openflamingo.md §5.2). Its blocks are MosaicGPT's without the q/k norms, under other
//! key names (`norm_1`, `ffn.up_proj`, …), with ALiBi slopes from `gen_slopes`; the forward
//! is [`super::mosaic_gpt`]'s.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::mosaic_gpt::{Layout, MosaicGpt, MosaicGptConfig};
use super::{Decoder, LmSpec};
use crate::error::{Error, Result};
use crate::nn::Vb;

const MPT: Layout = Layout {
    ln_1: "norm_1",
    ln_2: "norm_2",
    mlp: ("ffn", "up_proj", "down_proj"),
    ln_f: "norm_f",
    power_of_two_slopes: true,
};

/// `model_type: mpt` of the LM repo's `config.json`, as the decoder it describes.
#[derive(Clone, Debug, PartialEq)]
pub struct MptConfig(pub MosaicGptConfig);

impl MptConfig {
    /// MPT-7B's shape.
    pub fn mpt_7b() -> Self {
        Self(MosaicGptConfig {
            d_model: 4096,
            n_heads: 32,
            n_layers: 32,
            mlp_ratio: 4,
            max_seq_len: 2048,
            vocab_size: 50432,
            alibi: true,
            alibi_bias_max: 8.0,
            attn_qk_ln: false,
            no_bias: true,
            softmax_scale: None,
            attn_clip_qkv: None,
            logit_scale: None,
        })
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
        let attn = v.get("attn_config").cloned().unwrap_or(Value::Null);
        let a = |k: &str| attn.get(k).filter(|x| !x.is_null());
        let d_model = u("d_model")?;
        let cfg = MosaicGptConfig {
            d_model,
            n_heads: u("n_heads")?,
            n_layers: u("n_layers")?,
            mlp_ratio: v
                .get("expansion_ratio")
                .and_then(Value::as_u64)
                .unwrap_or(4) as usize,
            max_seq_len: v.get("max_seq_len").and_then(Value::as_u64).unwrap_or(2048) as usize,
            vocab_size: u("vocab_size")?,
            alibi: a("alibi").and_then(Value::as_bool).unwrap_or(false),
            alibi_bias_max: a("alibi_bias_max").and_then(Value::as_f64).unwrap_or(8.0),
            attn_qk_ln: a("qk_ln").and_then(Value::as_bool).unwrap_or(false),
            no_bias: v.get("no_bias").and_then(Value::as_bool).unwrap_or(false),
            softmax_scale: a("softmax_scale").and_then(Value::as_f64),
            attn_clip_qkv: a("clip_qkv").and_then(Value::as_f64),
            logit_scale: match v.get("logit_scale") {
                Some(Value::String(s)) if s == "inv_sqrt_d_model" => {
                    Some(1.0 / (d_model as f64).sqrt())
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
                "MPT without ALiBi (learned positions) is not supported; MPT-7B uses ALiBi".into(),
            ));
        }
        if !cfg.no_bias {
            return Err(bad(
                "MPT with biases is not supported; MPT-7B has no_bias=true".into(),
            ));
        }
        if a("attn_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "multihead_attention")
        {
            return Err(bad("only multihead_attention is supported".into()));
        }
        Ok(Arc::new(Self(cfg)))
    }
}

impl LmSpec for MptConfig {
    fn family(&self) -> &'static str {
        "MPT"
    }

    fn hidden_size(&self) -> usize {
        self.0.d_model
    }

    fn n_layers(&self) -> usize {
        self.0.n_layers
    }

    fn max_seq_len(&self) -> usize {
        self.0.max_seq_len
    }

    fn lm_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.0.tensors(&MPT)
    }

    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>> {
        Ok(Box::new(MosaicGpt::load(lm, ckpt, &self.0, &MPT)?))
    }
}
