//! `flamingo bench`: random weights at a named shape, no download; prints JSON timings.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::generate::{decode, GenerateOptions, Generated, GenerationConfig};
use crate::hub::registry::LmFamily;
use crate::model::config::VisionConfig;
use crate::model::Flamingo;
use crate::platform::peak_rss_bytes;
use crate::store::build::from_model_cache;
use crate::store::random::{keep_model, random_model};
use crate::store::released::Shape;
use crate::store::Recorded;
use crate::types::WeightFormat;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The model shape: the test fixtures' or a released model's.
    #[arg(long, value_enum, default_value_t = ShapeArg::Tiny)]
    pub shape: ShapeArg,
    /// Generated tokens to time.
    #[arg(long, default_value_t = 20)]
    pub tokens: usize,
    /// Images encoded for the per-image figure.
    #[arg(long, default_value_t = 3)]
    pub images: usize,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Weight format. Other than f32, the fidelity against f32 on the same weights is
    /// reported too.
    #[arg(long, value_enum, default_value_t = WeightFormat::F32)]
    pub dtype: WeightFormat,
    /// `auto`: the GPU this build was made for when one is present, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Cold captions and re-queries timed; the figures are their medians (every run is in the
    /// JSON too). This host's memory bandwidth changes from one half-minute to the next, and a
    /// single run can land in a slow spell.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// (Internal) time the model kept in this model cache file, in a process of its own.
    #[arg(long, hide = true)]
    pub kept: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceArg {
    Auto,
    Cpu,
}

/// The shapes `bench` builds.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShapeArg {
    /// The test fixtures' (MosaicGPT, width 32).
    #[value(name = "tiny")]
    Tiny,
    /// OpenFlamingo-3B-vitl-mpt1b (MosaicGPT 1B).
    #[value(name = "3b")]
    B3,
    /// OpenFlamingo-4B-vitl-rpj3b (GPT-NeoX, RedPajama-INCITE 3B).
    #[value(name = "4b")]
    B4,
    /// OpenFlamingo-9B-vitl-mpt7b (MPT-7B).
    #[value(name = "9b")]
    B9,
    /// OpenFlamingo-9B-deprecated (LLaMA-7B, v1).
    #[value(name = "9b-v1")]
    B9V1,
}

impl ShapeArg {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::B3 => "3b",
            Self::B4 => "4b",
            Self::B9 => "9b",
            Self::B9V1 => "9b-v1",
        }
    }

    pub fn shape(self) -> Shape {
        match self {
            Self::Tiny => Shape::tiny(),
            Self::B3 => Shape::released(LmFamily::MosaicGpt),
            Self::B4 => Shape::released(LmFamily::GptNeoX),
            Self::B9 => Shape::released(LmFamily::Mpt),
            Self::B9V1 => Shape::released(LmFamily::Llama),
        }
    }
}

/// Image-and-prompt sets the fidelity is measured on: 4 x 37 positions. With random weights
/// the top two logits are often close, so one set's 37 positions gave top-1 agreements from
/// 84 to 100 % for the same format.
const FIDELITY_SETS: u32 = 4;

/// Three random images and a prompt variant for each fidelity set.
fn fidelity_inputs(
    vcfg: &VisionConfig,
    device: &Device,
    media: u32,
    eoc: u32,
) -> anyhow::Result<Vec<(Tensor, Vec<u32>)>> {
    let s = vcfg.image_size;
    (0..FIDELITY_SETS)
        .map(|v| {
            let pixels = Tensor::randn(0f32, 1f32, (3, 3, s, s), device)?;
            Ok((pixels, prompt_variant(media, eoc, v)))
        })
        .collect()
}

/// Logits of every position of every set's prompt with its images, one after the other:
/// [sets x positions, vocab].
fn prompt_logits(
    model: &crate::model::Flamingo,
    sets: &[(Tensor, Vec<u32>)],
) -> anyhow::Result<Tensor> {
    let mut all = Vec::new();
    for (pixels, prompt) in sets {
        let latents = model.encode_images(pixels)?.unsqueeze(0)?;
        let mut s = model.session(&latents)?;
        all.push(s.forward(std::slice::from_ref(prompt))?.squeeze(0)?);
    }
    Ok(Tensor::cat(&all, 0)?)
}

