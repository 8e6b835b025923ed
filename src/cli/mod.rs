//! The command line: `flamingo caption …`, `flamingo bench …`.

/// `println!` that returns an error instead of panicking when standard output cannot be
/// written (a full disk, `> /dev/full`). A closed pipe ends the program quietly instead
/// ([`crate::platform::quiet_broken_pipe`]).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("cannot write to standard output: {e}"))?;
    }};
}

pub mod bench;
mod eval;
mod icl;
pub mod npy;
pub mod progress;
mod stop_latency;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use clap::{Parser, Subcommand};

use crate::error::Result;
use crate::generate::beam::EarlyStopping;
use crate::generate::GenerationConfig;
use crate::hub::DEFAULT_MODEL;
use crate::pipeline::{CaptionRequest, Captioner, ImageInput, Shot};
use crate::text::prompt::{preset, ShotText, Task, Templates};
use crate::types::{MediaAttention, WeightFormat};

#[derive(Parser, Debug)]
#[command(
    name = "flamingo",
    version,
    about = "Few-shot image captioning with OpenFlamingo"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open the desktop app (the default without a subcommand).
    App(AppArgs),
    /// Caption QUERY_IMAGE, optionally after example images with their captions.
    Caption(Box<CaptionCmd>),
    /// The released models: family, whether this version runs them, what is in the cache.
    Models {
        #[arg(long)]
        json: bool,
    },
    /// Fetch a model's files into the Hugging Face cache (what is there is kept), with a
    /// progress bar. HF_ENDPOINT picks a mirror, HF_TOKEN a token.
    Download {
        /// Model id (default: the default model).
        #[arg(default_value = DEFAULT_MODEL)]
        model: String,
    },
    /// Rank candidate texts by their log-likelihood after the prompt.
    Score(Box<ScoreArgs>),
    /// Caption QUERY_IMAGE with 0, 1, 2, … of the examples (the first n for count n),
    /// side by side: how the caption changes as examples are added.
    Sweep(Box<SweepArgs>),
    /// What each example did: the caption's log-probability with each example left out and
    /// with the examples reversed (the caption is generated first unless --caption gives it).
    Ablate(Box<AblateArgs>),
    /// Caption (or answer) every image of a labelled folder at each shot count, write the
    /// predictions as JSON lines, and score them (CIDEr-D or VQA accuracy); or score existing
    /// predictions with --predictions.
    Eval(Box<eval::EvalArgs>),
    /// Time image encoding, prefill and decoding on random weights of a given shape.
    Bench(bench::BenchArgs),
    /// Time a shot sweep against a cold caption with all the examples and re-queries
    /// (the sweep's cost target), on a model from the hub cache.
    BenchSweep(Box<bench::SweepCostArgs>),
    /// How long Stop takes in each phase of a caption, a beam search and a scoring (and that
    /// the next request works), on a model from the hub cache.
    BenchStop(Box<stop_latency::StopLatencyArgs>),
}

#[derive(clap::Args, Debug, Default)]
pub struct AppArgs {
    /// Model to load at start (default: the last one used).
    #[arg(long)]
    pub model: Option<String>,
    /// Folder for the working set (default: the app's data folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Do not load the model at start.
    #[arg(long)]
    pub no_autoload: bool,
    /// Weight format to load the model in (default: the last one used).
    #[arg(long, value_enum)]
    pub weights: Option<WeightFormat>,
}

