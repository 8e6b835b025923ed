//! Builds a [`Flamingo`] from the three released pieces the hub found: the CLIP tower
//! (open_clip format), the LM (its own repo) and OpenFlamingo's `checkpoint.pt` (perceiver,
//! cross-attention, resized embedding; docs/openflamingo.md §6). A model in a
//! weight format other than f32 is kept whole in the model cache after its first load and
//! read from there (quantized weights in place) afterwards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::Device;

use super::converted::ConvertCache;
use super::gguf::Entry;
use super::gguf::GgufFile;
use super::pickle::read_tensor_file;
use super::{Recorded, TensorStore};
use crate::error::{Error, Result};
use crate::hub::{ModelFiles, WeightFile};
use crate::model::config::VisionConfig;
use crate::model::lm::LmConfig;
use crate::model::{Flamingo, Sources};
use crate::nn::{LinearWeight, Vb};
use crate::types::WeightFormat;

/// Maps a checkpoint key to our canonical name: `perceiver.*`, `xattn.{i}.*`, `embed` or
/// `embed_out`. Returns None for keys we do not use (buffers, backbone copies, the vision
/// encoder).
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

/// Reads a JSON file, naming it in the error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        reason: format!("not valid JSON ({e})"),
    })
}

/// The vision tower's and the language model's configurations of `files`.
pub fn configs(files: &ModelFiles) -> Result<(VisionConfig, LmConfig)> {
    let vcfg = VisionConfig::from_open_clip(&read_json(&files.clip_config)?, &files.clip_config)?;
    let lm_cfg = LmConfig::from_value(&read_json(&files.lm_config)?, &files.lm_config)?;
    Ok((vcfg, lm_cfg))
}

/// A store over one weight file, read per tensor: a safetensors file directly; a pickled
/// one through its converted safetensors copy when `convert` (f32 loads, which keep no model
/// cache), else straight from the zip.
fn open_store(
    file: &WeightFile,
    cache: Option<&ConvertCache>,
    convert: bool,
    device: &Device,
) -> Result<TensorStore> {
    let is_safetensors = file
        .path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors {
        return TensorStore::lazy_safetensors(&file.path, file.label.clone(), device);
    }
    if let (Some(c), true) = (cache, convert) {
        if let (Some(copy), _) = c.converted(&file.path, read_tensor_file)? {
            return TensorStore::lazy_safetensors(&copy, file.label.clone(), device);
        }
    }
    TensorStore::lazy_pickle(&file.path, file.label.clone(), device)
}

/// The checkpoint's store, its keys mapped to our canonical names.
fn open_checkpoint(
    file: &WeightFile,
    cache: Option<&ConvertCache>,
    convert: bool,
    device: &Device,
) -> Result<TensorStore> {
    let mut store = open_store(file, cache, convert, device)?;
    let mut raw = store.names();
    raw.sort();
    let mut alias = HashMap::new();
    for k in raw {
        if let Some(name) = canonical_checkpoint_key(&k) {
            // Aliases hold the same tensor; the first one wins.
            alias.entry(name).or_insert(k);
        }
    }
    if alias.is_empty() {
        return Err(Error::BadWeights {
            path: file.path.clone(),
            reason: "no OpenFlamingo tensors (perceiver.*, gated cross-attention) in it".into(),
        });
    }
    store.set_aliases(alias);
    Ok(store)
}

