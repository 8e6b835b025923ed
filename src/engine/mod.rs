//! The inference thread: the only door between the app and the model. Requests go in, events
//! come out (errors in the same stream), a cancel flag is checked every decoding step, and a
//! waker is called after every event so the UI repaints. What crosses the door is plain data:
//! the request types are re-exported here for the app.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
pub use crate::generate::{GenerationConfig, Timings};
pub use crate::pipeline::attention::{AttentionMaps, TokenAttention};
use crate::pipeline::icl::SweepEvent;
pub use crate::pipeline::icl::{default_counts, with_examples, Ablation};
pub use crate::pipeline::{
    default_format, memory_needed, CaptionRequest, ImageInput, Prepared, Shot,
};
use crate::pipeline::{CaptionResult, Captioner};
pub use crate::types::ShotPick;
use crate::types::WeightFormat;

/// How many alternatives the app keeps per generated token (its hover shows them).
pub const ALTERNATIVES: usize = 5;

/// Counts a prompt's tokens with the loaded model's tokenizer (called on the UI thread: a
/// tokenizer, no model).
pub type TokenCounter = Arc<dyn Fn(&str) -> Result<usize, String> + Send + Sync>;

pub type JobId = u64;

pub enum Request {
    /// Load a registered model from the cache (replacing the current one), its linear layers
    /// in `format`. Files the cache lacks are downloaded when `download` (and not offline);
    /// otherwise a missing file gives [`Event::DownloadNeeded`] and the current model stays.
    Load {
        model_id: String,
        format: WeightFormat,
        download: bool,
    },
    Generate {
        job: JobId,
        request: Box<CaptionRequest>,
    },
    /// Do ahead what this request will need (see [`Captioner::prepare`]); ends early when
    /// another request arrives. The query's image is left out unless `with_query`.
    Prepare {
        request: Box<CaptionRequest>,
        with_query: bool,
    },
    /// Rank candidate texts by their log-likelihood after the request's prompt.
    Score {
        job: JobId,
        request: Box<CaptionRequest>,
        candidates: Vec<String>,
    },
    /// Caption the query with each count of examples (a shot sweep).
    Sweep {
        job: JobId,
        request: Box<CaptionRequest>,
        counts: Vec<usize>,
        pick: ShotPick,
    },
    /// What each example did to `caption` (token ids): rescored with each left out and with
    /// the examples reversed.
    Ablate {
        job: JobId,
        request: Box<CaptionRequest>,
        caption: Vec<u32>,
    },
    /// Where each token of `caption` looked (attention maps).
    Explain {
        job: JobId,
        request: Box<CaptionRequest>,
        caption: Vec<u32>,
    },
    /// Caption (or answer) every item of a labelled folder at each shot count.
    Evaluate {
        job: JobId,
        spec: Box<EvalSpec>,
    },
    /// The `k` items of a labelled folder most like the query (RICES), to use as examples.
    PickExamples {
        job: JobId,
        folder: std::path::PathBuf,
        query: ImageInput,
        k: usize,
        task: crate::text::prompt::Task,
    },
    Shutdown,
}

/// What the app asks to evaluate: plain data (the engine reads the folder and builds the plan).
#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub folder: std::path::PathBuf,
    pub shots: Vec<usize>,
    /// Examples by RICES (the folder's images most like each query); else drawn at random.
    pub rices: bool,
    pub seed: u64,
    pub caption_templates: crate::text::prompt::Templates,
    pub vqa_templates: crate::text::prompt::Templates,
    pub generation: GenerationConfig,
    pub batch_size: usize,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub model_id: String,
    /// "CPU", "CUDA" or "Metal".
    pub device: String,
    /// Weight format of the linear layers.
    pub format: String,
    pub context_len: usize,
    pub load_s: f64,
}

/// One generated token as the app shows it: its text, probability and the most likely
/// alternatives at its step.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenInfo {
    pub id: u32,
    /// Its piece of the text (empty for the end-of-chunk token).
    pub text: String,
    pub logprob: f32,
    /// (id, text, log-probability), best first.
    pub alternatives: Vec<(u32, String, f32)>,
}

/// A finished caption: what the app keeps of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Caption {
    pub raw_text: String,
    pub text: String,
    pub tokens: Vec<TokenInfo>,
    pub timings: Timings,
}

