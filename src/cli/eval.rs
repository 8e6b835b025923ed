//! `flamingo eval`: predictions for a labelled folder at each shot count, written as JSON
//! lines (resumed from the file when it is there) and scored with CIDEr-D or VQA accuracy;
//! or, with `--predictions`, existing predictions scored without a model.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{progress, TaskArg};
use crate::eval::{self, EvalReport, LabelledFolder, Prediction};
use crate::generate::GenerationConfig;
use crate::hub::DEFAULT_MODEL;
use crate::pipeline::evaluate::{EvalEvent, EvalPlan, ExampleSource};
use crate::pipeline::{CaptionRequest, Captioner, ImageInput, Shot};
use crate::text::prompt::{preset, Task};
use crate::types::WeightFormat;

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// The labelled folder (captions.jsonl/.csv, COCO or VQAv2 JSON, or .txt beside images),
    /// or its labels file.
    #[arg(long, value_name = "DIR")]
    pub data: PathBuf,
    /// Score these predictions (JSON lines with `image` and `prediction`, and `shots` and
    /// `question` when there are) against the folder's references, without a model.
    #[arg(long, value_name = "FILE.jsonl")]
    pub predictions: Option<PathBuf>,
    /// Default: what the folder holds (questions make it VQA).
    #[arg(long, value_enum)]
    pub task: Option<TaskArg>,
    /// The shot counts, comma-separated.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    pub shots: Vec<usize>,
    /// Where the examples come from: `random` (from the folder, never the query itself),
    /// `rices` (the most similar by CLIP embedding), or a prompt set file (its examples, in
    /// order, and its templates).
    #[arg(long, default_value = "random", value_name = "random|rices|SET.json")]
    pub examples: String,
    /// Draw the examples from this labelled folder instead of --data (the RICES library).
    #[arg(long, value_name = "DIR")]
    pub library: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Queries decoded together when they share their examples (0-shot, or a prompt set).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// The predictions file; an existing one is resumed (its lines are kept and not run
    /// again). Default: eval-<task>-<examples>-seed<S>.jsonl in the current folder.
    #[arg(long, value_name = "FILE.jsonl")]
    pub out: Option<PathBuf>,
    /// Start the predictions file afresh instead of resuming it.
    #[arg(long)]
    pub overwrite: bool,
    /// Print one JSON object: {"metric", "results": [{"shots", "score", "n"}]}.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    #[arg(long, value_enum, default_value_t = WeightFormat::F32)]
    pub dtype: WeightFormat,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Default: 20 for captions, 5 for answers (open_flamingo's evaluation lengths).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Beam search with this many beams (open_flamingo's evaluation uses 3).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
}

