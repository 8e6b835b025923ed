//! The desktop app (egui only). One state struct; UI functions return [`Command`]s that
//! [`FlamingoApp::apply`] carries out in one place; the model runs on the engine thread, images
//! are read on the image thread, and both wake the UI with `request_repaint`.

pub mod images;
pub mod samples;
pub mod state;
mod ui;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::engine::{Engine, EngineConfig, Event, JobId, ModelInfo};
use crate::generate::Timings;
use crate::pipeline::{CaptionRequest, ImageInput, Shot};
use crate::text::prompt::{Task, Templates};
use crate::text::TextTokenizer;
use images::{ImageLoader, Loaded, Source, Target};
use state::{Example, ImageItem, Settings, WorkingSet};

pub const APP_ID: &str = "Flamingo";
const SETTINGS_KEY: &str = "flamingo-settings";
const WORKING_SET_FILE: &str = "working-set.flamingo.json";

/// Where a dropped or picked image goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropTarget {
    Examples,
    Query,
}

#[derive(Clone, Debug)]
pub enum Command {
    AddImages {
        sources: Vec<Source>,
        to: DropTarget,
    },
    RemoveExample(u64),
    MoveExample {
        from: usize,
        to: usize,
    },
    ClearQuery,
    SetTask(Task),
    ResetTemplates,
    /// A named prompt style (`mmpretrain`, `open_flamingo`) for the current task.
    ApplyPreset(String),
    Generate,
    /// Rank the candidate texts (one per line) for the query.
    Score,
    Stop,
    LoadModel(String),
    /// Stop the model's download (what is complete stays in the cache).
    CancelDownload,
    NewSet,
    PickImages(DropTarget),
    /// An image (bitmap) or image file paths from the clipboard.
    PasteImage(DropTarget),
    OpenSetDialog,
    SaveSetDialog,
    OpenSet(PathBuf),
    SaveSet(PathBuf),
    DismissMessage(usize),
}

/// What the download view shows, folded from the engine's download events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownloadView {
    /// Files missing from the cache when the download began.
    pub missing: Vec<String>,
    pub label: String,
    pub file_index: usize,
    pub file_count: usize,
    pub file_done: u64,
    pub file_total: u64,
    pub bytes_per_s: f64,
    pub eta_s: Option<f64>,
    /// "verifying …", "retrying …" while that happens.
    pub note: Option<String>,
}

impl DownloadView {
    pub fn apply(&mut self, e: crate::hub::download::DownloadEvent) {
        use crate::hub::download::DownloadEvent as D;
        match e {
            D::Plan { missing } => {
                self.file_count = missing.len();
                self.missing = missing;
            }
            D::FileStarted { label, bytes } => {
                self.label = label;
                self.file_total = bytes;
                self.file_done = 0;
                self.note = None;
            }
            D::Progress(p) => {
                self.label = p.label;
                self.file_index = p.file_index;
                self.file_count = p.file_count;
                self.file_done = p.file_done;
                self.file_total = p.file_total;
                self.bytes_per_s = p.bytes_per_s;
                self.eta_s = p.eta_s;
                self.note = None;
            }
            D::Verifying { label } => self.note = Some(format!("checking {label}")),
            D::Retrying {
                label,
                attempt,
                reason,
            } => self.note = Some(format!("{label}: {reason}; attempt {attempt}")),
            D::FileDone { .. } | D::Finished { .. } => self.note = None,
        }
    }