impl Caption {
    pub fn token_ids(&self) -> Vec<u32> {
        self.tokens.iter().map(|t| t.id).collect()
    }

    /// Summed log-probability of its tokens.
    pub fn logprob(&self) -> f32 {
        self.tokens.iter().map(|t| t.logprob).sum()
    }
}

pub enum Event {
    Loading {
        model_id: String,
    },
    /// The model is not (wholly) in the cache: loading it needs a download of about this
    /// many GB, which waits for the user.
    DownloadNeeded {
        model_id: String,
        download_gb: f64,
        /// Free space on the cache's disk, bytes (where the system says).
        free_bytes: Option<u64>,
    },
    /// Progress of fetching the model's missing files (before `Loaded`).
    Download(crate::hub::download::DownloadEvent),
    Loaded {
        info: ModelInfo,
        count_tokens: TokenCounter,
    },
    LoadFailed {
        model_id: String,
        /// What went wrong and what to do, in a sentence or two.
        error: String,
        /// What is too long to show at once (the missing files, one a line).
        details: Option<String>,
    },
    Started {
        job: JobId,
        prompt_tokens: usize,
    },
    Token {
        job: JobId,
        text: String,
        n_tokens: usize,
        since_start_s: f64,
    },
    Finished {
        job: JobId,
        caption: Caption,
    },
    /// A sweep's row (its place in the counts) started with these examples (indices into
    /// the request's).
    SweepRowStarted {
        job: JobId,
        row: usize,
        examples: Vec<usize>,
    },
    SweepText {
        job: JobId,
        row: usize,
        text: String,
    },
    SweepRowFinished {
        job: JobId,
        row: usize,
        /// The caption and the row's seconds, or why the row failed.
        result: Result<(Caption, f64), String>,
    },
    /// Every row of the sweep has finished.
    SweepFinished {
        job: JobId,
    },
    /// An ablation has done `done` of its `total` scorings.
    AblateProgress {
        job: JobId,
        done: usize,
        total: usize,
    },
    Ablated {
        job: JobId,
        ablation: Ablation,
    },
    Explained {
        job: JobId,
        maps: AttentionMaps,
    },
    Scored {
        job: JobId,
        /// Best first: (text, summed log-probability, its number of tokens).
        ranked: Vec<(String, f32, usize)>,
    },
    /// A `Prepare` request ran (also when it found everything done already).
    Prepared(Prepared),
    /// An evaluation read its folder: every item, the task, the rows to make.
    EvalStarted {
        job: JobId,
        task: crate::text::prompt::Task,
        items: Vec<(String, std::path::PathBuf)>,
        total: usize,
        /// Rows of the labels that could not be used.
        problems: Vec<String>,
    },
    EvalRow {
        job: JobId,
        prediction: crate::eval::Prediction,
        done: usize,
        total: usize,
    },
    EvalItemFailed {
        job: JobId,
        image: String,
        shots: usize,
        error: String,
    },
    EvalFinished {
        job: JobId,
    },
    /// The examples RICES picked, most similar last: each image's path and its text.
    ExamplesPicked {
        job: JobId,
        examples: Vec<(std::path::PathBuf, crate::text::prompt::ShotText)>,
    },
    Cancelled {
        job: JobId,
    },
    Failed {
        job: JobId,
        error: String,
    },
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Loading { model_id } => write!(f, "Loading({model_id})"),
            Event::DownloadNeeded { model_id, .. } => write!(f, "DownloadNeeded({model_id})"),
            Event::Download(e) => write!(f, "Download({e:?})"),
            Event::Loaded { info, .. } => write!(f, "Loaded({})", info.model_id),
            Event::LoadFailed { error, .. } => write!(f, "LoadFailed({error})"),
            Event::Started { job, .. } => write!(f, "Started({job})"),
            Event::Token { job, text, .. } => write!(f, "Token({job}, {text:?})"),
            Event::Finished { job, caption } => write!(f, "Finished({job}, {:?})", caption.text),
            Event::SweepRowStarted { job, row, .. } => write!(f, "SweepRowStarted({job}, {row})"),
            Event::SweepText { job, row, text } => write!(f, "SweepText({job}, {row}, {text:?})"),
            Event::SweepRowFinished { job, row, result } => write!(
                f,
                "SweepRowFinished({job}, {row}, {:?})",
                result.as_ref().map(|(c, _)| &c.text)
            ),
            Event::SweepFinished { job } => write!(f, "SweepFinished({job})"),
            Event::AblateProgress { job, done, total } => {
                write!(f, "AblateProgress({job}, {done}/{total})")
            }
            Event::Ablated { job, ablation } => write!(f, "Ablated({job}, {ablation:?})"),
            Event::Explained { job, maps } => {
                write!(f, "Explained({job}, {} tokens)", maps.tokens.len())
            }
            Event::Scored { job, ranked } => write!(f, "Scored({job}, {ranked:?})"),
            Event::Prepared(p) => write!(f, "Prepared({p:?})"),
            Event::EvalStarted { job, total, .. } => write!(f, "EvalStarted({job}, {total})"),
            Event::EvalRow { job, done, .. } => write!(f, "EvalRow({job}, {done})"),
            Event::EvalItemFailed { job, image, .. } => write!(f, "EvalItemFailed({job}, {image})"),
            Event::EvalFinished { job } => write!(f, "EvalFinished({job})"),
            Event::ExamplesPicked { job, examples } => {
                write!(f, "ExamplesPicked({job}, {})", examples.len())
            }
            Event::Cancelled { job } => write!(f, "Cancelled({job})"),
            Event::Failed { job, error } => write!(f, "Failed({job}, {error})"),
        }
    }
}

