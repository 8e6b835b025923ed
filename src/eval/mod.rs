//! Scores on labelled data: the labelled folder formats, CIDEr-D with a PTB tokenisation, VQAv2
//! accuracy, and the predictions file `flamingo eval` writes and reads back. Plain data and
//! arithmetic: no model here (the runner is `pipeline::evaluate`).

pub mod cider;
pub mod data;
pub mod ptb;
pub mod vqa;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::text::prompt::Task;

pub use data::{LabelledFolder, LabelledItem};

/// The metric a task is scored with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CiderD,
    VqaAccuracy,
}

impl Metric {
    pub fn for_task(task: Task) -> Self {
        match task {
            Task::Caption => Metric::CiderD,
            Task::Vqa => Metric::VqaAccuracy,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::CiderD => "CIDEr-D",
            Metric::VqaAccuracy => "VQA accuracy",
        }
    }
}

/// One line of a predictions file: an image (and question), the shot count, what the model
/// said, and the references it is scored against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<String>,
    #[serde(default)]
    pub shots: Option<usize>,
    pub prediction: String,
    #[serde(default)]
    pub references: Vec<String>,
    /// The example images (relative names), most similar last for RICES.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

impl Prediction {
    pub fn key(&self) -> (String, String, Option<usize>) {
        (
            self.image.clone(),
            self.question.clone().unwrap_or_default(),
            self.shots,
        )
    }
}

/// The score at one shot count (`shots` None: predictions without a shot count).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShotScore {
    pub shots: Option<usize>,
    pub score: f64,
    pub n: usize,
    /// Each prediction's own score, in the order given.
    #[serde(skip)]
    pub per_item: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub metric: Metric,
    pub results: Vec<ShotScore>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Scores predictions per shot count. CIDEr-D's document frequencies come from the references
/// of the predictions scored together (one shot count), as pycocoevalcap's do; VQA accuracy is
/// the mean over questions. Scores are fractions (VQA 0–1, CIDEr-D as pycocoevalcap's).
pub fn score(task: Task, predictions: &[Prediction]) -> EvalReport {
    let metric = Metric::for_task(task);
    let mut groups: BTreeMap<Option<usize>, Vec<&Prediction>> = BTreeMap::new();
    for p in predictions {
        groups.entry(p.shots).or_default().push(p);
    }
    let mut warnings = Vec::new();
    let results = groups
        .into_iter()
        .map(|(shots, preds)| {
            let per_item: Vec<f64> = match metric {
                Metric::VqaAccuracy => preds
                    .iter()
                    .map(|p| vqa::vqa_accuracy(&p.prediction, &p.references))
                    .collect(),
                Metric::CiderD => {
                    let toks: Vec<(String, Vec<String>)> = preds
                        .iter()
                        .map(|p| {
                            (
                                ptb::tokenize(&p.prediction),
                                p.references.iter().map(|r| ptb::tokenize(r)).collect(),
                            )
                        })
                        .collect();
                    let inputs: Vec<cider::CiderInput> = toks
                        .iter()
                        .map(|(p, r)| cider::CiderInput {
                            prediction: p,
                            references: r,
                        })
                        .collect();
                    let s = cider::cider_d(&inputs);
                    if let Some(w) = s.warning {
                        let at = shots.map_or(String::new(), |k| format!(" at {k} shots"));
                        warnings.push(format!("{w}{at}"));
                    }
                    s.per_image
                }
            };
            let n = per_item.len();
            ShotScore {
                shots,
                score: if n == 0 {
                    0.0
                } else {
                    per_item.iter().sum::<f64>() / n as f64
                },
                n,
                per_item,
            }
        })
        .collect();
    EvalReport {
        metric,
        results,
        warnings,
    }
}

/// A predictions file read back: its lines, and the lines that could not be used.
#[derive(Debug, Default)]
pub struct PredictionsFile {
    pub predictions: Vec<Prediction>,
    pub problems: Vec<String>,
    /// The last line was cut off (a run killed while writing it); it is not in `predictions`.
    pub cut_last_line: bool,
}

pub fn read_predictions(path: &Path) -> Result<PredictionsFile> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Invalid(format!("{}: cannot be read: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = PredictionsFile::default();
    let lines: Vec<&str> = text.split('\n').collect();
    let last_complete = text.ends_with('\n');
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Prediction>(line) {
            Ok(p) => out.predictions.push(p),
            Err(_) if i + 1 == lines.len() && !last_complete => out.cut_last_line = true,
            Err(e) => out.problems.push(format!("{name} line {}: {e}", i + 1)),
        }
    }
    Ok(out)
}

/// Appends one prediction as a JSON line and flushes it, so a killed run loses at most the
/// line being written.
pub fn append_prediction(file: &mut std::fs::File, p: &Prediction) -> Result<()> {
    let mut line = serde_json::to_string(p).map_err(|e| Error::Invalid(e.to_string()))?;
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| Error::Invalid(format!("cannot write the predictions file: {e}")))
}
