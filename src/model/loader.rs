//! Builds a [`Flamingo`] from the three released pieces: the CLIP tower (open_clip format),
//! the LM (its own repo) and OpenFlamingo's `checkpoint.pt` (perceiver, cross-attention,
//! resized embedding). SPEC §7.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::{LmConfig, VisionConfig};
use crate::model::converted::ConvertCache;
use crate::model::linear::WeightFormat;
use crate::model::lm::{mosaic_gpt::MosaicGpt, LanguageModel};
use crate::model::perceiver::PerceiverResampler;
use crate::model::vision::VisionTower;
use crate::model::weights::{
    read_tensor_file, read_weights, GgufFile, LinearWeight, Recorded, TensorStore, WeightFile,
};
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
    // Shards: merged in memory.
    let mut all = Vec::new();
    for f in files {
        all.extend(read_weights(&f.path, cache)?);
    }
    let label = files
        .iter()
        .map(|f| f.label.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    TensorStore::from_tensors(all, label, DType::F32, device)
}

/// The three stores a model is built from, with the section names the model cache uses.
struct Stores {
    clip: TensorStore,
    ckpt: TensorStore,
    lm: TensorStore,
}

const SECTIONS: [&str; 3] = ["clip/", "ckpt/", "lm/"];

impl Flamingo {
    /// Loads a model in f32; `media_id` is the `<image>` token id of its tokenizer.
    pub fn load(files: &ModelFiles, media_id: u32, device: &Device) -> Result<Self> {
        Self::load_as(files, media_id, device, WeightFormat::F32)
    }

