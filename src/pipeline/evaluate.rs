//! `flamingo eval` and the app's Evaluate view: every labelled item captioned (or answered)
//! at each shot count, with examples drawn at random, by RICES, or given; one prediction at a
//! time handed back so the caller can write it (and resume from what it wrote).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::request::{CaptionRequest, ImageInput, Shot};
use super::rices::Library;
use super::Captioner;
use crate::error::{Error, Result};
use crate::eval::{LabelledFolder, LabelledItem, Prediction};
use crate::generate::logits::Rng;
use crate::generate::GenerationConfig;
use crate::text::prompt::{ShotText, Task, Templates};

/// Where each query's examples come from.
#[derive(Clone)]
pub enum ExampleSource {
    /// `k` distinct items of the pool, drawn for each query and shot count from `seed` (the
    /// same draw whatever the order or batch, so a resumed run continues the same run).
    Random { seed: u64 },
    /// The `k` pool items most like the query (CLIP embedding), most similar last.
    Rices(Arc<Library>),
    /// The first `k` of these examples, for every query.
    Fixed(Vec<Shot>),
}

impl ExampleSource {
    pub fn label(&self) -> &'static str {
        match self {
            ExampleSource::Random { .. } => "random",
            ExampleSource::Rices(_) => "rices",
            ExampleSource::Fixed(_) => "set",
        }
    }
}

/// What to evaluate.
#[derive(Clone)]
pub struct EvalPlan {
    pub data: LabelledFolder,
    /// The labelled items examples are drawn from (for RICES, the library's folder); None:
    /// the evaluated folder itself, never a query's own image.
    pub pool: Option<LabelledFolder>,
    pub task: Task,
    pub shots: Vec<usize>,
    pub source: ExampleSource,
    pub templates: Templates,
    pub generation: GenerationConfig,
    /// Captions decoded together when their prompts share the examples (0-shot or fixed).
    pub batch_size: usize,
}

/// One step of an evaluation.
pub enum EvalEvent<'a> {
    /// A prediction made now (`done` of `total` counting those skipped as already done).
    Row {
        prediction: &'a Prediction,
        done: usize,
        total: usize,
    },
    /// An item that failed (its image unreadable, its prompt too long): skipped, not scored.
    Failed {
        item: &'a LabelledItem,
        shots: usize,
        error: &'a Error,
    },
}

