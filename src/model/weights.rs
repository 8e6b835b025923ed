//! Tensor stores read from weight files (safetensors or `torch.save` zip pickles), with
//! shape-checked access that names the tensor and the file when something is off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::linear::WeightFormat;
use crate::model::mapped::FilePages;

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
}

/// How a linear layer's weight is held once converted (what the model cache stores).
#[derive(Clone, Debug)]
pub enum LinearWeight {
    Dense(Tensor),
    F16(Tensor),
    /// With the file pages the blocks are read from, where they are read in place.
    Quantized(std::sync::Arc<QTensor>, Option<FilePages>),
}

impl LinearWeight {
    /// Bytes the weight holds.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) | Self::F16(t) => crate::model::linear::tensor_bytes(t),
            Self::Quantized(q, _) => q.storage_size_in_bytes(),
        }
    }
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

    /// A store of tensors already read (float ones only, as `dtype` on `device`).
    pub fn from_tensors(
        raw: Vec<(String, Tensor)>,
        source: impl Into<String>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            if !t.dtype().is_float() {
                continue;
            }
            let t = t.to_dtype(dtype)?.to_device(device)?;
            tensors.insert(name, t);
        }
        Ok(Self::with_backing(Backing::Memory(tensors), source, device))
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

    /// The tensor `name`, whose shape must be `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        self.check_shape(name, t.dims(), shape)?;
        Ok(t)
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        let t = self.fetch(name)?;
        self.keep(name, Recorded::Plain(t.clone()));
        Ok(t)
    }

    /// A linear layer's weight in the store's format: taken as stored when the store is a
    /// model cache, else made by `make` (a dense f32 [out, in] weight) and converted.
    pub fn linear_weight(
        &self,
        name: &str,
        shape: &[usize],
        make: impl FnOnce() -> Result<Tensor>,
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
                crate::model::linear::convert_weight(w, self.format)?
            }
        };
        self.keep(name, Recorded::Linear(w.clone()));
        Ok(w)
    }

    /// A linear layer's weight read from the tensor `name`.
    pub fn linear_weight_named(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        self.linear_weight(name, shape, || self.fetch(name))
    }

    /// A view that prepends `prefix.` to every name.
    pub fn pp(&self, prefix: impl AsRef<str>) -> Vb<'_> {
        Vb {
            store: self,
            prefix: prefix.as_ref().to_string(),
        }
    }
}

/// A safetensors file read one tensor at a time with plain reads.
pub struct LazySafetensors {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    data_start: u64,
    /// name → (dtype, shape, start, end) within the data section.
    entries: HashMap<String, (DType, Vec<usize>, u64, u64)>,
}

impl LazySafetensors {
    pub fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let bad = |reason: String| Error::BadWeights {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("not a valid safetensors file (too short)".into()))?;
        let n = u64::from_le_bytes(n);
        if n > 100_000_000 || 8 + n > file_len {
            return Err(bad("not a valid safetensors file (bad header size)".into()));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        let header: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("not a valid safetensors header ({e})")))?;
        let data_start = 8 + n;
        let mut entries = HashMap::new();
        for (name, v) in header.as_object().into_iter().flatten() {
            if name == "__metadata__" {
                continue;
            }
            let dtype = match v["dtype"].as_str().unwrap_or("") {
                "F32" => DType::F32,
                "F16" => DType::F16,
                "BF16" => DType::BF16,
                "F64" => DType::F64,
                "U8" | "BOOL" => DType::U8,
                "U32" => DType::U32,
                "I64" => DType::I64,
                other => {
                    return Err(bad(format!(
                        "tensor `{name}` has an unsupported dtype {other}"
                    )))
                }
            };
            let shape: Vec<usize> = v["shape"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_u64())
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            let off: Vec<u64> = v["data_offsets"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_u64()).collect())
                .unwrap_or_default();
            let (start, end) = match off[..] {
                [a, b] if a <= b => (a, b),
                _ => return Err(bad(format!("tensor `{name}` has bad data offsets"))),
            };
            let want = shape.iter().product::<usize>() as u64 * dtype.size_in_bytes() as u64;
            if end - start != want || data_start + end > file_len {
                return Err(bad(format!(
                    "tensor `{name}` needs {want} bytes at {start}..{end}, but the file is {file_len} bytes (truncated?)"
                )));
            }
            entries.insert(name.clone(), (dtype, shape, start, end));
        }
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            data_start,
            entries,
        })
    }

    fn float_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.0.is_float())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn has_float(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(|e| e.0.is_float())
    }

    /// Every tensor, in memory.
    pub fn read_all(&self) -> Result<Vec<(String, Tensor)>> {
        let mut names: Vec<&String> = self.entries.keys().collect();
        names.sort_by_key(|n| self.entries[*n].2);
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.read(n)?.ok_or_else(|| self.gone(n))?)))
            .collect()
    }

    fn gone(&self, name: &str) -> Error {
        Error::BadWeights {
            path: self.path.clone(),
            reason: format!("tensor `{name}` vanished"),
        }
    }

    /// One tensor on the CPU, or None if the file has no such tensor.
    pub fn read(&self, name: &str) -> Result<Option<Tensor>> {
        use std::io::{Read, Seek, SeekFrom};
        let Some((dtype, shape, start, end)) = self.entries.get(name) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; (end - start) as usize];
        {
            let mut f = self.file.lock().map_err(|_| self.gone(name))?;
            f.seek(SeekFrom::Start(self.data_start + start))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(Some(Tensor::from_raw_buffer(
            &buf,
            *dtype,
            shape,
            &Device::Cpu,
        )?))
    }
}