    /// One line: file, bytes, rate, time left.
    pub fn summary(&self) -> String {
        use crate::hub::download::{human_bytes, human_secs};
        let name = self.label.rsplit('/').next().unwrap_or(&self.label);
        let mut s = format!(
            "Downloading {name} ({}/{}): {} of {}",
            self.file_index.max(1),
            self.file_count.max(1),
            human_bytes(self.file_done),
            human_bytes(self.file_total)
        );
        if self.bytes_per_s > 0.0 {
            s.push_str(&format!(", {}/s", human_bytes(self.bytes_per_s as u64)));
        }
        if let Some(eta) = self.eta_s {
            s.push_str(&format!(", {} left", human_secs(eta)));
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    NotLoaded,
    Loading(String),
    Ready(ModelInfo),
    Failed { model_id: String, error: String },
}

#[derive(Clone, Debug, PartialEq)]
pub enum RunState {
    Idle,
    Running,
    Done,
    Stopped,
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Output {
    pub job: Option<JobId>,
    pub raw: String,
    pub answer: String,
    pub state: RunState,
    pub prompt_tokens: usize,
    pub tokens: usize,
    pub first_token_s: Option<f64>,
    pub last_token_s: Option<f64>,
    pub timings: Option<Timings>,
}

impl Default for Output {
    fn default() -> Self {
        Self {
            job: None,
            raw: String::new(),
            answer: String::new(),
            state: RunState::Idle,
            prompt_tokens: 0,
            tokens: 0,
            first_token_s: None,
            last_token_s: None,
            timings: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// Frame-time statistics (the UI must stay responsive while the model runs).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FrameStats {
    pub last_ms: f32,
    pub max_ms_while_running: f32,
    pub sum_ms_while_running: f64,
    pub frames_while_running: u64,
    pub over_50ms_while_running: u64,
    /// (seconds since Generate, frame ms) of the slowest frames, for diagnosis.
    pub slow_frames: Vec<(f32, f32)>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl FrameStats {
    fn record(&mut self, ms: f32, running: bool) {
        self.last_ms = ms;
        if running {
            self.frames_while_running += 1;
            self.sum_ms_while_running += ms as f64;
            self.max_ms_while_running = self.max_ms_while_running.max(ms);
            if ms > 50.0 {
                self.over_50ms_while_running += 1;
            }
            if ms > 20.0 && self.slow_frames.len() < 32 {
                let t = self
                    .started
                    .map(|s| s.elapsed().as_secs_f32())
                    .unwrap_or(0.0);
                self.slow_frames.push((t, ms));
            }
        }
    }

    fn reset(&mut self) {
        *self = Self {
            last_ms: self.last_ms,
            started: Some(Instant::now()),
            ..Default::default()
        };
    }

    /// With `FLAMINGO_FRAME_STATS=FILE`, appends one JSON line per generation (measurements).
    fn log(&self, outcome: &str, tokens: usize) {
        if let Some(path) = std::env::var_os("FLAMINGO_FRAME_STATS") {
            use std::io::Write;
            let line = serde_json::json!({ "outcome": outcome, "tokens": tokens, "frames": self });
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

enum DialogResult {
    Images(DropTarget, Vec<PathBuf>),
    Pasted(DropTarget, Vec<Source>),
    Nothing(String),
    Open(PathBuf),
    Save(PathBuf),
}

/// How the app is started (tests point it at fixture caches and temporary folders).
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Folder for the working set; None = eframe's storage folder.
    pub data_dir: Option<PathBuf>,
    /// Hugging Face cache to load from; None = the standard one.
    pub hub_cache: Option<PathBuf>,
    /// Hub address to download from; None = `HF_ENDPOINT` or huggingface.co.
    pub hub_endpoint: Option<String>,
    /// Never download (as with `HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Load the selected model at start.
    pub autoload: bool,
    /// Overrides the persisted model id.
    pub model_id: Option<String>,
    /// Overrides the persisted weight format.
    pub weights: Option<crate::model::linear::WeightFormat>,
    /// Hide what changes from run to run (timings, memory) so screenshots compare.
    pub stable_for_snapshots: bool,
}

pub struct FlamingoApp {
    pub settings: Settings,
    pub ws: WorkingSet,
    pub model: ModelState,
    /// Progress of the model's download while it is fetched (not persisted).
    pub download: Option<DownloadView>,
    /// At start, the model was not cached: the download (this many GB) waits for a click.
    pub download_needed: Option<f64>,
    pub output: Output,
    pub messages: Vec<Message>,
    pub frames: FrameStats,
    pub loading_images: usize,
    /// The last ranking of candidates, best first: (text, summed log-probability).
    pub ranked: Vec<(String, f32)>,
    engine: Engine,
    loader: ImageLoader,
    tokenizer: Option<Arc<TextTokenizer>>,
    token_count: Option<(String, Result<usize, String>)>,
    data_dir: Option<PathBuf>,
    dirty_since: Option<Instant>,
    /// The working set or model changed at this time and the engine has not been asked to
    /// prepare for it yet.
    prepare_since: Option<Instant>,
    /// What the last preparation did (status bar).
    pub prepared: Option<crate::pipeline::Prepared>,
    next_id: u64,
    dialog_tx: Sender<DialogResult>,
    dialog_rx: Receiver<DialogResult>,
    drop_rects: [egui::Rect; 2],
    ctx: egui::Context,
    pub(crate) stable_for_snapshots: bool,
}

impl FlamingoApp {
    pub fn new(cc: &eframe::CreationContext<'_>, opts: AppOptions) -> Self {
        let mut settings: Settings = cc
            .storage
            .and_then(|s| eframe::get_value(s, SETTINGS_KEY))
            .unwrap_or_default();
        if let Some(m) = &opts.model_id {
            settings.model_id = m.clone();
        }
        if let Some(w) = opts.weights {
            settings.weights = w;
        }
        let data_dir = opts
            .data_dir
            .clone()
            .or_else(|| eframe::storage_dir(APP_ID));
        Self::with_context(cc.egui_ctx.clone(), settings, data_dir, opts)
    }

    pub fn with_context(
        ctx: egui::Context,
        settings: Settings,
        data_dir: Option<PathBuf>,
        opts: AppOptions,
    ) -> Self {
        let c = ctx.clone();
        let waker: crate::engine::Waker = Arc::new(move || c.request_repaint());
        let engine = Engine::start(
            EngineConfig {
                hub_cache: opts.hub_cache.clone(),
                threads: settings.threads,
                endpoint: opts.hub_endpoint.clone(),
                offline: opts.offline,
            },
            waker.clone(),
        );
        let loader = ImageLoader::start(waker);
        let (dialog_tx, dialog_rx) = crossbeam_channel::unbounded();
        let mut app = Self {
            settings,
            ws: WorkingSet::new(),
            model: ModelState::NotLoaded,
            download: None,
            download_needed: None,
            output: Output::default(),
            messages: Vec::new(),
            frames: FrameStats::default(),
            loading_images: 0,
            ranked: Vec::new(),
            engine,
            loader,
            tokenizer: None,
            token_count: None,
            data_dir,
            dirty_since: None,
            prepare_since: None,
            prepared: None,
            next_id: 1,
            dialog_tx,
            dialog_rx,
            drop_rects: [egui::Rect::NOTHING; 2],
            ctx,
            stable_for_snapshots: opts.stable_for_snapshots,
        };
        app.restore_working_set();
        if opts.autoload {
            let id = app.settings.model_id.clone();
            // A model that would have to be downloaded (gigabytes) waits for the user's click;
            // offline, the load runs so that its error says what is missing.
            let cache = opts.hub_cache.clone().unwrap_or_else(crate::hub::cache_dir);
            let missing = crate::hub::registry::find(&id)
                .filter(|spec| crate::hub::resolve_in(&cache, spec).is_err());
            match missing {
                Some(spec) if !(opts.offline || crate::hub::offline()) => {
                    app.download_needed = Some(spec.download_gb);
                }
                _ => app.apply(Command::LoadModel(id)),
            }
        }
        app
    }

    fn working_set_path(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.join(WORKING_SET_FILE))
    }

    /// The last working set, or on a first launch the bundled sample set.
    fn restore_working_set(&mut self) {
        let saved = self.working_set_path().filter(|p| p.exists());
        match saved {
            Some(p) => match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| state::set_from_json(&t))
            {
                Ok(set) => self.install_set(set),
                Err(e) => {
                    // Keep the unreadable file for the user; start from the samples.
                    let keep = p.with_extension("unreadable.json");
                    let _ = std::fs::rename(&p, &keep);
                    self.error(format!(
                        "The last working set could not be read ({e}); it was kept as {}",
                        keep.display()
                    ));
                    self.install_samples();
                }
            },
            None => self.install_samples(),
        }
    }

    fn install_samples(&mut self) {
        match state::set_from_json(&samples::sample_set_json()) {
            Ok(set) => {
                self.install_set(set);
                self.info("Welcome! Sample examples are loaded: press Generate to caption the query, then change the examples and see the caption change.".into());
            }
            Err(e) => self.error(format!("The sample set is damaged: {e}")),
        }
    }

    fn install_set(&mut self, set: state::LoadedSet) {
        self.ws = WorkingSet::new();
        self.ws.task = set.task;
        self.ws.question = set.question;
        self.ws.caption_templates = set.caption_templates;
        self.ws.vqa_templates = set.vqa_templates;
        for (name, bytes, text, enabled) in set.examples {
            self.loading_images += 1;
            self.loader.submit(
                Source::Bytes { name, bytes },
                Target::Example { text, enabled },
            );
        }
        if let Some((name, bytes)) = set.query {
            self.loading_images += 1;
            self.loader
                .submit(Source::Bytes { name, bytes }, Target::Query);
        }
    }

    pub fn info(&mut self, text: String) {
        self.messages.push(Message { text, error: false });
    }

    pub fn error(&mut self, text: String) {
        self.messages.push(Message { text, error: true });
    }

    pub fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
        // Restarted by every change: nothing is prepared while the user is still typing.
        self.prepare_since = Some(Instant::now());
    }

    pub fn is_running(&self) -> bool {
        self.output.state == RunState::Running
    }

    /// The one place where commands change the state.
    pub fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::AddImages { sources, to } => {
                for (i, s) in sources.into_iter().enumerate() {
                    // Several files dropped on the query area: the first is the query, the
                    // rest become examples.
                    let target = if to == DropTarget::Query && i == 0 {
                        Target::Query
                    } else {
                        Target::Example {
                            text: Default::default(),
                            enabled: true,
                        }
                    };
                    self.loading_images += 1;
                    self.loader.submit(s, target);
                }
            }
            Command::RemoveExample(id) => {
                self.ws.examples.retain(|e| e.id != id);
                self.mark_dirty();
            }
            Command::MoveExample { from, to } => {
                let n = self.ws.examples.len();
                if from < n && to < n && from != to {
                    let e = self.ws.examples.remove(from);
                    self.ws.examples.insert(to, e);
                    self.mark_dirty();
                }
            }
            Command::ClearQuery => {
                self.ws.query = None;
                self.mark_dirty();
            }
            Command::SetTask(t) => {
                self.ws.task = t;
                self.mark_dirty();
            }
            Command::ResetTemplates => {
                *self.ws.templates_mut() = Templates::for_task(self.ws.task);
                self.mark_dirty();
            }
            Command::ApplyPreset(name) => {
                if let Some(t) = crate::text::prompt::preset(&name, self.ws.task) {
                    *self.ws.templates_mut() = t;
                    self.mark_dirty();
                }
            }
            Command::Generate => self.generate(),
            Command::Score => self.score(),
            Command::Stop | Command::CancelDownload => self.engine.cancel(),
            Command::LoadModel(id) => {
                self.download_needed = None;
                self.settings.model_id = id.clone();
                self.model = ModelState::Loading(id.clone());
                self.tokenizer = None;
                self.token_count = None;
                self.engine.load(&id, self.settings.weights);
            }
            Command::NewSet => {
                self.ws = WorkingSet::new();
                self.output = Output::default();
                self.mark_dirty();
            }
            Command::PickImages(to) => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Images", &["png", "jpg", "jpeg", "webp", "gif", "bmp"])
                    .pick_files();
                self.spawn_dialog(async move {
                    dlg.await.map(|v| {
                        DialogResult::Images(to, v.iter().map(|h| h.path().to_path_buf()).collect())
                    })
                });
            }
            Command::PasteImage(to) => {
                // The clipboard can block briefly on X11: read it off the UI thread.
                self.spawn_dialog(async move { Some(read_clipboard(to)) });
            }
            Command::OpenSetDialog => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Flamingo prompt set", &["json"])
                    .pick_file();
                self.spawn_dialog(async move {
                    dlg.await
                        .map(|h| DialogResult::Open(h.path().to_path_buf()))
                });
            }
            Command::SaveSetDialog => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Flamingo prompt set", &["json"])
                    .set_file_name(format!("examples.{}", state::SET_EXTENSION))
                    .save_file();
                self.spawn_dialog(async move {
                    dlg.await
                        .map(|h| DialogResult::Save(h.path().to_path_buf()))
                });
            }
            Command::OpenSet(path) => match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| state::set_from_json(&t))
            {
                Ok(set) => {
                    self.install_set(set);
                    self.output = Output::default();
                    self.remember_recent(path);
                    self.mark_dirty();
                }
                Err(e) => self.error(format!("Cannot open {}: {e}", path.display())),
            },
            Command::SaveSet(path) => {
                let json = state::set_to_json(&self.ws);
                match state::write_atomic(&path, json.as_bytes()) {
                    Ok(()) => {
                        self.info(format!("Saved {}", path.display()));
                        self.remember_recent(path);
                    }
                    Err(e) => self.error(format!(
                        "Could not save {}: {e}. Nothing was lost: your examples are still here.",
                        path.display()
                    )),
                }
            }
            Command::DismissMessage(i) => {
                if i < self.messages.len() {
                    self.messages.remove(i);
                }
            }
        }
    }

    fn remember_recent(&mut self, path: PathBuf) {
        self.settings.recent_sets.retain(|p| p != &path);
        self.settings.recent_sets.insert(0, path);
        self.settings.recent_sets.truncate(8);
    }

    fn spawn_dialog(
        &self,
        fut: impl std::future::Future<Output = Option<DialogResult>> + Send + 'static,
    ) {
        let tx = self.dialog_tx.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new()
            .name("flamingo-dialog".into())
            .spawn(move || {
                if let Some(r) = pollster::block_on(fut) {
                    let _ = tx.send(r);
                    ctx.request_repaint();
                }
            });
    }

    /// The request a Generate press sends, or why none can be sent.
    pub fn build_request(&self) -> Result<CaptionRequest, String> {
        let query = self.ws.query.as_ref().ok_or("Drop a query image first.")?;
        if self.ws.task == Task::Vqa && self.ws.question.trim().is_empty() {
            return Err("Type a question for the query image.".into());
        }
        Ok(self.request_with(image_input(query)))
    }

    /// The working set as a request with `query` as its query image.
    fn request_with(&self, query: ImageInput) -> CaptionRequest {
        let img = image_input;
        CaptionRequest {
            task: self.ws.task,
            shots: self
                .ws
                .examples
                .iter()
                .filter(|e| e.enabled)
                .map(|e| Shot {
                    image: img(&e.image),
                    text: e.text.clone(),
                })
                .collect(),
            query,
            question: self.ws.question.clone(),
            templates: self.ws.templates().clone(),
            generation: crate::generate::GenerationConfig {
                max_new_tokens: self.settings.max_new_tokens,
                ..self.settings.generation.clone()
            },
            keep_logits: false,
        }
    }

    /// Once the working set has been still for a moment and the engine is idle, asks it to
    /// prepare what Generate will need (with the query's image when there is one).
    fn prepare_ahead(&mut self) {
        let Some(since) = self.prepare_since else {
            return;
        };
        if !self.settings.prepare_ahead || !matches!(self.model, ModelState::Ready(_)) {
            // Asked again when the model has loaded (or the setting is turned on and
            // something changes).
            self.prepare_since = None;
            return;
        }
        if since.elapsed() < PREPARE_AFTER || self.loading_images > 0 || self.is_running() {
            self.ctx.request_repaint_after(PREPARE_AFTER);
            return;
        }
        self.prepare_since = None;
        let (query, with_query) = match &self.ws.query {
            Some(q) => (image_input(q), true),
            // Stands in for the query only for building the prompt: it is never encoded.
            None => (
                ImageInput::Bytes {
                    name: "no query yet".into(),
                    bytes: Arc::from(Vec::new()),
                },
                false,
            ),
        };
        let request = self.request_with(query);
        self.engine.prepare(request, with_query);
    }

    /// The request for a new job, or None (and a message) when none can start now.
    fn request_for_job(&mut self) -> Option<CaptionRequest> {
        if self.is_running() {
            return None;
        }
        if !matches!(self.model, ModelState::Ready(_)) {
            self.error("The model is not loaded yet (see Model at the top).".into());
            return None;
        }
        self.build_request().map_err(|e| self.error(e)).ok()
    }

    fn job_started(&mut self, job: JobId) {
        self.output = Output {
            job: Some(job),
            state: RunState::Running,
            ..Default::default()
        };
        self.frames.reset();
    }

    fn generate(&mut self) {
        if let Some(req) = self.request_for_job() {
            let job = self.engine.generate(req);
            self.job_started(job);
        }
    }

    fn score(&mut self) {
        let candidates: Vec<String> = self
            .ws
            .candidates
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if candidates.is_empty() {
            self.error("Type some candidate texts to rank, one per line.".into());
            return;
        }
        if let Some(req) = self.request_for_job() {
            let job = self.engine.score(req, candidates);
            self.job_started(job);
            self.ranked.clear();
        }
    }

    /// Token count of the current prompt (cached per prompt text).
    pub fn prompt_token_count(&mut self, prompt: &str) -> Option<Result<usize, String>> {
        let tok = self.tokenizer.as_ref()?;
        if self
            .token_count
            .as_ref()
            .map(|(p, _)| p != prompt)
            .unwrap_or(true)
        {
            let n = tok
                .encode(prompt)
                .map(|v| v.len())
                .map_err(|e| e.to_string());
            self.token_count = Some((prompt.to_string(), n));
        }
        self.token_count.as_ref().map(|(_, n)| n.clone())
    }

    /// Applies everything that arrived from the engine, the image thread and dialogs.
    pub fn pump(&mut self) {
        for ev in self.engine.poll() {
            self.on_event(ev);
        }
        while let Ok(l) = self.loader.rx.try_recv() {
            self.loading_images = self.loading_images.saturating_sub(1);
            match l {
                Loaded::Ok {
                    target,
                    name,
                    bytes,
                    thumb,
                    size,
                } => {
                    let tex = self.ctx.load_texture(
                        format!("thumb-{}", self.next_id),
                        thumb,
                        egui::TextureOptions::LINEAR,
                    );
                    let item = ImageItem {
                        name,
                        bytes,
                        thumb: Some(tex),
                        size,
                    };
                    match target {
                        Target::Query => self.ws.query = Some(item),
                        Target::Example { text, enabled } => {
                            self.ws.examples.push(Example {
                                id: self.next_id,
                                image: item,
                                text,
                                enabled,
                            });
                        }
                    }
                    self.next_id += 1;
                    self.mark_dirty();
                }
                Loaded::Failed { name, error } => {
                    self.error(format!("{name} was not added: {error}"));
                }
            }
        }
        while let Ok(d) = self.dialog_rx.try_recv() {
            match d {
                DialogResult::Images(to, paths) => self.apply(Command::AddImages {
                    sources: paths.into_iter().map(Source::Path).collect(),
                    to,
                }),
                DialogResult::Pasted(to, sources) => self.apply(Command::AddImages { sources, to }),
                DialogResult::Nothing(why) => self.error(why),
                DialogResult::Open(p) => self.apply(Command::OpenSet(p)),
                DialogResult::Save(p) => self.apply(Command::SaveSet(p)),
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let mine = |job: JobId, out: &Output| out.job == Some(job);
        match ev {
            Event::Loading { model_id } => self.model = ModelState::Loading(model_id),
            Event::Download(e) => self.download.get_or_insert_default().apply(e),
            Event::Loaded { info, tokenizer } => {
                self.prepare_since = Some(Instant::now());
                self.prepared = None;
                self.download = None;
                self.model = ModelState::Ready(info);
                self.tokenizer = Some(tokenizer);
                self.token_count = None;
            }
            Event::LoadFailed { model_id, error } => {
                self.download = None;
                self.model = ModelState::Failed { model_id, error };
            }
            Event::Started { job, prompt_tokens } if mine(job, &self.output) => {
                self.output.prompt_tokens = prompt_tokens;
            }
            Event::Token {
                job,
                text,
                n_tokens,
                since_start_s,
            } if mine(job, &self.output) => {
                self.output.raw.push_str(&text);
                self.output.answer = crate::text::prompt::answer(self.ws.task, &self.output.raw);
                self.output.tokens = n_tokens;
                self.output.first_token_s.get_or_insert(since_start_s);
                self.output.last_token_s = Some(since_start_s);
            }
            Event::Finished {
                job,
                raw_text,
                text,
                timings,
                tokens,
            } if mine(job, &self.output) => {
                self.output.raw = raw_text;
                self.output.answer = text;
                self.output.tokens = tokens;
                self.output.timings = Some(timings);
                self.output.state = RunState::Done;
                self.frames.log("done", tokens);
            }
            Event::Prepared(p) => self.prepared = Some(p),
            Event::Scored { job, ranked } if mine(job, &self.output) => {
                self.ranked = ranked;
                self.output.state = RunState::Done;
            }
            Event::Cancelled { job } if mine(job, &self.output) => {
                self.output.state = RunState::Stopped;
                self.frames.log("stopped", self.output.tokens);
            }
            Event::Failed { job, error } if mine(job, &self.output) => {
                self.output.state = RunState::Failed(error.clone());
                self.error(error);
            }
            _ => {}
        }
    }

    /// Drops from the file manager: onto the query area or the examples panel.
    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let (dropped, pos) = ctx.input(|i| (i.raw.dropped_files.clone(), i.pointer.latest_pos()));
        if dropped.is_empty() {
            return;
        }
        let mut sources = Vec::new();
        for f in dropped {
            let p = f.path().to_path_buf();
            if !p.as_os_str().is_empty() && p.is_file() {
                sources.push(Source::Path(p));
            } else {
                match f.bytes() {
                    Ok(b) => sources.push(Source::Bytes {
                        name: p.display().to_string(),
                        bytes: b.into(),
                    }),
                    Err(e) => self.error(format!("{}: {e}", p.display())),
                }
            }
        }
        let on_query = pos.map(|p| self.drop_rects[1].contains(p)).unwrap_or(false);
        let to = if on_query {
            DropTarget::Query
        } else {
            DropTarget::Examples
        };
        self.apply(Command::AddImages { sources, to });
    }

    /// Ctrl+V of file paths (copied in a file manager) while no text field has the focus.
    fn take_pasted_paths(&mut self, ctx: &egui::Context) {
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        let pasted: Vec<String> = ctx.input(|i| {
            i.events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::Paste(t) => Some(t.clone()),
                    _ => None,
                })
                .collect()
        });
        for text in pasted {
            let paths = paths_in_text(&text);
            if !paths.is_empty() {
                let to = if self.ws.query.is_none() && paths.len() == 1 {
                    DropTarget::Query
                } else {
                    DropTarget::Examples
                };
                self.apply(Command::AddImages {
                    sources: paths.into_iter().map(Source::Path).collect(),
                    to,
                });
            }
        }
    }

    fn autosave(&mut self) {
        let Some(since) = self.dirty_since else {
            return;
        };
        if since.elapsed() < Duration::from_millis(800) || self.loading_images > 0 {
            return;
        }
        self.dirty_since = None;
        let Some(path) = self.working_set_path() else {
            return;
        };
        let ws = self.ws.clone();
        let _ = std::thread::Builder::new()
            .name("flamingo-autosave".into())
            .spawn(move || {
                let json = state::set_to_json(&ws);
                if let Err(e) = state::write_atomic(&path, json.as_bytes()) {
                    eprintln!("autosave to {} failed: {e}", path.display());
                }
            });
    }

    /// Writes the working set now (tests; on exit).
    pub fn save_working_set_now(&mut self) -> std::io::Result<()> {
        self.dirty_since = None;
        match self.working_set_path() {
            Some(p) => state::write_atomic(&p, state::set_to_json(&self.ws).as_bytes()),
            None => Ok(()),
        }
    }
}

