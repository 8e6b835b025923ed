//! A loaded model with its tokenizer, and one captioning request from images and captions to
//! streamed text. The CLI and the engine thread both use this.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::generate::beam::{beam_search, BeamConfig};
use crate::generate::score::{check_fits, score_after, score_candidates, CandidateScore};
use crate::generate::{
    check_budget, decode_loop, generate, generate_batch, BatchItem, GenerateOptions, Generated,
    GenerationConfig,
};
use crate::hub::{self, registry};
use crate::model::linear::WeightFormat;
use crate::model::{preprocess, Flamingo, SessionState};
use crate::text::prompt::{answer, task_prompt, ShotText, Task, Templates};
use crate::text::TextTokenizer;

pub struct Captioner {
    pub model: Flamingo,
    pub tokenizer: TextTokenizer,
    pub model_id: String,
    pub load_s: f64,
    /// Reuse image latents and the prompt prefix between requests (on by default).
    pub use_caches: bool,
    caches: Mutex<PromptCaches>,
}

/// Image latents by image content, and the state after the last prompt prefix (everything
/// before the query's `<image>`), so that a re-query with the same examples costs one image
/// encode and the final prompt.
#[derive(Default)]
struct PromptCaches {
    vision: HashMap<u64, Tensor>,
    order: VecDeque<u64>,
    prefix: Option<(Vec<u32>, Vec<u64>, SessionState)>,
    stats: CacheStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub vision_hits: u64,
    pub vision_misses: u64,
    pub prefix_hits: u64,
    pub prefix_misses: u64,
}

/// Latents of this many images are kept (each is num_latents × width floats: 256 KB for the
/// released models).
const VISION_CACHE_ENTRIES: usize = 64;

/// The images of a request in prompt order: the examples', then the query.
fn request_images(req: &CaptionRequest) -> Vec<&ImageInput> {
    let mut images: Vec<&ImageInput> = req.shots.iter().map(|s| &s.image).collect();
    images.push(&req.query);
    images
}

fn content_key(img: &ImageInput) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match img {
        ImageInput::Path(p) => std::fs::read(p)
            .map_err(|e| Error::Image {
                name: p.display().to_string(),
                reason: e.to_string(),
            })?
            .hash(&mut h),
        ImageInput::Bytes { bytes, .. } => bytes.hash(&mut h),
    }
    Ok(h.finish())
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

