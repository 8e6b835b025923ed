//! Weight storage: the readers of weight files (safetensors, `torch.save` pickles, GGUF), the
//! app's caches of converted weights and of whole models in a weight format, and the building
//! of a model from the files the hub found. [`TensorStore`] is the [`WeightSource`] the model
//! is built through.

pub mod build;
pub mod converted;
pub mod gguf;
pub mod pickle;
pub mod random;
pub mod released;
pub mod safetensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::nn::linear::Role;
use crate::nn::{LinearWeight, WeightSource};
use crate::types::WeightFormat;
use gguf::GgufFile;
use pickle::open_pickle;
pub use pickle::read_tensor_file;
use safetensors::LazySafetensors;

/// Where a store's tensors are read from.
enum Backing {
    /// Everything already in memory.
    Memory(HashMap<String, Tensor>),
    /// A safetensors file, read one tensor at a time (no memory map, so a tensor's bytes
    /// leave memory once it is converted).
    Safetensors(LazySafetensors),
    /// A section (`prefix`) of the app's per-format model cache.
    Gguf(std::sync::Arc<GgufFile>, String),
    /// A `torch.save` zip, read one tensor at a time.
    Pickle(candle_core::pickle::PthTensors, PathBuf),
    /// Random values of these shapes, made when asked for (benchmarks).
    Random(random::RandomTensors),
    /// The shards of one checkpoint, each read one tensor at a time, and which shard holds
    /// each name.
    Shards(Vec<TensorStore>, HashMap<String, usize>),
}

/// A tensor the model was built from, as kept by the model cache.
#[derive(Clone, Debug)]
pub enum Recorded {
    Plain(Tensor),
    Linear(LinearWeight),
}

/// The tensors of one weight file (after key normalisation), read on demand and put on one
/// device as f32; linear layers are converted to `format` as they are read.
pub struct TensorStore {
    backing: Backing,
    /// canonical name → name in the file (absent: the same).
    alias: HashMap<String, String>,
    /// Human-readable origin used in error messages (repo and file).
    source: String,
    device: Device,
    pub format: WeightFormat,
    /// What the model took from the store, kept for the model cache (None: not recording).
    record: Option<Mutex<Vec<(String, Recorded)>>>,
}

