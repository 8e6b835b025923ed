//! The desktop app (egui only). The user's work is plain state ([`state::WorkingSet`],
//! [`state::Settings`]); what the engine reports is folded into [`EngineStatus`]. UI functions
//! return [`Command`]s that [`FlamingoApp::apply`] carries out in one place; the model runs on
//! the engine thread, images are read on the image thread, and both wake the UI with
//! `request_repaint`. The app never touches a tensor or a model: it talks to the engine with
//! requests and events of plain data.
//!
//! Rooms: `reducer` (commands, requests, events), `persistence` (working set and settings on
//! disk), `input` (drops, paste, dialogs), `engine_status`, `download_view`, `diagnostics`
//! (frame times), `state` (the working set and the prompt-set file), `images` (the image
//! thread), `ui` (the panels), `icl_view` (the caption token by token, the variant beside it,
//! the shot sweep, what each example did).

mod diagnostics;
mod download_view;
mod engine_status;
pub mod eval_view;
pub mod history;
mod history_view;
mod icl_view;
pub mod images;
mod input;
pub mod persistence;
mod reducer;
pub mod samples;
pub mod state;
mod top_bar;
mod ui;
pub use ui::PRESENT_ZOOM;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::engine::{Engine, EngineConfig, ImageInput};
use crate::types::WeightFormat;
pub use diagnostics::FrameStats;
pub use download_view::DownloadView;
pub use engine_status::{EngineStatus, ModelState, Output, RunState};
use images::ImageLoader;
pub use input::{paths_in_text, PathFor};
pub use reducer::{Command, DropTarget};
use state::{ImageItem, Settings, WorkingSet};

pub const APP_ID: &str = "Flamingo";

/// How long the working set stays unchanged before its preparation starts.
const PREPARE_AFTER: Duration = Duration::from_millis(600);

#[derive(Clone, Debug)]
pub struct Message {
    pub text: String,
    pub error: bool,
    pub at: Instant,
    /// What it is about: it goes once that is fixed.
    pub cause: Option<Cause>,
}

/// A message's cause, checked every frame: the message goes when it no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    NoModel,
    NoQuery,
    NoCandidates,
}

/// How long a message that is not an error stays on screen.
const INFO_FOR: Duration = Duration::from_secs(10);

/// How the app is started (tests point it at fixture caches and temporary folders).
#[derive(Clone, Debug, Default)]
pub struct AppOptions {
    /// Folder for the working set and the settings; None = the app's data folder.
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
    pub weights: Option<WeightFormat>,
    /// Hide what changes from run to run (timings, memory) so screenshots compare.
    pub stable_for_snapshots: bool,
}

pub struct FlamingoApp {
    /// Persisted: the settings and the user's working set.
    pub settings: Settings,
    pub ws: WorkingSet,
    /// What the engine reported.
    pub status: EngineStatus,
    /// Shown to the user.
    pub messages: Vec<Message>,
    pub frames: FrameStats,
    pub loading_images: usize,
    /// The Evaluate view's inputs and runs.
    pub eval: eval_view::EvalState,
    engine: Engine,
    loader: ImageLoader,
    token_count: Option<(String, Result<usize, String>)>,
    data_dir: Option<PathBuf>,
    dirty_since: Option<Instant>,
    /// The working set or model changed at this time and the engine has not been asked to
    /// prepare for it yet.
    prepare_since: Option<Instant>,
    next_id: u64,
    dialog_tx: Sender<input::DialogResult>,
    dialog_rx: Receiver<input::DialogResult>,
    drop_rects: [egui::Rect; 2],
    ctx: egui::Context,
    pub(crate) stable_for_snapshots: bool,
    /// The panels show the variant (set B) and `ws` is it; the working set (A) is inside it.
    pub editing_variant: bool,
    /// The output token whose alternatives are shown (to branch from).
    pub selected_token: Option<usize>,
    /// The output token last under the pointer (its attention maps are shown).
    pub hovered_token: Option<usize>,
    /// Earlier working sets for Undo: what changed, the set, whether the variant was edited.
    undo: Vec<(String, WorkingSet, bool)>,
    /// A path typed where no file dialog opens: what it is for and the text so far.
    pub(crate) path_entry: Option<(input::PathFor, String)>,
    /// What each running generation was asked, for its history entry.
    pending: std::collections::HashMap<crate::engine::JobId, history::HistoryEntry>,
    /// The running sweep's job and request (its rows go into the history).
    pending_sweep: Option<(crate::engine::JobId, crate::engine::CaptionRequest)>,
    /// This window's claim on the data folder (None: another window has it; nothing saved).
    data_lock: Option<persistence::DataLock>,
    /// Autosave results (from its thread): an error is shown once until a save succeeds.
    autosave_tx: Sender<Result<(), String>>,
    autosave_rx: Receiver<Result<(), String>>,
    autosave_failing: bool,
}

