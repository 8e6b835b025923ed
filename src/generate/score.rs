//! Scoring (the seed's `forward(mode='loss')` as a user feature): the log-likelihood of given
//! texts after a prompt, to rank candidate captions or answers.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::Session;

#[derive(Clone, Debug, serde::Serialize)]
pub struct CandidateScore {
    /// log p(token | prompt, earlier candidate tokens), per candidate token.
    pub token_logprobs: Vec<f32>,
    /// Their sum.
    pub logprob: f32,
}

fn logprobs_of(logits: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
    // logits [1, T, V]; targets[t] is the token that follows position t.
    let lp = candle_nn::ops::log_softmax(&logits.squeeze(0)?, D::Minus1)?;
    let rows: Vec<Vec<f32>> = lp.to_vec2()?;
    Ok(rows
        .iter()
        .zip(targets)
        .map(|(r, &t)| r[t as usize])
        .collect())
}

/// The prompt followed by the longest candidate must fit the model's context.
pub fn check_fits(max_seq_len: usize, prompt_len: usize, candidates: &[Vec<u32>]) -> Result<()> {
    let longest = candidates.iter().map(Vec::len).max().unwrap_or(0);
    if prompt_len + longest > max_seq_len {
        return Err(Error::ContextTooLong {
            needed: prompt_len + longest,
            limit: max_seq_len,
        });
    }
    Ok(())
}

/// Scores each candidate after a session that has run the whole prompt, whose logits were
/// `logits` [1, T, V] (only the last position is used). Each candidate continues from a copy
/// of the session.
pub fn score_after(
    session: &Session<'_>,
    logits: &Tensor,
    candidates: &[Vec<u32>],
    cancel: &AtomicBool,
) -> Result<Vec<CandidateScore>> {
    let t = logits.dim(1)?;
    let last = logits.narrow(1, t - 1, 1)?;
    candidates
        .iter()
        .map(|cand| {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            if cand.is_empty() {
                return Err(Error::Prompt("an empty candidate cannot be scored".into()));
            }
            let mut lps = logprobs_of(&last, &cand[..1])?;
            if cand.len() > 1 {
                let mut s = session.clone();
                let l = s.forward(&[cand[..cand.len() - 1].to_vec()])?;
                lps.extend(logprobs_of(&l, &cand[1..])?);
            }
            Ok(CandidateScore {
                logprob: lps.iter().sum(),
                token_logprobs: lps,
            })
        })
        .collect()
}
