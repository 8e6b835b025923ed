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
    /// Frames while running by whole milliseconds: entry i counts frames of [i, i+1) ms, the
    /// last one everything from 100 ms (so runs can be merged and any percentile read).
    pub histogram_ms: Vec<u32>,
    #[serde(skip)]
    started: Option<Instant>,
}

impl FrameStats {
    pub(crate) fn record(&mut self, ms: f32, running: bool) {
        self.last_ms = ms;
        if running {
            if self.histogram_ms.is_empty() {
                self.histogram_ms = vec![0; 101];
            }
            self.histogram_ms[(ms.max(0.0) as usize).min(100)] += 1;
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

    /// The frame time (ms, whole) that `q` of the frames while running stayed under.
    pub fn percentile_ms(&self, q: f64) -> Option<usize> {
        let total: u64 = self.histogram_ms.iter().map(|&c| c as u64).sum();
        let need = (q * total as f64).ceil() as u64;
        let mut seen = 0u64;
        for (ms, &c) in self.histogram_ms.iter().enumerate() {
            seen += c as u64;
            if total > 0 && seen >= need {
                return Some(ms + 1);
            }
        }
        None
    }

    /// With `FLAMINGO_FRAME_STATS=FILE`, appends one JSON line per generation (measurements).
    pub(crate) fn log(&self, outcome: &str, tokens: usize) {
        if let Some(path) = std::env::var_os("FLAMINGO_FRAME_STATS") {
            use std::io::Write;
            let line = serde_json::json!({
                "outcome": outcome,
                "tokens": tokens,
                "p99_ms": self.percentile_ms(0.99),
                "rss_bytes": crate::platform::rss_bytes(),
                "frames": self,
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_gives_percentiles_of_the_frames_while_running() {
        let mut f = FrameStats::default();
        assert_eq!(f.percentile_ms(0.99), None);
        // 98 fast frames, one of 12 ms, one of 250 ms; frames while idle do not count.
        for _ in 0..98 {
            f.record(3.4, true);
        }
        f.record(12.0, true);
        f.record(250.0, true);
        f.record(900.0, false);
        assert_eq!(f.frames_while_running, 100);
        assert_eq!(f.percentile_ms(0.5), Some(4));
        assert_eq!(f.percentile_ms(0.99), Some(13));
        assert_eq!(
            f.percentile_ms(1.0),
            Some(101),
            "100 ms and over share the last bucket"
        );
    }
}
