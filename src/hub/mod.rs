//! Model ids → local files in the Hugging Face cache (the layout Python's huggingface_hub
//! writes: `models--org--name/{refs/main, snapshots/<rev>/<file>}`), and the model registry.

pub mod download;
pub mod registry;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use registry::{ModelSpec, Need, DEFAULT_MODEL};

/// A weight file: its path, and a label `repo/file` for messages.
#[derive(Clone, Debug)]
pub struct WeightFile {
    pub path: PathBuf,
    pub label: String,
}

/// Local paths of every file a model needs.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    pub clip_config: PathBuf,
    pub clip_weights: WeightFile,
    pub lm_config: PathBuf,
    pub lm_weights: Vec<WeightFile>,
    pub tokenizer: PathBuf,
    pub checkpoint: WeightFile,
}

/// The hub cache folder, by huggingface_hub's rules: `HF_HUB_CACHE`, else the legacy
/// `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return p;
    }
    if let Some(p) = var("HF_HOME") {
        return p.join("hub");
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return p.join("huggingface").join("hub");
    }
    let home = var("HOME")
        .or_else(|| var("USERPROFILE"))
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// `HF_HUB_OFFLINE` set to a true value.
pub fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").map(|v| v.to_ascii_lowercase()),
        Ok(v) if v == "1" || v == "true" || v == "yes" || v == "on"
    )
}

pub fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Bytes of a repo's blobs in the cache (0 when absent).
pub fn repo_bytes(cache: &Path, repo: &str) -> u64 {
    std::fs::read_dir(repo_folder(cache, repo).join("blobs"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::metadata(e.path()).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// A file of a repo in the cache: the snapshot `refs/main` points at, else any snapshot
/// holding it (newest first).
pub fn cached_file(cache: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    let folder = repo_folder(cache, repo);
    if let Ok(rev) = std::fs::read_to_string(folder.join("refs").join("main")) {
        let p = folder.join("snapshots").join(rev.trim()).join(file);
        if p.is_file() {
            return Some(p);
        }
    }
    let mut snaps: Vec<_> = std::fs::read_dir(folder.join("snapshots"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(file))
        .filter(|p| p.is_file())
        .collect();
    snaps.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    snaps.pop()
}

fn missing(cache: &Path, repo: &str, file: &str) -> Error {
    let hint = if offline() {
        "HF_HUB_OFFLINE is set, so nothing is downloaded: download the model on a machine with network access (or unset HF_HUB_OFFLINE), or point HF_HOME / HF_HUB_CACHE at a cache that has it."
    } else {
        "Download the model first (`flamingo download MODEL`, or pick it in the app), or point HF_HOME / HF_HUB_CACHE at a cache that has it."
    };
    Error::MissingFile {
        repo: repo.to_string(),
        file: file.to_string(),
        cache: cache.to_path_buf(),
        hint: hint.replace("REPO", repo),
    }
}

/// The cached files that meet `need`: its first cached choice, an index with all its shards.
/// A missing file is an error naming it (all the choices, or the missing shard).
pub(crate) fn resolve_need(cache: &Path, need: &Need) -> Result<Vec<WeightFile>> {
    for c in &need.choices {
        if let Some(path) = cached_file(cache, need.repo, c) {
            if c.ends_with(".index.json") {
                return sharded(cache, need.repo, &path);
            }
            return Ok(vec![WeightFile {
                path,
                label: format!("{}/{c}", need.repo),
            }]);
        }
    }
    Err(missing(cache, need.repo, &need.choices.join(" or ")))
}

/// The one file that meets a need of a single file.
fn resolve_one(cache: &Path, need: &Need) -> Result<WeightFile> {
    let mut files = resolve_need(cache, need)?;
    Ok(files.remove(0))
}

/// Every file of a registered model, from the default cache; no network is used.
pub fn resolve_cached(spec: &ModelSpec) -> Result<ModelFiles> {
    resolve_in(&cache_dir(), spec)
}

/// Every file of a registered model from the cache folder `cache`.
pub fn resolve_in(cache: &Path, spec: &ModelSpec) -> Result<ModelFiles> {
    let f = spec.files();
    Ok(ModelFiles {
        clip_config: resolve_one(cache, &f.clip_config)?.path,
        clip_weights: resolve_one(cache, &f.clip_weights)?,
        lm_config: resolve_one(cache, &f.lm_config)?.path,
        lm_weights: resolve_need(cache, &f.lm_weights)?,
        tokenizer: resolve_one(cache, &f.tokenizer)?.path,
        checkpoint: resolve_one(cache, &f.checkpoint)?,
    })
}

/// The shard files a `*.index.json` names, sorted, each once.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index.to_path_buf(),
        reason: format!("not valid JSON ({e})"),
    })?;
    let mut files: Vec<String> = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files)
}

fn sharded(cache: &Path, repo: &str, index: &Path) -> Result<Vec<WeightFile>> {
    shard_names(index)?
        .iter()
        .map(|f| {
            Ok(WeightFile {
                path: cached_file(cache, repo, f).ok_or_else(|| missing(cache, repo, f))?,
                label: format!("{repo}/{f}"),
            })
        })
        .collect()
}