/// An image on the clipboard (as PNG bytes), or image files named by the clipboard's text.
fn read_clipboard(to: DropTarget) -> DialogResult {
    let mut cb = match arboard::Clipboard::new() {
        Ok(c) => c,
        Err(e) => return DialogResult::Nothing(format!("The clipboard cannot be read: {e}")),
    };
    if let Ok(img) = cb.get_image() {
        let rgba =
            image::RgbaImage::from_raw(img.width as u32, img.height as u32, img.bytes.into_owned());
        if let Some(rgba) = rgba {
            let mut png = Vec::new();
            if image::DynamicImage::ImageRgba8(rgba)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .is_ok()
            {
                let source = Source::Bytes {
                    name: "pasted image.png".into(),
                    bytes: png.into(),
                };
                return DialogResult::Pasted(to, vec![source]);
            }
        }
    }
    if let Ok(text) = cb.get_text() {
        let paths = paths_in_text(&text);
        if !paths.is_empty() {
            return DialogResult::Pasted(to, paths.into_iter().map(Source::Path).collect());
        }
    }
    DialogResult::Nothing("The clipboard holds no image and no image file.".into())
}

/// Files named in pasted text: one per line, plain paths or `file://` URIs.
pub fn paths_in_text(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("file://").unwrap_or(l))
        .map(|l| PathBuf::from(l.replace("%20", " ")))
        .filter(|p| p.is_file())
        .collect()
}