/// What makes the prompt: the model, the examples, the query, the task and the templates.
#[derive(clap::Args, Debug)]
pub struct PromptArgs {
    /// The query image (not with `caption --batch`).
    #[arg(value_name = "QUERY_IMAGE", required_unless_present = "batch")]
    pub query: Option<PathBuf>,
    /// Caption many images: a folder (its image files, by name) or a text file listing one
    /// path per line. Prints one JSON line per image.
    #[arg(long, value_name = "DIR_OR_LIST")]
    pub batch: Option<PathBuf>,
    /// Images decoded together with --batch.
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    /// Model id (hub repo of the OpenFlamingo checkpoint).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// An example: an image and its text (repeat for several). For VQA the text is
    /// `QUESTION=>ANSWER`.
    #[arg(long, num_args = 2, value_names = ["IMAGE", "TEXT"], action = clap::ArgAction::Append)]
    pub shot: Vec<String>,
    #[arg(long, value_enum, default_value_t = TaskArg::Caption)]
    pub task: TaskArg,
    /// The question about the query image (VQA).
    #[arg(long, default_value = "")]
    pub question: String,
    /// Prompt style: the seed's (mmpretrain) or open_flamingo's evaluation style.
    #[arg(long, value_enum, default_value_t = PresetArg::Mmpretrain)]
    pub preset: PresetArg,
    #[arg(long)]
    pub shot_template: Option<String>,
    #[arg(long)]
    pub final_template: Option<String>,
    #[arg(long)]
    pub zeroshot_template: Option<String>,
    /// Compute threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Weight format of the linear layers.
    #[arg(long, value_enum, default_value_t = WeightFormat::F32)]
    pub dtype: WeightFormat,
    /// Which image text attends to: `previous` (OpenFlamingo v2) or `next` (v1, mmpretrain);
    /// default: the model's own (`next` for OpenFlamingo-9B-deprecated).
    #[arg(long, value_enum)]
    pub media_attention: Option<MediaAttention>,
}

/// `flamingo caption`: the caption options, and examples chosen by RICES.
#[derive(clap::Args, Debug)]
pub struct CaptionCmd {
    #[command(flatten)]
    pub caption: CaptionArgs,
    /// Take the examples from this labelled folder: the --shots images most like the query
    /// (CLIP embedding, RICES), most similar last, each with its first caption (or answer).
    #[arg(long, value_name = "DIR", requires = "shots")]
    pub rices: Option<PathBuf>,
    /// How many examples --rices picks.
    #[arg(long, value_name = "K", requires = "rices")]
    pub shots: Option<usize>,
}

#[derive(clap::Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    #[arg(long)]
    pub do_sample: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// Beam search with this many beams (1 = greedy or sampling).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam scores are divided by length^length_penalty (length includes the prompt).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f64,
    /// transformers' meanings.
    #[arg(long, value_enum, default_value_t = EarlyStopping::False)]
    pub early_stopping: EarlyStopping,
    #[arg(long, default_value_t = 1)]
    pub num_return_sequences: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Write every generation step's logits as an f32 .npy of shape [steps, vocab].
    #[arg(long, value_name = "FILE.npy")]
    pub logits_out: Option<PathBuf>,
    /// With --json: each generated token with its log-probability and this many most likely
    /// alternatives.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub top_logprobs: usize,
}

#[derive(clap::Args, Debug)]
pub struct SweepArgs {
    #[command(flatten)]
    pub caption: CaptionArgs,
    /// The example counts, comma-separated (default: 0, 1, 2, 4, … up to the number of
    /// examples). With --json, one line per count in this order.
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    pub shots: Vec<usize>,
    /// Draw the examples at random (the first n of one shuffle with this seed) instead of
    /// taking the first n in order.
    #[arg(long, value_name = "SEED")]
    pub random: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    #[command(flatten)]
    pub caption: CaptionArgs,
    /// The caption to explain (scored as given, without an end-of-chunk); default: the one
    /// the model generates with all the examples.
    #[arg(long = "caption", value_name = "TEXT")]
    pub text: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// A text to score after the prompt (repeat for several).
    #[arg(long, required = true)]
    pub candidate: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskArg {
    Caption,
    Vqa,
}

/// The named prompt styles (`crate::text::prompt::PRESETS`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetArg {
    #[value(name = "mmpretrain")]
    Mmpretrain,
    #[value(name = "open_flamingo")]
    OpenFlamingo,
}

impl PresetArg {
    fn name(self) -> &'static str {
        match self {
            Self::Mmpretrain => "mmpretrain",
            Self::OpenFlamingo => "open_flamingo",
        }
    }
}

