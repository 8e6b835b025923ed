//! The app's state: what the user made (examples, query, task, templates) and settings, and the
//! self-contained prompt-set file that holds it on disk.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::text::prompt::{ShotText, Task, Templates};

/// An image the user brought in: its bytes (kept, so that a set is self-contained) and a
/// thumbnail texture once the loader has made one.
#[derive(Clone)]
pub struct ImageItem {
    pub name: String,
    pub bytes: Arc<[u8]>,
    pub thumb: Option<egui::TextureHandle>,
    pub size: [u32; 2],
}

impl std::fmt::Debug for ImageItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ImageItem({}, {} bytes)", self.name, self.bytes.len())
    }
}

#[derive(Clone, Debug)]
pub struct Example {
    pub id: u64,
    pub image: ImageItem,
    pub text: ShotText,
    pub enabled: bool,
}

/// Settings persisted through eframe's storage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub model_id: String,
    pub max_new_tokens: usize,
    /// Compute threads; None = leave a core to the UI.
    pub threads: Option<usize>,
    pub recent_sets: Vec<PathBuf>,
    /// Decoding options (its `max_new_tokens` is the one above).
    pub generation: crate::engine::GenerationConfig,
    /// Weight format the model is loaded in. The app defaults to q8_0: about 4x faster
    /// decoding and 2x faster image encoding than f32 on a laptop CPU for a logit cosine
    /// above 0.999 (README, "Weight formats and caches"); f32 stays one click away.
    pub weights: crate::types::WeightFormat,
    /// Encode the examples' images and run their prompt in the background while the user
    /// edits, so that Generate starts from there.
    pub prepare_ahead: bool,
    /// Which image text attends to; None: the model's own.
    pub media_attention: Option<crate::types::MediaAttention>,
    /// Darken what the model does not see of the query image (outside the centre crop).
    pub show_crop: bool,
    /// Order ranked candidates by their mean log-probability per token instead of the sum.
    pub rank_by_mean: bool,
    /// Presentation mode: everything larger, developer figures (timings, memory) hidden.
    pub presentation: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model_id: crate::hub::DEFAULT_MODEL.to_string(),
            max_new_tokens: 20,
            threads: None,
            recent_sets: Vec::new(),
            generation: Default::default(),
            weights: crate::types::WeightFormat::Q8_0,
            prepare_ahead: true,
            media_attention: None,
            show_crop: false,
            rank_by_mean: false,
            presentation: false,
        }
    }
}

/// How a set's results were made, saved with it so that they can be made again: the model,
/// its weight format and the decoding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub model_id: String,
    pub weights: crate::types::WeightFormat,
    pub max_new_tokens: usize,
    pub generation: crate::engine::GenerationConfig,
    #[serde(default)]
    pub media_attention: Option<crate::types::MediaAttention>,
}

impl RunSettings {
    pub fn of(s: &Settings) -> Self {
        Self {
            model_id: s.model_id.clone(),
            weights: s.weights,
            max_new_tokens: s.max_new_tokens,
            generation: s.generation.clone(),
            media_attention: s.media_attention,
        }
    }
}

/// A shot sweep's choices, kept with the set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SweepSettings {
    /// The example counts, comma-separated; empty: 0, 1, 2, 4, … up to the examples.
    pub counts: String,
    /// Random draws (the first n of a shuffle with `seed`) instead of the first n.
    pub random: bool,
    pub seed: u64,
}

