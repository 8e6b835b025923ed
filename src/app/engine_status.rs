//! What the engine has reported, folded into plain state for the panels: the model's state,
//! the download, the running job's output, the last ranking and what was prepared ahead.

use crate::engine::{
    Ablation, AttentionMaps, Caption, Event, JobId, ModelInfo, Prepared, Timings, TokenCounter,
};
use crate::text::prompt::Task;

use super::download_view::DownloadView;

#[derive(Clone, Debug, PartialEq)]
pub enum ModelState {
    NotLoaded,
    Loading(String),
    Ready(ModelInfo),
    Failed {
        model_id: String,
        error: String,
        details: Option<String>,
    },
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
    /// The finished caption, token by token.
    pub caption: Option<Caption>,
    /// When this caption is a branch: the caption it branched from (one click brings it
    /// back) and the step where the chosen alternative was forced.
    pub branched_from: Option<(Caption, usize)>,
    /// What it was made from (the set's [`super::FlamingoApp::fingerprint`]): when the set
    /// has changed since, the output is marked stale.
    pub made_from: Option<String>,
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
            caption: None,
            branched_from: None,
            made_from: None,
        }
    }
}

impl Output {
    fn running(job: JobId) -> Self {
        Self {
            job: Some(job),
            state: RunState::Running,
            ..Default::default()
        }
    }

    /// Shows `caption` as this output's finished result.
    pub fn show(&mut self, caption: Caption) {
        self.raw = caption.raw_text.clone();
        self.answer = caption.text.clone();
        self.tokens = caption.tokens.len();
        self.timings = Some(caption.timings.clone());
        self.caption = Some(caption);
    }
}

/// One row of a shot sweep as the app shows it.
#[derive(Clone, Debug, Default)]
pub struct SweepRowView {
    pub shots: usize,
    /// The examples used (indices among the enabled ones), once the row started.
    pub examples: Vec<usize>,
    /// Streamed text until the row finishes.
    pub raw: String,
    pub caption: Option<Caption>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
    pub started: bool,
}

#[derive(Clone, Debug)]
pub struct SweepView {
    pub job: Option<JobId>,
    pub state: RunState,
    pub rows: Vec<SweepRowView>,
    /// The example names of the set it ran on, by enabled index.
    pub example_names: Vec<String>,
}

impl Default for SweepView {
    fn default() -> Self {
        Self {
            job: None,
            state: RunState::Idle,
            rows: Vec::new(),
            example_names: Vec::new(),
        }
    }
}

/// The attention maps of the working set's caption.
#[derive(Clone, Debug)]
pub struct AttentionView {
    pub job: Option<JobId>,
    pub state: RunState,
    /// The caption's token ids they are for.
    pub caption: Vec<u32>,
    pub maps: Option<AttentionMaps>,
}

