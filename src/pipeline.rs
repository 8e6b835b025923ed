//! A loaded model with its tokenizer, and one captioning request from images and captions to
//! streamed text. The CLI and the engine thread both use this.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::generate::beam::{beam_search, BeamConfig};
use crate::generate::score::{score_candidates, CandidateScore};
use crate::generate::{
    generate, generate_batch, BatchItem, GenerateOptions, Generated, GenerationConfig,
};
use crate::hub::{self, registry};
use crate::model::linear::WeightFormat;
use crate::model::{preprocess, Flamingo};
use crate::text::prompt::{answer, task_prompt, ShotText, Task, Templates};
use crate::text::TextTokenizer;

pub struct Captioner {
    pub model: Flamingo,
    pub tokenizer: TextTokenizer,
    pub model_id: String,
    pub load_s: f64,
}

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

impl CaptionRequest {
    /// The exact prompt text this request sends.
    pub fn prompt(&self) -> Result<String> {
        let shots: Vec<ShotText> = self.shots.iter().map(|s| s.text.clone()).collect();
        task_prompt(self.task, &self.templates, &shots, &self.question)
    }
}

impl Captioner {
    /// Loads a registered model from the Hugging Face cache.
    pub fn load(model_id: &str, device: &Device) -> Result<Self> {
        Self::load_from(&hub::cache_dir(), model_id, device)
    }

    /// Loads a registered model from the cache folder `cache`.
    pub fn load_from(cache: &std::path::Path, model_id: &str, device: &Device) -> Result<Self> {
        Self::load_with(cache, model_id, device, WeightFormat::F32)
    }

    /// Loads a model and converts its linear layers to `format`.
    pub fn load_with(
        cache: &std::path::Path,
        model_id: &str,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let spec = registry::find(model_id).ok_or_else(|| {
            Error::Prompt(format!(
                "unknown model `{model_id}`; known: {}",
                registry::MODELS
                    .iter()
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !spec.family.supported() {
            return Err(Error::Prompt(format!(
                "{} uses a {:?} language model, which this version cannot run yet",
                spec.id, spec.family
            )));
        }
        let files = hub::resolve_in(cache, spec)?;
        let tokenizer = TextTokenizer::from_file(&files.tokenizer)?;
        let mut model = Flamingo::load(&files, tokenizer.media_id, device)?;
        model.convert_weights(format)?;
        if tokenizer.vocab_size() > model.vocab_size() {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {} tokens but the checkpoint's embedding only {} rows",
                tokenizer.vocab_size(),
                model.vocab_size()
            )));
        }
        Ok(Self {
            model,
            tokenizer,
            model_id: spec.id.to_string(),
            load_s: t0.elapsed().as_secs_f64(),
        })
    }

    /// Preprocessed pixels [N, 3, S, S] of images, in order.
    pub fn pixels(&self, images: &[&ImageInput]) -> Result<Tensor> {
        let c = self.model.vision_config();
        let size = c.image_size as u32;
        let dev = self.model.device();
        let ts = images
            .iter()
            .map(|im| match im {
                ImageInput::Path(p) => preprocess::preprocess_file(p, size, c.mean, c.std, dev),
                ImageInput::Bytes { name, bytes } => {
                    preprocess::preprocess(bytes, name, size, c.mean, c.std, dev)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&ts, 0)?)
    }

    /// Ranks candidate texts by log p(candidate | prompt), best first.
    pub fn score(
        &self,
        req: &CaptionRequest,
        candidates: &[String],
        cancel: &AtomicBool,
    ) -> Result<Vec<(String, CandidateScore)>> {
        let (prompt_ids, pixels) = self.prompt_and_pixels(req)?.1;
        let ids = candidates
            .iter()
            .map(|c| self.tokenizer.encode_plain(c))
            .collect::<Result<Vec<_>>>()?;
        let scores = score_candidates(&self.model, Some(&pixels), &prompt_ids, &ids, cancel)?;
        let mut ranked: Vec<(String, CandidateScore)> =
            candidates.iter().cloned().zip(scores).collect();
        ranked.sort_by(|a, b| b.1.logprob.total_cmp(&a.1.logprob));
        Ok(ranked)
    }

    /// The same examples and prompt for many query images, decoded `batch_size` at a time.
    /// Returns one result per query, in order; an unreadable image fails only its own row.
    pub fn caption_batch(
        &self,
        req: &CaptionRequest,
        queries: &[ImageInput],
        batch_size: usize,
        cancel: &AtomicBool,
    ) -> Result<Vec<Result<CaptionResult>>> {
        if req.generation.num_beams > 1 {
            return Err(Error::Prompt(
                "--batch does not do beam search yet; use one query at a time".into(),
            ));
        }
        let prompt = req.prompt()?;
        let prompt_ids = self.tokenizer.encode(&prompt)?;
        let markers = prompt_ids
            .iter()
            .filter(|&&t| t == self.tokenizer.media_id)
            .count();
        if markers != req.shots.len() + 1 {
            return Err(Error::Prompt(format!(
                "the prompt has {markers} <image> markers for {} images",
                req.shots.len() + 1
            )));
        }
        let shot_images: Vec<&ImageInput> = req.shots.iter().map(|s| &s.image).collect();
        let shots = if shot_images.is_empty() {
            None
        } else {
            Some(self.pixels(&shot_images)?)
        };
        let opts = GenerateOptions {
            config: req.generation.clone(),
            eos_id: self.tokenizer.eoc_id,
            suppress: vec![self.tokenizer.media_id],
            keep_logits: req.keep_logits,
        };
        let mut results: Vec<Result<CaptionResult>> = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(batch_size.max(1)) {
            // Rows whose image cannot be read fail alone.
            let mut rows: Vec<(usize, Tensor)> = Vec::new();
            let mut chunk_results: Vec<Option<Result<CaptionResult>>> =
                (0..chunk.len()).map(|_| None).collect();
            for (i, q) in chunk.iter().enumerate() {
                let px = self.pixels(&[q]).and_then(|q| match &shots {
                    Some(s) => Ok(Tensor::cat(&[s, &q], 0)?),
                    None => Ok(q),
                });
                match px {
                    Ok(px) => rows.push((i, px)),
                    Err(e) => chunk_results[i] = Some(Err(e)),
                }
            }
            let items: Vec<BatchItem> = rows
                .iter()
                .map(|(_, px)| BatchItem {
                    pixels: Some(px),
                    prompt_ids: &prompt_ids,
                })
                .collect();
            let generated =
                generate_batch(&self.model, &items, &opts, self.tokenizer.pad_id, cancel)?;
            for ((i, _), g) in rows.iter().zip(generated) {
                let r = self
                    .tokenizer
                    .decode(&g.tokens)
                    .map(|raw_text| CaptionResult {
                        prompt: prompt.clone(),
                        prompt_ids: prompt_ids.clone(),
                        text: answer(req.task, &raw_text),
                        raw_text,
                        generated: g,
                        beams: Vec::new(),
                    });
                chunk_results[*i] = Some(r);
            }
            results.extend(
                chunk_results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(Error::Prompt("no result".into())))),
            );
        }
        Ok(results)
    }

