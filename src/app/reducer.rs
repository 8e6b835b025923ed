//! The one place where commands change the app's state ([`FlamingoApp::apply`]), the
//! requests a Generate or a Rank sends, and what arrives from the engine, the image thread
//! and dialogs ([`FlamingoApp::pump`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::engine_status::{ModelState, Notice, Output};
use super::history::{ExportFormat, HistoryEntry};
use super::images::{Loaded, Source, Target};
use super::input::{read_clipboard, DialogResult, PathFor};
use super::state::{self, Example, ImageItem, WorkingSet};
use super::{image_input, Cause, FlamingoApp, PREPARE_AFTER};
use crate::engine::{CaptionRequest, ImageInput, Shot};
use crate::text::prompt::{Task, Templates};

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
    /// Caption the query with 0, 1, 2, … of the enabled examples, side by side.
    RunSweep,
    /// Rescore the current caption with each example left out and with them reversed.
    Ablate,
    /// Where each token of the current caption looked (attention maps).
    Explain,
    /// Continue the current caption from its token `step` replaced by `token` (an
    /// alternative); the caption it came from stays one click away.
    Branch {
        step: usize,
        token: u32,
    },
    /// Back to the caption the current branch came from.
    RestoreOriginal,
    /// Compare with the same set without this example (the variant column).
    GenerateWithout(u64),
    /// Duplicate the working set into a variant to change and compare.
    MakeVariant,
    /// Edit the variant (true) or the working set (false) in the panels.
    EditVariant(bool),
    /// Keep one set (the variant when true) as the working set; the other goes.
    KeepSet {
        variant: bool,
    },
    /// Generate the working set and the variant, one after the other.
    GenerateBoth,
    /// Rank the candidate texts (one per line) for the query.
    Score,
    Stop,
    LoadModel(String),
    /// Pick a model in the menu: its weight format becomes the best that fits when the
    /// current one does not; a model the cache lacks waits for the user's download click
    /// (the current model stays until then).
    SelectModel(String),
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
    /// Pin or unpin the history's entry at this index.
    TogglePin(usize),
    /// Write the history to a file (a save dialog asks where).
    ExportHistory(ExportFormat),
    /// Evaluate the prompt settings on the Evaluate view's labelled folder.
    Evaluate,
    /// Choose the labelled folder to evaluate on (a folder dialog).
    PickEvalFolder,
    /// Examples → From library…: choose a labelled folder (a folder dialog).
    PickLibrary,
    /// Replace the examples by the library's images most like the query (RICES).
    ExamplesFromLibrary(PathBuf),
    /// Write the shown evaluation run's rows to a file (a save dialog asks where).
    ExportEval(ExportFormat),
    /// Forget the history's unpinned entries (undoable).
    ClearHistory,
    /// Use the typed path for what the file dialog was for (where no dialog opens).
    SubmitPath,
    CancelPath,
    /// Bring back the working set as it was before the last removal, new set, opened set,
    /// kept variant or template reset.
    Undo,
}

/// How many earlier working sets Undo can go back to.
const UNDO_STEPS: usize = 20;

