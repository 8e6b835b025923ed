//! A loaded model with its tokenizer, answering requests: the prompt is built and checked,
//! each image becomes latents in one place ([`Captioner::encode`], reached through the latent
//! cache), the prompt runs through the prefix cache into a session ([`Captioner::prompt_state`]),
//! and every strategy (greedy, sampling, beam search, scoring, batches) starts from that
//! state. The CLI and the engine thread both use this.

pub mod attention;
mod caches;
pub mod evaluate;
pub mod icl;
pub mod request;
pub mod rices;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::generate::beam::{beam_search, BeamConfig};
use crate::generate::score::{check_fits, score_after, CandidateScore};
use crate::generate::{check_budget, decode, decode_batch, GenerateOptions, Generated, Timings};
use crate::hub::{self, registry, ModelFiles};
use crate::model::xattn::split_before_last_image;
use crate::model::{Flamingo, Session};
use crate::store::converted::ConvertCache;
use crate::text::prompt::answer;
use crate::text::TextTokenizer;
use crate::types::{MediaAttention, WeightFormat};
pub use caches::CacheStats;
use caches::PromptCaches;
pub use request::{BeamHypothesis, CaptionRequest, CaptionResult, ImageInput, Prepared, Shot};

pub struct Captioner {
    pub model: Flamingo,
    pub tokenizer: TextTokenizer,
    pub model_id: String,
    pub load_s: f64,
    /// Reuse image latents and the prompt prefix between requests (on by default).
    pub use_caches: bool,
    /// The model's media attention (v1's for the v1 model), unless a request says otherwise.
    pub default_media_attention: MediaAttention,
    caches: Mutex<PromptCaches>,
}

/// An image of a request, read once: its name, its bytes and a key of its content.
pub(crate) struct RequestImage {
    pub name: String,
    pub bytes: Arc<[u8]>,
    pub key: u64,
}

impl RequestImage {
    fn read(input: &ImageInput) -> Result<Self> {
        use std::hash::{Hash, Hasher};
        let bytes = input.bytes()?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        Ok(Self {
            name: input.name(),
            bytes,
            key: h.finish(),
        })
    }
}

fn read_images(inputs: &[&ImageInput]) -> Result<Vec<RequestImage>> {
    inputs.iter().map(|i| RequestImage::read(i)).collect()
}

/// The memory a registered model needs in `format` (peak of a caption, estimated from its
/// shape), bytes.
pub fn memory_needed(spec: &registry::ModelSpec, format: WeightFormat) -> u64 {
    crate::store::released::Shape::released(spec.family).peak_bytes(format)
}

/// The formats a model's default is chosen from, in order of preference: q8_0 (fast, close to
/// f32), then the 4-bit ones. f16 and f32 are there to choose, never picked for you.
pub const DEFAULT_FORMATS: [WeightFormat; 3] =
    [WeightFormat::Q8_0, WeightFormat::Q4KM, WeightFormat::Q4K];

/// The best default format of a model that fits in `memory` bytes (None: none does).
pub fn default_format(spec: &registry::ModelSpec, memory: u64) -> Option<WeightFormat> {
    DEFAULT_FORMATS
        .into_iter()
        .find(|f| memory_needed(spec, *f) < memory)
}