impl PromptArgs {
    fn task(&self) -> Task {
        match self.task {
            TaskArg::Caption => Task::Caption,
            TaskArg::Vqa => Task::Vqa,
        }
    }

    fn templates(&self) -> anyhow::Result<Templates> {
        let mut t = preset(self.preset.name(), self.task())
            .ok_or_else(|| anyhow::anyhow!("no preset `{}`", self.preset.name()))?;
        if let Some(x) = &self.shot_template {
            t.shot = x.clone();
        }
        if let Some(x) = &self.final_template {
            t.final_ = x.clone();
        }
        if let Some(x) = &self.zeroshot_template {
            t.zeroshot = x.clone();
        }
        Ok(t)
    }

    fn shots(&self) -> anyhow::Result<Vec<Shot>> {
        let task = self.task();
        self.shot
            .chunks(2)
            .map(|c| {
                let text = c.get(1).cloned().unwrap_or_default();
                let text = match task {
                    Task::Caption => ShotText {
                        caption: text,
                        ..Default::default()
                    },
                    Task::Vqa => {
                        let (q, a) = text.split_once("=>").ok_or_else(|| {
                            anyhow::anyhow!(
                                "a VQA example's text is QUESTION=>ANSWER, got `{text}`"
                            )
                        })?;
                        ShotText {
                            question: q.trim().to_string(),
                            answer: a.trim().to_string(),
                            ..Default::default()
                        }
                    }
                };
                Ok(Shot {
                    image: ImageInput::Path(PathBuf::from(&c[0])),
                    text,
                })
            })
            .collect()
    }
}

impl CaptionArgs {
    fn generation(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            do_sample: self.do_sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            seed: self.seed,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            num_return_sequences: self.num_return_sequences,
        }
    }
}

impl Cli {
    /// The compute threads the command asks for (`--threads`), to be set before anything
    /// else starts ([`crate::platform::configure_threads`]).
    pub fn threads(&self) -> Option<usize> {
        match &self.command {
            Some(Command::Caption(a)) => a.caption.prompt.threads.map(usize::from),
            Some(Command::Score(a)) => a.prompt.threads.map(usize::from),
            Some(Command::Sweep(a)) => a.caption.prompt.threads.map(usize::from),
            Some(Command::Ablate(a)) => a.caption.prompt.threads.map(usize::from),
            Some(Command::Eval(a)) => a.threads.map(usize::from),
            Some(Command::Bench(a)) => a.threads.map(usize::from),
            Some(Command::BenchSweep(a)) => a.caption.prompt.threads.map(usize::from),
            Some(Command::BenchStop(a)) => a.caption.prompt.threads.map(usize::from),
            _ => None,
        }
    }

    /// Whether the command opens the window.
    pub fn is_app(&self) -> bool {
        matches!(self.command, None | Some(Command::App(_)))
    }

    /// The app's data folder the command names (`app --data-dir`).
    pub fn app_data_dir(&self) -> Option<PathBuf> {
        match &self.command {
            Some(Command::App(a)) => a.data_dir.clone(),
            _ => None,
        }
    }
}

/// Diagnostics from the library go to stderr: warnings by default, more with `RUST_LOG`
/// (e.g. `RUST_LOG=flamingo=debug`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Caption(a)) => caption(*a),
        Some(Command::Score(a)) => score(*a),
        Some(Command::Sweep(a)) => icl::sweep(*a),
        Some(Command::Ablate(a)) => icl::ablate(*a),
        Some(Command::Models { json }) => models(json),
        Some(Command::Download { model }) => download(&model),
        Some(Command::Eval(a)) => eval::eval(*a),
        Some(Command::Bench(a)) => bench::run(a),
        Some(Command::BenchSweep(a)) => bench::sweep_cost(*a),
        Some(Command::BenchStop(a)) => stop_latency::run(*a),
        Some(Command::App(a)) => app(a),
        None => app(AppArgs::default()),
    }
}