/// Cosine similarity of two [T, V] logit sets (per position, worst and mean) and top-1 agreement.
pub fn compare(reference: &Tensor, other: &Tensor) -> anyhow::Result<serde_json::Value> {
    let a: Vec<Vec<f32>> = reference.to_vec2()?;
    let b: Vec<Vec<f32>> = other.to_vec2()?;
    let mut cos = Vec::new();
    let mut agree = 0usize;
    for (x, y) in a.iter().zip(&b) {
        let dot: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
        let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        let ny: f64 = y.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
        cos.push(dot / (nx * ny).max(1e-30));
        let am = |v: &[f32]| {
            v.iter()
                .enumerate()
                .fold(0, |m, (i, s)| if *s > v[m] { i } else { m })
        };
        if am(x) == am(y) {
            agree += 1;
        }
    }
    Ok(serde_json::json!({
        "positions": a.len(),
        "cosine_min": cos.iter().cloned().fold(f64::INFINITY, f64::min),
        "cosine_mean": cos.iter().sum::<f64>() / cos.len().max(1) as f64,
        "top1_agreement": agree as f64 / a.len().max(1) as f64,
    }))
}

/// A 37-token two-shot prompt shape: `<image>` at the start of each of three chunks.
pub fn two_shot_prompt(media_id: u32, eoc_id: u32) -> Vec<u32> {
    prompt_variant(media_id, eoc_id, 0)
}

/// The two-shot prompt's shape with other text tokens for each `variant`.
fn prompt_variant(media_id: u32, eoc_id: u32, variant: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for chunk in 0..3u32 {
        ids.push(media_id);
        let n = if chunk < 2 { 11 } else { 10 };
        ids.extend((0..n).map(|i| 1000 + variant * 300 + chunk * 100 + i as u32));
        if chunk < 2 {
            ids.push(eoc_id);
        }
    }
    ids
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Bytes of the distinct tensors in a model's record.
fn record_bytes(record: &[(String, Recorded)]) -> usize {
    let mut seen = std::collections::HashSet::new();
    record
        .iter()
        .filter(|(n, _)| seen.insert(n.as_str()))
        .map(|(_, r)| match r {
            Recorded::Plain(t) => crate::nn::linear::tensor_bytes(t),
            Recorded::Linear(w) => w.bytes(),
        })
        .sum()
}

/// The format the fidelity of another format is measured against: f32 where the f32 model
/// fits this machine's memory with room to spare, else f16.
fn reference_format(shape: &Shape) -> WeightFormat {
    let total = crate::platform::total_memory_bytes().unwrap_or(u64::MAX);
    if shape.peak_bytes(WeightFormat::F32) + (2 << 30) < total / 10 * 9 {
        WeightFormat::F32
    } else {
        WeightFormat::F16
    }
}

/// Builds random weights at the shape. In f32 they are timed right here. In another format,
/// the reference's logits (f32, or f16 where f32 does not fit) are taken from one model, then
/// the model is built straight in the format (never whole in f32), written as a model cache
/// file, its fidelity measured on that file, and a fresh process loads it the way the app
/// does on a later start (quantized weights read in place) and does the timings, so that its
/// peak memory is the app's.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let shape = a.shape.shape();
    let (device, device_label) = match a.device {
        DeviceArg::Cpu => (Device::Cpu, "CPU".to_string()),
        DeviceArg::Auto => crate::platform::pick_device(),
    };
    let fmt = a.dtype;
    let (vcfg, lm_cfg) = (&shape.vision, &shape.lm);
    let (eoc, media) = (shape.eoc_id, shape.media_id);
    if let Some(path) = &a.kept {
        let t = Instant::now();
        let mut model = from_model_cache(path, vcfg, lm_cfg, media, &device, fmt)?;
        model.prepare_weights()?;
        device.synchronize()?;
        let load_s = t.elapsed().as_secs_f64();
        let mut out = timings(&model, &a, vcfg, &device, media, eoc)?;
        out.insert("load_s".into(), load_s.into());
        out.insert(
            "weights_bytes".into(),
            std::fs::metadata(path).map(|m| m.len()).ok().into(),
        );
        out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
        outln!("{}", serde_json::Value::Object(out));
        return Ok(());
    }
    let t0 = Instant::now();
    let (mut out, build_s, fidelity, reference) = if fmt == WeightFormat::F32 {
        let (model, record) = random_model(&shape, &device, WeightFormat::F32, true)?;
        let build_s = t0.elapsed().as_secs_f64();
        let weights = record_bytes(&record);
        drop(record);
        let mut out = timings(&model, &a, vcfg, &device, media, eoc)?;
        out.insert("weights_bytes".into(), weights.into());
        out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
        (out, build_s, serde_json::Value::Null, WeightFormat::F32)
    } else {
        let sets = fidelity_inputs(vcfg, &device, media, eoc)?;
        let reference_fmt = reference_format(&shape);
        let reference = {
            let (mut model, _) = random_model(&shape, &device, reference_fmt, false)?;
            model.prepare_weights()?;
            prompt_logits(&model, &sets)?
        };
        crate::platform::give_back_freed_memory();
        let t0 = Instant::now();
        let (model, record) = random_model(&shape, &device, fmt, true)?;
        let file = TempFile(std::env::temp_dir().join(format!(
            "flamingo-bench-{}-{}.gguf",
            std::process::id(),
            fmt.name()
        )));
        match keep_model(&file.0, fmt, record) {
            Ok(()) => {
                drop(model);
                crate::platform::give_back_freed_memory();
                let build_s = t0.elapsed().as_secs_f64();
                // The file on disk before the timings: the system writing its gigabytes back
                // while they run would take memory bandwidth and CPU from them (the app loads
                // a kept model written long before).
                if let Ok(f) = std::fs::File::open(&file.0) {
                    let _ = f.sync_all();
                }
                let mut kept = from_model_cache(&file.0, vcfg, lm_cfg, media, &device, fmt)?;
                // Measured on the kernels that the timings and the app use.
                kept.prepare_weights()?;
                let fidelity = compare(&reference, &prompt_logits(&kept, &sets)?)?;
                drop(kept);
                (
                    time_in_child(&a, &file.0)?,
                    build_s,
                    fidelity,
                    reference_fmt,
                )
            }
            Err(e) => {
                // No room for the file (TMPDIR picks another folder): time it here.
                tracing::warn!(
                    "could not write the converted model to {} ({e}); timing it in this process",
                    file.0.display()
                );
                let mut model = model;
                model.prepare_weights()?;
                let build_s = t0.elapsed().as_secs_f64();
                let fidelity = compare(&reference, &prompt_logits(&model, &sets)?)?;
                let mut out = timings(&model, &a, vcfg, &device, media, eoc)?;
                out.insert("weights_bytes".into(), serde_json::Value::Null);
                out.insert("peak_rss_bytes".into(), peak_rss_bytes().into());
                (out, build_s, fidelity, reference_fmt)
            }
        }
    };
    out.insert("build_s".into(), build_s.into());
    out.insert(format!("fidelity_vs_{}", reference.name()), fidelity);
    out.insert("shape".into(), a.shape.name().into());
    out.insert("dtype".into(), fmt.name().into());
    out.insert("device".into(), device_label.into());
    out.insert(
        "threads".into(),
        candle_core::utils::get_num_threads().into(),
    );
    out.insert("estimated_peak_bytes".into(), shape.peak_bytes(fmt).into());
    outln!(
        "{}",
        serde_json::to_string_pretty(&serde_json::Value::Object(out))?
    );
    Ok(())
}

