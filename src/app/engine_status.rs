//! What the engine has reported, folded into plain state for the panels: the model's state,
//! the download, the running job's output, the last ranking and what was prepared ahead.

use crate::engine::{Event, JobId, ModelInfo, Prepared, Timings, TokenCounter};
use crate::text::prompt::Task;

use super::download_view::DownloadView;

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

/// Everything the engine reported.
pub struct EngineStatus {
    pub model: ModelState,
    /// Progress of the model's download while it is fetched.
    pub download: Option<DownloadView>,
    /// The chosen model is not cached: its download (this many GB; the cache's disk has this
    /// much free) waits for a click.
    pub download_needed: Option<(f64, Option<u64>)>,
    pub output: Output,
    /// The last ranking of candidates, best first: (text, summed log-probability).
    pub ranked: Vec<(String, f32)>,
    /// What the last preparation did (status bar).
    pub prepared: Option<Prepared>,
    /// Counts a prompt's tokens with the loaded model's tokenizer.
    pub count_tokens: Option<TokenCounter>,
}

impl Default for EngineStatus {
    fn default() -> Self {
        Self {
            model: ModelState::NotLoaded,
            download: None,
            download_needed: None,
            output: Output::default(),
            ranked: Vec::new(),
            prepared: None,
            count_tokens: None,
        }
    }
}

/// What an event means for the rest of the app.
pub enum Notice {
    /// A model is ready: work ahead can start.
    Loaded,
    /// The running job ended ("done" or "stopped") after this many tokens.
    Ended(&'static str, usize),
    /// The running job failed.
    Failed(String),
}

impl EngineStatus {
    pub fn is_running(&self) -> bool {
        self.output.state == RunState::Running
    }

    /// A new job started: its output replaces the last one.
    pub fn job_started(&mut self, job: JobId) {
        self.output = Output {
            job: Some(job),
            state: RunState::Running,
            ..Default::default()
        };
    }

    /// Folds one event in (`task`: the working set's, for post-processing streamed text).
    pub fn apply(&mut self, ev: Event, task: Task) -> Option<Notice> {
        let mine = |job: JobId, out: &Output| out.job == Some(job);
        match ev {
            Event::Loading { model_id } => {
                self.download_needed = None;
                self.model = ModelState::Loading(model_id);
            }
            Event::DownloadNeeded {
                download_gb,
                free_bytes,
                ..
            } => {
                self.download_needed = Some((download_gb, free_bytes));
            }
            Event::Download(e) => self.download.get_or_insert_default().apply(e),
            Event::Loaded { info, count_tokens } => {
                self.prepared = None;
                self.download = None;
                self.model = ModelState::Ready(info);
                self.count_tokens = Some(count_tokens);
                return Some(Notice::Loaded);
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
                self.output.answer = crate::text::prompt::answer(task, &self.output.raw);
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
                return Some(Notice::Ended("done", tokens));
            }
            Event::Prepared(p) => self.prepared = Some(p),
            Event::Scored { job, ranked } if mine(job, &self.output) => {
                self.ranked = ranked;
                self.output.state = RunState::Done;
            }
            Event::Cancelled { job } if mine(job, &self.output) => {
                self.output.state = RunState::Stopped;
                return Some(Notice::Ended("stopped", self.output.tokens));
            }
            Event::Failed { job, error } if mine(job, &self.output) => {
                self.output.state = RunState::Failed(error.clone());
                return Some(Notice::Failed(error));
            }
            _ => {}
        }
        None
    }
}
