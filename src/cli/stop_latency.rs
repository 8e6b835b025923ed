//! `flamingo bench-stop`: how long Stop takes to end a caption, a beam search, a scoring and a
//! sweep in each phase (image encoding, prompt, decoding), on a model from the hub cache; and
//! that the next request works after each stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::pipeline::{CaptionRequest, Captioner};

#[derive(clap::Args, Debug)]
pub struct StopLatencyArgs {
    /// The query, the examples, the model and format (several examples make the encoding and
    /// prompt phases long enough to stop in).
    #[command(flatten)]
    pub caption: super::CaptionArgs,
    /// Stops per phase, spread over it.
    #[arg(long, default_value_t = 3)]
    pub points: usize,
}

/// Runs `op` and sets its cancel flag after `after`; the seconds from the flag to its end and
/// whether it ended by the stop.
fn stop_after(
    after: Duration,
    op: impl FnOnce(&AtomicBool) -> crate::error::Result<()> + Send,
) -> (f64, bool) {
    let cancel = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let c = &cancel;
        s.spawn(move || {
            let r = op(c);
            let _ = tx.send((Instant::now(), matches!(r, Err(Error::Cancelled))));
        });
        std::thread::sleep(after);
        let t0 = Instant::now();
        cancel.store(true, Ordering::SeqCst);
        let (end, stopped) = rx.recv().unwrap_or((t0, false));
        (end.saturating_duration_since(t0).as_secs_f64(), stopped)
    })
}

pub fn run(a: StopLatencyArgs) -> anyhow::Result<()> {
    let (mut req, captioner) = super::icl::one_query(&a.caption, "bench-stop")?;
    req.generation.min_new_tokens = req.generation.max_new_tokens;
    captioner.warm_up()?;
    let no = AtomicBool::new(false);
    // One run that is not stopped gives each phase's window.
    captioner.clear_caches()?;
    let t = Instant::now();
    let full = captioner.caption(&req, &no, |_| {})?;
    let total = t.elapsed().as_secs_f64();
    let tm = &full.generated.timings;
    let (enc, pre) = (tm.encode_s, tm.prefill_s);
    let mut beams_req = req.clone();
    beams_req.generation.num_beams = 3;
    beams_req.generation.max_new_tokens = req.generation.max_new_tokens.min(8);
    beams_req.generation.min_new_tokens = beams_req.generation.max_new_tokens;
    let t = Instant::now();
    captioner.clear_caches()?;
    captioner.caption(&beams_req, &no, |_| {})?;
    let beams_total = t.elapsed().as_secs_f64();
    let candidates: Vec<String> = (0..4)
        .map(|i| format!("A candidate caption number {i} for the query image."))
        .collect();
    captioner.clear_caches()?;
    let t = Instant::now();
    captioner.score(&req, &candidates, &no)?;
    let score_total = t.elapsed().as_secs_f64();

    type Op<'a> = Box<
        dyn Fn(&Captioner, &CaptionRequest, &AtomicBool) -> crate::error::Result<()> + Sync + 'a,
    >;
    let caption: Op = Box::new(|c, r, x| c.caption(r, x, |_| {}).map(|_| ()));
    let score: Op = Box::new(|c, r, x| c.score(r, &candidates, x).map(|_| ()));
    let phases: Vec<(&str, f64, f64, &CaptionRequest, &Op)> = vec![
        ("image encoding", 0.0, enc, &req, &caption),
        ("prompt", enc, enc + pre, &req, &caption),
        ("decoding", enc + pre, total, &req, &caption),
        ("beam search", enc + pre, beams_total, &beams_req, &caption),
        ("scoring", 0.0, score_total, &req, &score),
    ];
    let mut out = Vec::new();
    for (name, from, to, r, op) in phases {
        let mut lat = Vec::new();
        let mut stopped = 0;
        for i in 0..a.points.max(1) {
            let at = from + (to - from) * (i as f64 + 0.5) / a.points.max(1) as f64;
            captioner.clear_caches()?;
            let (s, by_stop) = stop_after(Duration::from_secs_f64(at), |x| op(&captioner, r, x));
            if by_stop {
                stopped += 1;
                lat.push(s);
            }
        }
        // The next request after a stop works.
        captioner.caption(&req, &no, |_| {})?;
        let worst = lat.iter().copied().fold(0.0, f64::max);
        out.push(serde_json::json!({
            "phase": name, "window_s": [from, to], "stops": stopped,
            "worst_ms": 1e3 * worst,
            "latencies_ms": lat.iter().map(|s| 1e3 * s).collect::<Vec<_>>(),
        }));
        eprintln!(
            "{name:15} window {from:.2}-{to:.2} s: {stopped} stopped, worst {:.1} ms",
            1e3 * worst
        );
    }
    outln!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "model": captioner.model_id,
            "examples": req.shots.len(),
            "phases": out,
        }))?
    );
    Ok(())
}