impl FlamingoApp {
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
                let name = self
                    .ws
                    .examples
                    .iter()
                    .find(|e| e.id == id)
                    .map(|e| e.image.name.clone())
                    .unwrap_or_default();
                self.remember(format!("remove {name}"));
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
                self.remember("reset the templates".into());
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
            Command::RunSweep => self.run_sweep(),
            Command::Ablate => self.ablate(),
            Command::Explain => self.explain(),
            Command::Branch { step, token } => self.branch(step, token),
            Command::RestoreOriginal => {
                if let Some((original, _)) = self.status.output.branched_from.take() {
                    self.status.output.show(original);
                }
            }
            Command::GenerateWithout(id) => {
                let mut v = self.set_a().clone();
                v.variant = None;
                for e in v.examples.iter_mut().filter(|e| e.id == id) {
                    e.enabled = false;
                }
                self.install_variant(v);
                self.generate_set(true);
            }
            Command::MakeVariant => {
                let mut v = self.set_a().clone();
                v.variant = None;
                self.install_variant(v);
            }
            Command::EditVariant(on) => {
                if on != self.editing_variant && self.ws.variant.is_some() {
                    self.swap_sets();
                }
            }
            Command::KeepSet { variant } => {
                self.remember("keep one set".into());
                if variant != self.editing_variant {
                    self.swap_sets();
                }
                // The set kept is now `ws`; its output is the main one.
                self.ws.variant = None;
                self.editing_variant = false;
                self.status.variant_output = Default::default();
                self.mark_dirty();
            }
            Command::GenerateBoth => {
                self.generate_set(false);
                self.generate_set(true);
            }
            Command::Score => self.score(),
            Command::Stop | Command::CancelDownload => self.engine.cancel(),
            Command::LoadModel(id) => {
                self.status.download_needed = None;
                self.settings.model_id = id.clone();
                self.status.model = ModelState::Loading(id.clone());
                self.status.count_tokens = None;
                self.token_count = None;
                self.engine.load(&id, self.settings.weights, true);
            }
            Command::SelectModel(id) => {
                if let Some(spec) = crate::hub::registry::find(&id) {
                    let machine = crate::platform::total_memory_bytes().unwrap_or(u64::MAX);
                    if crate::engine::memory_needed(spec, self.settings.weights) >= machine {
                        if let Some(f) = crate::engine::default_format(spec, machine) {
                            self.settings.weights = f;
                        }
                    }
                }
                self.settings.model_id = id.clone();
                self.status.download_needed = None;
                self.engine.load(&id, self.settings.weights, false);
            }
            Command::NewSet => {
                self.remember("new set".into());
                self.ws = WorkingSet::new();
                self.editing_variant = false;
                self.status.output = Output::default();
                self.status.variant_output = Output::default();
                self.mark_dirty();
            }
            Command::PickImages(to) => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Images", &["png", "jpg", "jpeg", "webp", "gif", "bmp"])
                    .pick_files();
                self.spawn_dialog(Some(PathFor::Images(to)), async move {
                    dlg.await.map(|v| {
                        DialogResult::Images(to, v.iter().map(|h| h.path().to_path_buf()).collect())
                    })
                });
            }
            Command::PasteImage(to) => {
                // The clipboard can block briefly on X11: read it off the UI thread.
                self.spawn_dialog(None, async move { Some(read_clipboard(to)) });
            }
            Command::OpenSetDialog => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Flamingo prompt set", &["json"])
                    .pick_file();
                self.spawn_dialog(Some(PathFor::Open), async move {
                    dlg.await
                        .map(|h| DialogResult::Open(h.path().to_path_buf()))
                });
            }
            Command::SaveSetDialog => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Flamingo prompt set", &["json"])
                    .set_file_name(format!("examples.{}", state::SET_EXTENSION))
                    .save_file();
                self.spawn_dialog(Some(PathFor::Save), async move {
                    dlg.await
                        .map(|h| DialogResult::Save(h.path().to_path_buf()))
                });
            }
            Command::OpenSet(path) => match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| state::set_from_json(&t))
            {
                Ok(set) => {
                    self.remember(format!("open {}", path.display()));
                    if let Some(run) = &set.run {
                        self.use_run_settings(run);
                    }
                    self.install_set(set);
                    self.status.output = Output::default();
                    self.remember_recent(path);
                    self.mark_dirty();
                }
                Err(e) => self.error(format!("Cannot open {}: {e}", path.display())),
            },
            Command::SaveSet(path) => {
                let json = state::set_to_json(&self.set_to_save());
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
            Command::SubmitPath => {
                if let Some((for_, text)) = self.path_entry.take() {
                    let path = PathBuf::from(text.trim());
                    match for_ {
                        PathFor::Images(to) => self.apply(Command::AddImages {
                            sources: vec![Source::Path(path)],
                            to,
                        }),
                        PathFor::Open => self.apply(Command::OpenSet(path)),
                        PathFor::Save => self.apply(Command::SaveSet(path)),
                        PathFor::Export(fmt) => self.export_history(fmt, &path),
                        PathFor::EvalFolder => self.eval.folder = path.display().to_string(),
                        PathFor::Library => self.apply(Command::ExamplesFromLibrary(path)),
                        PathFor::ExportEval(fmt) => self.export_eval(fmt, &path),
                    }
                }
            }
            Command::CancelPath => self.path_entry = None,
            Command::TogglePin(i) => {
                let h = &mut self.set_mut(false).history;
                if let Some(e) = h.get_mut(i) {
                    e.pinned = !e.pinned;
                    self.mark_unsaved();
                }
            }
            Command::ClearHistory => {
                self.remember("clear the history".into());
                self.set_mut(false).history.retain(|e| e.pinned);
                self.mark_unsaved();
            }
            Command::ExportHistory(fmt) => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("History", &[fmt.extension()])
                    .set_file_name(format!("flamingo-history.{}", fmt.extension()))
                    .save_file();
                self.spawn_dialog(Some(PathFor::Export(fmt)), async move {
                    dlg.await
                        .map(|h| DialogResult::Export(fmt, h.path().to_path_buf()))
                });
            }
            Command::Evaluate => match self.eval.shot_counts() {
                Err(e) => self.error(e),
                Ok(shots) => {
                    let folder = PathBuf::from(self.eval.folder.trim());
                    let spec = crate::engine::EvalSpec {
                        folder: folder.clone(),
                        shots,
                        rices: self.eval.rices,
                        seed: self.eval.seed,
                        caption_templates: self.ws.caption_templates.clone(),
                        vqa_templates: self.ws.vqa_templates.clone(),
                        generation: crate::engine::GenerationConfig {
                            max_new_tokens: self.settings.max_new_tokens,
                            ..self.settings.generation.clone()
                        },
                        batch_size: 1,
                    };
                    let job = self.engine.evaluate(spec);
                    self.eval.start(job, folder);
                }
            },
            Command::PickLibrary => {
                let dlg = rfd::AsyncFileDialog::new().pick_folder();
                self.spawn_dialog(Some(PathFor::Library), async move {
                    dlg.await
                        .map(|h| DialogResult::Library(h.path().to_path_buf()))
                });
            }
            Command::ExamplesFromLibrary(folder) => {
                self.eval.library = Some(folder.clone());
                match &self.ws.query {
                    None => self.error(
                        "Choose a query image first: the examples are the library's images most \
                         like it."
                            .into(),
                    ),
                    Some(q) => {
                        let job = self.engine.pick_examples(
                            folder,
                            image_input(q),
                            self.eval.library_k.max(1),
                            self.ws.task,
                        );
                        self.eval.pick_job = Some(job);
                    }
                }
            }
            Command::PickEvalFolder => {
                let dlg = rfd::AsyncFileDialog::new().pick_folder();
                self.spawn_dialog(Some(PathFor::EvalFolder), async move {
                    dlg.await
                        .map(|h| DialogResult::EvalFolder(h.path().to_path_buf()))
                });
            }
            Command::ExportEval(fmt) => {
                let dlg = rfd::AsyncFileDialog::new()
                    .add_filter("Evaluation", &[fmt.extension()])
                    .set_file_name(format!("flamingo-eval.{}", fmt.extension()))
                    .save_file();
                self.spawn_dialog(Some(PathFor::ExportEval(fmt)), async move {
                    dlg.await
                        .map(|h| DialogResult::ExportEval(fmt, h.path().to_path_buf()))
                });
            }
            Command::Undo => {
                if self.loading_images > 0 {
                    self.error("Images are still being added; undo once they are in.".into());
                } else if let Some((what, ws, editing)) = self.undo.pop() {
                    self.ws = ws;
                    self.editing_variant = editing;
                    self.info(format!("Undone: {what}."));
                    self.mark_dirty();
                }
            }
        }
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
        self.request_of(&self.ws, query)
    }

    /// `ws` as a request with `query` as its query image.
    fn request_of(&self, ws: &WorkingSet, query: ImageInput) -> CaptionRequest {
        let img = image_input;
        CaptionRequest {
            task: ws.task,
            shots: ws
                .examples
                .iter()
                .filter(|e| e.enabled)
                .map(|e| Shot {
                    image: img(&e.image),
                    text: e.text.clone(),
                })
                .collect(),
            query,
            question: ws.question.clone(),
            templates: ws.templates().clone(),
            generation: crate::engine::GenerationConfig {
                max_new_tokens: self.settings.max_new_tokens,
                ..self.settings.generation.clone()
            },
            keep_logits: false,
            media_attention: self.settings.media_attention,
            top_logprobs: crate::engine::ALTERNATIVES,
            forced: Vec::new(),
        }
    }

    /// Once the working set has been still for a moment and the engine is idle, asks it to
    /// prepare what Generate will need (with the query's image when there is one).
    pub(super) fn prepare_ahead(&mut self) {
        let Some(since) = self.prepare_since else {
            return;
        };
        if !self.settings.prepare_ahead || !matches!(self.status.model, ModelState::Ready(_)) {
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
        if !matches!(self.status.model, ModelState::Ready(_)) {
            self.error_about(
                Cause::NoModel,
                "The model is not loaded yet (see Model at the top).".into(),
            );
            return None;
        }
        let mut req = match self.build_request() {
            Ok(r) => r,
            Err(e) if self.ws.query.is_none() => {
                self.error_about(Cause::NoQuery, e);
                return None;
            }
            Err(e) => {
                self.error(e);
                return None;
            }
        };
        self.cap_to_context(&mut req);
        Some(req)
    }

    /// Caps a request's new tokens to what the model's context leaves after its prompt, with
    /// a note (rather than refusing it at Generate).
    fn cap_to_context(&mut self, req: &mut CaptionRequest) {
        let (ModelState::Ready(info), Some(count)) =
            (&self.status.model, &self.status.count_tokens)
        else {
            return;
        };
        let Ok(Ok(n)) = req.prompt().map(|p| count(&p)) else {
            return;
        };
        let room = info.context_len.saturating_sub(n);
        let want = req.generation.max_new_tokens;
        if want > room && room > 0 {
            req.generation.max_new_tokens = room;
            req.generation.min_new_tokens = req.generation.min_new_tokens.min(room);
            self.info(format!(
                "Max new tokens capped to {room} for this request: the prompt takes {n} of the \
                 model's {} tokens.",
                info.context_len
            ));
        }
    }

    fn job_started(&mut self, job: crate::engine::JobId) {
        self.status.job_started(job);
        self.frames.reset();
    }

    fn generate(&mut self) {
        if let Some(req) = self.request_for_job() {
            let asked = self.asked(&req, "working set");
            let job = self.engine.generate(req);
            self.job_started(job);
            self.pending.insert(job, asked);
            self.status.output.made_from = Some(self.fingerprint(&self.ws));
        }
    }

    /// What a request asks, as a history entry without its result.
    fn asked(&self, req: &CaptionRequest, source: &str) -> HistoryEntry {
        HistoryEntry {
            when: 0,
            model_id: self.settings.model_id.clone(),
            weights: self.settings.weights.name().to_string(),
            source: source.to_string(),
            task: req.task,
            prompt: req.prompt().unwrap_or_default(),
            examples: req.shots.iter().map(|s| s.image.name()).collect(),
            query: req.query.name(),
            generation: req.generation.clone(),
            text: String::new(),
            raw_text: String::new(),
            tokens: 0,
            logprob: 0.0,
            seconds: 0.0,
            pinned: false,
        }
    }

    /// What a result depends on in a set: its prompt, its images (by name) and the task.
    pub fn fingerprint(&self, ws: &WorkingSet) -> String {
        let images: Vec<&str> = ws
            .examples
            .iter()
            .filter(|e| e.enabled)
            .map(|e| e.image.name.as_str())
            .chain(ws.query.as_ref().map(|q| q.name.as_str()))
            .collect();
        format!(
            "{:?}\n{}\n{}",
            ws.task,
            ws.prompt().unwrap_or_default(),
            images.join("\n")
        )
    }

    fn export_eval(&mut self, fmt: ExportFormat, path: &std::path::Path) {
        let text = self.eval.render(fmt == ExportFormat::Csv);
        match state::write_atomic(path, text.as_bytes()) {
            Ok(()) => self.info(format!("Exported the evaluation to {}", path.display())),
            Err(e) => self.error(format!("Could not write {}: {e}", path.display())),
        }
    }

    fn export_history(&mut self, fmt: ExportFormat, path: &std::path::Path) {
        let text = fmt.render(&self.set_a().history);
        match state::write_atomic(path, text.as_bytes()) {
            Ok(()) => self.info(format!(
                "Exported {} results to {}",
                self.set_a().history.len(),
                path.display()
            )),
            Err(e) => self.error(format!("Could not write {}: {e}", path.display())),
        }
    }

    /// Decodes as an opened set was saved with; says which model and format made it when
    /// they are not the current ones (the user picks the model: it may be a download).
    fn use_run_settings(&mut self, run: &state::RunSettings) {
        self.settings.max_new_tokens = run.max_new_tokens;
        self.settings.generation = run.generation.clone();
        self.settings.media_attention = run.media_attention;
        if run.model_id != self.settings.model_id || run.weights != self.settings.weights {
            self.info(format!(
                "This set was made with {} in {}; the current model is {} in {}. Pick it in \
                 Model and Weights to reproduce its results.",
                run.model_id, run.weights, self.settings.model_id, self.settings.weights
            ));
        }
    }

    /// Keeps the working set as it is now, for Undo (`what` names the change coming).
    fn remember(&mut self, what: String) {
        self.undo
            .push((what, self.ws.clone(), self.editing_variant));
        if self.undo.len() > UNDO_STEPS {
            self.undo.remove(0);
        }
    }

    /// What Undo would undo.
    pub fn undo_label(&self) -> Option<&str> {
        self.undo.last().map(|(w, _, _)| w.as_str())
    }

    /// The working set (A), wherever it is while the variant is edited.
    pub fn set_a(&self) -> &WorkingSet {
        match (&self.ws.variant, self.editing_variant) {
            (Some(a), true) => a,
            _ => &self.ws,
        }
    }

    /// Set B (the variant, made empty when there is none) when `variant`, else set A,
    /// wherever each is while the panels show one of them (a prompt set's variant images
    /// arrive here).
    fn set_mut(&mut self, variant: bool) -> &mut WorkingSet {
        if variant == self.editing_variant {
            &mut self.ws
        } else {
            self.ws.variant.get_or_insert_with(Default::default)
        }
    }

    /// Makes `v` the variant (B), keeping the working set in the panels.
    fn install_variant(&mut self, v: WorkingSet) {
        if self.editing_variant {
            self.swap_sets();
        }
        self.ws.variant = Some(Box::new(v));
        self.status.variant_output = Output::default();
        self.mark_dirty();
    }

    /// The panels switch between the working set and the variant (and so do the outputs).
    fn swap_sets(&mut self) {
        let Some(mut other) = self.ws.variant.take() else {
            return;
        };
        std::mem::swap(&mut self.ws, &mut other);
        self.ws.variant = Some(other);
        std::mem::swap(&mut self.status.output, &mut self.status.variant_output);
        self.editing_variant = !self.editing_variant;
        self.mark_dirty();
    }

    /// Generates set B (the variant) when `variant`, else set A, into its column. A set
    /// without a query image uses the other's.
    fn generate_set(&mut self, variant: bool) {
        if !matches!(self.status.model, ModelState::Ready(_)) {
            self.error_about(
                Cause::NoModel,
                "The model is not loaded yet (see Model at the top).".into(),
            );
            return;
        }
        // `ws` is the set in the panels; its output is `output`.
        let in_panels = variant == self.editing_variant;
        let (set, other) = match (&self.ws.variant, in_panels) {
            (Some(v), false) => (&**v, &self.ws),
            (Some(v), true) => (&self.ws, &**v),
            (None, _) => (&self.ws, &self.ws),
        };
        if !in_panels && self.ws.variant.is_none() {
            return;
        }
        let Some(query) = set.query.as_ref().or(other.query.as_ref()) else {
            self.error_about(Cause::NoQuery, "Drop a query image first.".into());
            return;
        };
        let mut req = self.request_of(set, image_input(query));
        let made_from = self.fingerprint(set);
        let source = if variant { "variant" } else { "working set" };
        self.cap_to_context(&mut req);
        let asked = self.asked(&req, source);
        let job = self.engine.generate(req);
        self.pending.insert(job, asked);
        let out = if in_panels {
            self.job_started(job);
            &mut self.status.output
        } else {
            self.status.variant_job_started(job);
            &mut self.status.variant_output
        };
        out.made_from = Some(made_from);
    }

    fn run_sweep(&mut self) {
        let n = self.ws.examples.iter().filter(|e| e.enabled).count();
        let counts = match self.ws.sweep.counts_for(n) {
            Ok(c) => c,
            Err(e) => return self.error(format!("Shot sweep: {e}")),
        };
        if let Some(req) = self.request_for_job() {
            let names = self
                .ws
                .examples
                .iter()
                .filter(|e| e.enabled)
                .map(|e| e.image.name.clone())
                .collect();
            let job = self
                .engine
                .sweep(req.clone(), counts.clone(), self.ws.sweep.pick());
            self.pending_sweep = Some((job, req));
            self.status.sweep_started(job, &counts, names);
            self.frames.reset();
        }
    }

    fn ablate(&mut self) {
        let Some(caption) = self.status.output.caption.clone() else {
            return self.error("Generate a caption first: the ablation explains it.".into());
        };
        if caption.tokens.is_empty() {
            return self.error("The caption is empty: there is nothing to explain.".into());
        }
        if let Some(req) = self.request_for_job() {
            let examples = self
                .ws
                .examples
                .iter()
                .filter(|e| e.enabled)
                .map(|e| (e.id, e.image.name.clone()))
                .collect();
            let job = self.engine.ablate(req, caption.token_ids());
            self.status
                .ablation_started(job, caption.raw_text.clone(), examples);
        }
    }

    fn explain(&mut self) {
        let Some(caption) = self.status.output.caption.as_ref().map(|c| c.token_ids()) else {
            return self.error("Generate a caption first: the maps are its tokens'.".into());
        };
        if let Some(req) = self.request_for_job() {
            let job = self.engine.explain(req, caption.clone());
            self.status.attention_started(job, caption);
        }
    }

    fn branch(&mut self, step: usize, token: u32) {
        let Some(current) = self.status.output.caption.clone() else {
            return;
        };
        if step >= current.tokens.len() {
            return;
        }
        let Some(mut req) = self.request_for_job() else {
            return;
        };
        let mut forced: Vec<u32> = current.tokens[..step].iter().map(|t| t.id).collect();
        forced.push(token);
        req.generation.max_new_tokens = req.generation.max_new_tokens.max(forced.len());
        req.forced = forced;
        // The first caption of a chain of branches stays the one to return to.
        let original = self
            .status
            .output
            .branched_from
            .take()
            .unwrap_or((current, step));
        let asked = self.asked(&req, "branch");
        let job = self.engine.generate(req);
        self.job_started(job);
        self.pending.insert(job, asked);
        self.status.output.branched_from = Some((original.0, step));
        self.status.output.made_from = Some(self.fingerprint(&self.ws));
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
            self.error_about(
                Cause::NoCandidates,
                "Type some candidate texts to rank, one per line.".into(),
            );
            return;
        }
        if let Some(req) = self.request_for_job() {
            let job = self.engine.score(req, candidates);
            self.status.ranking_started(job);
            self.frames.reset();
        }
    }

    /// Token count of the current prompt (cached per prompt text).
    pub fn prompt_token_count(&mut self, prompt: &str) -> Option<Result<usize, String>> {
        let count = self.status.count_tokens.as_ref()?;
        if self
            .token_count
            .as_ref()
            .map(|(p, _)| p != prompt)
            .unwrap_or(true)
        {
            self.token_count = Some((prompt.to_string(), count(prompt)));
        }
        self.token_count.as_ref().map(|(_, n)| n.clone())
    }

    /// Applies everything that arrived from the engine, the image thread and dialogs.
    pub fn pump(&mut self) {
        for ev in self.engine.poll() {
            self.on_event(ev);
        }
        let mut repick = None;
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
                    let id = self.next_id;
                    let (set, target) = match target {
                        Target::VariantQuery => (self.set_mut(true), Target::Query),
                        Target::VariantExample { text, enabled } => {
                            (self.set_mut(true), Target::Example { text, enabled })
                        }
                        // Drops and the set's own images: the set in the panels.
                        t => (&mut self.ws, t),
                    };
                    match target {
                        Target::Example { text, enabled } => set.examples.push(Example {
                            id,
                            image: item,
                            text,
                            enabled,
                        }),
                        _ => {
                            set.query = Some(item);
                            // A new query re-picks its examples from the library when asked.
                            if self.eval.follow_query && !self.editing_variant {
                                repick = self.eval.library.clone();
                            }
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
        if let Some(lib) = repick {
            self.apply(Command::ExamplesFromLibrary(lib));
        }
        while let Ok(r) = self.autosave_rx.try_recv() {
            match r {
                Ok(()) => self.autosave_failing = false,
                Err(e) if !self.autosave_failing => {
                    self.autosave_failing = true;
                    self.error(e);
                }
                Err(_) => {}
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
                DialogResult::Export(fmt, p) => self.export_history(fmt, &p),
                DialogResult::EvalFolder(p) => self.eval.folder = p.display().to_string(),
                DialogResult::Library(p) => self.apply(Command::ExamplesFromLibrary(p)),
                DialogResult::ExportEval(fmt, p) => self.export_eval(fmt, &p),
                DialogResult::Unavailable(for_) => {
                    self.error(
                        "No file dialog could be opened on this desktop (it needs \
                         xdg-desktop-portal or zenity). Drop files onto the window, paste them \
                         (Ctrl+V), or type the path below."
                            .into(),
                    );
                    self.offer_path_entry(for_);
                }
            }
        }
    }

    fn on_event(&mut self, ev: crate::engine::Event) {
        use crate::engine::Event;
        // A finished result goes into the working set's history with what it was asked.
        let done = match &ev {
            Event::Finished { job, caption } => self
                .pending
                .remove(job)
                .map(|a| HistoryEntry::finished(a, caption)),
            Event::SweepRowFinished {
                job,
                row,
                result: Ok((caption, _)),
            } => match (&self.pending_sweep, self.status.sweep.rows.get(*row)) {
                (Some((j, req)), Some(r)) if j == job => {
                    let req = crate::engine::with_examples(req, &r.examples);
                    let source = format!("{}-shot sweep row", r.shots);
                    Some(HistoryEntry::finished(self.asked(&req, &source), caption))
                }
                _ => None,
            },
            Event::Cancelled { job } | Event::Failed { job, .. } => {
                self.pending.remove(job);
                None
            }
            _ => None,
        };
        if let Some(e) = done {
            super::history::push(&mut self.set_mut(false).history, e);
            self.mark_unsaved();
        }
        if let Event::ExamplesPicked { job, examples } = &ev {
            if self.eval.pick_job == Some(*job) {
                self.eval.pick_job = None;
                self.remember("examples from the library".into());
                self.ws.examples.clear();
                for (path, text) in examples {
                    self.loading_images += 1;
                    self.loader.submit(
                        Source::Path(path.clone()),
                        Target::Example {
                            text: text.clone(),
                            enabled: true,
                        },
                    );
                }
                self.mark_dirty();
            }
        }
        if let Some(msg) = self.eval.on_event(&ev, &self.ctx) {
            self.error(msg);
        }
        match self.status.apply(ev, self.ws.task) {
            Some(Notice::Loaded) => {
                self.prepare_since = Some(Instant::now());
                self.token_count = None;
            }
            Some(Notice::Ended(outcome, tokens)) => self.frames.log(outcome, tokens),
            Some(Notice::Failed(error)) => self.error(error),
            None => {}
        }
    }
}
