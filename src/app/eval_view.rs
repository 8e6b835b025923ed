//! The Evaluate view: a labelled folder captioned at each shot count, a table of every
//! prediction with its references and score (sortable), and the score against shots, one
//! line per run (random examples or RICES). A stopped run keeps what it made.

use std::collections::HashMap;
use std::path::PathBuf;

use crossbeam_channel::{Receiver, Sender};
use egui::{RichText, Ui};

use super::{Command, FlamingoApp};
use crate::engine::{Event, JobId};
use crate::eval::{self, EvalReport, Metric, Prediction};
use crate::text::prompt::Task;

const THUMB: u32 = 40;

/// Which column the table is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvalSort {
    #[default]
    Image,
    Shots,
    Score,
}

/// The state of one run.
#[derive(Clone, Debug, PartialEq)]
pub enum RunPhase {
    Running,
    Done,
    Stopped,
    Failed(String),
}

pub struct EvalRun {
    pub job: JobId,
    pub label: String,
    pub task: Task,
    pub folder: PathBuf,
    pub rows: Vec<Prediction>,
    pub failed: Vec<String>,
    pub done: usize,
    pub total: usize,
    pub phase: RunPhase,
    /// The scores of `rows`: recomputed at most once a second while rows come in (CIDEr-D
    /// scores the whole corpus each time, on the UI thread) and always when the run ends.
    pub report: Option<EvalReport>,
    /// How many rows `report` covers, and when it was computed.
    scored: (usize, Option<std::time::Instant>),
    images: HashMap<String, PathBuf>,
}

impl EvalRun {
    fn rescore(&mut self, now: bool) {
        let due = self
            .scored
            .1
            .is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
        if self.rows.len() != self.scored.0 && (now || due) {
            self.report = (!self.rows.is_empty()).then(|| eval::score(self.task, &self.rows));
            self.scored = (self.rows.len(), Some(std::time::Instant::now()));
        }
    }

    /// Each row's own score (its place in its shot count's group).
    pub fn row_scores(&self) -> Vec<f64> {
        let Some(r) = &self.report else {
            return vec![0.0; self.rows.len()];
        };
        let mut next: HashMap<Option<usize>, usize> = HashMap::new();
        self.rows
            .iter()
            .map(|p| {
                let i = next.entry(p.shots).or_insert(0);
                let s = r
                    .results
                    .iter()
                    .find(|g| g.shots == p.shots)
                    .and_then(|g| g.per_item.get(*i).copied())
                    .unwrap_or(0.0);
                *i += 1;
                s
            })
            .collect()
    }
}

/// The view's inputs and runs.
pub struct EvalState {
    pub folder: String,
    pub shots: String,
    pub rices: bool,
    pub seed: u64,
    pub runs: Vec<EvalRun>,
    /// The run whose rows the table shows.
    pub shown: usize,
    pub sort: EvalSort,
    /// Examples → From library: the labelled folder RICES picks the examples from, how many,
    /// whether a new query picks them again, and the running pick.
    pub library: Option<PathBuf>,
    pub library_k: usize,
    pub follow_query: bool,
    pub pick_job: Option<JobId>,
    thumbs: HashMap<PathBuf, egui::TextureHandle>,
    thumb_tx: Sender<(PathBuf, egui::ColorImage)>,
    thumb_rx: Receiver<(PathBuf, egui::ColorImage)>,
}

impl Default for EvalState {
    fn default() -> Self {
        let (thumb_tx, thumb_rx) = crossbeam_channel::unbounded();
        Self {
            folder: String::new(),
            shots: "0,2,4".into(),
            rices: false,
            seed: 0,
            runs: Vec::new(),
            shown: 0,
            sort: EvalSort::default(),
            library: None,
            library_k: 4,
            follow_query: false,
            pick_job: None,
            thumbs: HashMap::new(),
            thumb_tx,
            thumb_rx,
        }
    }
}

impl EvalState {
    pub fn is_running(&self) -> bool {
        self.runs.iter().any(|r| r.phase == RunPhase::Running)
    }