    /// Loads a model with its linear layers in `format`, each converted as it is read (so
    /// the f32 model is never whole in memory). With `files.convert` set, a quantized model
    /// is kept in the app's cache after its first load and read from there afterwards.
    pub fn load_as(
        files: &ModelFiles,
        media_id: u32,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let vcfg = VisionConfig::from_open_clip_json(&files.clip_config)?;
        let lm_cfg = LmConfig::from_json_file(&files.lm_config)?;
        let cache = files.convert.as_ref();
        let cached_model = match cache {
            Some(c) if format != WeightFormat::F32 => Some(c.model_path(files, format.name())?),
            _ => None,
        };
        if let Some(path) = cached_model.as_deref().filter(|p| p.exists()) {
            match Self::from_model_cache(path, &vcfg, &lm_cfg, media_id, device, format) {
                Ok(model) => return Ok(model),
                Err(e) => eprintln!(
                    "note: the cached {} model {} is not usable ({e}); rebuilding it",
                    format.name(),
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
        for st in [&mut stores.clip, &mut stores.ckpt, &mut stores.lm] {
            st.format = format;
            if cached_model.is_some() {
                st.start_recording();
            }
        }
        let (model, record) = Self::build(
            stores,
            &vcfg,
            &lm_cfg,
            &files.checkpoint.path,
            media_id,
            device,
            format,
        )?;
        if let Some(path) = cached_model {
            match write_model_cache(&path, format, record) {
                // On the CPU the model just kept is used from the file instead: its quantized
                // weights are then read in place. The copies in memory go first, so that the
                // two never add up.
                Ok(()) if device.is_cpu() => {
                    drop(model);
                    give_back_freed_memory();
                    return match Self::from_model_cache(
                        &path, &vcfg, &lm_cfg, media_id, device, format,
                    ) {
                        Ok(kept) => Ok(kept),
                        Err(e) => {
                            eprintln!(
                                "note: the {} model just kept in {} does not load ({e}); converting it again, without the cache",
                                format.name(),
                                path.display()
                            );
                            let mut files = files.clone();
                            files.convert = None;
                            Self::load_as(&files, media_id, device, format)
                        }
                    };
                }
                Ok(()) => {}
                Err(e) => eprintln!(
                    "note: could not keep the {} model in {}: {e}",
                    format.name(),
                    path.display()
                ),
            }
        }
        Ok(model)
    }

    /// Loads a model kept in the app's model cache (a GGUF file written after a first load
    /// in `format`); quantized weights are read in place from the file.
    pub fn from_model_cache(
        path: &Path,
        vcfg: &VisionConfig,
        lm_cfg: &LmConfig,
        media_id: u32,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let g = std::sync::Arc::new(GgufFile::open(path)?);
        if !model_cache_layout_ok(&g, format) {
            return Err(Error::BadWeights {
                path: path.to_path_buf(),
                reason: format!("not a {} model of this version of the app", format.name()),
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
        Ok(Self::build(stores, vcfg, lm_cfg, path, media_id, device, format)?.0)
    }

    /// The model from its three stores; `checkpoint` names the checkpoint in errors.
    #[allow(clippy::too_many_arguments)]
    fn build(
        mut stores: Stores,
        vcfg: &VisionConfig,
        lm_cfg: &LmConfig,
        checkpoint: &Path,
        media_id: u32,
        device: &Device,
        format: WeightFormat,
    ) -> Result<(Self, Vec<(String, Recorded)>)> {
        let vision = VisionTower::load(&stores.clip.pp("visual"), vcfg)?;
        let ckpt = &stores.ckpt;
        let perceiver = PerceiverResampler::load(&ckpt.pp("perceiver"), vcfg.width)?;

        let d = lm_cfg.hidden_size();
        let n_layers = lm_cfg.n_layers();
        let idx: BTreeSet<usize> = ckpt
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("xattn."))
            .filter_map(|r| r.split('.').next()?.parse().ok())
            .collect();
        let idx: Vec<usize> = idx.into_iter().collect();
        if idx.iter().any(|&i| i >= n_layers) {
            return Err(Error::BadWeights {
                path: checkpoint.to_path_buf(),
                reason: format!(
                    "cross-attention blocks for layers {idx:?} but the language model has {n_layers} layers: the checkpoint belongs to another language model"
                ),
            });
        }
        let every = xattn_every_n(&idx, n_layers).ok_or_else(|| Error::BadWeights {
            path: checkpoint.to_path_buf(),
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
        let lm = match lm_cfg {
            LmConfig::MosaicGpt(c) => {
                LanguageModel::MosaicGpt(MosaicGpt::load(&stores.lm.pp(""), c, embed)?)
            }
        };
        if media_id as usize >= vocab {
            return Err(Error::Tokenizer(format!(
                "the <image> token id {media_id} is outside the checkpoint's vocabulary of {vocab}"
            )));
        }
        let mut record = Vec::new();
        for (section, st) in
            SECTIONS
                .iter()
                .zip([&mut stores.clip, &mut stores.ckpt, &mut stores.lm])
        {
            record.extend(
                st.take_record()
                    .into_iter()
                    .map(|(n, r)| (format!("{section}{n}"), r)),
            );
        }
        let mut model = Flamingo {
            vision,
            perceiver,
            lm,
            xattn,
            media_id,
            device: device.clone(),
            format: Default::default(),
        };
        // Anything not converted while loading (nothing, normally) is converted now.
        model.convert_weights(format)?;
        Ok((model, record))
    }
}

/// Keeps the buffers of a forward pass (up to 16 MiB each: an image's 257 x 4096 activations
/// are 4 MiB) in the heap once freed, for the next ones to reuse. glibc's default maps any
/// allocation above a threshold that starts at 128 KiB afresh and unmaps it when freed, so
/// every such buffer came back as new pages that the kernel zeroed and faulted in one at a
/// time: about 10 % of an f16 image encode's samples in a profile (with this, an f16 encode
/// took 1.06–1.08 s instead of 1.17–1.23 s at best in interleaved probe runs, q8_0's vision
/// tower 0.305–0.311 s instead of 0.320 s; peak RSS unchanged). Called once at the start of
/// the program; the heap above 32 MiB free is still given back.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's thresholds; it is called before any other thread
    // of this program starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 32 << 20);
    }
}

/// Hands the heap memory freed so far back to the system where the allocator keeps it
/// (glibc keeps most of a dropped model's weights, which would otherwise add to what the next
/// one allocates).
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the system; it touches no memory in
    // use and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

const MODEL_LAYOUT: &str = "flamingo-model-1";

fn model_cache_layout_ok(g: &GgufFile, format: WeightFormat) -> bool {
    let s = |k: &str| match g.content.metadata.get(k) {
        Some(gguf_file::Value::String(v)) => Some(v.clone()),
        _ => None,
    };
    s("flamingo.layout").as_deref() == Some(MODEL_LAYOUT)
        && s("flamingo.format").as_deref() == Some(format.name())
}

/// Writes what the model was built from, its linear layers converted, as one GGUF file.
fn write_model_cache(
    path: &std::path::Path,
    format: WeightFormat,
    record: Vec<(String, Recorded)>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut tensors: Vec<(String, std::sync::Arc<QTensor>)> = Vec::new();
    for (name, r) in record {
        if !seen.insert(name.clone()) {
            continue;
        }
        let q = match r {
            Recorded::Plain(t) | Recorded::Linear(LinearWeight::Dense(t)) => {
                std::sync::Arc::new(QTensor::quantize(
                    &t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                    GgmlDType::F32,
                )?)
            }
            Recorded::Linear(LinearWeight::F16(t)) => std::sync::Arc::new(QTensor::quantize(
                &t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
                GgmlDType::F16,
            )?),
            Recorded::Linear(LinearWeight::Quantized(q, _)) => q,
        };
        tensors.push((name, q));
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = crate::fsutil::temp_beside(path);
    let layout = gguf_file::Value::String(MODEL_LAYOUT.into());
    let fmt = gguf_file::Value::String(format.name().into());
    let refs: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(n, q)| (n.as_str(), q.as_ref()))
        .collect();
    let written = (|| -> Result<()> {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?);
        gguf_file::write(
            &mut f,
            &[("flamingo.layout", &layout), ("flamingo.format", &fmt)],
            &refs,
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

/// Makes an f32 model of the given shapes with random weights (for benchmarks), no files
/// needed, through the same build as a real one; with what it was built from, which
/// [`keep_model`] writes as a model cache file.
pub fn random_model(
    vcfg: &VisionConfig,
    lm: &crate::model::config::MosaicGptConfig,
    every: usize,
    vocab: usize,
    media_id: u32,
    device: &Device,
) -> Result<(Flamingo, Vec<(String, Recorded)>)> {
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
    let clip = std::mem::take(&mut t);

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
    let store = |t: HashMap<String, Tensor>, what: &str| {
        let mut st = TensorStore::new(t, what);
        st.start_recording();
        st
    };
    let (ckpt, lm_t): (HashMap<_, _>, HashMap<_, _>) = t
        .into_iter()
        .partition(|(k, _)| k.starts_with("perceiver.") || k.starts_with("xattn.") || k == "embed");
    let stores = Stores {
        clip: store(clip, "random CLIP"),
        ckpt: store(ckpt, "random checkpoint"),
        lm: store(lm_t, "random LM"),
    };
    Flamingo::build(
        stores,
        vcfg,
        &LmConfig::MosaicGpt(lm.clone()),
        Path::new("random checkpoint"),
        media_id,
        device,
        WeightFormat::F32,
    )
}

/// Writes the model a record describes (from [`random_model`]) as a model cache file in
/// `format`, its linear layers converted on the way.
pub fn keep_model(
    path: &Path,
    format: WeightFormat,
    record: Vec<(String, Recorded)>,
) -> Result<()> {
    let record = record
        .into_iter()
        .map(|(name, r)| {
            Ok(match r {
                Recorded::Linear(LinearWeight::Dense(w)) => (
                    name,
                    Recorded::Linear(crate::model::linear::convert_weight(w, format)?),
                ),
                other => (name, other),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    write_model_cache(path, format, record)
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