impl SweepSettings {
    /// The counts to run with `n` enabled examples, or why they cannot run.
    pub fn counts_for(&self, n: usize) -> Result<Vec<usize>, String> {
        if self.counts.trim().is_empty() {
            return Ok(crate::engine::default_counts(n));
        }
        let counts = self
            .counts
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse::<usize>()
                    .map_err(|_| format!("`{c}` is not a number of examples"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(c) = counts.iter().find(|&&c| c > n) {
            return Err(format!(
                "a {c}-shot row needs {c} enabled examples; there {} {n}",
                if n == 1 { "is" } else { "are" }
            ));
        }
        if counts.is_empty() {
            return Err("no example counts to sweep".into());
        }
        Ok(counts)
    }

    pub fn pick(&self) -> crate::engine::ShotPick {
        if self.random {
            crate::engine::ShotPick::Random { seed: self.seed }
        } else {
            crate::engine::ShotPick::First
        }
    }
}

/// The working set: everything that goes into a prompt.
#[derive(Clone, Debug, Default)]
pub struct WorkingSet {
    pub task: Task,
    pub examples: Vec<Example>,
    pub query: Option<ImageItem>,
    pub question: String,
    pub caption_templates: Templates,
    pub vqa_templates: Templates,
    /// Candidate texts to rank, one per line.
    pub candidates: String,
    pub sweep: SweepSettings,
    /// A second set to compare with, side by side (same query).
    pub variant: Option<Box<WorkingSet>>,
    /// Every result made with this set, oldest first.
    pub history: Vec<super::history::HistoryEntry>,
    /// The model and decoding it was last saved with (None in a set from before they were
    /// saved).
    pub run: Option<RunSettings>,
}

impl WorkingSet {
    pub fn new() -> Self {
        Self {
            caption_templates: Templates::for_task(Task::Caption),
            vqa_templates: Templates::for_task(Task::Vqa),
            ..Default::default()
        }
    }

    pub fn templates(&self) -> &Templates {
        match self.task {
            Task::Caption => &self.caption_templates,
            Task::Vqa => &self.vqa_templates,
        }
    }

    pub fn templates_mut(&mut self) -> &mut Templates {
        match self.task {
            Task::Caption => &mut self.caption_templates,
            Task::Vqa => &mut self.vqa_templates,
        }
    }

    pub fn enabled_shots(&self) -> Vec<ShotText> {
        self.examples
            .iter()
            .filter(|e| e.enabled)
            .map(|e| e.text.clone())
            .collect()
    }

    /// The exact prompt text a generation would send now.
    pub fn prompt(&self) -> crate::Result<String> {
        crate::text::prompt::task_prompt(
            self.task,
            self.templates(),
            &self.enabled_shots(),
            &self.question,
        )
    }
}

// ---- The prompt-set file ---------------------------------------------------------------------

pub const SET_FORMAT: &str = "flamingo-prompt-set";
pub const SET_EXTENSION: &str = "flamingo.json";

#[derive(Serialize, Deserialize)]
struct SetImage {
    name: String,
    /// The original file's bytes, base64.
    data: String,
}

#[derive(Serialize, Deserialize)]
struct SetExample {
    image: SetImage,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    question: String,
    #[serde(default)]
    answer: String,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct SetFile {
    format: String,
    version: u32,
    task: Task,
    question: String,
    caption_templates: Templates,
    vqa_templates: Templates,
    examples: Vec<SetExample>,
    query: Option<SetImage>,
    #[serde(default)]
    sweep: SweepSettings,
    /// A variant of the set (its own examples, texts and templates) compared side by side.
    #[serde(default)]
    variant: Option<Box<SetFile>>,
    #[serde(default)]
    history: Vec<super::history::HistoryEntry>,
    #[serde(default)]
    candidates: String,
    #[serde(default)]
    run: Option<RunSettings>,
}

/// A prompt set read from disk, with image bytes (thumbnails are made by the loader).
pub struct LoadedSet {
    pub task: Task,
    pub question: String,
    pub caption_templates: Templates,
    pub vqa_templates: Templates,
    pub examples: Vec<(String, Arc<[u8]>, ShotText, bool)>,
    pub query: Option<(String, Arc<[u8]>)>,
    pub sweep: SweepSettings,
    pub variant: Option<Box<LoadedSet>>,
    pub history: Vec<super::history::HistoryEntry>,
    pub candidates: String,
    pub run: Option<RunSettings>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn set_to_json(ws: &WorkingSet) -> String {
    serde_json::to_string_pretty(&set_file(ws)).unwrap_or_default()
}

fn set_file(ws: &WorkingSet) -> SetFile {
    let img = |i: &ImageItem| SetImage {
        name: i.name.clone(),
        data: b64(&i.bytes),
    };
    SetFile {
        format: SET_FORMAT.into(),
        version: 1,
        task: ws.task,
        question: ws.question.clone(),
        caption_templates: ws.caption_templates.clone(),
        vqa_templates: ws.vqa_templates.clone(),
        examples: ws
            .examples
            .iter()
            .map(|e| SetExample {
                image: img(&e.image),
                caption: e.text.caption.clone(),
                question: e.text.question.clone(),
                answer: e.text.answer.clone(),
                enabled: e.enabled,
            })
            .collect(),
        query: ws.query.as_ref().map(img),
        sweep: ws.sweep.clone(),
        variant: ws.variant.as_deref().map(|v| Box::new(set_file(v))),
        history: ws.history.clone(),
        candidates: ws.candidates.clone(),
        run: ws.run.clone(),
    }
}

pub fn set_from_json(text: &str) -> Result<LoadedSet, String> {
    let f: SetFile = serde_json::from_str(text).map_err(|e| format!("not a prompt set ({e})"))?;
    loaded_set(f)
}

fn loaded_set(f: SetFile) -> Result<LoadedSet, String> {
    if f.format != SET_FORMAT {
        return Err(format!("not a prompt set (format `{}`)", f.format));
    }
    if f.version > 1 {
        return Err(format!(
            "prompt set version {} is newer than this app",
            f.version
        ));
    }
    let dec = |s: &SetImage| -> Result<(String, Arc<[u8]>), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&s.data)
            .map_err(|e| format!("image `{}` is damaged ({e})", s.name))?;
        Ok((s.name.clone(), bytes.into()))
    };
    let examples = f
        .examples
        .iter()
        .map(|e| {
            let (name, bytes) = dec(&e.image)?;
            let text = ShotText {
                caption: e.caption.clone(),
                question: e.question.clone(),
                answer: e.answer.clone(),
            };
            Ok((name, bytes, text, e.enabled))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(LoadedSet {
        task: f.task,
        question: f.question,
        caption_templates: f.caption_templates,
        vqa_templates: f.vqa_templates,
        examples,
        query: f.query.as_ref().map(dec).transpose()?,
        sweep: f.sweep,
        history: f.history,
        candidates: f.candidates,
        run: f.run,
        variant: f
            .variant
            .map(|v| loaded_set(*v).map(Box::new))
            .transpose()?,
    })
}

pub use crate::platform::write_atomic;