/// Called after each event is sent (the app passes `ctx.request_repaint`).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Where models come from: the default HF cache, or a given folder (tests). The compute
/// threads are set once at the start of the program ([`crate::platform::configure_threads`]).
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    pub hub_cache: Option<std::path::PathBuf>,
    /// Hub address to download from; None = `HF_ENDPOINT` or huggingface.co.
    pub endpoint: Option<String>,
    /// Never download, whatever `HF_HUB_OFFLINE` says.
    pub offline: bool,
}

/// Handle held by the UI.
pub struct Engine {
    tx: Sender<Request>,
    rx: Receiver<Event>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    next_job: JobId,
}

impl Engine {
    pub fn start(config: EngineConfig, waker: Waker) -> Self {
        let (tx, req_rx) = crossbeam_channel::unbounded();
        let (ev_tx, rx) = crossbeam_channel::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("flamingo-engine".into())
            .spawn(move || run(config, req_rx, ev_tx, c, waker))
            .ok();
        Self {
            tx,
            rx,
            cancel,
            thread,
            next_job: 1,
        }
    }

    /// Loads a model; with `download`, what the cache lacks is downloaded first (unless
    /// offline; [`Engine::cancel`] stops it), else a missing file gives
    /// [`Event::DownloadNeeded`].
    pub fn load(&self, model_id: &str, format: WeightFormat, download: bool) {
        self.cancel.store(false, Ordering::SeqCst);
        let _ = self.tx.send(Request::Load {
            model_id: model_id.to_string(),
            format,
            download,
        });
    }

    /// Sends the request `make` builds for a fresh job and returns the job's id.
    fn queue(&mut self, make: impl FnOnce(JobId) -> Request) -> JobId {
        let job = self.new_job();
        let _ = self.tx.send(make(job));
        job
    }

    /// A fresh job id; a cancel of an earlier job no longer applies.
    fn new_job(&mut self) -> JobId {
        let job = self.next_job;
        self.next_job += 1;
        self.cancel.store(false, Ordering::SeqCst);
        job
    }

    /// Queues a generation and returns its id.
    pub fn generate(&mut self, request: CaptionRequest) -> JobId {
        self.queue(|job| Request::Generate {
            job,
            request: Box::new(request),
        })
    }

    /// Queues a ranking of candidate texts and returns its id.
    pub fn score(&mut self, request: CaptionRequest, candidates: Vec<String>) -> JobId {
        self.queue(|job| Request::Score {
            job,
            request: Box::new(request),
            candidates,
        })
    }

    /// Queues a shot sweep and returns its id.
    pub fn sweep(&mut self, request: CaptionRequest, counts: Vec<usize>, pick: ShotPick) -> JobId {
        self.queue(|job| Request::Sweep {
            job,
            request: Box::new(request),
            counts,
            pick,
        })
    }