/// What [`Captioner::prepare`] did.
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

    /// Loads a model from the cache (no network) and converts its linear layers to `format`.
    pub fn load_with(
        cache: &std::path::Path,
        model_id: &str,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let spec = Self::spec(model_id)?;
        let files = hub::resolve_in(cache, spec)?;
        Self::from_files(spec, files, device, format)
    }

    /// Like [`Captioner::load_with`], but first downloads what the cache lacks (unless
    /// `HF_HUB_OFFLINE` is set), reporting progress to `observer`; `cancel` stops a download.
    pub fn load_or_download(
        opts: &hub::download::DownloadOptions,
        model_id: &str,
        device: &Device,
        format: WeightFormat,
        cancel: &std::sync::atomic::AtomicBool,
        observer: &mut dyn FnMut(hub::download::DownloadEvent),
    ) -> Result<Self> {
        let spec = Self::spec(model_id)?;
        let files = hub::download::ensure_model(spec, opts, cancel, observer)?;
        Self::from_files(spec, files, device, format)
    }

    /// A registered model this version can run.
    pub fn spec(model_id: &str) -> Result<&'static registry::ModelSpec> {
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
        Ok(spec)
    }

    /// Builds the captioner from resolved files. Pickled weights go through the app's
    /// converted-weights cache unless `files.convert` is already set.
    pub fn from_files(
        spec: &registry::ModelSpec,
        mut files: crate::model::loader::ModelFiles,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let t0 = Instant::now();
        if files.convert.is_none() && std::env::var_os("FLAMINGO_NO_CONVERTED_CACHE").is_none() {
            files.convert = Some(crate::model::converted::ConvertCache::default_location());
        }
        let tokenizer = TextTokenizer::from_file(&files.tokenizer)?;
        let mut model = Flamingo::load_as(&files, tokenizer.media_id, device, format)?;
        model.prepare_weights()?;
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
            use_caches: true,
            caches: Mutex::new(PromptCaches::default()),
        })
    }

    /// Runs one tiny image and prompt through the model so that one-time work (thread
    /// start-up, first allocations, GPU kernel loading) is done before the first real
    /// request. Changes no cache.
    pub fn warm_up(&self) -> Result<()> {
        let s = self.model.image_size();
        let pixels = Tensor::zeros((1, 3, s, s), candle_core::DType::F32, self.model.device())?;
        let latents = self.model.encode_images(&pixels)?;
        let mut session = self.model.session(&latents.unsqueeze(0)?)?;
        let media = self.tokenizer.media_id;
        session.forward(&[vec![media, self.tokenizer.eoc_id]])?;
        session.forward(&[vec![self.tokenizer.eoc_id]])?;
        Ok(())
    }

    /// How often the caches were used.
    pub fn cache_stats(&self) -> CacheStats {
        self.caches.lock().map(|c| c.stats).unwrap_or_default()
    }

    fn lock_caches(&self) -> Result<std::sync::MutexGuard<'_, PromptCaches>> {
        self.caches
            .lock()
            .map_err(|_| Error::Prompt("the cache lock was poisoned".into()))
    }

    /// The latents of an image: from the cache, or encoded (only images not seen before are
    /// decoded and resized) and kept, the oldest going when the cache is full.
    fn latents_of(
        &self,
        caches: &mut PromptCaches,
        key: u64,
        image: &ImageInput,
    ) -> Result<Tensor> {
        if let Some(t) = caches.vision.get(&key) {
            caches.stats.vision_hits += 1;
            return Ok(t.clone());
        }
        caches.stats.vision_misses += 1;
        let t = self.model.encode_images(&self.pixels(&[image])?)?;
        caches.vision.insert(key, t.clone());
        caches.order.push_back(key);
        if caches.order.len() > VISION_CACHE_ENTRIES {
            if let Some(old) = caches.order.pop_front() {
                caches.vision.remove(&old);
            }
        }
        Ok(t)
    }

    /// The prompt before the query's `<image>` and the rest.
    fn split_at_query<'a>(&self, prompt_ids: &'a [u32]) -> (&'a [u32], &'a [u32]) {
        let media_id = self.tokenizer.media_id;
        let split = prompt_ids.iter().rposition(|&t| t == media_id).unwrap_or(0);
        prompt_ids.split_at(split)
    }

    /// The state after the prompt prefix with the examples' images: cached when the same
    /// prefix tokens and images were run last, else run now and kept.
    /// `stop` is asked before each layer of that run; when it says so, nothing is kept and
    /// the result is [`Error::Cancelled`].
    fn prefix_state(
        &self,
        caches: &mut PromptCaches,
        prefix: &[u32],
        keys: &[u64],
        latents: &[Tensor],
        stop: &dyn Fn() -> bool,
    ) -> Result<SessionState> {
        if let Some((ids, ks, st)) = &caches.prefix {
            if ids == prefix && ks[..] == keys[..] {
                caches.stats.prefix_hits += 1;
                return Ok(st.clone());
            }
        }
        caches.stats.prefix_misses += 1;
        let media = Tensor::cat(latents, 0)?.unsqueeze(0)?;
        let mut s = self.model.session(&media)?;
        s.forward_or_stop(&[prefix.to_vec()], stop)?;
        let st = s.state();
        caches.prefix = Some((prefix.to_vec(), keys.to_vec(), st.clone()));
        Ok(st)
    }

    /// Work a request will need, done ahead while the user is still editing it: the
    /// examples' images (and the query's, with `with_query`) are encoded into the cache and
    /// the prompt up to the query's image is run, so that pressing Generate costs the query
    /// image (if not done here), its final prompt and the decoding. Before each image, before
    /// the prompt and before each layer of it, `stop()` may end it early (a newer request
    /// waits): the images done by then stay, a prompt stopped half-way is not kept. Nothing
    /// is done without caches; a prompt too long for the model is left for the request
    /// itself to report.
    pub fn prepare(
        &self,
        req: &CaptionRequest,
        with_query: bool,
        stop: &dyn Fn() -> bool,
    ) -> Result<Prepared> {
        let mut done = Prepared::default();
        if !self.use_caches {
            return Ok(done);
        }
        let t0 = Instant::now();
        let mut images = request_images(req);
        if !with_query {
            images.pop();
        }
        if images.len() > VISION_CACHE_ENTRIES {
            // They would push each other out of the cache before the request comes.
            return Ok(done);
        }
        let mut caches = self.lock_caches()?;
        let mut latents = Vec::with_capacity(images.len());
        let mut keys = Vec::with_capacity(images.len());
        let finish = |mut done: Prepared| {
            done.seconds = t0.elapsed().as_secs_f64();
            Ok(done)
        };
        for image in images {
            if stop() {
                return finish(done);
            }
            let key = content_key(image)?;
            let misses = caches.stats.vision_misses;
            latents.push(self.latents_of(&mut caches, key, image)?);
            keys.push(key);
            done.images_encoded += (caches.stats.vision_misses - misses) as usize;
        }
        let n_shots = req.shots.len();
        let prompt_ids = match self.checked_prompt(req) {
            Ok((_, ids)) if ids.len() < self.model.max_seq_len() => ids,
            _ => return finish(done),
        };
        let (prefix, _) = self.split_at_query(&prompt_ids);
        if n_shots >= 1 && !prefix.is_empty() && !stop() {
            let misses = caches.stats.prefix_misses;
            let ran = self.prefix_state(
                &mut caches,
                prefix,
                &keys[..n_shots],
                &latents[..n_shots],
                stop,
            );
            match ran {
                Ok(_) if caches.stats.prefix_misses > misses => done.prefix_tokens = prefix.len(),
                // Stopped: nothing kept; the request coming will run it.
                Ok(_) | Err(Error::Cancelled) => {}
                Err(e) => return Err(e),
            }
        }
        finish(done)
    }

    /// Runs the request's whole prompt through the caches: latents of known images are
    /// reused, and so is the state after an unchanged prompt prefix; only new images are
    /// encoded and only the rest of the prompt is run. Returns the session after the prompt
    /// and the prompt's logits; encode and prefill times go into `out`.
    fn prompt_cached(
        &self,
        req: &CaptionRequest,
        prompt_ids: &[u32],
        cancel: &AtomicBool,
        out: &mut Generated,
    ) -> Result<(crate::model::Session<'_>, Tensor)> {
        let images = request_images(req);
        let keys = images
            .iter()
            .map(|i| content_key(i))
            .collect::<Result<Vec<_>>>()?;
        let mut caches = self.lock_caches()?;
        let t0 = Instant::now();
        let mut latents = Vec::with_capacity(keys.len());
        for (k, image) in keys.iter().zip(&images) {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            latents.push(self.latents_of(&mut caches, *k, image)?);
        }
        out.timings.encode_s = t0.elapsed().as_secs_f64();
        let (prefix, suffix) = self.split_at_query(prompt_ids);
        let n = latents.len();
        let t1 = Instant::now();
        let stop = || cancel.load(Ordering::Relaxed);
        let ran = if prefix.is_empty() || n < 2 {
            let media = Tensor::cat(&latents, 0)?.unsqueeze(0)?;
            let mut s = self.model.session(&media)?;
            let l = s.forward_or_stop(&[prompt_ids.to_vec()], &stop)?;
            (s, l)
        } else {
            let state = self.prefix_state(
                &mut caches,
                prefix,
                &keys[..n - 1],
                &latents[..n - 1],
                &stop,
            )?;
            let mut s = self.model.resume(state);
            s.add_images(&latents[n - 1].unsqueeze(0)?)?;
            let l = s.forward(&[suffix.to_vec()])?;
            (s, l)
        };
        out.timings.prefill_s = t1.elapsed().as_secs_f64();
        Ok(ran)
    }

    /// Greedy or sampled decoding through the caches: latents of known images are reused, and
    /// so is the state after an unchanged prompt prefix; only the query image is encoded and
    /// only the final prompt is run. Gives the same tokens as without caches.
    fn generate_cached(
        &self,
        req: &CaptionRequest,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        cancel: &AtomicBool,
        mut on_token: impl FnMut(u32),
    ) -> Result<Generated> {
        check_budget(&self.model, prompt_ids.len(), &opts.config)?;
        let mut out = Generated::default();
        let (mut session, logits) = self.prompt_cached(req, prompt_ids, cancel, &mut out)?;
        decode_loop(
            &mut session,
            &logits,
            prompt_ids,
            opts,
            cancel,
            &mut on_token,
            &mut out,
        )?;
        Ok(out)
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
        let prompt_ids = self.checked_prompt(req)?.1;
        let ids = candidates
            .iter()
            .map(|c| self.tokenizer.encode_plain(c))
            .collect::<Result<Vec<_>>>()?;
        let scores = if self.use_caches {
            // Through the caches, as a caption would: known images and an unchanged
            // examples' prompt are not run again.
            check_fits(&self.model, prompt_ids.len(), &ids)?;
            let (session, logits) =
                self.prompt_cached(req, &prompt_ids, cancel, &mut Generated::default())?;
            score_after(&session, &logits, &ids, cancel)?
        } else {
            let pixels = self.pixels(&request_images(req))?;
            score_candidates(&self.model, Some(&pixels), &prompt_ids, &ids, cancel)?
        };
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

    /// The prompt text and its ids, checked to hold one `<image>` per image.
    fn checked_prompt(&self, req: &CaptionRequest) -> Result<(String, Vec<u32>)> {
        let prompt = req.prompt()?;
        let prompt_ids = self.tokenizer.encode(&prompt)?;
        let images = request_images(req);
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
        Ok((prompt, prompt_ids))
    }

    pub fn caption(
        &self,
        req: &CaptionRequest,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<CaptionResult> {
        let (prompt, prompt_ids) = self.checked_prompt(req)?;
        let opts = GenerateOptions {
            config: req.generation.clone(),
            eos_id: self.tokenizer.eoc_id,
            suppress: vec![self.tokenizer.media_id],
            keep_logits: req.keep_logits,
        };
        let (generated, beams) = if req.generation.num_beams > 1 {
            self.beam(
                req,
                &prompt_ids,
                &self.pixels(&request_images(req))?,
                cancel,
            )?
        } else {
            let mut stream = self.tokenizer.stream();
            let mut stream_err = None;
            let on_token = |id| match stream.push(id) {
                Ok(Some(chunk)) => on_text(&chunk),
                Ok(None) => {}
                Err(e) => stream_err = Some(e),
            };
            let generated = if self.use_caches {
                self.generate_cached(req, &prompt_ids, &opts, cancel, on_token)?
            } else {
                generate(
                    &self.model,
                    Some(&self.pixels(&request_images(req))?),
                    &prompt_ids,
                    &opts,
                    cancel,
                    on_token,
                )?
            };
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