impl FlamingoApp {
    pub fn new(cc: &eframe::CreationContext<'_>, opts: AppOptions) -> Self {
        let data_dir = opts.data_dir.clone().or_else(persistence::default_data_dir);
        let mut settings = data_dir
            .as_deref()
            .map(persistence::read_settings)
            .unwrap_or_default();
        if let Some(m) = &opts.model_id {
            settings.model_id = m.clone();
        }
        if let Some(w) = opts.weights {
            settings.weights = w;
        }
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
                endpoint: opts.hub_endpoint.clone(),
                offline: opts.offline,
            },
            waker.clone(),
        );
        let loader = ImageLoader::start(waker);
        let (dialog_tx, dialog_rx) = crossbeam_channel::unbounded();
        let (autosave_tx, autosave_rx) = crossbeam_channel::unbounded();
        let mut app = Self {
            settings,
            ws: WorkingSet::new(),
            status: EngineStatus::default(),
            messages: Vec::new(),
            frames: FrameStats::default(),
            loading_images: 0,
            eval: eval_view::EvalState::default(),
            engine,
            loader,
            token_count: None,
            data_dir,
            dirty_since: None,
            prepare_since: None,
            next_id: 1,
            dialog_tx,
            dialog_rx,
            drop_rects: [egui::Rect::NOTHING; 2],
            ctx,
            stable_for_snapshots: opts.stable_for_snapshots,
            editing_variant: false,
            selected_token: None,
            hovered_token: None,
            undo: Vec::new(),
            path_entry: None,
            pending: Default::default(),
            pending_sweep: None,
            data_lock: None,
            autosave_tx,
            autosave_rx,
            autosave_failing: false,
        };
        app.lock_data_dir();
        app.restore_working_set();
        if opts.autoload {
            // A model the cache lacks waits for the user's click (DownloadNeeded).
            app.engine
                .load(&app.settings.model_id, app.settings.weights, false);
        }
        app
    }

    pub fn info(&mut self, text: String) {
        self.push_message(text, false, None);
    }

    pub fn error(&mut self, text: String) {
        self.push_message(text, true, None);
    }

    /// The working set changed in what it keeps (its history) but not in what a prompt is
    /// made of: saved soon, nothing prepared again.
    pub fn mark_unsaved(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    /// An error about `cause`: it replaces an earlier one about the same, and goes by itself
    /// once the cause is fixed.
    pub fn error_about(&mut self, cause: Cause, text: String) {
        self.messages.retain(|m| m.cause != Some(cause));
        self.push_message(text, true, Some(cause));
    }

    fn push_message(&mut self, text: String, error: bool, cause: Option<Cause>) {
        // The same message again (a second click) is not stacked.
        self.messages.retain(|m| m.text != text);
        self.messages.push(Message {
            text,
            error,
            at: Instant::now(),
            cause,
        });
    }

    /// Drops the messages whose cause is fixed.
    fn clear_fixed_messages(&mut self) {
        let ready = matches!(self.status.model, ModelState::Ready(_));
        let (query, candidates) = (
            self.ws.query.is_some(),
            !self.ws.candidates.trim().is_empty(),
        );
        self.messages.retain(|m| match m.cause {
            Some(Cause::NoModel) => !ready,
            Some(Cause::NoQuery) => !query,
            Some(Cause::NoCandidates) => !candidates,
            None => true,
        });
    }

    /// The messages to show now: errors until dismissed, the others for a while (all of
    /// them for snapshots).
    pub fn visible_messages(&self) -> Vec<(usize, &Message)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(_, m)| m.error || self.stable_for_snapshots || m.at.elapsed() < INFO_FOR)
            .collect()
    }

    pub fn mark_dirty(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
        // Restarted by every change: nothing is prepared while the user is still typing.
        self.prepare_since = Some(Instant::now());
    }

    pub fn is_running(&self) -> bool {
        self.status.is_running() || self.eval.is_running()
    }

    pub fn set_drop_rects(&mut self, examples: egui::Rect, query: egui::Rect) {
        self.drop_rects = [examples, query];
    }

    /// Whether this window saves into its data folder (no other window holds it).
    pub fn saves_working_set(&self) -> bool {
        self.data_lock.is_some()
    }

    /// Offers a path field for what a file dialog was for (where no dialog opens).
    pub fn offer_path_entry(&mut self, for_: PathFor) {
        self.path_entry = Some((for_, String::new()));
    }

    /// Where the examples panel and the query area were drawn last frame.
    pub fn drop_rects(&self) -> [egui::Rect; 2] {
        self.drop_rects
    }
}

fn image_input(i: &ImageItem) -> ImageInput {
    ImageInput::Bytes {
        name: i.name.clone(),
        bytes: i.bytes.clone(),
    }
}

impl eframe::App for FlamingoApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
        self.clear_fixed_messages();
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

    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        if let Err(e) = self.save_now() {
            tracing::warn!("could not save the working set or the settings: {e}");
        }
    }
}

/// Opens the window.
pub fn run_native(opts: AppOptions) -> eframe::Result<()> {
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