    /// Queues a RICES pick of `k` examples from a labelled folder for `query`.
    pub fn pick_examples(
        &mut self,
        folder: std::path::PathBuf,
        query: ImageInput,
        k: usize,
        task: crate::text::prompt::Task,
    ) -> JobId {
        self.queue(|job| Request::PickExamples {
            job,
            folder,
            query,
            k,
            task,
        })
    }

    /// Queues an evaluation and returns its id.
    pub fn evaluate(&mut self, spec: EvalSpec) -> JobId {
        self.queue(|job| Request::Evaluate {
            job,
            spec: Box::new(spec),
        })
    }

    /// Queues an ablation of `caption` (token ids) and returns its id.
    pub fn ablate(&mut self, request: CaptionRequest, caption: Vec<u32>) -> JobId {
        self.queue(|job| Request::Ablate {
            job,
            request: Box::new(request),
            caption,
        })
    }

    /// Queues the attention maps of `caption` (token ids) and returns the job's id.
    pub fn explain(&mut self, request: CaptionRequest, caption: Vec<u32>) -> JobId {
        self.queue(|job| Request::Explain {
            job,
            request: Box::new(request),
            caption,
        })
    }

    /// Encodes the request's images and runs its prompt up to the query's image in the
    /// background, so that a later Generate with the same examples starts sooner. A request
    /// sent after this one ends it early.
    pub fn prepare(&self, request: CaptionRequest, with_query: bool) {
        let _ = self.tx.send(Request::Prepare {
            request: Box::new(request),
            with_query,
        });
    }

    /// Stops the running generation at its next step, or the running download.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Events received so far, without waiting.
    pub fn poll(&self) -> Vec<Event> {
        self.rx.try_iter().collect()
    }