fn seed_for(seed: u64, item: &LabelledItem, shots: usize) -> u64 {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(item.file.as_bytes());
    h.update([0]);
    h.update(item.question.as_deref().unwrap_or("").as_bytes());
    h.update((shots as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The reference an example shows: a caption's first, or a question's most given answer.
pub fn example_text(task: Task, item: &LabelledItem) -> ShotText {
    let first = item.references.first().cloned().unwrap_or_default();
    match task {
        Task::Caption => ShotText {
            caption: first,
            ..Default::default()
        },
        Task::Vqa => {
            let mut best = (0, first);
            for a in &item.references {
                let n = item.references.iter().filter(|b| *b == a).count();
                if n > best.0 {
                    best = (n, a.clone());
                }
            }
            ShotText {
                question: item.question.clone().unwrap_or_default(),
                answer: best.1,
                caption: String::new(),
            }
        }
    }
}

impl EvalPlan {
    fn pool(&self) -> &LabelledFolder {
        match &self.source {
            ExampleSource::Rices(lib) => &lib.folder,
            _ => self.pool.as_ref().unwrap_or(&self.data),
        }
    }

    /// Every (item, shot count) pair, shot counts outermost.
    pub fn total(&self) -> usize {
        self.data.items.len() * self.shots.len()
    }

    /// The examples for `item` at `k` shots (and their images' names, for the record).
    fn examples(
        &self,
        captioner: &Captioner,
        item: &LabelledItem,
        k: usize,
        query_embeddings: &mut HashMap<PathBuf, Vec<f32>>,
    ) -> Result<(Vec<Shot>, Vec<String>)> {
        if k == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let pool = self.pool();
        let same_image = |p: &LabelledItem| p.image == item.image;
        let picked: Vec<usize> = match &self.source {
            ExampleSource::Fixed(shots) => {
                if k > shots.len() {
                    return Err(Error::Invalid(format!(
                        "{k} shots asked for, but the example set has {}",
                        shots.len()
                    )));
                }
                let names = shots[..k].iter().map(|s| s.image.name()).collect();
                return Ok((shots[..k].to_vec(), names));
            }
            ExampleSource::Random { seed } => {
                let mut candidates: Vec<usize> = (0..pool.items.len())
                    .filter(|&i| !same_image(&pool.items[i]))
                    .collect();
                if k > candidates.len() {
                    return Err(Error::Invalid(format!(
                        "{k} shots asked for, but only {} other labelled images to draw from",
                        candidates.len()
                    )));
                }
                let mut rng = Rng::new(seed_for(*seed, item, k));
                // A partial Fisher–Yates shuffle: the first k are the draw.
                for i in 0..k {
                    let j = i + (rng.next_u64() % (candidates.len() - i) as u64) as usize;
                    candidates.swap(i, j);
                }
                candidates.truncate(k);
                candidates
            }
            ExampleSource::Rices(lib) => {
                let bytes = std::fs::read(&item.image).map_err(|e| Error::Image {
                    name: item.file.clone(),
                    reason: e.to_string(),
                })?;
                let own = lib.folder.items.iter().position(|p| p.image == item.image);
                let query = match own {
                    Some(i) => lib.embeddings[i].clone(),
                    None => match query_embeddings.get(&item.image) {
                        Some(e) => e.clone(),
                        None => {
                            let e = captioner.embed_image(&ImageInput::Path(item.image.clone()))?;
                            query_embeddings.insert(item.image.clone(), e.clone());
                            e
                        }
                    },
                };
                let picked = lib.most_similar(&query, k, Some(&bytes));
                if picked.len() < k {
                    return Err(Error::Invalid(format!(
                        "{k} shots asked for, but the library has only {} other images",
                        picked.len()
                    )));
                }
                picked
            }
        };
        let shots = picked
            .iter()
            .map(|&i| Shot {
                image: ImageInput::Path(pool.items[i].image.clone()),
                text: example_text(self.task, &pool.items[i]),
            })
            .collect();
        let names = picked.iter().map(|&i| pool.items[i].file.clone()).collect();
        Ok((shots, names))
    }

    fn request(&self, item: &LabelledItem, shots: Vec<Shot>) -> CaptionRequest {
        CaptionRequest {
            task: self.task,
            shots,
            query: ImageInput::Path(item.image.clone()),
            question: item.question.clone().unwrap_or_default(),
            templates: self.templates.clone(),
            generation: self.generation.clone(),
            keep_logits: false,
            media_attention: None,
            top_logprobs: 0,
            forced: Vec::new(),
        }
    }
}

impl Captioner {
    /// Runs a plan, skipping the (image, question, shots) keys in `done`; each new prediction
    /// goes to `on_event` as it is made. Stops with [`Error::Cancelled`] when `cancel` is set
    /// (what was handed back is kept by the caller).
    pub fn evaluate(
        &self,
        plan: &EvalPlan,
        done: &HashSet<(String, String, Option<usize>)>,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(EvalEvent),
    ) -> Result<()> {
        let total = plan.total();
        let mut count = 0;
        let mut query_embeddings = HashMap::new();
        for &k in &plan.shots {
            // Pending items with their examples; runs of the same examples are batched.
            let mut pending: Vec<(&LabelledItem, Vec<Shot>, Vec<String>)> = Vec::new();
            for item in &plan.data.items {
                let key = (
                    item.file.clone(),
                    item.question.clone().unwrap_or_default(),
                    Some(k),
                );
                if done.contains(&key) {
                    count += 1;
                    continue;
                }
                match plan.examples(self, item, k, &mut query_embeddings) {
                    Ok((shots, names)) => pending.push((item, shots, names)),
                    Err(e) => {
                        count += 1;
                        on_event(EvalEvent::Failed {
                            item,
                            shots: k,
                            error: &e,
                        });
                    }
                }
            }
            let mut i = 0;
            while i < pending.len() {
                if cancel.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled);
                }
                // The longest run (up to the batch size) sharing the first one's examples
                // and, for VQA, its question.
                let (first, _, first_names) = &pending[i];
                let mut j = i + 1;
                while j < pending.len()
                    && j - i < plan.batch_size.max(1)
                    && pending[j].2 == *first_names
                    && (matches!(&plan.source, ExampleSource::Fixed(_)) || k == 0)
                    && pending[j].0.question == first.question
                {
                    j += 1;
                }
                let req = plan.request(first, pending[i].1.clone());
                let results: Vec<Result<super::CaptionResult>> = if j - i == 1 {
                    vec![self.caption(&req, cancel, |_| {})]
                } else {
                    let queries: Vec<ImageInput> = pending[i..j]
                        .iter()
                        .map(|(it, _, _)| ImageInput::Path(it.image.clone()))
                        .collect();
                    self.caption_batch(&req, &queries, j - i, cancel)?
                };
                for ((item, _, names), r) in pending[i..j].iter().zip(results) {
                    count += 1;
                    match r {
                        Ok(r) => {
                            let p = Prediction {
                                image: item.file.clone(),
                                question: item.question.clone(),
                                shots: Some(k),
                                prediction: r.text,
                                references: item.references.clone(),
                                examples: names.clone(),
                            };
                            on_event(EvalEvent::Row {
                                prediction: &p,
                                done: count,
                                total,
                            });
                        }
                        Err(Error::Cancelled) => return Err(Error::Cancelled),
                        Err(e) => on_event(EvalEvent::Failed {
                            item,
                            shots: k,
                            error: &e,
                        }),
                    }
                }
                i = j;
            }
        }
        Ok(())
    }
}
