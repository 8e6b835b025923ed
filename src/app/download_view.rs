//! The model download's progress as the top bar shows it, folded from the engine's download
//! events.

use crate::hub::download::{human_bytes, human_secs, DownloadEvent};

/// What the download view shows, folded from the engine's download events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DownloadView {
    /// Files missing from the cache when the download began.
    pub missing: Vec<String>,
    pub label: String,
    pub file_index: usize,
    pub file_count: usize,
    pub file_done: u64,
    pub file_total: u64,
    pub bytes_per_s: f64,
    pub eta_s: Option<f64>,
    /// "verifying …", "retrying …" while that happens.
    pub note: Option<String>,
}

impl DownloadView {
    pub fn apply(&mut self, e: DownloadEvent) {
        use DownloadEvent as D;
        match e {
            D::Plan { missing } => {
                self.file_count = missing.len();
                self.missing = missing;
            }
            D::FileStarted { label, bytes } => {
                self.label = label;
                self.file_total = bytes;
                self.file_done = 0;
                self.note = None;
            }
            D::Progress(p) => {
                self.label = p.label;
                self.file_index = p.file_index;
                self.file_count = p.file_count;
                self.file_done = p.file_done;
                self.file_total = p.file_total;
                self.bytes_per_s = p.bytes_per_s;
                self.eta_s = p.eta_s;
                self.note = None;
            }
            D::Verifying { label } => self.note = Some(format!("checking {label}")),
            D::Retrying {
                label,
                attempt,
                reason,
            } => self.note = Some(format!("{label}: {reason}; attempt {attempt}")),
            D::FileDone { .. } | D::Finished { .. } => self.note = None,
        }
    }

    /// One line: file, bytes, rate, time left.
    pub fn summary(&self) -> String {
        let name = self.label.rsplit('/').next().unwrap_or(&self.label);
        let mut s = format!(
            "Downloading {name} ({}/{}): {} of {}",
            self.file_index.max(1),
            self.file_count.max(1),
            human_bytes(self.file_done),
            human_bytes(self.file_total)
        );
        if self.bytes_per_s > 0.0 {
            s.push_str(&format!(", {}/s", human_bytes(self.bytes_per_s as u64)));
        }
        if let Some(eta) = self.eta_s {
            s.push_str(&format!(", {} left", human_secs(eta)));
        }
        s
    }
}