/// Runs this program's `bench --kept FILE` with the same settings; its JSON result.
fn time_in_child(
    a: &BenchArgs,
    file: &Path,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("bench")
        .args(["--shape", a.shape.name(), "--dtype", a.dtype.name()])
        .args([
            "--device",
            match a.device {
                DeviceArg::Auto => "auto",
                DeviceArg::Cpu => "cpu",
            },
        ])
        .args(["--tokens", &a.tokens.to_string()])
        .args(["--images", &a.images.to_string()])
        .args(["--repeats", &a.repeats.to_string()])
        .arg("--kept")
        .arg(file)
        .stderr(std::process::Stdio::inherit());
    if let Some(n) = a.threads {
        cmd.args(["--threads", &n.to_string()]);
    }
    let done = cmd.output()?;
    if !done.status.success() {
        anyhow::bail!("timing the kept model failed ({})", done.status);
    }
    match serde_json::from_slice(&done.stdout)? {
        serde_json::Value::Object(m) => Ok(m),
        _ => anyhow::bail!("timing the kept model printed no JSON object"),
    }
}

/// Encode, prefill, decode, cold caption and re-query timings of `model`.
fn timings(
    model: &Flamingo,
    a: &BenchArgs,
    vcfg: &VisionConfig,
    device: &Device,
    media: u32,
    eoc: u32,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    // A GPU runs asynchronously: every timed span ends by waiting for its work.
    let sync = || device.synchronize();
    let prompt = two_shot_prompt(media, eoc);
    let s = vcfg.image_size;
    let one = Tensor::randn(0f32, 1f32, (1, 3, s, s), device)?;
    // Warm-up, then the timed encodes.
    model.encode_images(&one)?;
    sync()?;
    let t = Instant::now();
    for _ in 0..a.images.max(1) {
        model.encode_images(&one)?;
    }
    sync()?;
    let encode_per_image = t.elapsed().as_secs_f64() / a.images.max(1) as f64;

    let pixels = Tensor::randn(0f32, 1f32, (3, 3, s, s), device)?;
    let latents = model.encode_images(&pixels)?.unsqueeze(0)?;
    // Warm-up prefill (first-touch allocations), then the timed one.
    model
        .session(&latents)?
        .forward(std::slice::from_ref(&prompt))?;
    let mut session = model.session(&latents)?;
    sync()?;
    let t = Instant::now();
    let logits = session.forward(std::slice::from_ref(&prompt))?;
    sync()?;
    let prefill_s = t.elapsed().as_secs_f64();
    drop(logits);
    drop(session);

    // Decode: never stop early (no eos), so exactly `tokens` steps are timed.
    let opts = GenerateOptions {
        config: GenerationConfig {
            max_new_tokens: a.tokens.max(2),
            ..Default::default()
        },
        eos_id: u32::MAX,
        suppress: vec![media],
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let reps = a.repeats.max(1);
    // Cold captions: nothing kept between them (generate encodes every image and the whole
    // prompt). The per-token decode figure is the first one's, timed like PyTorch's (once).
    let mut colds = Vec::new();
    let mut decode_per_token = 0.0;
    for r in 0..reps {
        let g = cold_caption(model, &pixels, &prompt, &opts, &cancel)?;
        if r == 0 {
            decode_per_token = g.timings.decode_s / (g.tokens.len().max(2) - 1) as f64;
        }
        let parts = [g.timings.encode_s, g.timings.prefill_s, g.timings.decode_s];
        colds.push((parts.iter().sum::<f64>(), parts, g.tokens.len()));
    }
    colds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (cold_caption_s, cold_parts, decode_tokens) = colds[colds.len() / 2];

    // Re-query with the same two examples: their latents and the prompt prefix are kept, so the
    // first token needs one image encode and the final prompt (what the app's caches do).
    let split = prompt.iter().rposition(|&t| t == media).unwrap_or(0);
    let (prefix, suffix) = prompt.split_at(split);
    let shots = model
        .encode_images(&pixels.narrow(0, 0, 2)?)?
        .unsqueeze(0)?;
    let mut kept = model.session(&shots)?;
    kept.forward(&[prefix.to_vec()])?;
    let state = kept.state();
    // After the kept prefix: the query's image, then the final prompt.
    let final_prompt = |q: &Tensor| -> anyhow::Result<(crate::model::Session<'_>, Tensor)> {
        let mut s = model.resume(state.clone());
        s.add_images(q)?;
        let logits = s.forward(&[suffix.to_vec()])?;
        Ok((s, logits))
    };
    // Each run: a new query image's time to first token, then its floor, timed right after:
    // the query's encode plus the final prompt alone.
    let mut requeries = Vec::new();
    for _ in 0..reps {
        let query = Tensor::randn(0f32, 1f32, (1, 3, s, s), device)?;
        sync()?;
        let t = Instant::now();
        let q = model.encode_images(&query)?.unsqueeze(0)?;
        sync()?;
        let encode_s = t.elapsed().as_secs_f64();
        let (_, first) = final_prompt(&q)?;
        crate::generate::argmax_last(&first)?;
        let ttft_s = t.elapsed().as_secs_f64();
        sync()?;
        let t = Instant::now();
        final_prompt(&q)?;
        sync()?;
        requeries.push([ttft_s, encode_s, t.elapsed().as_secs_f64()]);
    }
    let median = |i: usize| {
        let mut v: Vec<f64> = requeries.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (requery_ttft_s, requery_encode_s, final_prefill_s) = (median(0), median(1), median(2));
    let q = model
        .encode_images(&pixels.narrow(0, 2, 1)?)?
        .unsqueeze(0)?;
    // The app's work-ahead: the examples' prompt and all three images were done while the
    // user edited, so Generate runs the final prompt and decodes the same tokens as above.
    let t = Instant::now();
    let (mut s, logits) = final_prompt(&q)?;
    let mut ahead = Generated::default();
    decode(
        &mut s,
        &logits,
        &prompt,
        &opts,
        &cancel,
        &mut |_| {},
        &mut ahead,
    )?;
    sync()?;
    let prepared_caption_s = t.elapsed().as_secs_f64();
    let out = serde_json::json!({
        "encode_s_per_image": encode_per_image,
        "prompt_tokens": prompt.len(),
        "prefill_s": prefill_s,
        "decode_s_per_token": decode_per_token,
        "decode_tokens": decode_tokens,
        // The median run, and its parts: the three images, the prompt, the tokens after the
        // first.
        "cold_caption_s": cold_caption_s,
        "cold_caption_parts_s": cold_parts,
        "cold_caption_runs_s": colds.iter().map(|c| c.0).collect::<Vec<_>>(),
        "requery_ttft_s": requery_ttft_s,
        "requery_encode_s": requery_encode_s,
        "requery_final_prefill_s": final_prefill_s,
        // Each run's time to first token, query encode and final prompt alone.
        "requery_runs_s": requeries,
        "prepared_caption_s": prepared_caption_s,
        "prepared_caption_tokens": ahead.tokens.len(),
    });
    match out {
        serde_json::Value::Object(m) => Ok(m),
        _ => anyhow::bail!("timings are not a JSON object"),
    }
}

/// A caption from nothing kept: every image encoded and the whole prompt run, then decoded;
/// the model's own operations on pixel tensors (the pipeline's images are files).
fn cold_caption(
    model: &Flamingo,
    pixels: &Tensor,
    prompt: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
) -> anyhow::Result<Generated> {
    let device = model.device();
    let mut out = Generated::default();
    let t = Instant::now();
    let latents = (0..pixels.dim(0)?)
        .map(|i| model.encode_images(&pixels.narrow(0, i, 1)?))
        .collect::<crate::error::Result<Vec<_>>>()?;
    let media = Tensor::cat(&latents, 0)?.unsqueeze(0)?;
    device.synchronize()?;
    out.timings.encode_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut session = model.session(&media)?;
    let logits = session.forward(&[prompt.to_vec()])?;
    device.synchronize()?;
    out.timings.prefill_s = t.elapsed().as_secs_f64();
    decode(
        &mut session,
        &logits,
        prompt,
        opts,
        cancel,
        &mut |_| {},
        &mut out,
    )?;
    Ok(out)
}

#[derive(clap::Args, Debug)]
pub struct SweepCostArgs {
    /// The query, the examples (four for the target's 0/1/2/4 sweep), the model and format.
    #[command(flatten)]
    pub caption: super::CaptionArgs,
    /// The example counts of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,4")]
    pub shots: Vec<usize>,
    /// Each figure is the median of this many runs.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The sweep's cost target: a sweep of k counts should cost at most 1.3 × a cold caption with
/// all the examples plus (k − 1) final-prompt-and-decode runs (a re-query whose examples are
/// kept). Every run decodes exactly `max_new_tokens` (min = max), so the runs compare.
pub fn sweep_cost(a: SweepCostArgs) -> anyhow::Result<()> {
    let (mut req, captioner) = super::icl::one_query(&a.caption, "bench-sweep")?;
    req.generation.min_new_tokens = req.generation.max_new_tokens;
    let n = req.shots.len();
    crate::pipeline::icl::sweep_picks(n, &a.shots, crate::types::ShotPick::First)?;
    let cancel = AtomicBool::new(false);
    captioner.warm_up()?;
    let (mut cold, mut again, mut sweep) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows_s: Vec<Vec<f64>> = Vec::new();
    for _ in 0..a.repeats.max(1) {
        captioner.clear_caches()?;
        let t = Instant::now();
        captioner.caption(&req, &cancel, |_| {})?;
        cold.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        captioner.caption(&req, &cancel, |_| {})?;
        again.push(t.elapsed().as_secs_f64());
        captioner.clear_caches()?;
        let t = Instant::now();
        let rows = captioner.sweep(
            &req,
            &a.shots,
            crate::types::ShotPick::First,
            &cancel,
            |_| {},
        )?;
        sweep.push(t.elapsed().as_secs_f64());
        rows_s.push(
            rows.iter()
                .map(|r| r.as_ref().map_or(f64::NAN, |r| r.seconds))
                .collect(),
        );
    }
    let (cold_s, final_s, sweep_s) = (
        median(cold.clone()),
        median(again.clone()),
        median(sweep.clone()),
    );
    let budget = 1.3 * cold_s + (a.shots.len().saturating_sub(1)) as f64 * final_s;
    let out = serde_json::json!({
        "model": captioner.model_id,
        "dtype": a.caption.prompt.dtype.name(),
        "threads": candle_core::utils::get_num_threads(),
        "examples": n,
        "counts": a.shots,
        "new_tokens": req.generation.max_new_tokens,
        "cold_caption_s": cold_s,
        "final_prompt_and_decode_s": final_s,
        "sweep_s": sweep_s,
        "target_s": budget,
        "sweep_over_target": sweep_s / budget,
        "runs": {"cold": cold, "again": again, "sweep": sweep, "sweep_rows": rows_s},
    });
    outln!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
