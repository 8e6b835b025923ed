//! GGUF files (the app's per-format model cache), read one tensor at a time, quantized
//! weights in place from a memory map.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::nn::mapped::FilePages;

/// A GGUF file (the app's per-format model cache), read one tensor at a time.
pub struct GgufFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
    /// The whole file mapped, where the system allows it: quantized CPU tensors are read in
    /// place (see [`crate::model::mapped`]).
    map: Option<std::sync::Arc<memmap2::Mmap>>,
    pub content: candle_core::quantized::gguf_file::Content,
    /// Each tensor's CRC-32 as written ([`write`]), checked when the tensor is read.
    crcs: std::collections::HashMap<String, u32>,
}

/// The metadata key of the tensors' CRC-32s: a line `name<TAB>hex` per tensor.
const CRC_KEY: &str = "flamingo.crc32";

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
        // over it (platform::write_atomic), never writes in place; every slice taken from it is bounds-checked
        // against the map's length first (FilePages::new). Another program cutting the file
        // short while it is mapped would crash the app, as with any memory-mapped model file.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .ok()
            .map(std::sync::Arc::new);
        let crcs = match content.metadata.get(CRC_KEY) {
            Some(candle_core::quantized::gguf_file::Value::String(s)) => s
                .lines()
                .filter_map(|l| {
                    let (name, hex) = l.split_once('\t')?;
                    Some((name.to_string(), u32::from_str_radix(hex, 16).ok()?))
                })
                .collect(),
            _ => Default::default(),
        };
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            map,
            content,
            crcs,
        })
    }

    /// Whether the file holds a checksum of every tensor.
    pub fn has_checksums(&self) -> bool {
        self.content
            .tensor_infos
            .keys()
            .all(|n| self.crcs.contains_key(n))
    }

    /// The tensor `name`'s bytes must match its CRC-32: a damaged file is refused (and the
    /// model rebuilt from its sources), never used.
    fn check(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match self.crcs.get(name) {
            Some(&want) if crc32fast::hash(bytes) != want => Err(Error::BadWeights {
                path: self.path.clone(),
                reason: format!("tensor `{name}` does not match its checksum: the file is damaged"),
            }),
            _ => Ok(()),
        }
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
            self.check(name, pages.bytes())?;
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
            self.check(name, pages.bytes())?;
            if let Some(q) =
                crate::nn::mapped::qtensor(info.ggml_dtype, info.shape.dims(), pages.clone())
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
        self.check(name, &q.data()?)?;
        Ok(Some((q, None)))
    }
}

/// One tensor for [`write`]: a quantized one written from its blocks, or a dense one written
/// as f32 or f16.
pub enum Entry {
    Quantized(std::sync::Arc<QTensor>),
    Dense(Tensor, GgmlDType),
}

impl Entry {
    fn dtype(&self) -> GgmlDType {
        match self {
            Entry::Quantized(q) => q.dtype(),
            Entry::Dense(_, d) => *d,
        }
    }

    fn dims(&self) -> Vec<usize> {
        match self {
            Entry::Quantized(q) => q.shape().dims().to_vec(),
            Entry::Dense(t, _) => t.dims().to_vec(),
        }
    }

    fn bytes(&self) -> usize {
        let n: usize = self.dims().iter().product();
        let d = self.dtype();
        n / d.block_size() * d.type_size()
    }
}

/// GGUF's code for a stored type (the ones the model cache writes).
fn dtype_code(d: GgmlDType) -> Result<u32> {
    Ok(match d {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q4K => 12,
        GgmlDType::Q6K => 14,
        other => {
            return Err(Error::Invalid(format!(
                "the model cache does not store {other:?} tensors"
            )))
        }
    })
}

/// Writes a GGUF (version 2, 32-byte alignment: what candle's reader reads) with string
/// `metadata` and `tensors`, a tensor at a time: a dense one goes out in slices of at most
/// 16 MiB, so that writing a model's cache takes no second copy of its weights (candle's own
/// writer wants every tensor as a `QTensor`, which for a 9B model's f32 embedding alone is
/// 826 MB more at the peak of its first load).
/// Hands a dense tensor's bytes, as stored in `d` (f16, else f32), to `f` in slices of at
/// most 16 MiB.
fn dense_bytes(t: &Tensor, d: GgmlDType, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    let flat = t.flatten_all()?;
    let n = flat.dim(0)?;
    let step = (16 << 20) / 4;
    let mut start = 0;
    while start < n {
        let len = step.min(n - start);
        let part = flat.narrow(0, start, len)?;
        let bytes: Vec<u8> = match d {
            GgmlDType::F16 => part
                .to_dtype(DType::F16)?
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => part
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        };
        f(&bytes)?;
        start += len;
    }
    Ok(())
}

