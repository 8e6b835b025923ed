//! The app's own cache of converted weights. A `.pt`/`.bin` file (a zip of pickles) is read
//! once and written as safetensors, keyed by its source blob; later loads read the copy
//! (a memory map, no unpickling). Nothing is ever written inside the Hugging Face cache.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Bumped when the converted layout changes; older copies are then ignored (2: the copy's
/// CRC-32 is kept beside it and checked before it is used).
const LAYOUT: &str = "flamingo-converted-2";

/// Where converted copies live.
#[derive(Clone, Debug)]
pub struct ConvertCache {
    pub dir: PathBuf,
}

/// Whether a read came from the converted copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Read from the converted copy.
    Converted,
    /// Read from the original and converted now.
    Original,
    /// Read from the original; the copy could not be written (the reason was logged).
    Uncached,
}

impl ConvertCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default folder under the app's cache folder ([`crate::platform::app_cache_dir`]).
    pub fn default_location() -> Self {
        Self::new(crate::platform::app_cache_dir().join("converted"))
    }

    /// A key naming the source's content: the hub blob's ETag (its file name in the cache:
    /// sha256 or git sha1), else a hash of its path, size and modification time.
    pub fn key(source: &Path) -> Result<String> {
        let real = std::fs::canonicalize(source).map_err(|e| Error::io(source, e))?;
        let meta = std::fs::metadata(&real).map_err(|e| Error::io(&real, e))?;
        let name = real
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let hex = |n: usize| name.len() == n && name.bytes().all(|b| b.is_ascii_hexdigit());
        if hex(64) || hex(40) {
            return Ok(format!("{}-{}", name.to_ascii_lowercase(), meta.len()));
        }
        use sha2::Digest;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("{}\0{}\0{mtime}", real.display(), meta.len());
        let digest = sha2::Sha256::digest(id.as_bytes());
        Ok(format!(
            "path-{}",
            digest[..16]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
    }

    /// Where the model made from `files` with linear layers in `format` is kept: named by
    /// the keys of all its weight files, so a changed file makes a new one.
    pub fn model_path(&self, files: &crate::hub::ModelFiles, format: &str) -> Result<PathBuf> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(LAYOUT.as_bytes());
        h.update(format.as_bytes());
        let weights = [&files.clip_weights, &files.checkpoint]
            .into_iter()
            .chain(files.lm_weights.iter());
        for f in weights {
            h.update(Self::key(&f.path)?.as_bytes());
            h.update(b"\0");
        }
        let digest: String = h.finalize()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(self
            .dir
            .parent()
            .unwrap_or(&self.dir)
            .join("models")
            .join(format!("{format}-{digest}.gguf")))
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.safetensors")),
            self.dir.join(format!("{key}.json")),
        )
    }

    /// Tensors of the pickled weight file `source`, through the cache; `read` reads the
    /// original.
    pub fn read(
        &self,
        source: &Path,
        read: impl FnOnce(&Path) -> Result<Vec<(String, Tensor)>>,
    ) -> Result<(Vec<(String, Tensor)>, Source)> {
        let mut kept = None;
        let (path, how) = self.converted(source, |p| {
            let t = read(p)?;
            kept = Some(t.clone());
            Ok(t)
        })?;
        match (path, kept) {
            (_, Some(t)) => Ok((t, how)),
            (Some(p), None) => Ok((
                super::safetensors::LazySafetensors::open(&p)?.read_all()?,
                how,
            )),
            (None, None) => Err(Error::BadWeights {
                path: source.to_path_buf(),
                reason: "nothing was read".into(),
            }),
        }
    }

    /// The converted copy of `source` (made now with `read` if there is none yet), or None
    /// with `Source::Uncached` when it could not be written.
    pub fn converted(
        &self,
        source: &Path,
        read: impl FnOnce(&Path) -> Result<Vec<(String, Tensor)>>,
    ) -> Result<(Option<PathBuf>, Source)> {
        let key = Self::key(source)?;
        let size = std::fs::metadata(source)
            .map_err(|e| Error::io(source, e))?
            .len();
        let (data, meta) = self.paths(&key);
        if self.is_valid(&meta, &data, size)
            && super::safetensors::LazySafetensors::open(&data).is_ok()
        {
            return Ok((Some(data), Source::Converted));
        }
        let tensors = read(source)?;
        match self.write(&tensors, &data, &meta, source, size) {
            Ok(()) => Ok((Some(data), Source::Original)),
            Err(e) => {
                tracing::warn!(
                    "could not keep a converted copy of {} in {}: {e}",
                    source.display(),
                    self.dir.display()
                );
                Ok((None, Source::Uncached))
            }
        }
    }

    /// The copy's description matches its source and layout, and the copy's bytes their
    /// CRC-32 (a damaged copy is converted again, never used).
    fn is_valid(&self, meta: &Path, data: &Path, size: u64) -> bool {
        let Ok(text) = std::fs::read_to_string(meta) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            return false;
        };
        if v["layout"] != LAYOUT || v["source_bytes"].as_u64() != Some(size) {
            return false;
        }
        match (v["crc32"].as_u64(), file_crc32(data)) {
            (Some(kept), Ok(now)) if kept == now as u64 => true,
            (_, Ok(_)) => {
                tracing::warn!(
                    "the converted copy {} does not match its checksum; converting again",
                    data.display()
                );
                false
            }
            _ => false,
        }
    }

    fn write(
        &self,
        tensors: &[(String, Tensor)],
        data: &Path,
        meta: &Path,
        source: &Path,
        size: u64,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let tmp = crate::platform::temp_beside(data);
        let map: std::collections::HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| Ok((k.clone(), t.contiguous()?)))
            .collect::<Result<_>>()?;
        let written = candle_core::safetensors::save(&map, &tmp)
            .map_err(Error::from)
            .and_then(|_| std::fs::rename(&tmp, data).map_err(|e| Error::io(data, e)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let crc = file_crc32(data).map_err(|e| Error::io(data, e))?;
        let info = serde_json::json!({
            "layout": LAYOUT,
            "source": source.display().to_string(),
            "source_bytes": size,
            "crc32": crc,
        });
        crate::platform::write_atomic(meta, info.to_string().as_bytes())
            .map_err(|e| Error::io(meta, e))
    }
}

/// CRC-32 of a whole file, read in 1 MiB pieces.
fn file_crc32(path: &Path) -> std::io::Result<u32> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}
