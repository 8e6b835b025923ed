//! Decoding with a KV cache (greedy or sampling, with transformers' logits processors),
//! stopping at `<|endofchunk|>` or `max_new_tokens`, streaming each token as it is chosen and
//! checking a cancel flag every step.

pub mod beam;
pub mod logits;
pub mod score;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::Flamingo;

pub use logits::GenerationConfig;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub config: GenerationConfig,
    /// Generation stops after this token (it is included in the output ids).
    pub eos_id: u32,
    /// Tokens never chosen (e.g. `<image>`: a generated image marker has no image).
    pub suppress: Vec<u32>,
    /// Keep every step's logits (for `--logits-out` and tests).
    pub keep_logits: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decode_tokens: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub step_logits: Vec<Vec<f32>>,
    pub timings: Timings,
    pub stopped_by_eos: bool,
}

fn last_row(logits: &Tensor) -> Result<Tensor> {
    let t = logits.dim(1)?;
    Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?.squeeze(0)?)
}

/// Decoding of one prompt (greedy, or sampling when `config.do_sample`). `pixels` [T_img, 3, S, S] are the prompt's images in order.
/// `on_token` sees each chosen id as soon as it is known.
pub fn generate(
    model: &Flamingo,
    pixels: Option<&Tensor>,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    mut on_token: impl FnMut(u32),
) -> Result<Generated> {
    let mut out = Generated::default();
    if prompt_ids.is_empty() {
        return Err(Error::Prompt("the prompt is empty".into()));
    }
    let n_markers = prompt_ids
        .iter()
        .filter(|&&t| t == model.media_id())
        .count();
    let n_images = pixels.map(|p| p.dim(0)).transpose()?.unwrap_or(0);
    if n_markers != n_images {
        return Err(Error::Prompt(format!(
            "the prompt has {n_markers} <image> markers but {n_images} images were given"
        )));
    }
    let cfg = &opts.config;
    check_budget(model, prompt_ids.len(), cfg)?;
    let t0 = Instant::now();
    let media = encode_media(model, pixels, cancel)?;
    // A GPU runs asynchronously: wait for the work so that each timing holds its own.
    model.device().synchronize()?;
    out.timings.encode_s = t0.elapsed().as_secs_f64();
    let mut session = model.session(&media)?;
    let t1 = Instant::now();
    let logits = session.forward(&[prompt_ids.to_vec()])?;
    model.device().synchronize()?;
    out.timings.prefill_s = t1.elapsed().as_secs_f64();
    decode_loop(
        &mut session,
        &logits,
        prompt_ids,
        opts,
        cancel,
        &mut on_token,
        &mut out,
    )?;
    Ok(out)
}

/// The options are valid and a prompt of `prompt_len` tokens plus the new tokens fits the
/// model's context.
pub fn check_budget(model: &Flamingo, prompt_len: usize, cfg: &GenerationConfig) -> Result<()> {
    cfg.validate().map_err(Error::Prompt)?;
    let needed = prompt_len + cfg.max_new_tokens;
    if needed > model.max_seq_len() {
        return Err(Error::ContextTooLong {
            needed,
            limit: model.max_seq_len(),
        });
    }
    Ok(())
}

/// The decoding loop after a prefill: `logits` are the prefill's, `prompt_ids` the whole
/// prompt (for the repetition rules). Fills `out.tokens`, logits and decode timings.
pub fn decode_loop(
    session: &mut crate::model::Session<'_>,
    logits: &Tensor,
    prompt_ids: &[u32],
    opts: &GenerateOptions,
    cancel: &AtomicBool,
    on_token: &mut impl FnMut(u32),
    out: &mut Generated,
) -> Result<()> {
    let cfg = &opts.config;
    let mut row = last_row(logits)?;
    let t2 = Instant::now();
    let mut rng = logits::Rng::new(cfg.seed);
    let mut seq = prompt_ids.to_vec();
    for step in 0..cfg.max_new_tokens {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let v: Vec<f32> = row.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        let next = logits::choose(&v, &seq, step, cfg, opts.eos_id, &opts.suppress, &mut rng);
        seq.push(next);
        if opts.keep_logits {
            out.step_logits.push(v);
        }
        out.tokens.push(next);
        on_token(next);
        if next == opts.eos_id {
            out.stopped_by_eos = true;
            break;
        }
        if step + 1 == cfg.max_new_tokens {
            break;
        }
        let logits = session.forward(&[vec![next]])?;
        row = last_row(&logits)?;
    }
    out.timings.decode_s = t2.elapsed().as_secs_f64();
    out.timings.decode_tokens = out.tokens.len();
    Ok(())
}

/// Latents [1, T_img, L, D] of a prompt's images, encoded one by one so that a cancel is seen
/// between images.
pub fn encode_media(
    model: &Flamingo,
    pixels: Option<&Tensor>,
    cancel: &AtomicBool,
) -> Result<Tensor> {
    let n = pixels.map(|p| p.dim(0)).transpose()?.unwrap_or(0);
    let Some(p) = pixels.filter(|_| n > 0) else {
        let w = model.vision_config().width;
        return Ok(Tensor::zeros((1, 0, 64, w), model.dtype(), model.device())?);
    };
    let mut latents = Vec::with_capacity(n);
    for i in 0..n {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        latents.push(model.encode_images(&p.narrow(0, i, 1)?)?);
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(Error::Cancelled);
    }
    Ok(Tensor::cat(&latents, 0)?.unsqueeze(0)?)
}