    fn beam(
        &self,
        req: &CaptionRequest,
        prompt_ids: &[u32],
        pixels: &Tensor,
        cancel: &AtomicBool,
    ) -> Result<(Generated, Vec<BeamHypothesis>)> {
        let g = &req.generation;
        g.validate().map_err(Error::Prompt)?;
        let cfg = BeamConfig {
            num_beams: g.num_beams,
            length_penalty: g.length_penalty,
            early_stopping: g.early_stopping,
            num_return_sequences: g.num_return_sequences,
            max_new_tokens: g.max_new_tokens,
            min_new_tokens: g.min_new_tokens,
        };
        let t0 = Instant::now();
        let results = beam_search(
            &self.model,
            Some(pixels),
            prompt_ids,
            &cfg,
            self.tokenizer.eoc_id,
            &[self.tokenizer.media_id],
            cancel,
        )?;
        let beams = results
            .iter()
            .map(|r| {
                let raw_text = self.tokenizer.decode(&r.tokens)?;
                Ok(BeamHypothesis {
                    token_ids: r.tokens.clone(),
                    text: answer(req.task, &raw_text),
                    raw_text,
                    sequence_score: r.sequence_score,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let best = results
            .first()
            .map(|r| r.tokens.clone())
            .unwrap_or_default();
        let generated = Generated {
            stopped_by_eos: best.last() == Some(&self.tokenizer.eoc_id),
            timings: crate::generate::Timings {
                decode_s: t0.elapsed().as_secs_f64(),
                decode_tokens: best.len(),
                ..Default::default()
            },
            tokens: best,
            step_logits: Vec::new(),
        };
        Ok((generated, beams))
    }

    /// The prompt text, its ids and the pixels of its images (examples, then the query).
    fn prompt_and_pixels(&self, req: &CaptionRequest) -> Result<(String, (Vec<u32>, Tensor))> {
        let prompt = req.prompt()?;
        let prompt_ids = self.tokenizer.encode(&prompt)?;
        let mut images: Vec<&ImageInput> = req.shots.iter().map(|s| &s.image).collect();
        images.push(&req.query);
        let markers = prompt_ids
            .iter()
            .filter(|&&t| t == self.tokenizer.media_id)
            .count();
        if markers != images.len() {
            return Err(Error::Prompt(format!(
                "the prompt has {markers} <image> markers for {} images; each shot template and the final (or zero-shot) template must hold one <image>",
                images.len()
            )));
        }
        let pixels = self.pixels(&images)?;
        Ok((prompt, (prompt_ids, pixels)))
    }

    pub fn caption(
        &self,
        req: &CaptionRequest,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<CaptionResult> {
        let (prompt, (prompt_ids, pixels)) = self.prompt_and_pixels(req)?;
        let opts = GenerateOptions {
            config: req.generation.clone(),
            eos_id: self.tokenizer.eoc_id,
            suppress: vec![self.tokenizer.media_id],
            keep_logits: req.keep_logits,
        };
        let (generated, beams) = if req.generation.num_beams > 1 {
            self.beam(req, &prompt_ids, &pixels, cancel)?
        } else {
            let mut stream = self.tokenizer.stream();
            let mut stream_err = None;
            let generated = generate(
                &self.model,
                Some(&pixels),
                &prompt_ids,
                &opts,
                cancel,
                |id| match stream.push(id) {
                    Ok(Some(chunk)) => on_text(&chunk),
                    Ok(None) => {}
                    Err(e) => stream_err = Some(e),
                },
            )?;
            if let Some(e) = stream_err {
                return Err(e);
            }
            (generated, Vec::new())
        };
        if !beams.is_empty() {
            // Beam search knows its best hypothesis only at the end.
            on_text(&beams[0].raw_text);
        }
        let raw_text = self.tokenizer.decode(&generated.tokens)?;
        Ok(CaptionResult {
            prompt,
            prompt_ids,
            text: answer(req.task, &raw_text),
            raw_text,
            generated,
            beams,
        })
    }
}