/// An entry's stored bytes, handed to `f` in slices.
fn entry_bytes(e: &Entry, f: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
    match e {
        Entry::Quantized(q) => f(&q.data()?),
        Entry::Dense(t, d) => dense_bytes(t, *d, f),
    }
}

pub fn write(
    w: &mut impl std::io::Write,
    metadata: &[(&str, &str)],
    tensors: &[(String, Entry)],
) -> Result<()> {
    // Each tensor's CRC-32 first: they go in the header, before the data.
    let mut crcs = String::new();
    for (name, e) in tensors {
        let mut h = crc32fast::Hasher::new();
        entry_bytes(e, &mut |b| {
            h.update(b);
            Ok(())
        })?;
        crcs.push_str(&format!("{name}\t{:08x}\n", h.finalize()));
    }
    let mut metadata = metadata.to_vec();
    metadata.push((CRC_KEY, &crcs));
    const ALIGN: usize = 32;
    let pad = |n: usize| (ALIGN - n % ALIGN) % ALIGN;
    let mut head: Vec<u8> = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    };
    head.extend(0x4655_4747u32.to_le_bytes());
    head.extend(2u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in &metadata {
        string(&mut head, k);
        head.extend(8u32.to_le_bytes()); // a string value
        string(&mut head, v);
    }
    let mut offset = 0usize;
    for (name, e) in tensors {
        string(&mut head, name);
        let dims = e.dims();
        head.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(dtype_code(e.dtype())?.to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += e.bytes() + pad(e.bytes());
    }
    head.extend(std::iter::repeat_n(0u8, pad(head.len())));
    let io = |e: std::io::Error| Error::Invalid(format!("writing the model cache: {e}"));
    w.write_all(&head).map_err(io)?;
    for (_, e) in tensors {
        entry_bytes(e, &mut |b| w.write_all(b).map_err(io))?;
        w.write_all(&vec![0u8; pad(e.bytes())]).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};

    use super::GgufFile;
    use crate::nn::fused::max_abs_diff as max_diff;

    #[test]
    fn weights_read_in_place_equal_weights_read_into_memory() {
        let dev = Device::Cpu;
        // 32x512 takes candle's repacked x86 kernels (where the CPU has them); 24x64 does not.
        let shapes = [(32usize, 512usize), (24, 64)];
        let mut kept = Vec::new();
        for (i, &(n, k)) in shapes.iter().enumerate() {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            for (d, name) in [(GgmlDType::Q8_0, "q8"), (GgmlDType::Q4K, "q4k")] {
                if k % d.block_size() == 0 {
                    kept.push((
                        format!("{name}.{i}"),
                        std::sync::Arc::new(QTensor::quantize(&w, d).unwrap()),
                    ));
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        let refs: Vec<(&str, &QTensor)> =
            kept.iter().map(|(n, q)| (n.as_str(), q.as_ref())).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &[], &refs).unwrap();
        drop(f);

        let g = GgufFile::open(&path).unwrap();
        for (name, q) in &kept {
            let (mapped, pages) = g.tensor_in_place(name, &dev).unwrap().unwrap();
            let pages = pages.expect("a quantized CPU tensor is read in place");
            assert_eq!(mapped.dtype(), q.dtype());
            assert_eq!(mapped.data().unwrap(), q.data().unwrap(), "{name}");
            let (_, k) = q.shape().dims2().unwrap();
            let x = Tensor::randn(0f32, 1.0, (5, k), &dev).unwrap();
            let want = QMatMul::from_arc(q.clone()).unwrap();
            let got = QMatMul::from_qtensor(mapped).unwrap();
            let y0 = want.forward(&x).unwrap();
            assert_eq!(max_diff(&got.forward(&x).unwrap(), &y0), 0.0, "{name}");
            // The pages given back, the blocks read again come from the file unchanged.
            pages.release();
            assert_eq!(max_diff(&got.forward(&x).unwrap(), &y0), 0.0, "{name}");
            let QMatMul::QTensor(t) = &got else {
                panic!("not quantized")
            };
            let a = t.dequantize(&dev).unwrap();
            let b = q.dequantize(&dev).unwrap();
            assert_eq!(max_diff(&a, &b), 0.0, "{name}");
        }
    }
}