    /// The shot counts typed, or what is wrong with them.
    pub fn shot_counts(&self) -> Result<Vec<usize>, String> {
        let mut v = Vec::new();
        for part in self
            .shots
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let n: usize = part
                .parse()
                .map_err(|_| format!("`{part}` is not a number of shots"))?;
            if n > 32 {
                return Err(format!("{n} shots is more than 32"));
            }
            if !v.contains(&n) {
                v.push(n);
            }
        }
        if v.is_empty() {
            return Err("give at least one shot count, like 0,2,4".into());
        }
        Ok(v)
    }

    pub fn start(&mut self, job: JobId, folder: PathBuf) {
        // Numbered, so that two runs of the same source (a prompt before and after a change)
        // are two lines of their own.
        let source = if self.rices {
            "RICES".to_string()
        } else {
            format!("random, seed {}", self.seed)
        };
        let label = format!("run {} ({source})", self.runs.len() + 1);
        self.runs.push(EvalRun {
            job,
            label,
            task: Task::Caption,
            folder,
            rows: Vec::new(),
            failed: Vec::new(),
            done: 0,
            total: 0,
            phase: RunPhase::Running,
            report: None,
            scored: (0, None),
            images: HashMap::new(),
        });
        self.shown = self.runs.len() - 1;
    }

    fn run_of(&mut self, job: JobId) -> Option<&mut EvalRun> {
        self.runs.iter_mut().find(|r| r.job == job)
    }

    /// Takes the engine's evaluation events; returns a message for the user, if any.
    pub fn on_event(&mut self, ev: &Event, ctx: &egui::Context) -> Option<String> {
        match ev {
            Event::EvalStarted {
                job,
                task,
                items,
                total,
                problems,
            } => {
                let tx = self.thumb_tx.clone();
                let run = self.run_of(*job)?;
                run.task = *task;
                run.total = *total;
                run.images = items.iter().cloned().collect();
                let paths: Vec<PathBuf> = items.iter().map(|(_, p)| p.clone()).collect();
                let ctx = ctx.clone();
                let _ = std::thread::Builder::new()
                    .name("flamingo-eval-thumbs".into())
                    .spawn(move || {
                        for p in paths {
                            let Ok(bytes) = std::fs::read(&p) else {
                                continue;
                            };
                            let name = p.display().to_string();
                            if let Ok(rgb) = crate::image::decode_rgb(&bytes, &name) {
                                let t = super::images::fit_within(&rgb, THUMB);
                                let img = egui::ColorImage::from_rgb(
                                    [t.width() as usize, t.height() as usize],
                                    t.as_raw(),
                                );
                                if tx.send((p, img)).is_err() {
                                    return;
                                }
                                ctx.request_repaint();
                            }
                        }
                    });
                (!problems.is_empty()).then(|| {
                    format!(
                        "{} label row(s) skipped; the first: {}",
                        problems.len(),
                        problems[0]
                    )
                })
            }
            Event::EvalRow {
                job,
                prediction,
                done,
                total,
            } => {
                let run = self.run_of(*job)?;
                run.rows.push(prediction.clone());
                run.done = *done;
                run.total = *total;
                run.rescore(false);
                None
            }
            Event::EvalItemFailed {
                job,
                image,
                shots,
                error,
            } => {
                let run = self.run_of(*job)?;
                run.failed.push(format!("{image} ({shots} shots): {error}"));
                None
            }
            Event::EvalFinished { job } => {
                let run = self.run_of(*job)?;
                run.phase = RunPhase::Done;
                run.done = run.total;
                run.rescore(true);
                None
            }
            Event::Cancelled { job } => {
                let run = self.run_of(*job)?;
                run.phase = RunPhase::Stopped;
                run.rescore(true);
                None
            }
            Event::Failed { job, error } => {
                let run = self.run_of(*job)?;
                run.phase = RunPhase::Failed(error.clone());
                run.rescore(true);
                Some(format!("The evaluation failed: {error}"))
            }
            _ => None,
        }
    }

    fn take_thumbs(&mut self, ctx: &egui::Context) {
        while let Ok((p, img)) = self.thumb_rx.try_recv() {
            let tex = ctx.load_texture(
                format!("eval-thumb-{}", p.display()),
                img,
                egui::TextureOptions::LINEAR,
            );
            self.thumbs.insert(p, tex);
        }
    }

    /// The shown run's rows as JSON lines or CSV (with each row's score).
    pub fn render(&self, csv: bool) -> String {
        let Some(run) = self.runs.get(self.shown) else {
            return String::new();
        };
        let scores = run.row_scores();
        let mut out = String::new();
        if csv {
            out.push_str("image,question,shots,prediction,references,score\n");
        }
        for (p, s) in run.rows.iter().zip(scores) {
            if csv {
                let q = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
                out.push_str(&format!(
                    "{},{},{},{},{},{s}\n",
                    q(&p.image),
                    q(p.question.as_deref().unwrap_or("")),
                    p.shots.map_or(String::new(), |k| k.to_string()),
                    q(&p.prediction),
                    q(&p.references.join(" | ")),
                ));
            } else {
                let mut v = serde_json::to_value(p).unwrap_or_default();
                v["score"] = serde_json::json!(s);
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
        out
    }
}

fn metric_text(m: Metric, s: f64) -> String {
    match m {
        Metric::CiderD => format!("{s:.3}"),
        Metric::VqaAccuracy => format!("{:.1} %", 100.0 * s),
    }
}

pub fn evaluate_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    let ctx = ui.ctx().clone();
    app.eval.take_thumbs(&ctx);
    let loaded = matches!(app.status.model, super::ModelState::Ready(_));
    let busy = app.is_running();
    egui::CollapsingHeader::new("Evaluate on a labelled folder")
        .id_salt("evaluate")
        .default_open(false)
        .show(ui, |ui| {
            let st = &mut app.eval;
            ui.label(
                "Score the prompt on your own labelled folder: captions.jsonl or .csv, COCO or \
                 VQAv2 JSON, or a .txt caption beside each image.",
            );
            ui.horizontal(|ui| {
                let l = ui.label("Labelled folder:");
                ui.add(
                    egui::TextEdit::singleline(&mut st.folder)
                        .hint_text("/path/to/folder")
                        .desired_width(320.0),
                )
                .labelled_by(l.id);
                if ui.button("Choose…").clicked() {
                    cmds.push(Command::PickEvalFolder);
                }
            });
            ui.horizontal(|ui| {
                let l = ui.label("Shots:");
                ui.add(egui::TextEdit::singleline(&mut st.shots).desired_width(80.0))
                    .labelled_by(l.id);
                ui.label("Examples:");
                ui.selectable_value(&mut st.rices, false, "random");
                ui.selectable_value(&mut st.rices, true, "RICES (most similar)");
                if !st.rices {
                    let l = ui.label("seed");
                    ui.add(egui::DragValue::new(&mut st.seed)).labelled_by(l.id);
                }
            });
            let counts = st.shot_counts();
            ui.horizontal(|ui| {
                let ready = loaded && !busy && counts.is_ok() && !st.folder.trim().is_empty();
                if ui
                    .add_enabled(ready, egui::Button::new("Evaluate"))
                    .on_disabled_hover_text(if !loaded {
                        "Load a model first."
                    } else if busy {
                        "Wait for the running job (or stop it)."
                    } else {
                        "Choose a labelled folder and shot counts."
                    })
                    .clicked()
                {
                    cmds.push(Command::Evaluate);
                }
                if st.is_running() && ui.button("Stop").clicked() {
                    cmds.push(Command::Stop);
                }
                if let Err(e) = &counts {
                    ui.colored_label(ui.visuals().warn_fg_color, e);
                }
            });
            if st.runs.is_empty() {
                return;
            }
            let run = &st.runs[st.shown.min(st.runs.len() - 1)];
            let frac = if run.total == 0 {
                0.0
            } else {
                run.done as f32 / run.total as f32
            };
            let phase = match &run.phase {
                RunPhase::Running => "running".to_string(),
                RunPhase::Done => "done".into(),
                RunPhase::Stopped => "stopped; what was made is kept".into(),
                RunPhase::Failed(e) => format!("failed: {e}"),
            };
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(format!("{} of {} ({phase})", run.done, run.total)),
            );
            curve(st, ui);
            table(st, ui, cmds);
        });
}

