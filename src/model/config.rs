//! Configurations of the released models, parsed from the JSON of `open_clip_config.json`
//! (the CLIP repo) and `config.json` (the language-model repo); the store reads the files.

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
    /// Width of CLIP's image embedding (`proj`'s columns).
    pub embed_dim: usize,
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
            embed_dim: 768,
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

    /// Parses open_clip's hub config (`{"model_cfg": {...}, "preprocess_cfg": {...}}`) read
    /// from `path`.
    pub fn from_open_clip(v: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: &str| Error::Config {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let model = v.get("model_cfg").unwrap_or(v);
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
        // for them (docs/openflamingo.md §2); a config that does not say otherwise gets it.
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
            embed_dim: model
                .get("embed_dim")
                .and_then(Value::as_u64)
                .map_or(768, |x| x as usize),
            mean: triple("mean", CLIP_MEAN),
            std: triple("std", CLIP_STD),
        })
    }
}
