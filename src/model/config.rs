//! Configurations read from the released files: `open_clip_config.json` of the CLIP repo and
//! `config.json` of the language-model repo.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub width: usize,
    pub layers: usize,
    pub head_width: usize,
    pub mlp_ratio: f64,
    pub quick_gelu: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The reference's constants verbatim (f32 rounds them).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl VisionConfig {
    /// CLIP ViT-L/14 at 224 px, as released by OpenAI.
    pub fn vit_l14() -> Self {
        Self {
            image_size: 224,
            patch_size: 14,
            width: 1024,
            layers: 24,
            head_width: 64,
            mlp_ratio: 4.0,
            quick_gelu: true,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    pub fn heads(&self) -> usize {
        self.width / self.head_width
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.width as f64 * self.mlp_ratio) as usize
    }

    /// Parses open_clip's hub config (`{"model_cfg": {...}, "preprocess_cfg": {...}}`).
    pub fn from_open_clip_json(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let bad = |reason: &str| Error::Config {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let model = v.get("model_cfg").unwrap_or(&v);
        let vc = model
            .get("vision_cfg")
            .ok_or_else(|| bad("no `vision_cfg` in `model_cfg`"))?;
        let get_usize = |k: &str| vc.get(k).and_then(Value::as_u64).map(|x| x as usize);
        let image_size = get_usize("image_size").unwrap_or(224);
        let patch_size =
            get_usize("patch_size").ok_or_else(|| bad("vision_cfg.patch_size missing"))?;
        let width = get_usize("width").ok_or_else(|| bad("vision_cfg.width missing"))?;
        let layers = get_usize("layers").ok_or_else(|| bad("vision_cfg.layers missing"))?;
        let head_width = get_usize("head_width").unwrap_or(64);
        let mlp_ratio = vc.get("mlp_ratio").and_then(Value::as_f64).unwrap_or(4.0);
        // OpenAI's CLIP weights were trained with QuickGELU, and open_clip <= 2.28 always used it
        // for them (SPEC §2.1); a config that does not say otherwise gets it.
        let quick_gelu = model
            .get("quick_gelu")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if patch_size == 0 || !image_size.is_multiple_of(patch_size) {
            return Err(bad("image_size must be a multiple of patch_size"));
        }
        if head_width == 0 || !width.is_multiple_of(head_width) {
            return Err(bad("width must be a multiple of head_width"));
        }
        let pre = v.get("preprocess_cfg");
        let triple = |k: &str, default: [f32; 3]| -> [f32; 3] {
            pre.and_then(|p| p.get(k))
                .and_then(Value::as_array)
                .filter(|a| a.len() == 3)
                .map(|a| {
                    let f = |i: usize| a[i].as_f64().unwrap_or(default[i] as f64) as f32;
                    [f(0), f(1), f(2)]
                })
                .unwrap_or(default)
        };
        Ok(Self {
            image_size,
            patch_size,
            width,
            layers,
            head_width,
            mlp_ratio,
            quick_gelu,
            mean: triple("mean", CLIP_MEAN),
            std: triple("std", CLIP_STD),
        })
    }
}

/// MosaicGPT (`model_type: mosaic_gpt`), the LM of OpenFlamingo-3B (SPEC §6.1).
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

/// Which decoder family a `config.json` describes.
#[derive(Clone, Debug, PartialEq)]
pub enum LmConfig {
    MosaicGpt(MosaicGptConfig),
}

impl LmConfig {
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let v = read_json(path)?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        match model_type {
            "mosaic_gpt" => Ok(LmConfig::MosaicGpt(MosaicGptConfig::from_value(&v, path)?)),
            other => Err(Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "language model type `{other}` is not supported yet (supported: mosaic_gpt)"
                ),
            }),
        }
    }

    pub fn max_seq_len(&self) -> usize {
        match self {
            LmConfig::MosaicGpt(c) => c.max_seq_len,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            LmConfig::MosaicGpt(c) => c.d_model,
        }
    }

    pub fn n_layers(&self) -> usize {
        match self {
            LmConfig::MosaicGpt(c) => c.n_layers,
        }
    }
}

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON ({e})"),
    })
}
