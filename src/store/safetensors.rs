//! safetensors files read one tensor at a time with plain reads (no memory map, so a tensor's
//! bytes leave memory once it is converted).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

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

    pub(super) fn float_names(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.0.is_float())
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub(super) fn has_float(&self, name: &str) -> bool {
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
