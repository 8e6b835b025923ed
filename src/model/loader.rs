//! Builds a [`Flamingo`] from the three released pieces: the CLIP tower (open_clip format),
//! the LM (its own repo) and OpenFlamingo's `checkpoint.pt` (perceiver, cross-attention,
//! resized embedding). SPEC §7.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{LmConfig, VisionConfig};
use crate::model::converted::ConvertCache;
use crate::model::lm::{mosaic_gpt::MosaicGpt, LanguageModel};
use crate::model::perceiver::PerceiverResampler;
use crate::model::vision::VisionTower;
use crate::model::weights::{read_weights, TensorStore, WeightFile};
use crate::model::xattn::{xattn_every_n, GatedCrossAttention};
use crate::model::Flamingo;

/// Local paths of every file a model needs.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub clip_config: PathBuf,
    pub clip_weights: WeightFile,
    pub lm_config: PathBuf,
    pub lm_weights: Vec<WeightFile>,
    pub tokenizer: PathBuf,
    pub checkpoint: WeightFile,
    /// Where pickled weights are kept converted to safetensors (None: read them every time).
    pub convert: Option<ConvertCache>,
}

/// Maps a checkpoint key to our canonical name: `perceiver.*`, `xattn.{i}.*` or `embed`.
/// Returns None for keys we do not use (buffers, backbone copies, vision encoder).
pub fn canonical_checkpoint_key(key: &str) -> Option<String> {
    let key = key.strip_prefix("module.").unwrap_or(key);
    if let Some(rest) = key.strip_prefix("perceiver.") {
        return Some(format!("perceiver.{rest}"));
    }
    let rest = key.strip_prefix("lang_encoder.")?;
    if let Some(r) = rest.strip_prefix("gated_cross_attn_layers.") {
        return Some(format!("xattn.{r}"));
    }
    if let Some(pos) = rest.find(".gated_cross_attn_layer.") {
        // `<layers path>.{i}.gated_cross_attn_layer.X`
        let head = &rest[..pos];
        let idx = head.rsplit('.').next()?;
        idx.parse::<usize>().ok()?;
        let tail = &rest[pos + ".gated_cross_attn_layer.".len()..];
        return Some(format!("xattn.{idx}.{tail}"));
    }
    for emb in [
        "transformer.wte.weight",
        "model.embed_tokens.weight",
        "gpt_neox.embed_in.weight",
    ] {
        if rest == emb {
            return Some("embed".into());
        }
    }
    if rest == "embed_out.weight" || rest == "lm_head.weight" {
        return Some("embed_out".into());
    }
    None
}

fn load_checkpoint(
    file: &WeightFile,
    cache: Option<&ConvertCache>,
    device: &Device,
) -> Result<TensorStore> {
    let raw = read_weights(&file.path, cache)?;
    let mut map = HashMap::new();
    for (k, t) in raw {
        if !t.dtype().is_float() {
            continue;
        }
        if let Some(name) = canonical_checkpoint_key(&k) {
            // Aliases hold the same tensor; the first one wins.
            map.entry(name)
                .or_insert(t.to_dtype(DType::F32)?.to_device(device)?);
        }
    }
    Ok(TensorStore::new(map, file.label.clone()))
}