fn app(a: AppArgs) -> anyhow::Result<()> {
    crate::app::run_native(crate::app::AppOptions {
        data_dir: a.data_dir,
        hub_cache: None,
        hub_endpoint: None,
        offline: false,
        autoload: !a.no_autoload,
        model_id: a.model,
        weights: a.weights,
        stable_for_snapshots: false,
    })
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}

impl PromptArgs {
    /// The request (with default decoding) and a loaded model.
    fn load(&self) -> anyhow::Result<(CaptionRequest, Captioner)> {
        if self.task == TaskArg::Vqa && self.question.trim().is_empty() {
            anyhow::bail!("--task vqa needs --question");
        }
        let req = CaptionRequest {
            task: self.task(),
            shots: self.shots()?,
            query: ImageInput::Path(self.query.clone().unwrap_or_default()),
            question: self.question.clone(),
            templates: self.templates()?,
            generation: GenerationConfig::default(),
            keep_logits: false,
            media_attention: self.media_attention,
            top_logprobs: 0,
            forced: Vec::new(),
        };
        let (device, _) = crate::platform::pick_device();
        let fmt = self.dtype;
        let opts = crate::hub::download::DownloadOptions::new(&crate::hub::cache_dir());
        let mut bar = progress::ProgressBar::default();
        let captioner = Captioner::load_or_download(
            &opts,
            &self.model,
            &device,
            fmt,
            &AtomicBool::new(false),
            &mut |e| bar.on_event(e),
        )?;
        Ok((req, captioner))
    }
}

fn download(model: &str) -> anyhow::Result<()> {
    let spec = crate::hub::registry::find(model).ok_or_else(|| {
        anyhow::anyhow!("unknown model `{model}`; `flamingo models` lists the known ones")
    })?;
    let opts = crate::hub::download::DownloadOptions::new(&crate::hub::cache_dir());
    let mut bar = progress::ProgressBar::default();
    let mut fetched = false;
    let files =
        crate::hub::download::ensure_model(spec, &opts, &AtomicBool::new(false), &mut |e| {
            fetched = true;
            bar.on_event(e)
        })?;
    if !fetched {
        eprintln!("{} is already in the cache; nothing to download", spec.id);
    }
    if !spec.family.supported() {
        eprintln!(
            "note: {} uses a {:?} language model, which this version cannot run yet",
            spec.id, spec.family
        );
    }
    outln!("{}", files.checkpoint.path.display());
    Ok(())
}

fn models(json: bool) -> anyhow::Result<()> {
    use crate::store::released::Shape;
    let cache = crate::hub::cache_dir();
    let total = crate::platform::total_memory_bytes();
    let gb = |b: u64| (b as f64 / 1e8).round() / 10.0;
    let rows: Vec<serde_json::Value> = crate::hub::registry::MODELS
        .iter()
        .map(|m| {
            let complete = crate::hub::resolve_in(&cache, m).is_ok();
            let bytes: u64 = [m.checkpoint_repo, m.lm_repo, m.clip_repo]
                .iter()
                .map(|r| crate::hub::repo_bytes(&cache, r))
                .sum();
            let files: Vec<serde_json::Value> = m
                .files()
                .into_iter()
                .map(|n| {
                    let cached = n
                        .choices
                        .iter()
                        .find(|c| crate::hub::cached_file(&cache, n.repo, c).is_some());
                    serde_json::json!({"repo": n.repo, "choices": n.choices, "cached": cached})
                })
                .collect();
            let shape = Shape::released(m.family);
            let memory: serde_json::Map<String, serde_json::Value> = WeightFormat::ALL
                .iter()
                .map(|f| {
                    let b = shape.peak_bytes(*f);
                    let fits = total.is_none_or(|t| b < t);
                    (
                        f.name().to_string(),
                        serde_json::json!({"gb": gb(b), "fits_this_machine": fits}),
                    )
                })
                .collect();
            serde_json::json!({
                "id": m.id, "family": m.family, "runs": m.family.supported(),
                "cross_attn_every": m.cross_attn_every, "download_gb": m.download_gb,
                "memory": memory, "media_attention": m.media_attention.name(),
                "note": m.note, "repos": [m.checkpoint_repo, m.lm_repo, m.clip_repo],
                "files": files, "cached": complete, "bytes_on_disk": bytes,
            })
        })
        .collect();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "cache": cache, "machine_memory_gb": total.map(gb), "models": rows
            }))?
        );
        return Ok(());
    }
    outln!("Hugging Face cache: {}", cache.display());
    if let Some(t) = total {
        outln!("This machine's memory: {:.1} GB", gb(t));
    }
    for r in rows {
        let mem: Vec<String> = WeightFormat::ALL
            .iter()
            .map(|f| {
                let m = &r["memory"][f.name()];
                format!(
                    "{} {:.1}{}",
                    f.name(),
                    m["gb"].as_f64().unwrap_or(0.0),
                    if m["fits_this_machine"] == true {
                        ""
                    } else {
                        " (too big here)"
                    }
                )
            })
            .collect();
        outln!(
            "{}\n    {}, {}, ~{:.1} GB download; memory GB: {}\n    {}",
            r["id"].as_str().unwrap_or(""),
            r["family"].as_str().unwrap_or(""),
            if r["runs"].as_bool() == Some(true) {
                "runs"
            } else {
                "not yet"
            },
            r["download_gb"].as_f64().unwrap_or(0.0),
            mem.join(", "),
            if r["cached"].as_bool() == Some(true) {
                format!(
                    "cached ({:.2} GB on disk)",
                    r["bytes_on_disk"].as_u64().unwrap_or(0) as f64 / 1e9
                )
            } else {
                "not downloaded".to_string()
            }
        );
        if let Some(note) = r["note"].as_str() {
            outln!("    note: {note}");
        }
    }
    Ok(())
}

