//! Beam search with transformers 4.33 semantics (`BeamSearchScorer`, `BeamHypotheses`): the
//! length penalty divides a hypothesis' summed log-probability by its whole length (prompt
//! included) to the power `length_penalty`; `early_stopping` true / false / "never".

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::model::Session;

/// transformers' `early_stopping`: stop when `num_beams` hypotheses are done (true), when no
/// better one can come by its heuristic (false), or only by the canonical rule (never).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
pub enum EarlyStopping {
    #[value(name = "true")]
    True,
    #[value(name = "false")]
    False,
    #[value(name = "never")]
    Never,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BeamConfig {
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub num_return_sequences: usize,
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct BeamResult {
    /// Generated tokens (an `eos` is appended when the hypothesis ended early, as transformers
    /// does when padding the returned sequences).
    pub tokens: Vec<u32>,
    /// The hypothesis' score: summed log-probabilities / length^length_penalty.
    pub sequence_score: f64,
}

struct Hypotheses {
    n: usize,
    length_penalty: f64,
    early: EarlyStopping,
    max_length: usize,
    beams: Vec<(f64, Vec<u32>)>,
    worst: f64,
}

impl Hypotheses {
    fn add(&mut self, hyp: Vec<u32>, sum_logprobs: f64) {
        let score = sum_logprobs / (hyp.len() as f64).powf(self.length_penalty);
        if self.beams.len() < self.n || score > self.worst {
            self.beams.push((score, hyp));
            if self.beams.len() > self.n {
                let mut order: Vec<(f64, usize)> = self
                    .beams
                    .iter()
                    .enumerate()
                    .map(|(i, (s, _))| (*s, i))
                    .collect();
                order.sort_by(|a, b| a.0.total_cmp(&b.0));
                self.beams.remove(order[0].1);
                self.worst = order[1].0;
            } else {
                self.worst = self.worst.min(score);
            }
        }
    }

    fn is_done(&self, best_sum_logprobs: f64, cur_len: usize) -> bool {
        if self.beams.len() < self.n {
            return false;
        }
        match self.early {
            EarlyStopping::True => true,
            EarlyStopping::False => {
                self.worst >= best_sum_logprobs / (cur_len as f64).powf(self.length_penalty)
            }
            EarlyStopping::Never => {
                let len = if self.length_penalty > 0.0 {
                    self.max_length
                } else {
                    cur_len
                };
                self.worst >= best_sum_logprobs / (len as f64).powf(self.length_penalty)
            }
        }
    }
}

fn log_softmax_rows(logits: &Tensor) -> Result<Vec<Vec<f32>>> {
    let t = logits.dim(1)?;
    let last = logits.narrow(1, t - 1, 1)?.squeeze(1)?;
    Ok(candle_nn::ops::log_softmax(&last, D::Minus1)?.to_vec2()?)
}

/// Beam search from a session that has run the prompt `prompt_ids` (one row), whose logits
/// were `logits`; returns `num_return_sequences` hypotheses, best first.
pub fn beam_search(
    mut session: Session<'_>,
    logits: &Tensor,
    prompt_ids: &[u32],
    cfg: &BeamConfig,
    eos: u32,
    suppress: &[u32],
    cancel: &AtomicBool,
) -> Result<Vec<BeamResult>> {
    let nb = cfg.num_beams;
    if nb < 2 {
        return Err(Error::Prompt("beam search needs num_beams >= 2".into()));
    }
    if cfg.num_return_sequences == 0 || cfg.num_return_sequences > nb {
        return Err(Error::Prompt(
            "num_return_sequences must be between 1 and num_beams".into(),
        ));
    }
    let max_length = prompt_ids.len() + cfg.max_new_tokens;
    if max_length > session.max_seq_len() {
        return Err(Error::ContextTooLong {
            needed: max_length,
            limit: session.max_seq_len(),
        });
    }
    // Every beam starts from the prompt; only the first counts at the first step.
    let first = log_softmax_rows(logits)?.remove(0);
    let mut step_scores: Vec<Vec<f32>> = vec![first; nb];
    session.select_rows(&vec![0; nb])?;
    let mut seqs: Vec<Vec<u32>> = vec![prompt_ids.to_vec(); nb];
    let mut beam_scores: Vec<f32> = (0..nb).map(|i| if i == 0 { 0.0 } else { -1e9 }).collect();
    let mut hyps = Hypotheses {
        n: nb,
        length_penalty: cfg.length_penalty,
        early: cfg.early_stopping,
        max_length,
        beams: Vec::new(),
        worst: 1e9,
    };
    let mut done = false;
    let mut cur_len = prompt_ids.len();
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let new = cur_len - prompt_ids.len();
        // Candidates: (score, beam, token), processed log-probs plus the beam's score.
        let k = 2 * nb;
        let mut top: Vec<(f32, usize, u32)> = Vec::with_capacity(k + 1);
        for (b, row) in step_scores.iter_mut().enumerate() {
            for &t in suppress {
                if let Some(x) = row.get_mut(t as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            if new < cfg.min_new_tokens {
                if let Some(x) = row.get_mut(eos as usize) {
                    *x = f32::NEG_INFINITY;
                }
            }
            for (t, &lp) in row.iter().enumerate() {
                let s = lp + beam_scores[b];
                if top.len() < k || s > top[k - 1].0 {
                    let pos = top.partition_point(|e| e.0 >= s);
                    top.insert(pos, (s, b, t as u32));
                    top.truncate(k);
                }
            }
        }
        // BeamSearchScorer.process
        let mut next: Vec<(f32, usize, u32)> = Vec::with_capacity(nb);
        for (rank, &(s, b, t)) in top.iter().enumerate() {
            if t == eos {
                if rank >= nb {
                    continue;
                }
                hyps.add(seqs[b].clone(), s as f64);
            } else {
                next.push((s, b, t));
            }
            if next.len() == nb {
                break;
            }
        }
        let best = top.first().map(|e| e.0).unwrap_or(f32::NEG_INFINITY);
        done = done || hyps.is_done(best as f64, cur_len + 1);
        let rows: Vec<usize> = next.iter().map(|e| e.1).collect();
        seqs = next
            .iter()
            .map(|&(_, b, t)| {
                let mut s = seqs[b].clone();
                s.push(t);
                s
            })
            .collect();
        beam_scores = next.iter().map(|e| e.0).collect();
        cur_len += 1;
        if done || cur_len >= max_length {
            break;
        }
        session.select_rows(&rows)?;
        let ids: Vec<Vec<u32>> = next.iter().map(|e| vec![e.2]).collect();
        let logits = session.forward(&ids)?;
        step_scores = log_softmax_rows(&logits)?;
    }
    // finalize
    if !done {
        for (s, seq) in beam_scores.iter().zip(&seqs) {
            hyps.add(seq.clone(), *s as f64);
        }
    }
    let mut sorted = hyps.beams;
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let kept: Vec<(f64, Vec<u32>)> = sorted.into_iter().take(cfg.num_return_sequences).collect();
    let longest = kept.iter().map(|(_, h)| h.len()).max().unwrap_or(0);
    let max_len = (longest + 1).min(max_length);
    Ok(kept
        .into_iter()
        .map(|(score, h)| {
            let mut tokens = h[prompt_ids.len()..].to_vec();
            if h.len() < max_len {
                tokens.push(eos);
            }
            BeamResult {
                tokens,
                sequence_score: score,
            }
        })
        .collect())
}
