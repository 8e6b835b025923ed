//! Tensor stores read from weight files (safetensors or `torch.save` zip pickles), with
//! shape-checked access that names the tensor and the file when something is off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// All tensors of one weight file (after key normalisation), kept on one device.
pub struct TensorStore {
    tensors: HashMap<String, Tensor>,
    /// Human-readable origin used in error messages (repo and file).
    source: String,
}

impl TensorStore {
    pub fn new(tensors: HashMap<String, Tensor>, source: impl Into<String>) -> Self {
        Self {
            tensors,
            source: source.into(),
        }
    }

    /// Reads a `.safetensors`, `.bin`/`.pt`/`.pth` (torch zip) file. Float tensors are converted
    /// to `dtype` and moved to `device`; integer and bool tensors are dropped (buffers).
    pub fn load(
        path: &Path,
        source: impl Into<String>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors(read_tensor_file(path)?, source, dtype, device)
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
        Ok(Self::new(tensors, source))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The tensor `name`, whose shape must be `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get_any(name)?;
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                source_file: self.source.clone(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                source_file: self.source.clone(),
            })
    }

    /// A view that prepends `prefix.` to every name.
    pub fn pp(&self, prefix: impl AsRef<str>) -> Vb<'_> {
        Vb {
            store: self,
            prefix: prefix.as_ref().to_string(),
        }
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
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
        return Ok(map.into_iter().collect());
    }
    // torch.save zip archive; a state dict may sit under a key.
    let mut all = candle_core::pickle::read_all_with_key(path, None)
        .map_err(|e| bad(format!("not a readable PyTorch zip checkpoint ({e})")))?;
    if all.is_empty() {
        for key in ["model_state_dict", "state_dict", "model"] {
            if let Ok(t) = candle_core::pickle::read_all_with_key(path, Some(key)) {
                if !t.is_empty() {
                    all = t;
                    break;
                }
            }
        }
    }
    if all.is_empty() {
        return Err(bad("no tensors found".into()));
    }
    Ok(all)
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
