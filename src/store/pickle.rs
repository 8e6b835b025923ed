//! `torch.save` zip files (`.pt`, `.bin`): candle's pickle reader, which rebuilds tensors and
//! executes nothing.

use std::path::Path;

use candle_core::Tensor;

use super::safetensors::LazySafetensors;
use crate::error::{Error, Result};

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

/// Reads every entry of a `torch.save` zip to its end, which makes the zip reader check each
/// entry's CRC-32: a file with flipped bytes is refused before any tensor of it is used.
pub fn verify_zip(path: &Path) -> Result<()> {
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f))
        .map_err(|e| bad(format!("not a readable PyTorch zip checkpoint ({e})")))?;
    for i in 0..z.len() {
        let mut entry = z
            .by_index(i)
            .map_err(|e| bad(format!("entry {i} of the zip is unreadable ({e})")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("#{i}"));
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| {
            bad(format!(
                "entry `{name}` is damaged ({e}); delete the file and download it again"
            ))
        })?;
    }
    Ok(())
}

/// The tensors of a `torch.save` zip, found at the top or under a usual state-dict key, after
/// its checksums are verified ([`verify_zip`]).
pub fn open_pickle(path: &Path) -> Result<candle_core::pickle::PthTensors> {
    let bad = |reason: String| Error::BadWeights {
        path: path.to_path_buf(),
        reason,
    };
    verify_zip(path)?;
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