pub(crate) fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let mut data = LabelledFolder::load(&a.data)?;
    for p in &data.problems {
        tracing::warn!("skipped: {p}");
    }
    if let Some(t) = a.task {
        let task = match t {
            TaskArg::Caption => Task::Caption,
            TaskArg::Vqa => Task::Vqa,
        };
        if task != data.task {
            anyhow::bail!(
                "{} holds {} labels, not {}",
                a.data.display(),
                task_name(data.task),
                task_name(task)
            );
        }
    }
    if let Some(n) = a.limit {
        data.items.truncate(n);
    }
    let task = data.task;
    if let Some(path) = &a.predictions {
        return rescore(&a, &data, path);
    }
    if a.shots.is_empty() {
        anyhow::bail!("--shots needs at least one count");
    }
    let out = a.out.clone().unwrap_or_else(|| {
        let ex = match a.examples.as_str() {
            "random" | "rices" => a.examples.clone(),
            other => PathBuf::from(other)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "set".into()),
        };
        PathBuf::from(format!(
            "eval-{}-{ex}-seed{}.jsonl",
            task_name(task),
            a.seed
        ))
    });

    // What is already in the predictions file is kept (a cut last line is dropped).
    let mut done: HashSet<(String, String, Option<usize>)> = HashSet::new();
    if out.exists() && !a.overwrite {
        let kept = eval::read_predictions(&out)?;
        if let Some(p) = kept.problems.first() {
            anyhow::bail!(
                "{p}: the predictions file is not one `flamingo eval` can resume (use --overwrite to start afresh, or another --out)"
            );
        }
        if kept.cut_last_line {
            rewrite(&out, &kept.predictions)?;
            tracing::info!("{}: its last line was cut off; dropped", out.display());
        }
        done = kept.predictions.iter().map(Prediction::key).collect();
        if !done.is_empty() {
            eprintln!(
                "Resuming {}: {} predictions already there",
                out.display(),
                done.len()
            );
        }
    } else {
        std::fs::write(&out, b"")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    }

    let (device, _) = crate::platform::pick_device();
    let opts = crate::hub::download::DownloadOptions::new(&crate::hub::cache_dir());
    let mut bar = progress::ProgressBar::default();
    let cancel = AtomicBool::new(false);
    let captioner =
        Captioner::load_or_download(&opts, &a.model, &device, a.dtype, &cancel, &mut |e| {
            bar.on_event(e)
        })?;

    let mut templates = preset("open_flamingo", task)
        .or_else(|| preset("mmpretrain", task))
        .ok_or_else(|| anyhow::anyhow!("no prompt templates for {}", task_name(task)))?;
    let pool = match &a.library {
        Some(dir) => Some(LabelledFolder::load(dir)?),
        None => None,
    };
    let source = match a.examples.as_str() {
        "random" => ExampleSource::Random { seed: a.seed },
        "rices" => {
            let folder = pool.clone().unwrap_or_else(|| data.clone());
            let n = folder.items.len();
            let pb = bar_for(n as u64, "embedding the example library");
            let lib = captioner.library(
                folder,
                Some(&crate::platform::app_cache_dir()),
                &cancel,
                |done, _| pb.set_position(done as u64),
            )?;
            pb.finish_and_clear();
            ExampleSource::Rices(Arc::new(lib))
        }
        set => {
            let text = std::fs::read_to_string(set)
                .map_err(|e| anyhow::anyhow!("{set}: cannot be read: {e}"))?;
            let loaded = crate::app::state::set_from_json(&text)
                .map_err(|e| anyhow::anyhow!("{set}: {e}"))?;
            if loaded.task != task {
                anyhow::bail!(
                    "{set} is a {} set; the folder is {}",
                    task_name(loaded.task),
                    task_name(task)
                );
            }
            templates = match task {
                Task::Caption => loaded.caption_templates,
                Task::Vqa => loaded.vqa_templates,
            };
            ExampleSource::Fixed(
                loaded
                    .examples
                    .into_iter()
                    .filter(|e| e.3)
                    .map(|(name, bytes, text, _)| Shot {
                        image: ImageInput::Bytes { name, bytes },
                        text,
                    })
                    .collect(),
            )
        }
    };
    let generation = GenerationConfig {
        max_new_tokens: a.max_new_tokens.unwrap_or(match task {
            Task::Caption => 20,
            Task::Vqa => 5,
        }),
        num_beams: a.num_beams,
        ..GenerationConfig::default()
    };
    let plan = EvalPlan {
        data: data.clone(),
        pool,
        task,
        shots: a.shots.clone(),
        source,
        templates,
        generation,
        batch_size: a.batch_size,
    };

    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let pb = bar_for(plan.total() as u64, "evaluating");
    pb.set_position(done.len().min(plan.total()) as u64);
    let mut failed = 0;
    let mut write_err = None;
    let t0 = std::time::Instant::now();
    let mut made = 0usize;
    captioner.evaluate(&plan, &done, &cancel, |e| match e {
        EvalEvent::Row {
            prediction, done, ..
        } => {
            made += 1;
            if write_err.is_none() {
                if let Err(e) = eval::append_prediction(&mut file, prediction) {
                    write_err = Some(e);
                }
            }
            pb.set_position(done as u64);
        }
        EvalEvent::Failed { item, shots, error } => {
            failed += 1;
            pb.suspend(|| {
                eprintln!("{} ({shots} shots): {error}", item.file);
            });
        }
    })?;
    pb.finish_and_clear();
    if let Some(e) = write_err {
        return Err(e.into());
    }
    let secs = t0.elapsed().as_secs_f64();
    if made > 0 {
        eprintln!(
            "{made} predictions in {secs:.1} s ({:.2} images/s); written to {}",
            made as f64 / secs,
            out.display()
        );
    }
    if failed > 0 {
        eprintln!("{failed} item(s) failed and are not scored");
    }
    let all = eval::read_predictions(&out)?;
    let keys: HashSet<(String, String, Option<usize>)> = plan
        .data
        .items
        .iter()
        .flat_map(|it| {
            a.shots.iter().map(move |&k| {
                (
                    it.file.clone(),
                    it.question.clone().unwrap_or_default(),
                    Some(k),
                )
            })
        })
        .collect();
    let preds: Vec<Prediction> = all
        .predictions
        .into_iter()
        .filter(|p| keys.contains(&p.key()))
        .collect();
    report(&eval::score(task, &preds), a.json)
}