/// How long the working set stays unchanged before its preparation starts.
const PREPARE_AFTER: Duration = Duration::from_millis(600);

fn image_input(i: &ImageItem) -> ImageInput {
    ImageInput::Bytes {
        name: i.name.clone(),
        bytes: i.bytes.clone(),
    }
}

impl eframe::App for FlamingoApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
        self.take_dropped_files(ctx);
        self.take_pasted_paths(ctx);
        self.autosave();
        self.prepare_ahead();
        if self.dirty_since.is_some() || self.loading_images > 0 {
            ctx.request_repaint_after(Duration::from_millis(200));
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        // eframe's measure of the previous frame (UI code, tessellation and painting).
        let prev_ms = frame.info().cpu_usage.map(|s| s * 1000.0);
        let t0 = Instant::now();
        let cmds = ui::show(self, ui);
        for c in cmds {
            self.apply(c);
        }
        let ms = prev_ms.unwrap_or(t0.elapsed().as_secs_f32() * 1000.0);
        self.frames.record(ms, self.is_running());
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, &self.settings);
        if let Err(e) = self.save_working_set_now() {
            eprintln!("could not save the working set: {e}");
        }
    }
}

impl FlamingoApp {
    pub fn set_drop_rects(&mut self, examples: egui::Rect, query: egui::Rect) {
        self.drop_rects = [examples, query];
    }

