//! Frame-time statistics: the UI must stay responsive while the model runs.

use std::time::Instant;

/// Frame-time statistics (the UI must stay responsive while the model runs).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FrameStats {
    pub last_ms: f32,
    pub max_ms_while_running: f32,
    pub sum_ms_while_running: f64,
    pub frames_while_running: u64,
    pub over_50ms_while_running: u64,
    /// (seconds since Generate, frame ms) of the slowest frames, for diagnosis.
    pub slow_frames: Vec<(f32, f32)>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl FrameStats {
    pub(crate) fn record(&mut self, ms: f32, running: bool) {
        self.last_ms = ms;
        if running {
            self.frames_while_running += 1;
            self.sum_ms_while_running += ms as f64;
            self.max_ms_while_running = self.max_ms_while_running.max(ms);
            if ms > 50.0 {
                self.over_50ms_while_running += 1;
            }
            if ms > 20.0 && self.slow_frames.len() < 32 {
                let t = self
                    .started
                    .map(|s| s.elapsed().as_secs_f32())
                    .unwrap_or(0.0);
                self.slow_frames.push((t, ms));
            }
        }
    }

    pub(crate) fn reset(&mut self) {
        *self = Self {
            last_ms: self.last_ms,
            started: Some(Instant::now()),
            ..Default::default()
        };
    }

    /// With `FLAMINGO_FRAME_STATS=FILE`, appends one JSON line per generation (measurements).
    pub(crate) fn log(&self, outcome: &str, tokens: usize) {
        if let Some(path) = std::env::var_os("FLAMINGO_FRAME_STATS") {
            use std::io::Write;
            let line = serde_json::json!({ "outcome": outcome, "tokens": tokens, "frames": self });
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}
