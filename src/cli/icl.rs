//! `flamingo sweep` and `flamingo ablate`: the caption with 0, 1, 2, … of the examples, and
//! what each example did to a caption.

use std::io::Write;
use std::sync::atomic::AtomicBool;

use super::{caption_json, AblateArgs, CaptionArgs, SweepArgs};
use crate::pipeline::{CaptionRequest, Captioner};

/// The request and model of a command that captions one query (sweep, ablate).
pub(crate) fn one_query(
    a: &CaptionArgs,
    what: &str,
) -> anyhow::Result<(CaptionRequest, Captioner)> {
    if a.prompt.query.is_none() || a.prompt.batch.is_some() {
        anyhow::bail!("{what} takes one QUERY_IMAGE (no --batch)");
    }
    if a.logits_out.is_some() {
        anyhow::bail!("--logits-out is for `flamingo caption`");
    }
    let (mut req, captioner) = a.prompt.load()?;
    req.generation = a.generation();
    req.top_logprobs = a.top_logprobs;
    Ok((req, captioner))
}

pub(super) fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    use crate::pipeline::icl::{default_counts, SweepEvent};
    let n = a.caption.prompt.shot.len() / 2;
    let counts = if a.shots.is_empty() {
        default_counts(n)
    } else {
        a.shots.clone()
    };
    // Checked before the model loads.
    crate::pipeline::icl::sweep_picks(n, &counts, crate::types::ShotPick::First)?;
    let (req, captioner) = one_query(&a.caption, "sweep")?;
    let pick = match a.random {
        Some(seed) => crate::types::ShotPick::Random { seed },
        None => crate::types::ShotPick::First,
    };
    let json = a.caption.json;
    let tokens = a.caption.top_logprobs > 0;
    // JSON lines go out in the order of the counts, each as soon as the ones before it are.
    let mut lines: Vec<Option<String>> = vec![None; counts.len()];
    let mut printed = 0;
    let mut failure: Option<anyhow::Error> = None;
    let mut stdout = std::io::stdout();
    let rows = captioner.sweep(&req, &counts, pick, &AtomicBool::new(false), |e| match e {
        SweepEvent::RowStarted { row, examples } if !json => {
            let which: Vec<String> = examples.iter().map(|i| (i + 1).to_string()).collect();
            let _ = write!(
                stdout,
                "{}-shot (examples: {}): ",
                counts[row],
                if which.is_empty() {
                    "none".to_string()
                } else {
                    which.join(", ")
                }
            );
            let _ = stdout.flush();
        }
        SweepEvent::Text { chunk, .. } if !json => {
            let _ = write!(stdout, "{chunk}");
            let _ = stdout.flush();
        }
        SweepEvent::RowFinished { row, row_result } => {
            let line = match row_result {
                Ok(r) => caption_json(&captioner, &r.result, tokens).map(|mut obj| {
                    obj["shots"] = counts[row].into();
                    obj["examples"] = serde_json::json!(r.examples);
                    obj["seconds"] = r.seconds.into();
                    obj
                }),
                Err(e) => Ok(serde_json::json!({"shots": counts[row], "error": e.to_string()})),
            };
            match line {
                Ok(obj) if json => {
                    lines[row] = Some(obj.to_string());
                    while let Some(Some(l)) = lines.get(printed) {
                        let _ = writeln!(stdout, "{l}");
                        printed += 1;
                    }
                }
                Ok(_) => {
                    if let Err(e) = row_result {
                        let _ = write!(stdout, "error: {e}");
                    }
                    let _ = writeln!(stdout);
                }
                Err(e) => failure = Some(e),
            }
        }
        _ => {}
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let failed = rows.iter().filter(|r| r.is_err()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} rows failed (see their lines)", rows.len());
    }
    Ok(())
}

pub(super) fn ablate(a: AblateArgs) -> anyhow::Result<()> {
    let (req, captioner) = one_query(&a.caption, "ablate")?;
    let cancel = AtomicBool::new(false);
    let ids = match &a.text {
        Some(t) => captioner.tokenizer.encode_plain(t)?,
        None => captioner.caption(&req, &cancel, |_| {})?.generated.tokens,
    };
    if ids.is_empty() {
        anyhow::bail!("the caption to explain is empty");
    }
    let caption = captioner.tokenizer.decode(&ids)?;
    let ab = captioner.ablate(&req, &ids, &cancel, |_, _| {})?;
    let examples: Vec<serde_json::Value> = req
        .shots
        .iter()
        .zip(ab.without.iter().zip(ab.effects()))
        .enumerate()
        .map(|(i, (shot, (without, effect)))| {
            serde_json::json!({
                "index": i, "image": shot.image.name(), "text": shot.text,
                "logprob_without": without, "effect": effect,
            })
        })
        .collect();
    let reversed = ab
        .reversed
        .map(|r| serde_json::json!({"logprob": r, "effect": ab.logprob - r}));
    if a.caption.json {
        let obj = serde_json::json!({
            "model": captioner.model_id, "caption": caption, "token_ids": ids,
            "logprob": ab.logprob, "examples": examples, "reversed": reversed,
        });
        outln!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    outln!("caption: {caption}");
    outln!("log p(caption) with all examples: {:.4}", ab.logprob);
    outln!("effect = log p with all − log p without it (positive: the example helped)");
    for (i, (shot, effect)) in req.shots.iter().zip(ab.effects()).enumerate() {
        outln!("{:>3}. {:>+9.4}  {}", i + 1, effect, shot.image.name());
    }
    if let Some(r) = ab.reversed {
        outln!("reversed order: {:+.4}", ab.logprob - r);
    }
    Ok(())
}
