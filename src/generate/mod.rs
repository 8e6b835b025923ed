//! Decoding over a session that has run its prompt: greedy or sampling with transformers'
//! logits processors, beam search, batches, and the scoring of given texts. Stops at
//! `<|endofchunk|>` or `max_new_tokens`, streams each token as it is chosen and checks a cancel
//! flag every step. Where the session's images and prompt come from is the pipeline's business.

pub mod beam;
pub mod logits;
pub mod score;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::Session;

pub use logits::GenerationConfig;

#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub config: GenerationConfig,
    /// Generation stops after this token (it is included in the output ids).
    pub eos_id: u32,
    /// Tokens never chosen (e.g. `<image>`: a generated image marker has no image).
    pub suppress: Vec<u32>,
    /// Keep every step's logits (for `--logits-out` and tests).
    pub keep_logits: bool,
    /// Keep each step's this many most likely tokens with their log-probabilities.
    pub top_logprobs: usize,
    /// Tokens taken as the first steps' choices instead of choosing (a branch that forces an
    /// alternative continues from them); decoding goes on after them as usual.
    pub forced: Vec<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub encode_s: f64,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decode_tokens: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Generated {
    pub tokens: Vec<u32>,
    /// log p(token) of each generated token under the model's distribution (the softmax of
    /// its step's logits, before any decoding rule).
    pub token_logprobs: Vec<f32>,
    /// Each step's most likely tokens and their log-probabilities, best first (with
    /// [`GenerateOptions::top_logprobs`]).
    pub alternatives: Vec<Vec<(u32, f32)>>,
    pub step_logits: Vec<Vec<f32>>,
    pub timings: Timings,
    pub stopped_by_eos: bool,
}

impl Generated {
    /// The summed log-probability of the generated tokens.
    pub fn logprob(&self) -> f32 {
        self.token_logprobs.iter().sum()
    }
}

/// The log-probability of `chosen` under softmax(`logits`), and the `k` most likely tokens
/// with theirs, best first.
pub fn logprobs(logits: &[f32], chosen: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |x: f32| (x as f64 - lse) as f32;
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&x| lp(x));
    if k == 0 {
        return (chosen_lp, Vec::new());
    }
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k - 1, |a, b| {
        logits[*b as usize].total_cmp(&logits[*a as usize])
    });
    let mut top: Vec<(u32, f32)> = idx[..k]
        .iter()
        .map(|&i| (i, lp(logits[i as usize])))
        .collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    (chosen_lp, top)
}

/// Logits that are not numbers come from damaged weights or configuration: a clear error,
/// never a caption of whatever a NaN comparison picks.
fn check_finite(logits: &[f32], step: usize) -> Result<()> {
    if logits.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        return Err(Error::NotFinite { step });
    }
    Ok(())
}

fn last_row(logits: &Tensor) -> Result<Tensor> {
    let t = logits.dim(1)?;
    Ok(logits.narrow(1, t - 1, 1)?.squeeze(1)?.squeeze(0)?)
}

/// The options are valid and a prompt of `prompt_len` tokens plus the new tokens fits the
/// model's context.
pub fn check_budget(max_seq_len: usize, prompt_len: usize, cfg: &GenerationConfig) -> Result<()> {
    cfg.validate().map_err(Error::Prompt)?;
    let needed = prompt_len + cfg.max_new_tokens;
    if needed > max_seq_len {
        return Err(Error::ContextTooLong {
            needed,
            limit: max_seq_len,
        });
    }
    Ok(())
}

/// Greedy or sampled decoding after a prefill: `logits` are the prefill's, `prompt_ids` the
/// whole prompt (for the repetition rules). Fills `out.tokens`, logits and decode timings.
pub fn decode(
    session: &mut Session<'_>,
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
        check_finite(&v, step)?;
        let next = match opts.forced.get(step) {
            Some(&t) => t,
            None => logits::choose(&v, &seq, step, cfg, opts.eos_id, &opts.suppress, &mut rng),
        };
        seq.push(next);
        let (lp, top) = logprobs(&v, next, opts.top_logprobs);
        out.token_logprobs.push(lp);
        if opts.top_logprobs > 0 {
            out.alternatives.push(top);
        }
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

/// Index of the largest value of each row of [.., V] logits.
pub fn argmax_last(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1()?)
}

/// Decodes a batch of left-padded prompts `prompts` (each row's own ids, without padding)
/// from a session that has run them, whose logits were `logits` [B, T, V]. Each row draws
/// from its own generator seeded with `config.seed`, so results equal decoding the prompts
/// one by one.
pub fn decode_batch(
    session: &mut Session<'_>,
    logits: &Tensor,
    prompts: &[&[u32]],
    opts: &GenerateOptions,
    pad_id: u32,
    cancel: &AtomicBool,
) -> Result<Vec<Generated>> {
    let cfg = &opts.config;
    let b = prompts.len();
    let last = |logits: &Tensor| -> Result<Vec<Vec<f32>>> {
        let t = logits.dim(1)?;
        Ok(logits
            .narrow(1, t - 1, 1)?
            .squeeze(1)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec2()?)
    };
    let mut rows = last(logits)?;
    let mut out: Vec<Generated> = (0..b).map(|_| Generated::default()).collect();
    let mut seqs: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut rngs: Vec<logits::Rng> = (0..b).map(|_| logits::Rng::new(cfg.seed)).collect();
    let mut finished = vec![false; b];
    let t0 = Instant::now();
    for step in 0..cfg.max_new_tokens {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let mut next = vec![pad_id; b];
        for r in 0..b {
            if finished[r] {
                continue;
            }
            check_finite(&rows[r], step)?;
            let t = logits::choose(
                &rows[r],
                &seqs[r],
                step,
                cfg,
                opts.eos_id,
                &opts.suppress,
                &mut rngs[r],
            );
            let (lp, top) = logprobs(&rows[r], t, opts.top_logprobs);
            out[r].token_logprobs.push(lp);
            if opts.top_logprobs > 0 {
                out[r].alternatives.push(top);
            }
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
    let decode_s = t0.elapsed().as_secs_f64();
    for g in &mut out {
        g.timings.decode_s = decode_s;
        g.timings.decode_tokens = g.tokens.len();
    }
    Ok(out)
}