/// Index of the largest value of each row of [.., V] logits.
pub fn argmax_last(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?)
}

/// One prompt of a batch: its images [T_img, 3, S, S] (or none) and its token ids.
pub struct BatchItem<'a> {
    pub pixels: Option<&'a Tensor>,
    pub prompt_ids: &'a [u32],
}

/// Decodes several prompts at once: left padding with `pad_id` and a key mask, rows padded to
/// the same number of images with latents no token attends to. Each row draws from its own
/// generator seeded with `config.seed`, so results equal decoding the prompts one by one.
pub fn generate_batch(
    model: &Flamingo,
    items: &[BatchItem<'_>],
    opts: &GenerateOptions,
    pad_id: u32,
    cancel: &AtomicBool,
) -> Result<Vec<Generated>> {
    let cfg = &opts.config;
    cfg.validate().map_err(Error::Prompt)?;
    let b = items.len();
    if b == 0 {
        return Ok(Vec::new());
    }
    let longest = items.iter().map(|i| i.prompt_ids.len()).max().unwrap_or(0);
    if items.iter().any(|i| i.prompt_ids.is_empty()) {
        return Err(Error::Prompt("a prompt of the batch is empty".into()));
    }
    if longest + cfg.max_new_tokens > model.max_seq_len() {
        return Err(Error::ContextTooLong {
            needed: longest + cfg.max_new_tokens,
            limit: model.max_seq_len(),
        });
    }
    let t0 = Instant::now();
    let mut latents = Vec::with_capacity(b);
    for it in items {
        let n_markers = it
            .prompt_ids
            .iter()
            .filter(|&&t| t == model.media_id())
            .count();
        let n_images = it.pixels.map(|p| p.dim(0)).transpose()?.unwrap_or(0);
        if n_markers != n_images {
            return Err(Error::Prompt(format!(
                "a prompt has {n_markers} <image> markers but {n_images} images were given"
            )));
        }
        latents.push(encode_media(model, it.pixels, cancel)?);
    }
    let t_max = latents
        .iter()
        .map(|l| l.dim(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let t_max = t_max.into_iter().max().unwrap_or(0);
    let (l, d) = (64, model.vision_config().width);
    let padded = latents
        .into_iter()
        .map(|x| {
            let t = x.dim(1)?;
            if t == t_max {
                return Ok(x);
            }
            let (_, _, l, d) = x.dims4()?;
            let z = Tensor::zeros((1, t_max - t, l, d), x.dtype(), x.device())?;
            Ok(Tensor::cat(&[&x, &z], 1)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let media = if t_max == 0 {
        Tensor::zeros((b, 0, l, d), model.dtype(), model.device())?
    } else {
        Tensor::cat(&padded, 0)?
    };
    model.device().synchronize()?;
    let encode_s = t0.elapsed().as_secs_f64();
    let mut session = model.session(&media)?;
    let mut ids = Vec::with_capacity(b);
    let mut pad = Vec::with_capacity(b);
    for it in items {
        let p = longest - it.prompt_ids.len();
        let mut row = vec![pad_id; p];
        row.extend_from_slice(it.prompt_ids);
        ids.push(row);
        let mut m = vec![true; p];
        m.extend(std::iter::repeat_n(false, it.prompt_ids.len()));
        pad.push(m);
    }
    let t1 = Instant::now();
    let logits = session.forward_padded(&ids, Some(&pad))?;
    model.device().synchronize()?;
    let prefill_s = t1.elapsed().as_secs_f64();
    let last = |logits: &Tensor| -> Result<Vec<Vec<f32>>> {
        let t = logits.dim(1)?;
        Ok(logits
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?)
    };
    let mut rows = last(&logits)?;
    let mut out: Vec<Generated> = (0..b).map(|_| Generated::default()).collect();
    let mut seqs: Vec<Vec<u32>> = items.iter().map(|i| i.prompt_ids.to_vec()).collect();
    let mut rngs: Vec<logits::Rng> = (0..b).map(|_| logits::Rng::new(cfg.seed)).collect();
    let mut finished = vec![false; b];
    let t2 = Instant::now();
    for step in 0..cfg.max_new_tokens {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let mut next = vec![pad_id; b];
        for r in 0..b {
            if finished[r] {
                continue;
            }
            let t = logits::choose(
                &rows[r],
                &seqs[r],
                step,
                cfg,
                opts.eos_id,
                &opts.suppress,
                &mut rngs[r],
            );
            if opts.keep_logits {
                out[r].step_logits.push(rows[r].clone());
            }
            seqs[r].push(t);
            out[r].tokens.push(t);
            next[r] = t;
            if t == opts.eos_id {
                finished[r] = true;
                out[r].stopped_by_eos = true;
            }
        }
        if finished.iter().all(|&f| f) || step + 1 == cfg.max_new_tokens {
            break;
        }
        let step_ids: Vec<Vec<u32>> = next.into_iter().map(|t| vec![t]).collect();
        let step_pad: Vec<Vec<bool>> = vec![vec![false]; b];
        let logits = session.forward_padded(&step_ids, Some(&step_pad))?;
        rows = last(&logits)?;
    }
    let decode_s = t2.elapsed().as_secs_f64();
    for g in &mut out {
        g.timings = Timings {
            encode_s,
            prefill_s,
            decode_s,
            decode_tokens: g.tokens.len(),
        };
    }
    Ok(out)
}