/// `caption --rices DIR --shots K`: the K examples of the labelled folder most like the
/// request's query, most similar last.
pub(crate) fn rices_shots(
    captioner: &Captioner,
    dir: &std::path::Path,
    k: usize,
    req: &CaptionRequest,
) -> anyhow::Result<Vec<Shot>> {
    let picked = captioner.rices_examples(
        dir,
        &req.query,
        k,
        req.task,
        Some(&crate::platform::app_cache_dir()),
        &AtomicBool::new(false),
    )?;
    Ok(picked
        .into_iter()
        .map(|(image, text)| Shot {
            image: ImageInput::Path(image),
            text,
        })
        .collect())
}

fn rewrite(path: &std::path::Path, preds: &[Prediction]) -> anyhow::Result<()> {
    let mut text = String::new();
    for p in preds {
        text.push_str(&serde_json::to_string(p)?);
        text.push('\n');
    }
    crate::platform::write_atomic(path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn rescore(a: &EvalArgs, data: &LabelledFolder, path: &std::path::Path) -> anyhow::Result<()> {
    let file = eval::read_predictions(path)?;
    for p in &file.problems {
        tracing::warn!("skipped: {p}");
    }
    let mut preds = Vec::new();
    let mut unknown = 0;
    for mut p in file.predictions {
        let q = p.question.clone().unwrap_or_default();
        let item = data.items.iter().find(|it| {
            (it.file == p.image || it.file.rsplit('/').next() == Some(p.image.as_str()))
                && it.question.clone().unwrap_or_default() == q
        });
        match item {
            Some(it) => {
                p.references = it.references.clone();
                preds.push(p);
            }
            None => unknown += 1,
        }
    }
    if unknown > 0 {
        eprintln!(
            "{unknown} prediction(s) name images (or questions) not in {}; not scored",
            a.data.display()
        );
    }
    if preds.is_empty() {
        anyhow::bail!(
            "no prediction in {} matches an item of {}",
            path.display(),
            a.data.display()
        );
    }
    report(&eval::score(data.task, &preds), a.json)
}

fn report(r: &EvalReport, json: bool) -> anyhow::Result<()> {
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        outln!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    for s in &r.results {
        let shots = s.shots.map_or("-".to_string(), |k| k.to_string());
        let score = match r.metric {
            eval::Metric::CiderD => format!("{:.4}", s.score),
            eval::Metric::VqaAccuracy => format!("{:.2} %", 100.0 * s.score),
        };
        outln!(
            "{} at {shots} shots: {score} (n = {})",
            r.metric.label(),
            s.n
        );
    }
    Ok(())
}

fn task_name(t: Task) -> &'static str {
    match t {
        Task::Caption => "caption",
        Task::Vqa => "VQA",
    }
}

fn bar_for(total: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}
