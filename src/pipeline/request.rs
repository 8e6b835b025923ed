//! What a request holds and what it gives back: plain data, shared with the engine and the app.

use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::generate::{Generated, GenerationConfig};
use crate::text::prompt::{task_prompt, ShotText, Task, Templates};
use crate::types::MediaAttention;

/// An image given as a file or as bytes already in memory (dropped, pasted, from a prompt set).
#[derive(Clone, Debug)]
pub enum ImageInput {
    Path(PathBuf),
    Bytes { name: String, bytes: Arc<[u8]> },
}

impl ImageInput {
    pub fn name(&self) -> String {
        match self {
            ImageInput::Path(p) => p.display().to_string(),
            ImageInput::Bytes { name, .. } => name.clone(),
        }
    }

    /// The image file's bytes (read now for a path).
    pub fn bytes(&self) -> Result<Arc<[u8]>> {
        match self {
            ImageInput::Path(p) => std::fs::read(p).map(Arc::from).map_err(|e| Error::Image {
                name: p.display().to_string(),
                reason: e.to_string(),
            }),
            ImageInput::Bytes { bytes, .. } => Ok(bytes.clone()),
        }
    }
}

/// What [`super::Captioner::prepare`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Prepared {
    /// Images encoded now (not found in the cache).
    pub images_encoded: usize,
    /// Tokens of the prompt prefix run now (0 when it was cached or not run).
    pub prefix_tokens: usize,
    pub seconds: f64,
}

/// One example: an image and its text.
#[derive(Clone, Debug)]
pub struct Shot {
    pub image: ImageInput,
    pub text: ShotText,
}

#[derive(Clone, Debug)]
pub struct CaptionRequest {
    pub task: Task,
    pub shots: Vec<Shot>,
    pub query: ImageInput,
    /// The query's question (VQA).
    pub question: String,
    pub templates: Templates,
    pub generation: GenerationConfig,
    pub keep_logits: bool,
    /// Which image text attends to; None: the model's own (v1 for the v1 model).
    pub media_attention: Option<MediaAttention>,
    /// Keep each generated token's this many most likely alternatives.
    pub top_logprobs: usize,
    /// Tokens the caption starts with instead of choosing them (a branch from a forced
    /// alternative); generation continues after them.
    pub forced: Vec<u32>,
}

impl CaptionRequest {
    /// The exact prompt text this request sends.
    pub fn prompt(&self) -> Result<String> {
        let shots: Vec<ShotText> = self.shots.iter().map(|s| s.text.clone()).collect();
        task_prompt(self.task, &self.templates, &shots, &self.question)
    }

    /// The request's images in prompt order: the examples', then the query.
    pub fn images(&self) -> Vec<&ImageInput> {
        let mut images: Vec<&ImageInput> = self.shots.iter().map(|s| &s.image).collect();
        images.push(&self.query);
        images
    }
}

#[derive(Clone, Debug)]
pub struct CaptionResult {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    /// Decoded generation, special tokens skipped.
    pub raw_text: String,
    /// After the task's post-processing.
    pub text: String,
    pub generated: Generated,
    /// With beam search: every returned hypothesis, best first (the first is `generated`).
    pub beams: Vec<BeamHypothesis>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BeamHypothesis {
    pub token_ids: Vec<u32>,
    pub raw_text: String,
    pub text: String,
    pub sequence_score: f64,
}