impl TensorStore {
    /// A store of tensors in memory (on the device they are on).
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        let device = tensors
            .values()
            .next()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        Self::with_backing(Backing::Memory(tensors), source, &device)
    }

    fn with_backing(backing: Backing, source: impl Into<String>, device: &Device) -> Self {
        Self {
            backing,
            alias: HashMap::new(),
            source: source.into(),
            device: device.clone(),
            format: WeightFormat::F32,
            record: None,
        }
    }

    /// A store over a safetensors file, reading each tensor when it is asked for.
    pub fn lazy_safetensors(
        path: &Path,
        source: impl Into<String>,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::with_backing(
            Backing::Safetensors(LazySafetensors::open(path)?),
            source,
            device,
        ))
    }

    /// A store over a `torch.save` zip (`.bin`, `.pt`), reading each tensor when asked for.
    pub fn lazy_pickle(path: &Path, source: impl Into<String>, device: &Device) -> Result<Self> {
        Ok(Self::with_backing(
            Backing::Pickle(open_pickle(path)?, path.to_path_buf()),
            source,
            device,
        ))
    }

    /// A store over the shards of one checkpoint (each read lazily), as one.
    pub fn shards(shards: Vec<TensorStore>, source: impl Into<String>, device: &Device) -> Self {
        let mut at = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for n in s.raw_names() {
                at.entry(n).or_insert(i);
            }
        }
        Self::with_backing(Backing::Shards(shards, at), source, device)
    }

    /// A store of random tensors of the given shapes, made when asked for.
    pub fn random(r: random::RandomTensors, source: impl Into<String>, device: &Device) -> Self {
        Self::with_backing(Backing::Random(r), source, device)
    }

    /// A store over the section `prefix` of a model-cache file.
    pub fn gguf_section(
        file: std::sync::Arc<GgufFile>,
        prefix: &str,
        source: impl Into<String>,
        device: &Device,
    ) -> Self {
        Self::with_backing(Backing::Gguf(file, prefix.to_string()), source, device)
    }

    /// Keeps everything the model takes from now on (for the model cache).
    pub fn start_recording(&mut self) {
        self.record = Some(Mutex::new(Vec::new()));
    }

    /// What was taken since [`TensorStore::start_recording`].
    pub fn take_record(&mut self) -> Vec<(String, Recorded)> {
        self.record
            .take()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }

    /// Renames: each canonical name is looked up under its raw name in the file. With
    /// aliases set, only the aliased names are visible.
    pub fn set_aliases(&mut self, alias: HashMap<String, String>) {
        self.alias = alias;
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn raw_names(&self) -> Vec<String> {
        match &self.backing {
            Backing::Memory(m) => m.keys().cloned().collect(),
            Backing::Random(r) => r.names(),
            Backing::Shards(_, at) => at.keys().cloned().collect(),
            Backing::Safetensors(l) => l.float_names(),
            Backing::Pickle(p, _) => p
                .tensor_infos()
                .iter()
                .filter(|(_, i)| i.dtype.is_float())
                .map(|(n, _)| n.clone())
                .collect(),
            Backing::Gguf(g, prefix) => g
                .content
                .tensor_infos
                .keys()
                .filter_map(|k| k.strip_prefix(prefix.as_str()).map(String::from))
                .collect(),
        }
    }

    /// Canonical names of the tensors (with aliases set: only the aliased ones).
    pub fn names(&self) -> Vec<String> {
        if self.alias.is_empty() {
            self.raw_names()
        } else {
            self.alias.keys().cloned().collect()
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        let raw = self.raw(name);
        match &self.backing {
            Backing::Memory(m) => m.contains_key(raw),
            Backing::Random(r) => r.contains(raw),
            Backing::Shards(_, at) => at.contains_key(raw),
            Backing::Safetensors(l) => l.has_float(raw),
            Backing::Pickle(p, _) => p
                .tensor_infos()
                .get(raw)
                .is_some_and(|i| i.dtype.is_float()),
            Backing::Gguf(g, prefix) => g
                .content
                .tensor_infos
                .contains_key(&format!("{prefix}{raw}")),
        }
    }

    fn raw<'n>(&'n self, name: &'n str) -> &'n str {
        if self.alias.is_empty() {
            name
        } else {
            self.alias.get(name).map(|s| s.as_str()).unwrap_or(name)
        }
    }

    fn missing(&self, name: &str) -> Error {
        Error::MissingTensor {
            name: name.to_string(),
            source_file: self.source.clone(),
        }
    }

    /// The tensor `name` as f32 on the device, not recorded.
    fn fetch(&self, name: &str) -> Result<Tensor> {
        if !self.alias.is_empty() && !self.alias.contains_key(name) {
            return Err(self.missing(name));
        }
        let raw = self.raw(name);
        let t = match &self.backing {
            Backing::Memory(m) => m.get(raw).cloned().ok_or_else(|| self.missing(name))?,
            Backing::Random(r) => r.make(raw)?.ok_or_else(|| self.missing(name))?,
            Backing::Shards(shards, at) => match at.get(raw) {
                Some(&i) => shards[i].fetch(raw)?,
                None => return Err(self.missing(name)),
            },
            Backing::Safetensors(l) => l.read(raw)?.ok_or_else(|| self.missing(name))?,
            Backing::Pickle(p, path) => p
                .get(raw)
                .map_err(|e| Error::BadWeights {
                    path: path.clone(),
                    reason: format!("tensor `{raw}`: {e}"),
                })?
                .ok_or_else(|| self.missing(name))?,
            Backing::Gguf(g, prefix) => g
                .dense(&format!("{prefix}{raw}"), &self.device)?
                .ok_or_else(|| self.missing(name))?,
        };
        Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    fn check_shape(&self, name: &str, found: &[usize], shape: &[usize]) -> Result<()> {
        if found != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                source_file: self.source.clone(),
                expected: shape.to_vec(),
                found: found.to_vec(),
            });
        }
        Ok(())
    }

    fn keep(&self, name: &str, r: Recorded) {
        if let Some(rec) = &self.record {
            if let Ok(mut v) = rec.lock() {
                v.push((name.to_string(), r));
            }
        }
    }

    /// A linear layer's weight in the store's format: taken as stored when the store is a
    /// model cache, else made by `make` (a dense f32 [out, in] weight) and converted.
    fn linear_weight_of(
        &self,
        name: &str,
        shape: &[usize],
        make: &dyn Fn() -> Result<Tensor>,
    ) -> Result<LinearWeight> {
        let w = match &self.backing {
            Backing::Gguf(g, prefix) => {
                let full = format!("{prefix}{name}");
                let dtype = g.dtype(&full).ok_or_else(|| self.missing(name))?;
                if matches!(dtype, GgmlDType::F32 | GgmlDType::F16) {
                    let w = g
                        .dense(&full, &self.device)?
                        .ok_or_else(|| self.missing(name))?;
                    self.check_shape(name, w.dims(), shape)?;
                    match w.dtype() {
                        DType::F16 => LinearWeight::F16(w),
                        _ => LinearWeight::Dense(w.to_dtype(DType::F32)?),
                    }
                } else {
                    let (q, pages) = g
                        .tensor_in_place(&full, &self.device)?
                        .ok_or_else(|| self.missing(name))?;
                    self.check_shape(name, q.shape().dims(), shape)?;
                    LinearWeight::Quantized(std::sync::Arc::new(q), pages)
                }
            }
            _ => {
                let w = make()?;
                self.check_shape(name, w.dims(), shape)?;
                let fmt = crate::nn::linear::format_for(self.format, Role::of(name));
                crate::nn::linear::convert_weight(w, fmt)?
            }
        };
        self.keep(name, Recorded::Linear(w.clone()));
        Ok(w)
    }
}

impl WeightSource for TensorStore {
    fn label(&self) -> &str {
        &self.source
    }

    fn tensor(&self, name: &str) -> Result<Tensor> {
        let t = self.fetch(name)?;
        self.keep(name, Recorded::Plain(t.clone()));
        Ok(t)
    }

    fn ingredient(&self, name: &str) -> Result<Tensor> {
        self.fetch(name)
    }

    fn linear_weight(
        &self,
        name: &str,
        shape: &[usize],
        make: Option<&dyn Fn() -> Result<Tensor>>,
    ) -> Result<LinearWeight> {
        match make {
            Some(make) => self.linear_weight_of(name, shape, make),
            None => self.linear_weight_of(name, shape, &|| self.fetch(name)),
        }
    }

    fn contains(&self, name: &str) -> bool {
        TensorStore::contains(self, name)
    }

    fn names(&self) -> Vec<String> {
        TensorStore::names(self)
    }
}