fn score(a: ScoreArgs) -> anyhow::Result<()> {
    if a.prompt.query.is_none() || a.prompt.batch.is_some() {
        anyhow::bail!("score takes one QUERY_IMAGE (no --batch)");
    }
    let (req, captioner) = a.prompt.load()?;
    let ranked = captioner.score(&req, &a.candidate, &AtomicBool::new(false))?;
    if a.json {
        let rows: Vec<_> = ranked
            .iter()
            .map(|(text, s)| serde_json::json!({"candidate": text, "logprob": s.logprob, "token_logprobs": s.token_logprobs}))
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"prompt": req.prompt()?, "ranked": rows})
            )?
        );
    } else {
        for (i, (text, s)) in ranked.iter().enumerate() {
            outln!("{:>2}. {:>10.4}  {}", i + 1, s.logprob, text);
        }
    }
    Ok(())
}

/// The images a `--batch` argument names: a folder's image files by name, or a list file.
pub fn batch_images(arg: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    const EXT: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp"];
    if arg.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(arg)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| EXT.contains(&e.to_ascii_lowercase().as_str()))
                    .unwrap_or(false)
            })
            .collect();
        v.sort();
        Ok(v)
    } else {
        let text = std::fs::read_to_string(arg)
            .map_err(|e| anyhow::anyhow!("cannot read the list {}: {e}", arg.display()))?;
        let base = arg.parent().unwrap_or(std::path::Path::new("."));
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let p = PathBuf::from(l);
                if p.is_absolute() {
                    p
                } else {
                    base.join(p)
                }
            })
            .collect())
    }
}

fn caption_batch(a: &CaptionArgs, list: &std::path::Path) -> anyhow::Result<()> {
    let images = batch_images(list)?;
    if images.is_empty() {
        anyhow::bail!("no images in {}", list.display());
    }
    let (mut req, captioner) = a.prompt.load()?;
    req.generation = a.generation();
    let queries: Vec<ImageInput> = images.iter().cloned().map(ImageInput::Path).collect();
    let results =
        captioner.caption_batch(&req, &queries, a.prompt.batch_size, &AtomicBool::new(false))?;
    let mut failed = 0;
    for (img, r) in images.iter().zip(results) {
        let line = match r {
            Ok(r) => serde_json::json!({
                "image": img, "text": r.text, "raw_text": r.raw_text, "token_ids": r.generated.tokens,
            }),
            Err(e) => {
                failed += 1;
                serde_json::json!({"image": img, "error": e.to_string()})
            }
        };
        outln!("{line}");
    }
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} images failed (see their lines)",
            images.len()
        );
    }
    Ok(())
}