/// A GGUF file (the app's per-format model cache), read one tensor at a time.
pub struct GgufFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// The whole file mapped, where the system allows it: quantized CPU tensors are read in
    /// place (see [`crate::model::mapped`]).
    map: Option<std::sync::Arc<memmap2::Mmap>>,
    pub content: candle_core::quantized::gguf_file::Content,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
            Error::BadWeights {
                path: path.to_path_buf(),
                reason: format!("not a readable GGUF file ({e})"),
            }
        })?;
        // SAFETY: a read-only map of a file the app only ever replaces by renaming a new one
        // over it (fsutil), never writes in place; every slice taken from it is bounds-checked
        // against the map's length first (FilePages::new). Another program cutting the file
        // short while it is mapped would crash the app, as with any memory-mapped model file.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .ok()
            .map(std::sync::Arc::new);
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            map,
            content,
        })
    }

    /// The stored type of the tensor `name`.
    pub fn dtype(&self, name: &str) -> Option<GgmlDType> {
        self.content.tensor_infos.get(name).map(|i| i.ggml_dtype)
    }

    /// The tensor `name` as a dense tensor on `device`: a plain (f32/f16/bf16) one in its
    /// stored type, copied straight from the map (whose pages are then given back), a
    /// quantized one dequantized to f32.
    pub fn dense(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        let dtype = match info.ggml_dtype {
            GgmlDType::F32 => Some(DType::F32),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::BF16 => Some(DType::BF16),
            _ => None,
        };
        if let (Some(dtype), Some(map)) = (dtype, &self.map) {
            let pages = self.pages(map, name, info)?;
            let t = Tensor::from_raw_buffer(pages.bytes(), dtype, info.shape.dims(), device)?;
            pages.release();
            return Ok(Some(t));
        }
        let Some(q) = self.tensor(name, device)? else {
            return Ok(None);
        };
        Ok(Some(match q.dtype() {
            GgmlDType::F16 => q.dequantize_f16(device)?,
            _ => q.dequantize(device)?,
        }))
    }

    /// The bytes of the tensor `info` (named `name`) in the map; an error when the file is
    /// shorter.
    fn pages(
        &self,
        map: &std::sync::Arc<memmap2::Mmap>,
        name: &str,
        info: &candle_core::quantized::gguf_file::TensorInfo,
    ) -> Result<FilePages> {
        let dtype = info.ggml_dtype;
        let len = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
        let start = (self.content.tensor_data_offset as usize).saturating_add(info.offset as usize);
        FilePages::new(map.clone(), start, len).ok_or_else(|| Error::BadWeights {
            path: self.path.clone(),
            reason: format!("tensor `{name}` runs past the end of the file"),
        })
    }

    /// The tensor `name` on `device`; a plain (f32/f16/bf16) one always on the CPU, since the
    /// GPU backends cannot dequantize those: its dequantized copy is moved over instead.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Option<QTensor>> {
        Ok(self.tensor_in_place(name, device)?.map(|(q, _)| q))
    }

    /// Like [`GgufFile::tensor`], with the file pages a quantized CPU tensor is read from in
    /// place (None: it was read into memory).
    pub fn tensor_in_place(
        &self,
        name: &str,
        device: &Device,
    ) -> Result<Option<(QTensor, Option<FilePages>)>> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Ok(None);
        };
        if let (true, Some(map)) = (device.is_cpu(), &self.map) {
            let pages = self.pages(map, name, info)?;
            if let Some(q) =
                crate::model::mapped::qtensor(info.ggml_dtype, info.shape.dims(), pages.clone())
            {
                return Ok(Some((q, Some(pages))));
            }
        }
        let device = if matches!(
            info.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            &Device::Cpu
        } else {
            device
        };
        let mut f = self.file.lock().map_err(|_| Error::BadWeights {
            path: self.path.clone(),
            reason: "the file lock is poisoned".into(),
        })?;
        let q = self
            .content
            .tensor(&mut *f, name, device)
            .map_err(|e| Error::BadWeights {
                path: self.path.clone(),
                reason: format!("tensor `{name}`: {e}"),
            })?;
        Ok(Some((q, None)))
    }
}