    /// Waits for the next event (tests and the CLI; never the UI).
    pub fn recv_timeout(&self, t: std::time::Duration) -> Option<Event> {
        self.rx.recv_timeout(t).ok()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Request::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    config: EngineConfig,
    rx: Receiver<Request>,
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
    waker: Waker,
) {
    let send = |e: Event| {
        let _ = tx.send(e);
        waker();
    };
    let (device, device_label) = crate::platform::pick_device();
    let mut model: Option<Captioner> = None;
    while let Ok(req) = rx.recv() {
        match req {
            Request::Shutdown => break,
            Request::Load {
                model_id,
                format,
                download,
            } => {
                let cache = config
                    .hub_cache
                    .clone()
                    .unwrap_or_else(crate::hub::cache_dir);
                let mut opts = crate::hub::download::DownloadOptions::new(&cache);
                opts.endpoint = config.endpoint.clone();
                opts.offline |= config.offline;
                // A model that would have to be downloaded (gigabytes) waits for the user;
                // offline, the load runs so that its error says what is missing.
                if !download && !opts.offline {
                    let missing = crate::hub::registry::find(&model_id)
                        .filter(|spec| crate::hub::resolve_in(&cache, spec).is_err());
                    if let Some(spec) = missing {
                        send(Event::DownloadNeeded {
                            model_id,
                            download_gb: spec.download_gb,
                            free_bytes: crate::platform::free_disk_bytes(&cache),
                        });
                        continue;
                    }
                }
                send(Event::Loading {
                    model_id: model_id.clone(),
                });
                model = None; // free the old weights first
                let loaded = Captioner::load_or_download(
                    &opts,
                    &model_id,
                    &device,
                    format,
                    &cancel,
                    &mut |e| send(Event::Download(e)),
                );
                match loaded {
                    Ok(c) => {
                        let info = ModelInfo {
                            model_id: c.model_id.clone(),
                            device: device_label.clone(),
                            format: format.name().to_string(),
                            context_len: c.model.max_seq_len(),
                            load_s: c.load_s,
                        };
                        let tokenizer = c.tokenizer.clone();
                        let count_tokens: TokenCounter = Arc::new(move |prompt: &str| {
                            tokenizer
                                .encode(prompt)
                                .map(|ids| ids.len())
                                .map_err(|e| e.to_string())
                        });
                        send(Event::Loaded { info, count_tokens });
                        // While the user looks at the screen: a request sent now waits for this.
                        if let Err(e) = c.warm_up() {
                            tracing::warn!("warm-up failed: {e}");
                        }
                        model = Some(c);
                    }
                    Err(Error::Cancelled) => send(Event::LoadFailed {
                        model_id,
                        error: "download cancelled; what was complete stays in the cache".into(),
                        details: None,
                    }),
                    Err(Error::MissingFiles {
                        files, cache, hint, ..
                    }) => send(Event::LoadFailed {
                        model_id,
                        error: format!(
                            "{} of its files are not in the Hugging Face cache ({}). {hint}",
                            files.len(),
                            cache.display()
                        ),
                        details: Some(files.join("\n")),
                    }),
                    Err(e) => send(Event::LoadFailed {
                        model_id,
                        error: e.to_string(),
                        details: None,
                    }),
                }
            }
            Request::Prepare {
                request,
                with_query,
            } => {
                let Some(c) = model.as_ref() else { continue };
                // Left for the request that needs it to report, if it still fails then.
                let stop = || !rx.is_empty();
                if let Ok(p) = c.prepare(&request, with_query, &stop) {
                    send(Event::Prepared(p));
                }
            }
            job_request => {
                let Some(job) = job_request.job() else {
                    continue;
                };
                let Some(c) = model.as_ref() else {
                    send(Event::Failed {
                        job,
                        error: "no model is loaded yet".into(),
                    });
                    continue;
                };
                match run_job(c, job_request, &cancel, &send) {
                    Ok(done) => send(done),
                    Err(Error::Cancelled) => send(Event::Cancelled { job }),
                    Err(e) => send(Event::Failed {
                        job,
                        error: e.to_string(),
                    }),
                }
            }
        }
    }
}

impl Request {
    /// The job a request belongs to (the requests that run a job on the loaded model).
    fn job(&self) -> Option<JobId> {
        match self {
            Request::Generate { job, .. }
            | Request::Score { job, .. }
            | Request::Sweep { job, .. }
            | Request::Ablate { job, .. }
            | Request::Explain { job, .. }
            | Request::Evaluate { job, .. }
            | Request::PickExamples { job, .. } => Some(*job),
            Request::Load { .. } | Request::Prepare { .. } | Request::Shutdown => None,
        }
    }
}

/// Runs a job on the loaded model: the events on the way are sent, the last one is returned
/// (a cancel or an error becomes the caller's `Cancelled` or `Failed`).
fn run_job(
    c: &Captioner,
    req: Request,
    cancel: &AtomicBool,
    send: &dyn Fn(Event),
) -> crate::error::Result<Event> {
    match req {
        Request::Score {
            job,
            request,
            candidates,
        } => {
            let ranked = c
                .score(&request, &candidates, cancel)?
                .into_iter()
                .map(|(t, s)| (t, s.logprob, s.token_logprobs.len()))
                .collect();
            Ok(Event::Scored { job, ranked })
        }
        Request::Generate { job, request } => {
            let prompt_tokens = request
                .prompt()
                .and_then(|p| c.tokenizer.encode(&p))
                .map(|ids| ids.len())
                .unwrap_or(0);
            send(Event::Started { job, prompt_tokens });
            let t0 = Instant::now();
            let mut n = 0usize;
            let r = c.caption(&request, cancel, |chunk| {
                n += 1;
                send(Event::Token {
                    job,
                    text: chunk.to_string(),
                    n_tokens: n,
                    since_start_s: t0.elapsed().as_secs_f64(),
                });
            })?;
            Ok(Event::Finished {
                job,
                caption: caption_of(c, r)?,
            })
        }
        Request::Sweep {
            job,
            request,
            counts,
            pick,
        } => {
            c.sweep(&request, &counts, pick, cancel, |e| match e {
                SweepEvent::RowStarted { row, examples } => send(Event::SweepRowStarted {
                    job,
                    row,
                    examples: examples.to_vec(),
                }),
                SweepEvent::Text { row, chunk } => send(Event::SweepText {
                    job,
                    row,
                    text: chunk.to_string(),
                }),
                SweepEvent::RowFinished { row, row_result } => {
                    let result = match row_result {
                        Ok(r) => caption_of(c, r.result.clone())
                            .map(|cap| (cap, r.seconds))
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    send(Event::SweepRowFinished { job, row, result })
                }
            })?;
            Ok(Event::SweepFinished { job })
        }
        Request::Ablate {
            job,
            request,
            caption,
        } => {
            let ablation = c.ablate(&request, &caption, cancel, |done, total| {
                send(Event::AblateProgress { job, done, total })
            })?;
            Ok(Event::Ablated { job, ablation })
        }
        Request::Explain {
            job,
            request,
            caption,
        } => Ok(Event::Explained {
            job,
            maps: c.attention_maps(&request, &caption, cancel)?,
        }),
        Request::PickExamples {
            job,
            folder,
            query,
            k,
            task,
        } => Ok(Event::ExamplesPicked {
            job,
            examples: c.rices_examples(
                &folder,
                &query,
                k,
                task,
                Some(&crate::platform::app_cache_dir()),
                cancel,
            )?,
        }),
        Request::Evaluate { job, spec } => {
            evaluate(c, job, &spec, cancel, send)?;
            Ok(Event::EvalFinished { job })
        }
        Request::Load { .. } | Request::Prepare { .. } | Request::Shutdown => {
            Err(Error::Invalid("not a job for the loaded model".into()))
        }
    }
}

/// Runs an evaluation: the folder read, the RICES library embedded (kept on disk) when
/// asked, then each row sent as it is made.
fn evaluate(
    c: &Captioner,
    job: JobId,
    spec: &EvalSpec,
    cancel: &AtomicBool,
    send: &dyn Fn(Event),
) -> crate::error::Result<()> {
    use crate::pipeline::evaluate::{EvalEvent, EvalPlan, ExampleSource};
    use crate::text::prompt::Task;
    let data = crate::eval::LabelledFolder::load(&spec.folder)?;
    let source = if spec.rices {
        let lib = c.library(
            data.clone(),
            Some(&crate::platform::app_cache_dir()),
            cancel,
            |_, _| {},
        )?;
        ExampleSource::Rices(Arc::new(lib))
    } else {
        ExampleSource::Random { seed: spec.seed }
    };
    let plan = EvalPlan {
        task: data.task,
        templates: match data.task {
            Task::Caption => spec.caption_templates.clone(),
            Task::Vqa => spec.vqa_templates.clone(),
        },
        data,
        pool: None,
        shots: spec.shots.clone(),
        source,
        generation: spec.generation.clone(),
        batch_size: spec.batch_size,
    };
    send(Event::EvalStarted {
        job,
        task: plan.task,
        items: plan
            .data
            .items
            .iter()
            .map(|i| (i.file.clone(), i.image.clone()))
            .collect(),
        total: plan.total(),
        problems: plan.data.problems.clone(),
    });
    c.evaluate(&plan, &Default::default(), cancel, |e| match e {
        EvalEvent::Row {
            prediction,
            done,
            total,
        } => send(Event::EvalRow {
            job,
            prediction: prediction.clone(),
            done,
            total,
        }),
        EvalEvent::Failed { item, shots, error } => send(Event::EvalItemFailed {
            job,
            image: item.file.clone(),
            shots,
            error: error.to_string(),
        }),
    })
}

/// What the app keeps of a caption: each token with its text, probability and alternatives.
fn caption_of(c: &Captioner, r: CaptionResult) -> crate::error::Result<Caption> {
    let g = r.generated;
    let texts = c.tokenizer.token_texts(&g.tokens)?;
    let tokens = g
        .tokens
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let alternatives = g
                .alternatives
                .get(i)
                .map(|alts| {
                    alts.iter()
                        .map(|&(a, lp)| Ok((a, c.tokenizer.decode(&[a])?, lp)))
                        .collect::<crate::error::Result<Vec<_>>>()
                })
                .transpose()?
                .unwrap_or_default();
            Ok(TokenInfo {
                id,
                text: texts.get(i).cloned().unwrap_or_default(),
                logprob: g.token_logprobs.get(i).copied().unwrap_or(0.0),
                alternatives,
            })
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    Ok(Caption {
        raw_text: r.raw_text,
        text: r.text,
        tokens,
        timings: g.timings,
    })
}