/// The state after a batch of prompts, each row with its own images' latents [n_i, L, D] and
/// ids: prompts left-padded with `pad_id` (a key mask keeps the padding out), rows with fewer
/// images padded with latents no token attends to. Returns the session and the logits
/// [B, T, V].
pub fn batched_prompt<'m>(
    model: &'m Flamingo,
    rows: &[(Tensor, &[u32])],
    pad_id: u32,
    mode: MediaAttention,
) -> Result<(Session<'m>, Tensor)> {
    let b = rows.len();
    if b == 0 || rows.iter().any(|(_, ids)| ids.is_empty()) {
        return Err(Error::Prompt("a batch needs non-empty prompts".into()));
    }
    let longest = rows.iter().map(|(_, ids)| ids.len()).max().unwrap_or(0);
    let t_max = rows
        .iter()
        .map(|(l, _)| l.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    let media = rows
        .iter()
        .map(|(l, _)| {
            let (t, n, d) = l.dims3()?;
            let l = if t == t_max {
                l.clone()
            } else {
                let z = Tensor::zeros((t_max - t, n, d), l.dtype(), l.device())?;
                Tensor::cat(&[l, &z], 0)?
            };
            Ok(l.unsqueeze(0)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut session = model.session_in(&Tensor::cat(&media, 0)?, mode)?;
    let mut ids = Vec::with_capacity(b);
    let mut pad = Vec::with_capacity(b);
    for (_, prompt) in rows {
        let p = longest - prompt.len();
        let mut row = vec![pad_id; p];
        row.extend_from_slice(prompt);
        ids.push(row);
        let mut m = vec![true; p];
        m.extend(std::iter::repeat_n(false, prompt.len()));
        pad.push(m);
    }
    let logits = session.forward_padded(&ids, Some(&pad))?;
    Ok((session, logits))
}

impl Captioner {
    /// Loads a registered model from the Hugging Face cache.
    pub fn load(model_id: &str, device: &Device) -> Result<Self> {
        Self::load_from(&hub::cache_dir(), model_id, device)
    }

    /// Loads a registered model from the cache folder `cache`.
    pub fn load_from(cache: &Path, model_id: &str, device: &Device) -> Result<Self> {
        Self::load_with(cache, model_id, device, WeightFormat::F32)
    }

    /// Loads a model from the cache (no network) and converts its linear layers to `format`.
    pub fn load_with(
        cache: &Path,
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
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(hub::download::DownloadEvent),
    ) -> Result<Self> {
        let spec = Self::spec(model_id)?;
        let files = hub::download::ensure_model(spec, opts, cancel, observer)?;
        Self::from_files(spec, files, device, format)
    }

    /// A registered model this version can run.
    pub fn spec(model_id: &str) -> Result<&'static registry::ModelSpec> {
        let spec = registry::find(model_id).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown model `{model_id}`; known: {}",
                registry::MODELS
                    .iter()
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        if !spec.family.supported() {
            return Err(Error::Invalid(format!(
                "{} uses a {:?} language model, which this version cannot run yet",
                spec.id, spec.family
            )));
        }
        Ok(spec)
    }

    /// Builds the captioner from resolved files, pickled weights going through the app's
    /// converted-weights cache (none with `FLAMINGO_NO_CONVERTED_CACHE` set).
    pub fn from_files(
        spec: &registry::ModelSpec,
        files: ModelFiles,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let cache = std::env::var_os("FLAMINGO_NO_CONVERTED_CACHE")
            .is_none()
            .then(ConvertCache::default_location);
        Self::from_files_with(spec, files, device, format, cache)
    }

    /// [`Captioner::from_files`] with the converted-weights cache given (None: none).
    pub fn from_files_with(
        spec: &registry::ModelSpec,
        files: ModelFiles,
        device: &Device,
        format: WeightFormat,
        cache: Option<ConvertCache>,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let tokenizer = TextTokenizer::from_file(&files.tokenizer)?;
        let mut model = crate::store::build::load_as(
            &files,
            tokenizer.media_id,
            device,
            format,
            cache.as_ref(),
        )?;
        model.prepare_weights()?;
        // OpenFlamingo sized the embedding to its tokenizer with `<|endofchunk|>`, `<image>`
        // (and a pad token) added: any other count means a damaged or foreign tokenizer whose
        // added tokens would get other ids than the model learned.
        if tokenizer.vocab_size() != model.vocab_size() {
            return Err(Error::Tokenizer(format!(
                "{} has {} tokens with OpenFlamingo's added ones, but the checkpoint's embedding \
                 has {} rows: `<image>` and `<|endofchunk|>` would get other ids than the model \
                 learned (a damaged or foreign tokenizer file)",
                files.tokenizer.display(),
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
            default_media_attention: spec.media_attention,
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

    /// Forgets every kept latent and prefix state (and the counts), as after a fresh load.
    pub fn clear_caches(&self) -> Result<()> {
        *self.lock_caches()? = PromptCaches::default();
        Ok(())
    }

    fn lock_caches(&self) -> Result<std::sync::MutexGuard<'_, PromptCaches>> {
        self.caches
            .lock()
            .map_err(|_| Error::Invalid("the cache lock was poisoned".into()))
    }

    /// An image's latents [1, num_latents, width]: from the latent cache, or encoded (and
    /// kept, when caches are on).
    fn latents(
        &self,
        caches: &mut PromptCaches,
        image: &RequestImage,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        if self.use_caches {
            if let Some(t) = caches.latents(image.key) {
                return Ok(t);
            }
        }
        let t = self.encode(image, stop)?;
        if self.use_caches {
            caches.keep_latents(image.key, t.clone());
        }
        Ok(t)
    }

    /// The one route from an image to its latents: decoded, preprocessed as the reference
    /// does, encoded by the vision tower and the perceiver.
    fn encode(&self, image: &RequestImage, stop: &dyn Fn() -> bool) -> Result<Tensor> {
        self.model
            .encode_images_or_stop(&self.pixels(image)?.unsqueeze(0)?, stop)
    }

    /// An image as the vision tower takes it: [3, S, S], CLIP's preprocessing.
    fn pixels(&self, image: &RequestImage) -> Result<Tensor> {
        let c = self.model.vision_config();
        crate::image::preprocess(
            &image.bytes,
            &image.name,
            c.image_size as u32,
            c.mean,
            c.std,
            self.model.device(),
        )
    }

    /// The media attention a request runs with: its own, else the model's.
    pub fn media_attention(&self, req: &CaptionRequest) -> MediaAttention {
        req.media_attention.unwrap_or(self.default_media_attention)
    }

    /// The prompt up to the point where the query's image starts to matter, and the rest
    /// (an empty prefix when there is none).
    fn split_at_query<'a>(
        &self,
        prompt_ids: &'a [u32],
        mode: MediaAttention,
    ) -> (&'a [u32], &'a [u32]) {
        let split = split_before_last_image(prompt_ids, self.tokenizer.media_id, mode).unwrap_or(0);
        prompt_ids.split_at(split)
    }

    /// The state after the prompt prefix with the examples' images: kept from an earlier
    /// request with the same prefix and images, or run on from the longest kept state this
    /// prefix starts with (only the examples after it run), or run whole; kept either way.
    /// `stop` is asked before each layer of that run; when it says so, nothing is kept and
    /// the result is [`Error::Cancelled`].
    fn prefix_state(
        &self,
        caches: &mut PromptCaches,
        prefix: &[u32],
        keys: &[u64],
        latents: &[Tensor],
        mode: MediaAttention,
        stop: &dyn Fn() -> bool,
    ) -> Result<crate::model::SessionState> {
        let start = caches.longest_prefix(prefix, keys, mode, self.tokenizer.media_id);
        let (mut s, done) = match start {
            Some(st) if st.tokens == prefix.len() => return Ok(st.state),
            Some(st) => {
                let mut s = self.model.resume(st.state);
                if st.images < latents.len() {
                    s.add_images(&Tensor::cat(&latents[st.images..], 0)?.unsqueeze(0)?)?;
                }
                (s, st.tokens)
            }
            None => {
                let media = Tensor::cat(latents, 0)?.unsqueeze(0)?;
                (self.model.session_in(&media, mode)?, 0)
            }
        };
        s.forward_or_stop(&[prefix[done..].to_vec()], stop)?;
        let st = s.state();
        caches.keep_prefix(prefix, keys, mode, st.clone());
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
        let mut inputs = req.images();
        if !with_query {
            inputs.pop();
        }
        if inputs.len() > caches::LATENT_ENTRIES {
            // They would push each other out of the cache before the request comes.
            return Ok(done);
        }
        let mut caches = self.lock_caches()?;
        let mut latents = Vec::with_capacity(inputs.len());
        let mut keys = Vec::with_capacity(inputs.len());
        let finish = |mut done: Prepared| {
            done.seconds = t0.elapsed().as_secs_f64();
            Ok(done)
        };
        for input in inputs {
            if stop() {
                return finish(done);
            }
            let image = RequestImage::read(input)?;
            let misses = caches.stats.vision_misses;
            match self.latents(&mut caches, &image, stop) {
                Ok(l) => latents.push(l),
                Err(Error::Cancelled) => return finish(done),
                Err(e) => return Err(e),
            }
            keys.push(image.key);
            done.images_encoded += (caches.stats.vision_misses - misses) as usize;
        }
        let n_shots = req.shots.len();
        let prompt_ids = match self.checked_prompt(req) {
            Ok((_, ids)) if ids.len() < self.model.max_seq_len() => ids,
            _ => return finish(done),
        };
        let mode = self.media_attention(req);
        let (prefix, _) = self.split_at_query(&prompt_ids, mode);
        if n_shots >= 1 && !prefix.is_empty() && !stop() {
            let misses = caches.stats.prefix_misses;
            let ran = self.prefix_state(
                &mut caches,
                prefix,
                &keys[..n_shots],
                &latents[..n_shots],
                mode,
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

    /// The state every strategy starts from: the request's whole prompt run through the
    /// caches (latents of known images are reused, and so is the state after an unchanged
    /// prompt prefix; only new images are encoded and only the rest of the prompt is run).
    /// Returns the session after the prompt and the prompt's logits; encode and prefill
    /// times go into `timings`.
    fn prompt_state(
        &self,
        req: &CaptionRequest,
        prompt_ids: &[u32],
        cancel: &AtomicBool,
        timings: &mut Timings,
    ) -> Result<(Session<'_>, Tensor)> {
        let images = read_images(&req.images())?;
        let mut caches = self.lock_caches()?;
        let t0 = Instant::now();
        let mut latents = Vec::with_capacity(images.len());
        for image in &images {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            latents.push(self.latents(&mut caches, image, &|| cancel.load(Ordering::Relaxed))?);
        }
        // A GPU runs asynchronously: wait for the work so that each timing holds its own.
        self.model.device().synchronize()?;
        timings.encode_s = t0.elapsed().as_secs_f64();
        let mode = self.media_attention(req);
        let (prefix, suffix) = self.split_at_query(prompt_ids, mode);
        let n = latents.len();
        let t1 = Instant::now();
        let stop = || cancel.load(Ordering::Relaxed);
        let ran = if !self.use_caches || prefix.is_empty() || n < 2 {
            let media = Tensor::cat(&latents, 0)?.unsqueeze(0)?;
            let mut s = self.model.session_in(&media, mode)?;
            let l = s.forward_or_stop(&[prompt_ids.to_vec()], &stop)?;
            (s, l)
        } else {
            let keys: Vec<u64> = images.iter().map(|i| i.key).collect();
            let state = self.prefix_state(
                &mut caches,
                prefix,
                &keys[..n - 1],
                &latents[..n - 1],
                mode,
                &stop,
            )?;
            let mut s = self.model.resume(state);
            s.add_images(&latents[n - 1].unsqueeze(0)?)?;
            let l = s.forward_or_stop(&[suffix.to_vec()], &stop)?;
            (s, l)
        };
        self.model.device().synchronize()?;
        timings.prefill_s = t1.elapsed().as_secs_f64();
        Ok(ran)
    }

    /// Ranks candidate texts by log p(candidate | prompt), best first.
    pub fn score(
        &self,
        req: &CaptionRequest,
        candidates: &[String],
        cancel: &AtomicBool,
    ) -> Result<Vec<(String, CandidateScore)>> {
        let ids = candidates
            .iter()
            .map(|c| self.tokenizer.encode_plain(c))
            .collect::<Result<Vec<_>>>()?;
        let scores = self.score_ids(req, &ids, cancel)?;
        let mut ranked: Vec<(String, CandidateScore)> =
            candidates.iter().cloned().zip(scores).collect();
        ranked.sort_by(|a, b| b.1.logprob.total_cmp(&a.1.logprob));
        Ok(ranked)
    }

    /// log p(candidate | prompt) of token-id candidates, in their order.
    pub fn score_ids(
        &self,
        req: &CaptionRequest,
        candidates: &[Vec<u32>],
        cancel: &AtomicBool,
    ) -> Result<Vec<CandidateScore>> {
        let prompt_ids = self.checked_prompt(req)?.1;
        check_fits(self.model.max_seq_len(), prompt_ids.len(), candidates)?;
        let (session, logits) =
            self.prompt_state(req, &prompt_ids, cancel, &mut Timings::default())?;
        score_after(&session, &logits, candidates, cancel)
    }

    fn options(&self, req: &CaptionRequest) -> GenerateOptions {
        GenerateOptions {
            config: req.generation.clone(),
            eos_id: self.tokenizer.eoc_id,
            suppress: vec![self.tokenizer.media_id],
            keep_logits: req.keep_logits,
            top_logprobs: req.top_logprobs,
            forced: req.forced.clone(),
        }
    }

    /// The same examples and prompt for many query images, decoded `batch_size` at a time
    /// with left padding. Returns one result per query, in order; an unreadable image fails
    /// only its own row.
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
        let (prompt, prompt_ids) = self.checked_prompt(req)?;
        check_budget(self.model.max_seq_len(), prompt_ids.len(), &req.generation)?;
        let shots = read_images(&req.shots.iter().map(|s| &s.image).collect::<Vec<_>>())?;
        let opts = self.options(req);
        let mut results: Vec<Result<CaptionResult>> = Vec::with_capacity(queries.len());
        for chunk in queries.chunks(batch_size.max(1)) {
            let t0 = Instant::now();
            // Every row's latents, the examples' first; rows whose image cannot be read (or
            // encoded) fail alone.
            let mut rows: Vec<(usize, Tensor)> = Vec::new();
            let mut chunk_results: Vec<Option<Result<CaptionResult>>> =
                (0..chunk.len()).map(|_| None).collect();
            {
                let mut caches = self.lock_caches()?;
                let shot_latents = shots
                    .iter()
                    .map(|s| self.latents(&mut caches, s, &|| cancel.load(Ordering::Relaxed)))
                    .collect::<Result<Vec<_>>>()?;
                for (i, q) in chunk.iter().enumerate() {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(Error::Cancelled);
                    }
                    let row = RequestImage::read(q)
                        .and_then(|q| {
                            self.latents(&mut caches, &q, &|| cancel.load(Ordering::Relaxed))
                        })
                        .and_then(|q| {
                            let mut all = shot_latents.clone();
                            all.push(q);
                            Ok(Tensor::cat(&all, 0)?)
                        });
                    match row {
                        Ok(media) => rows.push((i, media)),
                        Err(e) => chunk_results[i] = Some(Err(e)),
                    }
                }
            }
            if !rows.is_empty() {
                let encode_s = t0.elapsed().as_secs_f64();
                let t1 = Instant::now();
                let batch: Vec<(Tensor, &[u32])> = rows
                    .iter()
                    .map(|(_, m)| (m.clone(), prompt_ids.as_slice()))
                    .collect();
                let (mut session, logits) = batched_prompt(
                    &self.model,
                    &batch,
                    self.tokenizer.pad_id,
                    self.media_attention(req),
                )?;
                let prefill_s = t1.elapsed().as_secs_f64();
                let prompts: Vec<&[u32]> = vec![prompt_ids.as_slice(); rows.len()];
                let generated = decode_batch(
                    &mut session,
                    &logits,
                    &prompts,
                    &opts,
                    self.tokenizer.pad_id,
                    cancel,
                )?;
                for ((i, _), mut g) in rows.iter().zip(generated) {
                    g.timings.encode_s = encode_s;
                    g.timings.prefill_s = prefill_s;
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
            }
            results.extend(
                chunk_results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| Err(Error::Invalid("no result".into())))),
            );
        }
        Ok(results)
    }

    /// Beam search from the prompt's state.
    fn beam(
        &self,
        req: &CaptionRequest,
        prompt_ids: &[u32],
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
        let mut timings = Timings::default();
        let (session, logits) = self.prompt_state(req, prompt_ids, cancel, &mut timings)?;
        let t0 = Instant::now();
        let results = beam_search(
            session,
            &logits,
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
        timings.decode_s = t0.elapsed().as_secs_f64();
        timings.decode_tokens = best.len();
        let generated = Generated {
            stopped_by_eos: best.last() == Some(&self.tokenizer.eoc_id),
            timings,
            tokens: best,
            ..Default::default()
        };
        Ok((generated, beams))
    }

    /// The prompt text and its ids, checked to hold one `<image>` per image.
    fn checked_prompt(&self, req: &CaptionRequest) -> Result<(String, Vec<u32>)> {
        let prompt = req.prompt()?;
        let prompt_ids = self.tokenizer.encode(&prompt)?;
        if prompt_ids.is_empty() {
            return Err(Error::Prompt("the prompt is empty".into()));
        }
        let images = req.shots.len() + 1;
        let markers = prompt_ids
            .iter()
            .filter(|&&t| t == self.tokenizer.media_id)
            .count();
        if markers != images {
            return Err(Error::Prompt(format!(
                "the prompt has {markers} <image> markers for {images} images; each shot template and the final (or zero-shot) template must hold one <image>"
            )));
        }
        Ok((prompt, prompt_ids))
    }

    /// Captions the request's query: greedy, sampled or beam search, text streamed to
    /// `on_text` as it is known.
    pub fn caption(
        &self,
        req: &CaptionRequest,
        cancel: &AtomicBool,
        mut on_text: impl FnMut(&str),
    ) -> Result<CaptionResult> {
        let (prompt, prompt_ids) = self.checked_prompt(req)?;
        check_budget(self.model.max_seq_len(), prompt_ids.len(), &req.generation)?;
        let (generated, beams) = if req.generation.num_beams > 1 {
            let (generated, beams) = self.beam(req, &prompt_ids, cancel)?;
            // Beam search knows its best hypothesis only at the end.
            if let Some(b) = beams.first() {
                on_text(&b.raw_text);
            }
            (generated, beams)
        } else {
            let opts = self.options(req);
            let mut stream = self.tokenizer.stream();
            let mut stream_err = None;
            let mut on_token = |id| match stream.push(id) {
                Ok(Some(chunk)) => on_text(&chunk),
                Ok(None) => {}
                Err(e) => stream_err = Some(e),
            };
            let mut out = Generated::default();
            let (mut session, logits) =
                self.prompt_state(req, &prompt_ids, cancel, &mut out.timings)?;
            decode(
                &mut session,
                &logits,
                &prompt_ids,
                &opts,
                cancel,
                &mut on_token,
                &mut out,
            )?;
            match stream.finish() {
                Ok(Some(chunk)) => on_text(&chunk),
                Ok(None) => {}
                Err(e) => stream_err = Some(e),
            }
            if let Some(e) = stream_err {
                return Err(e);
            }
            (out, Vec::new())
        };
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