impl Default for AttentionView {
    fn default() -> Self {
        Self {
            job: None,
            state: RunState::Idle,
            caption: Vec::new(),
            maps: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AblationView {
    pub job: Option<JobId>,
    pub state: RunState,
    pub progress: (usize, usize),
    /// The caption explained.
    pub caption: String,
    /// The examples it ran with: (id in the working set, name).
    pub examples: Vec<(u64, String)>,
    pub result: Option<Ablation>,
}

impl Default for AblationView {
    fn default() -> Self {
        Self {
            job: None,
            state: RunState::Idle,
            progress: (0, 0),
            caption: String::new(),
            examples: Vec::new(),
            result: None,
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
    /// The variant set's output (compare prompts), beside `output`.
    pub variant_output: Output,
    pub sweep: SweepView,
    pub ablation: AblationView,
    pub attention: AttentionView,
    /// The last ranking of candidates, best first: (text, summed log-probability).
    pub ranked: Vec<(String, f32, usize)>,
    /// The ranking job (its own: a ranking leaves the caption in Output alone).
    pub ranking_job: Option<JobId>,
    pub ranking_state: RunState,
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
            variant_output: Output::default(),
            sweep: SweepView::default(),
            ablation: AblationView::default(),
            attention: AttentionView::default(),
            ranked: Vec::new(),
            ranking_job: None,
            ranking_state: RunState::Idle,
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
        [
            &self.output.state,
            &self.variant_output.state,
            &self.sweep.state,
            &self.ablation.state,
            &self.attention.state,
            &self.ranking_state,
        ]
        .contains(&&RunState::Running)
    }

    /// A new job started: its output replaces the last one.
    pub fn job_started(&mut self, job: JobId) {
        self.output = Output::running(job);
    }

    /// A generation for the variant set started.
    pub fn variant_job_started(&mut self, job: JobId) {
        self.variant_output = Output::running(job);
    }

    /// A shot sweep started with these counts over the named examples.
    pub fn sweep_started(&mut self, job: JobId, counts: &[usize], example_names: Vec<String>) {
        self.sweep = SweepView {
            job: Some(job),
            state: RunState::Running,
            rows: counts
                .iter()
                .map(|&shots| SweepRowView {
                    shots,
                    ..Default::default()
                })
                .collect(),
            example_names,
        };
    }

    pub fn ablation_started(&mut self, job: JobId, caption: String, examples: Vec<(u64, String)>) {
        self.ablation = AblationView {
            job: Some(job),
            state: RunState::Running,
            caption,
            examples,
            ..Default::default()
        };
    }

    pub fn ranking_started(&mut self, job: JobId) {
        self.ranking_job = Some(job);
        self.ranking_state = RunState::Running;
        self.ranked.clear();
    }

    pub fn attention_started(&mut self, job: JobId, caption: Vec<u32>) {
        self.attention = AttentionView {
            job: Some(job),
            state: RunState::Running,
            caption,
            maps: None,
        };
    }

    /// The output a generation job writes to (the working set's or the variant's).
    fn output_of(&mut self, job: JobId) -> Option<&mut Output> {
        if self.output.job == Some(job) {
            Some(&mut self.output)
        } else if self.variant_output.job == Some(job) {
            Some(&mut self.variant_output)
        } else {
            None
        }
    }

    /// The run state of whichever view job `job` belongs to.
    fn state_of(&mut self, job: JobId) -> Option<&mut RunState> {
        if self.sweep.job == Some(job) {
            Some(&mut self.sweep.state)
        } else if self.ablation.job == Some(job) {
            Some(&mut self.ablation.state)
        } else if self.attention.job == Some(job) {
            Some(&mut self.attention.state)
        } else if self.ranking_job == Some(job) {
            Some(&mut self.ranking_state)
        } else {
            self.output_of(job).map(|o| &mut o.state)
        }
    }

    /// Folds one event in (`task`: the working set's, for post-processing streamed text).
    pub fn apply(&mut self, ev: Event, task: Task) -> Option<Notice> {
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
            Event::LoadFailed {
                model_id,
                error,
                details,
            } => {
                self.download = None;
                self.model = ModelState::Failed {
                    model_id,
                    error,
                    details,
                };
            }
            Event::Started { job, prompt_tokens } => {
                if let Some(o) = self.output_of(job) {
                    o.prompt_tokens = prompt_tokens;
                }
            }
            Event::Token {
                job,
                text,
                n_tokens,
                since_start_s,
            } => {
                if let Some(o) = self.output_of(job) {
                    o.raw.push_str(&text);
                    o.answer = crate::text::prompt::answer(task, &o.raw);
                    o.tokens = n_tokens;
                    o.first_token_s.get_or_insert(since_start_s);
                    o.last_token_s = Some(since_start_s);
                }
            }
            Event::Finished { job, caption } => {
                if let Some(o) = self.output_of(job) {
                    let n = caption.tokens.len();
                    o.show(caption);
                    o.state = RunState::Done;
                    return Some(Notice::Ended("done", n));
                }
            }
            Event::SweepRowStarted { job, row, examples } if self.sweep.job == Some(job) => {
                if let Some(r) = self.sweep.rows.get_mut(row) {
                    r.started = true;
                    r.examples = examples;
                }
            }
            Event::SweepText { job, row, text } if self.sweep.job == Some(job) => {
                if let Some(r) = self.sweep.rows.get_mut(row) {
                    r.raw.push_str(&text);
                }
            }
            Event::SweepRowFinished { job, row, result } if self.sweep.job == Some(job) => {
                if let Some(r) = self.sweep.rows.get_mut(row) {
                    match result {
                        Ok((caption, seconds)) => {
                            r.raw = caption.raw_text.clone();
                            r.caption = Some(caption);
                            r.seconds = Some(seconds);
                        }
                        Err(e) => r.error = Some(e),
                    }
                }
            }
            Event::SweepFinished { job } if self.sweep.job == Some(job) => {
                self.sweep.state = RunState::Done;
                let n = self.sweep.rows.len();
                return Some(Notice::Ended("done", n));
            }
            Event::AblateProgress { job, done, total } if self.ablation.job == Some(job) => {
                self.ablation.progress = (done, total);
            }
            Event::Ablated { job, ablation } if self.ablation.job == Some(job) => {
                self.ablation.result = Some(ablation);
                self.ablation.state = RunState::Done;
            }
            Event::Explained { job, maps } if self.attention.job == Some(job) => {
                self.attention.maps = Some(maps);
                self.attention.state = RunState::Done;
            }
            Event::Prepared(p) => self.prepared = Some(p),
            Event::Scored { job, ranked } if self.ranking_job == Some(job) => {
                self.ranked = ranked;
                self.ranking_state = RunState::Done;
            }
            Event::Cancelled { job } => {
                let tokens = self.output_of(job).map(|o| o.tokens).unwrap_or(0);
                if let Some(st) = self.state_of(job) {
                    *st = RunState::Stopped;
                    return Some(Notice::Ended("stopped", tokens));
                }
            }
            Event::Failed { job, error } => {
                if let Some(st) = self.state_of(job) {
                    *st = RunState::Failed(error.clone());
                    return Some(Notice::Failed(error));
                }
            }
            _ => {}
        }
        None
    }
}
