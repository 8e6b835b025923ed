//! In-context learning made visible: the same query captioned with 0, 1, 2, … of the examples
//! (a shot sweep), and what each example did to a caption (its log-probability with that
//! example left out, and with the examples reversed). Both are ordinary requests run through
//! the caches: a sweep's k-shot prefix runs on from the (k−1)-shot one, and an ablation
//! encodes no image twice (a leave-one-out prompt runs on from a kept state of the examples
//! before the one left out when there is one, as after a sweep).

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::logits::Rng;
use crate::types::ShotPick;

use super::{CaptionRequest, CaptionResult, Captioner};

/// The examples (indices into the request's shots) each count of a sweep takes.
pub fn sweep_picks(n_examples: usize, counts: &[usize], pick: ShotPick) -> Result<Vec<Vec<usize>>> {
    if let Some(&c) = counts.iter().find(|&&c| c > n_examples) {
        return Err(Error::Prompt(format!(
            "a {c}-shot row needs {c} examples; there {} {n_examples}",
            if n_examples == 1 { "is" } else { "are" }
        )));
    }
    let mut order: Vec<usize> = (0..n_examples).collect();
    if let ShotPick::Random { seed } = pick {
        // Fisher–Yates with the decoder's generator.
        let mut rng = Rng::new(seed);
        for i in (1..order.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    Ok(counts.iter().map(|&c| order[..c].to_vec()).collect())
}

/// The counts a sweep runs when the user has chosen none: 0, 1, 2, 4, … doubling up to the
/// number of examples, and that number itself.
pub fn default_counts(n_examples: usize) -> Vec<usize> {
    let mut counts = vec![0];
    let mut c = 1;
    while c < n_examples {
        counts.push(c);
        c *= 2;
    }
    if n_examples > 0 {
        counts.push(n_examples);
    }
    counts
}

/// `req` with only the examples `picked`, in that order.
pub fn with_examples(req: &CaptionRequest, picked: &[usize]) -> CaptionRequest {
    let mut r = req.clone();
    r.shots = picked
        .iter()
        .filter_map(|&i| req.shots.get(i).cloned())
        .collect();
    r
}

/// What a sweep reports as it goes; `row` is the row's place in the counts as given.
pub enum SweepEvent<'a> {
    RowStarted {
        row: usize,
        examples: &'a [usize],
    },
    Text {
        row: usize,
        chunk: &'a str,
    },
    RowFinished {
        row: usize,
        row_result: &'a Result<SweepRow>,
    },
}

#[derive(Clone, Debug)]
pub struct SweepRow {
    /// The examples used, as indices into the request's shots, in prompt order.
    pub examples: Vec<usize>,
    pub result: CaptionResult,
    /// Wall time of this row (the caches make later rows cheaper).
    pub seconds: f64,
}

/// What leaving each example out (and reversing their order) does to a caption.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Ablation {
    /// log p(caption | the prompt as given).
    pub logprob: f32,
    /// Per example, in the request's order: log p(caption) without it.
    pub without: Vec<f32>,
    /// log p(caption) with the examples in reverse order (None with fewer than two).
    pub reversed: Option<f32>,
}

impl Ablation {
    /// Per example: how much it raised the caption's log-probability (full − without it).
    pub fn effects(&self) -> Vec<f32> {
        self.without.iter().map(|w| self.logprob - w).collect()
    }
}

impl Captioner {
    /// Captions the request's query once per count in `counts`, with the examples `pick`
    /// chooses, streaming each row. Rows run from the fewest examples up, so that each
    /// row's prompt prefix runs on from the one before; each is reported under its place in
    /// `counts`. A row that fails (a prompt too long for the model) fails alone; a cancel
    /// ends the sweep.
    pub fn sweep(
        &self,
        req: &CaptionRequest,
        counts: &[usize],
        pick: ShotPick,
        cancel: &AtomicBool,
        mut on_event: impl FnMut(SweepEvent<'_>),
    ) -> Result<Vec<Result<SweepRow>>> {
        let picks = sweep_picks(req.shots.len(), counts, pick)?;
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by_key(|&i| counts[i]);
        let mut rows: Vec<Option<Result<SweepRow>>> = (0..counts.len()).map(|_| None).collect();
        for row in order {
            let examples = &picks[row];
            on_event(SweepEvent::RowStarted { row, examples });
            let t0 = Instant::now();
            let r = self
                .caption(&with_examples(req, examples), cancel, |chunk| {
                    on_event(SweepEvent::Text { row, chunk })
                })
                .map(|result| SweepRow {
                    examples: examples.clone(),
                    result,
                    seconds: t0.elapsed().as_secs_f64(),
                });
            if let Err(Error::Cancelled) = r {
                return Err(Error::Cancelled);
            }
            on_event(SweepEvent::RowFinished {
                row,
                row_result: &r,
            });
            rows[row] = Some(r);
        }
        Ok(rows
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Invalid("the row did not run".into()))))
            .collect())
    }

    /// Rescores `caption` (token ids, as generated) after the request's prompt, after it with
    /// each example left out, and after it with the examples reversed. `on_progress(done,
    /// total)` is called after each scoring.
    pub fn ablate(
        &self,
        req: &CaptionRequest,
        caption: &[u32],
        cancel: &AtomicBool,
        mut on_progress: impl FnMut(usize, usize),
    ) -> Result<Ablation> {
        let n = req.shots.len();
        let total = 1 + n + usize::from(n >= 2);
        let mut done = 0;
        let mut score = |r: &CaptionRequest| -> Result<f32> {
            let s = self.score_ids(r, &[caption.to_vec()], cancel)?;
            done += 1;
            on_progress(done, total);
            s.into_iter()
                .next()
                .map(|s| s.logprob)
                .ok_or_else(|| Error::Invalid("nothing was scored".into()))
        };
        let logprob = score(req)?;
        let without = (0..n)
            .map(|left_out| {
                let kept: Vec<usize> = (0..n).filter(|&i| i != left_out).collect();
                score(&with_examples(req, &kept))
            })
            .collect::<Result<Vec<_>>>()?;
        let reversed = if n >= 2 {
            let rev: Vec<usize> = (0..n).rev().collect();
            Some(score(&with_examples(req, &rev))?)
        } else {
            None
        };
        Ok(Ablation {
            logprob,
            without,
            reversed,
        })
    }
}