/// A prefix into a [`TensorStore`], like candle's `VarBuilder::pp` but with our errors.
#[derive(Clone)]
pub struct Vb<'a> {
    store: &'a TensorStore,
    prefix: String,
}

impl<'a> Vb<'a> {
    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        Vb {
            store: self.store,
            prefix: self.full(&name.to_string()),
        }
    }

    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        self.store.get(&self.full(name), shape)
    }

    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.store.get_any(&self.full(name))
    }

    /// The tensor `name` without keeping it for the model cache (it is only an ingredient).
    pub fn fetch(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let t = self.store.fetch(&full)?;
        self.store.check_shape(&full, t.dims(), shape)?;
        Ok(t)
    }

    /// A linear layer's weight `name` of shape `shape`, in the store's format.
    pub fn linear_weight(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        self.store.linear_weight_named(&self.full(name), shape)
    }

    /// A linear layer's weight computed by `make` (kept under `key` by the model cache).
    pub fn derived_linear_weight(
        &self,
        key: &str,
        shape: &[usize],
        make: impl FnOnce() -> Result<Tensor>,
    ) -> Result<LinearWeight> {
        self.store.linear_weight(&self.full(key), shape, make)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.full(name))
    }
}

/// Reads every tensor of a weight file by its extension.
pub fn read_tensor_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason,
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !path.exists() {
        return Err(bad("the file does not exist".into()));
    }
    if ext == "safetensors" {
        return LazySafetensors::open(path)?.read_all();
    }
    let pth = open_pickle(path)?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let t = pth
                .get(n)
                .map_err(|e| bad(format!("tensor `{n}`: {e}")))?
                .ok_or_else(|| bad(format!("tensor `{n}` vanished")))?;
            Ok((n.clone(), t))
        })
        .collect()
}

/// The tensors of a `torch.save` zip, found at the top or under a usual state-dict key.
pub fn open_pickle(path: &Path) -> Result<candle_core::pickle::PthTensors> {
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason,
    };
    let top = candle_core::pickle::PthTensors::new(path, None)
        .map_err(|e| bad(format!("not a readable PyTorch zip checkpoint ({e})")))?;
    if !top.tensor_infos().is_empty() {
        return Ok(top);
    }
    for key in ["model_state_dict", "state_dict", "model"] {
        if let Ok(t) = candle_core::pickle::PthTensors::new(path, Some(key)) {
            if !t.tensor_infos().is_empty() {
                return Ok(t);
            }
        }
    }
    Err(bad("no tensors found".into()))
}

/// Every tensor of a weight file; a pickled one (`.pt`/`.bin`) goes through `cache` when
/// given, so that it is unpickled only once.
pub fn read_weights(
    path: &Path,
    cache: Option<&crate::model::converted::ConvertCache>,
) -> Result<Vec<(String, Tensor)>> {
    let pickled = !path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    match cache {
        Some(c) if pickled && path.exists() => Ok(c.read(path, read_tensor_file)?.0),
        _ => read_tensor_file(path),
    }
}

/// Path plus a label `repo/file` for messages.
#[derive(Clone, Debug)]
pub struct WeightFile {
    pub path: PathBuf,
    pub label: String,
}
