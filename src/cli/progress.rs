//! A download progress bar on stderr: redrawn in place on a terminal, one line per file
//! otherwise (logs, pipes, tests).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::hub::download::{human_bytes, human_secs, DownloadEvent};

pub struct ProgressBar {
    tty: bool,
    last_draw: Option<Instant>,
    drawn: bool,
}

impl Default for ProgressBar {
    fn default() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            last_draw: None,
            drawn: false,
        }
    }
}

impl ProgressBar {
    fn line(&mut self, text: &str) {
        let mut err = std::io::stderr();
        if self.drawn {
            let _ = write!(err, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(err, "{text}");
    }

    pub fn on_event(&mut self, e: DownloadEvent) {
        match e {
            DownloadEvent::Plan { missing } => {
                self.line(&format!("Downloading {} missing file(s):", missing.len()));
                for m in missing {
                    self.line(&format!("  {m}"));
                }
            }
            DownloadEvent::FileStarted { label, bytes } => {
                if !self.tty {
                    self.line(&format!("{label}: {}", human_bytes(bytes)));
                }
            }
            DownloadEvent::Progress(p) => {
                if !self.tty {
                    return;
                }
                let now = Instant::now();
                if self
                    .last_draw
                    .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
                {
                    return;
                }
                self.last_draw = Some(now);
                let frac = if p.file_total > 0 {
                    (p.file_done as f64 / p.file_total as f64).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let width = 30;
                let filled = (frac * width as f64).round() as usize;
                let name = p.label.rsplit('/').next().unwrap_or(&p.label);
                let eta = p
                    .eta_s
                    .map(|s| format!(" {} left", human_secs(s)))
                    .unwrap_or_default();
                let _ = write!(
                    std::io::stderr(),
                    "\r\x1b[2K[{}{}] {:>3.0}% {}/{} {} of {} {}/s{}",
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    frac * 100.0,
                    p.file_index,
                    p.file_count,
                    name,
                    human_bytes(p.file_total),
                    human_bytes(p.bytes_per_s as u64),
                    eta
                );
                let _ = std::io::stderr().flush();
                self.drawn = true;
            }
            DownloadEvent::Verifying { .. } => {}
            DownloadEvent::FileDone { label, bytes } => self.line(&format!(
                "  done: {label} ({}, hash checked)",
                human_bytes(bytes)
            )),
            DownloadEvent::Retrying {
                label,
                attempt,
                reason,
            } => self.line(&format!(
                "  {label}: {reason}; trying again (attempt {attempt})"
            )),
            DownloadEvent::Finished {
                files,
                bytes,
                seconds,
            } => self.line(&format!(
                "Downloaded {files} file(s), {} in {}",
                human_bytes(bytes),
                human_secs(seconds)
            )),
        }
    }
}