fn open_lm_store(
    files: &[WeightFile],
    cache: Option<&ConvertCache>,
    convert: bool,
    device: &Device,
) -> Result<TensorStore> {
    if let [one] = files {
        return open_store(one, cache, convert, device);
    }
    // Shards: one store each, read as one, a tensor at a time.
    let shards = files
        .iter()
        .map(|f| open_store(f, cache, convert, device))
        .collect::<Result<Vec<_>>>()?;
    let label = files
        .iter()
        .map(|f| f.label.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    Ok(TensorStore::shards(shards, label, device))
}

/// The three stores a model is built from, with the section names the model cache uses.
pub(crate) struct Stores {
    pub clip: TensorStore,
    pub ckpt: TensorStore,
    pub lm: TensorStore,
}

const SECTIONS: [&str; 3] = ["clip/", "ckpt/", "lm/"];

impl Stores {
    fn all_mut(&mut self) -> [&mut TensorStore; 3] {
        [&mut self.clip, &mut self.ckpt, &mut self.lm]
    }

    /// The model built from the stores, and what it took from them (when they recorded).
    pub fn build(
        mut self,
        vcfg: &VisionConfig,
        lm_cfg: &LmConfig,
        media_id: u32,
        device: &Device,
        format: WeightFormat,
    ) -> Result<(Flamingo, Vec<(String, Recorded)>)> {
        let mut model = Flamingo::new(
            &Sources {
                clip: Vb::new(&self.clip),
                ckpt: Vb::new(&self.ckpt),
                lm: Vb::new(&self.lm),
            },
            vcfg,
            lm_cfg,
            media_id,
            device,
        )?;
        // Anything not converted while loading (nothing, normally) is converted now.
        model.convert_weights(format)?;
        let mut record = Vec::new();
        for (section, st) in SECTIONS.iter().zip(self.all_mut()) {
            record.extend(
                st.take_record()
                    .into_iter()
                    .map(|(n, r)| (format!("{section}{n}"), r)),
            );
        }
        Ok((model, record))
    }
}

/// Loads a model in f32; `media_id` is the `<image>` token id of its tokenizer.
pub fn load(files: &ModelFiles, media_id: u32, device: &Device) -> Result<Flamingo> {
    load_as(files, media_id, device, WeightFormat::F32, None)
}

/// Loads a model with its linear layers in `format`, each converted as it is read (so the
/// f32 model is never whole in memory). With a `cache`, pickled files are read through their
/// converted copies, and a model in another format than f32 is kept in the model cache after
/// its first load and read from there afterwards.
pub fn load_as(
    files: &ModelFiles,
    media_id: u32,
    device: &Device,
    format: WeightFormat,
    cache: Option<&ConvertCache>,
) -> Result<Flamingo> {
    let (vcfg, lm_cfg) = configs(files)?;
    let cached_model = match cache {
        Some(c) if format != WeightFormat::F32 => Some(c.model_path(files, format.name())?),
        _ => None,
    };
    if let Some(path) = cached_model.as_deref().filter(|p| p.exists()) {
        match from_model_cache(path, &vcfg, &lm_cfg, media_id, device, format) {
            Ok(model) => return Ok(model),
            Err(e) => tracing::warn!(
                "the cached {format} model {} is not usable ({e}); rebuilding it",
                path.display()
            ),
        }
    }
    let convert = format == WeightFormat::F32;
    let mut stores = Stores {
        clip: open_store(&files.clip_weights, cache, convert, device)?,
        ckpt: open_checkpoint(&files.checkpoint, cache, convert, device)?,
        lm: open_lm_store(&files.lm_weights, cache, convert, device)?,
    };
    for st in stores.all_mut() {
        st.format = format;
        if cached_model.is_some() {
            st.start_recording();
        }
    }
    let (model, record) = stores.build(&vcfg, &lm_cfg, media_id, device, format)?;
    let Some(path) = cached_model else {
        return Ok(model);
    };
    match write_model_cache(&path, format, record) {
        // On the CPU the model just kept is used from the file instead: its quantized weights
        // are then read in place. The copies in memory go first, so that the two never add up.
        Ok(()) if device.is_cpu() => {
            drop(model);
            crate::platform::give_back_freed_memory();
            match from_model_cache(&path, &vcfg, &lm_cfg, media_id, device, format) {
                Ok(kept) => Ok(kept),
                Err(e) => {
                    tracing::warn!(
                        "the {format} model just kept in {} does not load ({e}); converting it again, without the cache",
                        path.display()
                    );
                    load_as(files, media_id, device, format, None)
                }
            }
        }
        Ok(()) => Ok(model),
        Err(e) => {
            tracing::warn!(
                "could not keep the {format} model in {}: {e}",
                path.display()
            );
            Ok(model)
        }
    }
}

/// Loads a model kept in the app's model cache (a GGUF file written after a first load in
/// `format`); quantized weights are read in place from the file.
pub fn from_model_cache(
    path: &Path,
    vcfg: &VisionConfig,
    lm_cfg: &LmConfig,
    media_id: u32,
    device: &Device,
    format: WeightFormat,
) -> Result<Flamingo> {
    let g = std::sync::Arc::new(GgufFile::open(path)?);
    if !model_cache_layout_ok(&g, format) || !g.has_checksums() {
        return Err(Error::BadWeights {
            path: path.to_path_buf(),
            reason: format!("not a {format} model of this version of the app"),
        });
    }
    let section = |i: usize| {
        let label = format!("{} ({})", path.display(), SECTIONS[i]);
        let mut st = TensorStore::gguf_section(g.clone(), SECTIONS[i], label, device);
        st.format = format;
        st
    };
    let stores = Stores {
        clip: section(0),
        ckpt: section(1),
        lm: section(2),
    };
    Ok(stores.build(vcfg, lm_cfg, media_id, device, format)?.0)
}

/// Bumped when the model cache's layout changes (2: every tensor's CRC-32 kept and checked;
/// 3: CLIP's `ln_post` and `proj` kept, for RICES); a file of another layout is rebuilt.
const MODEL_LAYOUT: &str = "flamingo-model-3";

fn model_cache_layout_ok(g: &GgufFile, format: WeightFormat) -> bool {
    let s = |k: &str| match g.content.metadata.get(k) {
        Some(gguf_file::Value::String(v)) => Some(v.clone()),
        _ => None,
    };
    s("flamingo.layout").as_deref() == Some(MODEL_LAYOUT)
        && s("flamingo.format").as_deref() == Some(format.name())
}

/// Writes what the model was built from, its linear layers converted, as one GGUF file.
pub(crate) fn write_model_cache(
    path: &Path,
    format: WeightFormat,
    record: Vec<(String, Recorded)>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut tensors: Vec<(String, Entry)> = Vec::new();
    for (name, r) in record {
        if !seen.insert(name.clone()) {
            continue;
        }
        let e = match r {
            Recorded::Plain(t) | Recorded::Linear(LinearWeight::Dense(t)) => {
                Entry::Dense(t, GgmlDType::F32)
            }
            Recorded::Linear(LinearWeight::F16(t)) => Entry::Dense(t, GgmlDType::F16),
            Recorded::Linear(LinearWeight::Quantized(q, _)) => Entry::Quantized(q),
        };
        tensors.push((name, e));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp: PathBuf = crate::platform::temp_beside(path);
    let written = (|| -> Result<()> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        super::gguf::write(
            &mut f,
            &[
                ("flamingo.layout", MODEL_LAYOUT),
                ("flamingo.format", format.name()),
            ],
            &tensors,
        )?;
        use std::io::Write;
        f.flush().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