fn load_lm_store(
    files: &[WeightFile],
    cache: Option<&ConvertCache>,
    device: &Device,
) -> Result<TensorStore> {
    let mut map = HashMap::new();
    for f in files {
        for (k, t) in read_weights(&f.path, cache)? {
            if t.dtype().is_float() {
                map.insert(k, t.to_dtype(DType::F32)?.to_device(device)?);
            }
        }
    }
    let label = files
        .iter()
        .map(|f| f.label.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(TensorStore::new(map, label))
}

impl Flamingo {
    /// Loads a model; `media_id` is the `<image>` token id of its tokenizer.
    pub fn load(files: &ModelFiles, media_id: u32, device: &Device) -> Result<Self> {
        let vcfg = VisionConfig::from_open_clip_json(&files.clip_config)?;
        let lm_cfg = LmConfig::from_json_file(&files.lm_config)?;

        let convert = files.convert.as_ref();
        let clip = TensorStore::from_tensors(
            read_weights(&files.clip_weights.path, convert)?,
            files.clip_weights.label.clone(),
            DType::F32,
            device,
        )?;
        let vision = VisionTower::load(&clip.pp("visual"), &vcfg)?;
        drop(clip);

        let ckpt = load_checkpoint(&files.checkpoint, convert, device)?;
        if ckpt.is_empty() {
            return Err(Error::BadWeights {
                path: files.checkpoint.path.clone(),
                reason: "no OpenFlamingo tensors (perceiver.*, gated cross-attention) in it".into(),
            });
        }
        let perceiver = PerceiverResampler::load(&ckpt.pp("perceiver"), vcfg.width)?;

        let d = lm_cfg.hidden_size();
        let n_layers = lm_cfg.n_layers();
        let idx: BTreeSet<usize> = ckpt
            .names()
            .filter_map(|n| n.strip_prefix("xattn."))
            .filter_map(|r| r.split('.').next()?.parse().ok())
            .collect();
        let idx: Vec<usize> = idx.into_iter().collect();
        if idx.iter().any(|&i| i >= n_layers) {
            return Err(Error::BadWeights {
                path: files.checkpoint.path.clone(),
                reason: format!(
                    "cross-attention blocks for layers {idx:?} but the language model has {n_layers} layers: the checkpoint belongs to another language model"
                ),
            });
        }
        let every = xattn_every_n(&idx, n_layers).ok_or_else(|| Error::BadWeights {
            path: files.checkpoint.path.clone(),
            reason: format!(
                "cross-attention blocks at layers {idx:?} do not follow the 'every n layers' rule"
            ),
        })?;
        let xattn = (0..n_layers)
            .map(|i| {
                if (i + 1) % every == 0 {
                    GatedCrossAttention::load(&ckpt.pp(format!("xattn.{i}")), d, vcfg.width)
                        .map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>>>()?;

        let embed = ckpt.get_any("embed")?;
        let vocab = embed.dim(0)?;
        let embed = ckpt.get("embed", &[vocab, d])?;
        let lm_store = load_lm_store(&files.lm_weights, convert, device)?;
        let lm = match &lm_cfg {
            LmConfig::MosaicGpt(c) => {
                LanguageModel::MosaicGpt(MosaicGpt::load(&lm_store.pp(""), c, embed)?)
            }
        };
        if media_id as usize >= vocab {
            return Err(Error::Tokenizer(format!(
                "the <image> token id {media_id} is outside the checkpoint's vocabulary of {vocab}"
            )));
        }
        Ok(Flamingo {
            vision,
            perceiver,
            lm,
            xattn,
            media_id,
            device: device.clone(),
            format: Default::default(),
        })
    }
}

/// Makes a model of the given shapes with random weights (for benchmarks), no files needed.
pub fn random_model(
    vcfg: &VisionConfig,
    lm: &crate::model::config::MosaicGptConfig,
    every: usize,
    vocab: usize,
    media_id: u32,
    device: &Device,
) -> Result<Flamingo> {
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f64| -> Result<()> {
        let x = if std == 0.0 {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, std as f32, shape, device)?
        };
        t.insert(name, x);
        Ok(())
    };
    let w = vcfg.width;
    let p = vcfg.patch_size;
    let g = vcfg.grid();
    let sd = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    put("visual.conv1.weight".into(), &[w, 3, p, p], sd(3 * p * p))?;
    put("visual.class_embedding".into(), &[w], 0.02)?;
    put("visual.positional_embedding".into(), &[g * g + 1, w], 0.02)?;
    put("visual.ln_pre.weight".into(), &[w], 0.0)?;
    put("visual.ln_pre.bias".into(), &[w], 0.02)?;
    let hid = vcfg.mlp_hidden();
    for i in 0..vcfg.layers {
        let b = format!("visual.transformer.resblocks.{i}");
        for ln in ["ln_1", "ln_2"] {
            put(format!("{b}.{ln}.weight"), &[w], 0.0)?;
            put(format!("{b}.{ln}.bias"), &[w], 0.02)?;
        }
        put(format!("{b}.attn.in_proj_weight"), &[3 * w, w], sd(w))?;
        put(format!("{b}.attn.in_proj_bias"), &[3 * w], 0.02)?;
        put(format!("{b}.attn.out_proj.weight"), &[w, w], sd(w))?;
        put(format!("{b}.attn.out_proj.bias"), &[w], 0.02)?;
        put(format!("{b}.mlp.c_fc.weight"), &[hid, w], sd(w))?;
        put(format!("{b}.mlp.c_fc.bias"), &[hid], 0.02)?;
        put(format!("{b}.mlp.c_proj.weight"), &[w, hid], sd(hid))?;
        put(format!("{b}.mlp.c_proj.bias"), &[w], 0.02)?;
    }
    let clip = TensorStore::new(std::mem::take(&mut t), "random CLIP");
    let vision = VisionTower::load(&clip.pp("visual"), vcfg)?;
    drop(clip);

    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f64| -> Result<()> {
        let x = if std == 0.0 {
            Tensor::ones(shape, DType::F32, device)?
        } else {
            Tensor::randn(0f32, std as f32, shape, device)?
        };
        t.insert(name, x);
        Ok(())
    };
    let inner = 512;
    put("perceiver.latents".into(), &[64, w], 1.0)?;
    for i in 0..6 {
        let b = format!("perceiver.layers.{i}");
        for ln in ["0.norm_media", "0.norm_latents", "1.0"] {
            put(format!("{b}.{ln}.weight"), &[w], 0.0)?;
            put(format!("{b}.{ln}.bias"), &[w], 0.02)?;
        }
        put(format!("{b}.0.to_q.weight"), &[inner, w], sd(w))?;
        put(format!("{b}.0.to_kv.weight"), &[2 * inner, w], sd(w))?;
        put(format!("{b}.0.to_out.weight"), &[w, inner], sd(inner))?;
        put(format!("{b}.1.1.weight"), &[4 * w, w], sd(w))?;
        put(format!("{b}.1.3.weight"), &[w, 4 * w], sd(4 * w))?;
    }
    put("perceiver.norm.weight".into(), &[w], 0.0)?;
    put("perceiver.norm.bias".into(), &[w], 0.02)?;
    let d = lm.d_model;
    for i in (0..lm.n_layers).filter(|i| (i + 1) % every == 0) {
        let b = format!("xattn.{i}");
        put(format!("{b}.attn_gate"), &[1], 0.5)?;
        put(format!("{b}.ff_gate"), &[1], 0.5)?;
        for ln in ["attn.norm", "ff.0"] {
            put(format!("{b}.{ln}.weight"), &[d], 0.0)?;
            put(format!("{b}.{ln}.bias"), &[d], 0.02)?;
        }
        put(format!("{b}.attn.to_q.weight"), &[inner, d], sd(d))?;
        put(format!("{b}.attn.to_kv.weight"), &[2 * inner, w], sd(w))?;
        put(format!("{b}.attn.to_out.weight"), &[d, inner], sd(inner))?;
        put(format!("{b}.ff.1.weight"), &[4 * d, d], sd(d))?;
        put(format!("{b}.ff.3.weight"), &[d, 4 * d], sd(4 * d))?;
    }
    put("embed".into(), &[vocab, d], 0.02)?;
    for i in 0..lm.n_layers {
        let b = format!("transformer.blocks.{i}");
        for ln in ["ln_1", "ln_2", "attn.q_ln", "attn.k_ln"] {
            put(format!("{b}.{ln}.weight"), &[d], 0.0)?;
        }
        put(format!("{b}.attn.Wqkv.weight"), &[3 * d, d], sd(d))?;
        put(format!("{b}.attn.out_proj.weight"), &[d, d], sd(d))?;
        put(
            format!("{b}.mlp.mlp_up.weight"),
            &[lm.mlp_ratio * d, d],
            sd(d),
        )?;
        put(
            format!("{b}.mlp.mlp_down.weight"),
            &[d, lm.mlp_ratio * d],
            sd(lm.mlp_ratio * d),
        )?;
    }
    put("transformer.ln_f.weight".into(), &[d], 0.0)?;
    let store = TensorStore::new(t, "random weights");
    let perceiver = PerceiverResampler::load(&store.pp("perceiver"), w)?;
    let xattn = (0..lm.n_layers)
        .map(|i| {
            if (i + 1) % every == 0 {
                GatedCrossAttention::load(&store.pp(format!("xattn.{i}")), d, w).map(Some)
            } else {
                Ok(None)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let embed = store.get("embed", &[vocab, d])?;
    let lm = LanguageModel::MosaicGpt(MosaicGpt::load(&store.pp(""), lm, embed)?);
    Ok(Flamingo {
        vision,
        perceiver,
        lm,
        xattn,
        media_id,
        device: device.clone(),
        format: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::canonical_checkpoint_key as k;

    #[test]
    fn checkpoint_key_aliases() {
        let x = "lang_encoder.transformer.blocks.3.gated_cross_attn_layer.attn.to_q.weight";
        assert_eq!(k(x).as_deref(), Some("xattn.3.attn.to_q.weight"));
        assert_eq!(
            k(&format!("module.{x}")).as_deref(),
            Some("xattn.3.attn.to_q.weight")
        );
        assert_eq!(
            k("lang_encoder.gated_cross_attn_layers.3.ff.1.weight").as_deref(),
            Some("xattn.3.ff.1.weight")
        );
        assert_eq!(k("perceiver.latents").as_deref(), Some("perceiver.latents"));
        assert_eq!(
            k("lang_encoder.transformer.wte.weight").as_deref(),
            Some("embed")
        );
        assert_eq!(
            k("lang_encoder.model.embed_tokens.weight").as_deref(),
            Some("embed")
        );
        assert_eq!(
            k("lang_encoder.transformer.blocks.3.decoder_layer.ln_1.weight"),
            None
        );
        assert_eq!(k("vision_encoder.conv1.weight"), None);
    }
}