fn caption(cmd: CaptionCmd) -> anyhow::Result<()> {
    let a = cmd.caption;
    if let Some(list) = a.prompt.batch.clone() {
        if a.prompt.query.is_some() {
            anyhow::bail!("give either QUERY_IMAGE or --batch, not both");
        }
        if cmd.rices.is_some() {
            anyhow::bail!("--rices picks examples for one query; use `flamingo eval --examples rices` for many");
        }
        return caption_batch(&a, &list);
    }
    let (mut req, captioner) = a.prompt.load()?;
    if let (Some(dir), Some(k)) = (&cmd.rices, cmd.shots) {
        if !req.shots.is_empty() {
            anyhow::bail!("give examples either with --shot or with --rices, not both");
        }
        req.shots = eval::rices_shots(&captioner, dir, k, &req)?;
    }
    req.generation = a.generation();
    req.keep_logits = a.logits_out.is_some();
    req.top_logprobs = a.top_logprobs;
    let cancel = AtomicBool::new(false);
    let json = a.json;
    let mut stdout = std::io::stdout();
    let res = captioner.caption(&req, &cancel, |chunk| {
        if !json {
            let _ = write!(stdout, "{chunk}");
            let _ = stdout.flush();
        }
    })?;
    if let Some(path) = &a.logits_out {
        write_logits(path, &res.generated.step_logits)?;
    }
    if json {
        let obj = caption_json(&captioner, &res, a.top_logprobs > 0)?;
        outln!("{}", serde_json::to_string_pretty(&obj)?);
    } else {
        outln!();
    }
    Ok(())
}

/// The JSON of a caption (`caption --json`, and each line of `sweep --json`); with `tokens`,
/// each generated token with its text, log-probability and alternatives.
pub(crate) fn caption_json(
    captioner: &Captioner,
    res: &crate::pipeline::CaptionResult,
    tokens: bool,
) -> anyhow::Result<serde_json::Value> {
    let g = &res.generated;
    let t = &g.timings;
    let mut obj = serde_json::json!({
        "model": captioner.model_id,
        "device": format!("{:?}", captioner.model.device().location()),
        "text": res.text,
        "raw_text": res.raw_text,
        "token_ids": g.tokens,
        "logprob": (!g.token_logprobs.is_empty()).then(|| g.logprob()),
        "prompt": res.prompt,
        "prompt_token_ids": res.prompt_ids,
        "stopped_by_eos": g.stopped_by_eos,
        "sequence_score": res.beams.first().map(|b| b.sequence_score),
        "beams": res.beams,
        "timings": {
            "load_s": captioner.load_s,
            "encode_s": t.encode_s,
            "prefill_s": t.prefill_s,
            "decode_s": t.decode_s,
            "decode_tokens": t.decode_tokens,
        },
    });
    if tokens {
        let tok = &captioner.tokenizer;
        let texts = tok.token_texts(&g.tokens)?;
        let rows = g
            .tokens
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let top = g
                    .alternatives
                    .get(i)
                    .map(|alts| {
                        alts.iter()
                            .map(|(a, lp)| {
                                Ok(serde_json::json!({
                                    "id": a, "text": tok.decode(&[*a])?, "logprob": lp,
                                }))
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?
                    .unwrap_or_default();
                Ok(serde_json::json!({
                    "id": id,
                    "text": texts.get(i),
                    "logprob": g.token_logprobs.get(i),
                    "top_logprobs": top,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        obj["tokens"] = serde_json::Value::Array(rows);
    }
    Ok(obj)
}

fn write_logits(path: &std::path::Path, rows: &[Vec<f32>]) -> Result<()> {
    let vocab = rows.first().map(|r| r.len()).unwrap_or(0);
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    npy::write_f32(path, &[rows.len(), vocab], &flat)
}
