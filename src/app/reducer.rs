//! The one place where commands change the app's state ([`FlamingoApp::apply`]), the
//! requests a Generate or a Rank sends, and what arrives from the engine, the image thread
//! and dialogs ([`FlamingoApp::pump`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use super::engine_status::{ModelState, Notice, Output};
use super::images::{Loaded, Source, Target};
use super::input::{read_clipboard, DialogResult};
use super::state::{self, Example, ImageItem, WorkingSet};
use super::{image_input, FlamingoApp, PREPARE_AFTER};
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
}

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
                self.ws = WorkingSet::new();
                self.status.output = Output::default();
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
                    self.status.output = Output::default();
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
            generation: crate::engine::GenerationConfig {
                max_new_tokens: self.settings.max_new_tokens,
                ..self.settings.generation.clone()
            },
            keep_logits: false,
            media_attention: self.settings.media_attention,
            top_logprobs: 0,
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
            self.error("The model is not loaded yet (see Model at the top).".into());
            return None;
        }
        self.build_request().map_err(|e| self.error(e)).ok()
    }

    fn job_started(&mut self, job: crate::engine::JobId) {
        self.status.job_started(job);
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
            self.status.ranked.clear();
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

    fn on_event(&mut self, ev: crate::engine::Event) {
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