/// Score against shots, one line per run.
fn curve(st: &EvalState, ui: &mut Ui) {
    let metric = st
        .runs
        .iter()
        .find_map(|r| r.report.as_ref().map(|r| r.metric))
        .unwrap_or(Metric::CiderD);
    let mut summary = Vec::new();
    for r in &st.runs {
        if let Some(rep) = &r.report {
            let parts: Vec<String> = rep
                .results
                .iter()
                .map(|s| {
                    format!(
                        "{}-shot {} (n={})",
                        s.shots.unwrap_or(0),
                        metric_text(metric, s.score),
                        s.n
                    )
                })
                .collect();
            summary.push(format!("{}: {}", r.label, parts.join(", ")));
        }
    }
    ui.label(RichText::new(format!("{} against shots", metric.label())).strong());
    for s in &summary {
        ui.label(s);
    }
    let warnings = st
        .runs
        .iter()
        .filter_map(|r| r.report.as_ref())
        .flat_map(|r| r.warnings.iter());
    for w in warnings {
        ui.colored_label(ui.visuals().warn_fg_color, w);
    }
    egui_plot::Plot::new("eval-curve")
        .height(180.0)
        .legend(egui_plot::Legend::default())
        .x_axis_label("shots")
        .y_axis_label(metric.label())
        .allow_scroll(false)
        .show(ui, |plot| {
            for r in &st.runs {
                let Some(rep) = &r.report else { continue };
                let pts: Vec<[f64; 2]> = rep
                    .results
                    .iter()
                    .map(|s| [s.shots.unwrap_or(0) as f64, s.score])
                    .collect();
                plot.line(egui_plot::Line::new(r.label.clone(), pts.clone()));
                plot.points(egui_plot::Points::new(r.label.clone(), pts).radius(3.0));
            }
        });
}