    /// Where the examples panel and the query area were drawn last frame.
    pub fn drop_rects(&self) -> [egui::Rect; 2] {
        self.drop_rects
    }
}

/// Opens the window. `hub_cache` and `model_id` come from the command line.
pub fn run_native(opts: AppOptions) -> eframe::Result<()> {
    // Where the window is drawn by Mesa's software rasterizer (VMs, remote desktops, Xvfb), its
    // threads would compete with the model for every core and stall frames; one is plenty for
    // this UI. A GPU driver ignores the variable, and a user's own setting wins.
    if std::env::var_os("LP_NUM_THREADS").is_none() {
        std::env::set_var("LP_NUM_THREADS", "1");
    }
    let icon = eframe::icon_data::from_png_bytes(samples::ICON_PNG).ok();
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Flamingo — few-shot captioning")
        .with_inner_size([1180.0, 760.0])
        .with_min_inner_size([760.0, 480.0])
        .with_drag_and_drop(true);
    if let Some(icon) = icon {
        viewport = viewport.with_icon(Arc::new(icon));
    }
    let native = eframe::NativeOptions {
        viewport,
        ..Default::default()
    };
    eframe::run_native(
        APP_ID,
        native,
        Box::new(move |cc| Ok(Box::new(FlamingoApp::new(cc, opts)))),
    )
}
