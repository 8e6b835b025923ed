//! Soak: generate/stop cycles and model switches through the engine (tiny model), with the
//! process's memory and thread count before and after. CI runs a short soak; the full one
//! (`FLAMINGO_SOAK=full`: 500 cycles, 100 switches) is measured once (docs/performance.md).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use flamingo::engine::{Engine, EngineConfig, Event, JobId};
use flamingo::types::WeightFormat;

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn wait_for(engine: &Engine, what: &str, mut done: impl FnMut(&Event) -> bool) {
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        if let Some(e) = engine.recv_timeout(Duration::from_millis(200)) {
            if let Event::LoadFailed { error, .. } = &e {
                panic!("load failed: {error}");
            }
            if done(&e) {
                return;
            }
        }
    }
}

fn load(engine: &Engine, format: WeightFormat) {
    engine.load(flamingo::hub::DEFAULT_MODEL, format, false);
    wait_for(engine, "the model", |e| matches!(e, Event::Loaded { .. }));
}

/// One generation stopped `after_ms` after it started (None: not stopped); returns whether it
/// was stopped (it may finish first).
fn generate_and_stop(engine: &mut Engine, after_ms: Option<u64>) -> bool {
    let mut req = caption_request(&[("chelsea.png", "A cat.")], "astronaut.png", 160);
    req.generation.min_new_tokens = 160;
    let job: JobId = engine.generate(req);
    if after_ms == Some(0) {
        engine.cancel();
    }
    let t0 = Instant::now();
    let mut cancelled = after_ms == Some(0);
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "timed out waiting for the generation"
        );
        if let Some(ms) = after_ms {
            if !cancelled && t0.elapsed() >= Duration::from_millis(ms) {
                engine.cancel();
                cancelled = true;
            }
        }
        match engine.recv_timeout(Duration::from_millis(1)) {
            Some(Event::Cancelled { job: j }) if j == job => return true,
            Some(Event::Finished { job: j, .. }) if j == job => return false,
            Some(Event::Failed { job: j, error }) if j == job => panic!("failed: {error}"),
            _ => {}
        }
    }
}

#[test]
fn generate_stop_cycles_and_model_switches_do_not_grow() {
    let full = std::env::var("FLAMINGO_SOAK").is_ok_and(|v| v == "full");
    let (cycles, switches) = if full { (500, 100) } else { (60, 6) };
    let cache = tempfile::tempdir().unwrap();
    // SAFETY of the environment: set before the engine (or any other thread of this test
    // binary, which holds only this test) starts.
    std::env::set_var("FLAMINGO_CACHE_DIR", cache.path());
    let mut engine = Engine::start(
        EngineConfig {
            hub_cache: Some(hub("hf")),
            endpoint: None,
            offline: true,
        },
        Arc::new(|| {}),
    );
    load(&engine, WeightFormat::F32);
    // Warm-up: every path once (a stop in each place, a full caption, a switch and back).
    for k in [Some(0), Some(5), Some(40), None] {
        generate_and_stop(&mut engine, k);
    }
    load(&engine, WeightFormat::Q8_0);
    load(&engine, WeightFormat::F32);
    for k in 0..20 {
        generate_and_stop(&mut engine, Some(k % 5 * 10));
    }
    flamingo::platform::give_back_freed_memory();
    let rss0 = flamingo::platform::rss_bytes().unwrap_or(0) as f64;
    let threads0 = threads();

    let t0 = Instant::now();
    let mut stopped = 0;
    for i in 0..cycles {
        if generate_and_stop(&mut engine, Some(i % 7 * 8)) {
            stopped += 1;
        }
    }
    for i in 0..switches {
        load(
            &engine,
            if i % 2 == 0 {
                WeightFormat::Q8_0
            } else {
                WeightFormat::F32
            },
        );
    }
    load(&engine, WeightFormat::F32);
    // The engine still captions after all of it.
    assert!(!generate_and_stop(&mut engine, None));
    flamingo::platform::give_back_freed_memory();
    let rss1 = flamingo::platform::rss_bytes().unwrap_or(0) as f64;
    let growth = (rss1 - rss0) / rss0;
    println!(
        "soak: {cycles} generate/stop cycles ({stopped} stopped), {switches} switches in {:.1} s; RSS {:.1} -> {:.1} MB ({:+.2} %); threads {threads0} -> {}",
        t0.elapsed().as_secs_f64(),
        rss0 / 1e6,
        rss1 / 1e6,
        100.0 * growth,
        threads()
    );
    assert!(stopped > cycles / 2, "{stopped} of {cycles} stopped");
    // The tiny model's process is ~50 MB, where the allocator's arenas alone move RSS by a
    // few MB from run to run: the short soak allows that much; the full one holds 5 %.
    let slack = if full { 0.0 } else { 8e6 };
    assert!(
        growth <= 0.05 || rss1 - rss0 <= slack,
        "RSS grew {:.1} %",
        100.0 * growth
    );
    assert_eq!(threads(), threads0, "threads left behind");
    // Dropping the engine ends its thread (the compute pool's threads stay for the process).
    drop(engine);
    assert_eq!(
        threads(),
        threads0 - 1,
        "the engine thread outlived its Engine"
    );
}