fn table(st: &mut EvalState, ui: &mut Ui, cmds: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if st.runs.len() > 1 {
            ui.label("Run:");
            for (i, r) in st.runs.iter().enumerate() {
                ui.selectable_value(&mut st.shown, i, r.label.clone());
            }
        }
        if ui.button("Export JSONL…").clicked() {
            cmds.push(Command::ExportEval(super::history::ExportFormat::Jsonl));
        }
        if ui.button("Export CSV…").clicked() {
            cmds.push(Command::ExportEval(super::history::ExportFormat::Csv));
        }
    });
    let Some(run) = st.runs.get(st.shown) else {
        return;
    };
    if !run.failed.is_empty() {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!(
                "{} failed (not scored): {}",
                run.failed.len(),
                run.failed[0]
            ),
        );
    }
    let scores = run.row_scores();
    let mut order: Vec<usize> = (0..run.rows.len()).collect();
    match st.sort {
        EvalSort::Image => order.sort_by(|&a, &b| {
            (&run.rows[a].image, run.rows[a].shots).cmp(&(&run.rows[b].image, run.rows[b].shots))
        }),
        EvalSort::Shots => order.sort_by_key(|&i| run.rows[i].shots),
        EvalSort::Score => order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])),
    }
    let metric = run.report.as_ref().map_or(Metric::CiderD, |r| r.metric);
    let mut sort = st.sort;
    egui::ScrollArea::vertical()
        .id_salt("eval-table")
        .max_height(320.0)
        .show(ui, |ui| {
            egui::Grid::new("eval-rows")
                .striped(true)
                .num_columns(5)
                .show(ui, |ui| {
                    ui.label("");
                    ui.selectable_value(&mut sort, EvalSort::Image, "image");
                    ui.selectable_value(&mut sort, EvalSort::Shots, "shots");
                    ui.label(RichText::new("prediction / references").strong());
                    ui.selectable_value(&mut sort, EvalSort::Score, "score");
                    ui.end_row();
                    for &i in &order {
                        let p = &run.rows[i];
                        match run
                            .images
                            .get(&p.image)
                            .and_then(|path| st.thumbs.get(path))
                        {
                            Some(t) => {
                                ui.image((t.id(), t.size_vec2()));
                            }
                            None => {
                                ui.label("");
                            }
                        }
                        ui.label(&p.image);
                        ui.label(p.shots.map_or(String::new(), |k| k.to_string()));
                        ui.vertical(|ui| {
                            let q = p
                                .question
                                .as_deref()
                                .map_or(String::new(), |q| format!("{q} → "));
                            ui.label(RichText::new(format!("{q}{}", p.prediction)).strong());
                            ui.label(RichText::new(p.references.join(" | ")).weak().small());
                        });
                        if i < run.scored.0 {
                            ui.label(metric_text(metric, scores[i]));
                        } else {
                            ui.label("…").on_hover_text("scored within a second");
                        }
                        ui.end_row();
                    }
                });
        });
    st.sort = sort;
}
