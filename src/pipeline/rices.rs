//! RICES (retrieval-based in-context example selection): the examples for a query are the
//! library images most like it by CLIP image embedding, most similar last, as open_flamingo's
//! `rices.py` orders them. Embeddings are kept on disk by image content and CLIP weights, so a
//! library is embedded once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::Digest;

use super::{Captioner, RequestImage};
use crate::error::{Error, Result};
use crate::eval::LabelledFolder;
use crate::pipeline::request::ImageInput;

/// A labelled folder with each image's CLIP embedding.
pub struct Library {
    pub folder: LabelledFolder,
    /// One unit-length embedding per item of `folder`.
    pub embeddings: Vec<Vec<f32>>,
    /// Each item's image content digest (to leave a query out of its own examples).
    digests: Vec<String>,
    /// Embeddings computed now (the rest came from the disk cache).
    pub computed: usize,
}

fn digest(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    sha256: String,
    embedding: Vec<f32>,
}

/// The embeddings kept for one set of CLIP weights: `<cache>/rices/<fingerprint>.jsonl`, one
/// line per image. A damaged line is skipped (that image is embedded again).
struct EmbeddingCache {
    path: Option<PathBuf>,
    kept: HashMap<String, Vec<f32>>,
}

impl EmbeddingCache {
    fn open(dir: Option<&Path>, fingerprint: &str, dim: usize) -> Self {
        let path = dir.map(|d| d.join("rices").join(format!("{fingerprint}.jsonl")));
        let mut kept = HashMap::new();
        if let Some(text) = path.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
            for line in text.lines() {
                if let Ok(k) = serde_json::from_str::<Kept>(line) {
                    if k.embedding.len() == dim && k.embedding.iter().all(|x| x.is_finite()) {
                        kept.insert(k.sha256, k.embedding);
                    }
                }
            }
        }
        Self { path, kept }
    }

    fn keep(&mut self, new: &[(String, Vec<f32>)]) {
        let Some(path) = &self.path else { return };
        if new.is_empty() {
            return;
        }
        let write = || -> std::io::Result<()> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let mut out = String::new();
            for (sha256, e) in new {
                let line = serde_json::to_string(&Kept {
                    sha256: sha256.clone(),
                    embedding: e.clone(),
                })
                .map_err(std::io::Error::other)?;
                out.push_str(&line);
                out.push('\n');
            }
            f.write_all(out.as_bytes())
        };
        if let Err(e) = write() {
            tracing::warn!("could not keep RICES embeddings in {}: {e}", path.display());
        }
    }
}

impl Captioner {
    /// CLIP's embedding of an image (open_clip's `encode_image`, unit length).
    pub fn embed_image(&self, image: &ImageInput) -> Result<Vec<f32>> {
        let img = RequestImage::read(image)?;
        self.embed_read(&img)
    }

    fn embed_read(&self, img: &RequestImage) -> Result<Vec<f32>> {
        let e = self
            .model
            .embed_images(&self.pixels(img)?.unsqueeze(0)?)?
            .squeeze(0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        Ok(e)
    }

    /// Embeds every image of a labelled folder, reading and keeping embeddings in
    /// `cache_dir` (None: nothing kept). `on_progress(done, total)` after each image.
    pub fn library(
        &self,
        folder: LabelledFolder,
        cache_dir: Option<&Path>,
        cancel: &AtomicBool,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<Library> {
        let fingerprint = self.model.embedding_fingerprint()?;
        let dim = self.model.vision_config().embed_dim;
        let mut cache = EmbeddingCache::open(cache_dir, &fingerprint, dim);
        let total = folder.items.len();
        let mut embeddings = Vec::with_capacity(total);
        let mut digests = Vec::with_capacity(total);
        let mut new = Vec::new();
        for (i, item) in folder.items.iter().enumerate() {
            if cancel.load(Ordering::Relaxed) {
                cache.keep(&new);
                return Err(Error::Cancelled);
            }
            let img = RequestImage::read(&ImageInput::Path(item.image.clone()))?;
            let d = digest(&img.bytes);
            let e = match cache.kept.get(&d) {
                Some(e) => e.clone(),
                None => {
                    let e = self.embed_read(&img)?;
                    cache.kept.insert(d.clone(), e.clone());
                    new.push((d.clone(), e.clone()));
                    e
                }
            };
            embeddings.push(e);
            digests.push(d);
            on_progress(i + 1, total);
        }
        cache.keep(&new);
        Ok(Library {
            folder,
            embeddings,
            digests,
            computed: new.len(),
        })
    }
}

impl Captioner {
    /// The `k` examples of the labelled folder `folder` most like `query`, most similar last,
    /// each as an image path and its text (a caption's first reference, a question's most
    /// given answer); the folder's labels must be of `task`. Embeddings are kept in
    /// `cache_dir`.
    pub fn rices_examples(
        &self,
        folder: &Path,
        query: &ImageInput,
        k: usize,
        task: crate::text::prompt::Task,
        cache_dir: Option<&Path>,
        cancel: &AtomicBool,
    ) -> Result<Vec<(PathBuf, crate::text::prompt::ShotText)>> {
        let data = LabelledFolder::load(folder)?;
        if data.task != task {
            let name = |t| match t {
                crate::text::prompt::Task::Caption => "caption",
                crate::text::prompt::Task::Vqa => "VQA",
            };
            return Err(Error::Invalid(format!(
                "{} holds {} labels; the request is {}",
                folder.display(),
                name(data.task),
                name(task)
            )));
        }
        let lib = self.library(data, cache_dir, cancel, |_, _| {})?;
        let e = self.embed_image(query)?;
        let bytes = query.bytes()?;
        let picked = lib.most_similar(&e, k, Some(&bytes));
        if picked.len() < k {
            return Err(Error::Invalid(format!(
                "{k} examples asked for, but {} has only {} other images",
                folder.display(),
                picked.len()
            )));
        }
        Ok(picked
            .into_iter()
            .map(|i| {
                let item = &lib.folder.items[i];
                (
                    item.image.clone(),
                    super::evaluate::example_text(task, item),
                )
            })
            .collect())
    }
}

impl Library {
    /// The `k` items most similar to `query` (an embedding), most similar last; an item with
    /// the same image content as `query_image` is left out (a query is not its own example).
    pub fn most_similar(&self, query: &[f32], k: usize, query_image: Option<&[u8]>) -> Vec<usize> {
        let own = query_image.map(digest);
        let mut scored: Vec<(usize, f32)> = self
            .embeddings
            .iter()
            .enumerate()
            .filter(|(i, _)| own.as_deref() != Some(self.digests[*i].as_str()))
            .map(|(i, e)| (i, e.iter().zip(query).map(|(a, b)| a * b).sum::<f32>()))
            .collect();
        // Most similar first (ties by position), the first k, then reversed.
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored.truncate(k);
        scored.into_iter().rev().map(|(i, _)| i).collect()
    }
}
