//! What the app keeps on disk: the working set (restored at the next start, written
//! atomically shortly after each change) and the settings, both in the app's data folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::images::{Source, Target};
use super::samples;
use super::state::{self, Settings, WorkingSet};
use super::FlamingoApp;

const WORKING_SET_FILE: &str = "working-set.flamingo.json";
const SETTINGS_FILE: &str = "settings.json";
const LOCK_FILE: &str = "instance.lock";

/// This window's claim on a data folder: a file naming its process and a number of its own,
/// removed when the window closes. A second window on the same folder finds it (its process
/// alive) and saves nothing there, so that it never overwrites the first one's work.
pub struct DataLock {
    path: PathBuf,
    mine: String,
}

impl DataLock {
    /// Takes the folder's lock, or says which live process holds it.
    pub fn take(dir: &Path) -> Result<Self, u32> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = dir.join(LOCK_FILE);
        let mine = format!(
            "{} {}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        if let Ok(held) = std::fs::read_to_string(&path) {
            let pid = held.split_whitespace().next().and_then(|p| p.parse().ok());
            if let Some(pid) = pid.filter(|&p| process_alive(p)) {
                return Err(pid);
            }
        }
        // No lock, or a stale one (its process is gone): ours now.
        let _ = std::fs::create_dir_all(dir);
        let _ = crate::platform::write_atomic(&path, mine.as_bytes());
        Ok(Self { path, mine })
    }
}

impl Drop for DataLock {
    fn drop(&mut self) {
        if std::fs::read_to_string(&self.path).is_ok_and(|h| h == self.mine) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether process `pid` runs (where the system can say; elsewhere assumed so).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The app's data folder (`~/.local/share/flamingo` on Linux).
pub fn default_data_dir() -> Option<PathBuf> {
    eframe::storage_dir(super::APP_ID)
}

/// The settings saved in `dir`, or the defaults when there are none (or they are unreadable).
pub fn read_settings(dir: &Path) -> Settings {
    std::fs::read_to_string(dir.join(SETTINGS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Writes the settings into `dir`.
pub fn write_settings(dir: &Path, settings: &Settings) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(settings).map_err(std::io::Error::other)?;
    crate::platform::write_atomic(&dir.join(SETTINGS_FILE), json.as_bytes())
}

impl FlamingoApp {
    /// Where the working set is saved; None without a data folder or when another window
    /// holds it.
    fn working_set_path(&self) -> Option<PathBuf> {
        self.data_lock.as_ref()?;
        self.data_dir.as_ref().map(|d| d.join(WORKING_SET_FILE))
    }

    /// Claims the data folder; when another window holds it, says so (nothing is saved).
    pub(super) fn lock_data_dir(&mut self) {
        let Some(dir) = self.data_dir.clone() else {
            return;
        };
        match DataLock::take(&dir) {
            Ok(lock) => self.data_lock = Some(lock),
            Err(pid) => self.error(format!(
                "Another Flamingo window (process {pid}) is using the data folder {}: this one \
                 does not save its working set or settings there, so that neither overwrites \
                 the other. Set > Save as… keeps this window's work.",
                dir.display()
            )),
        }
    }

    /// The last working set, or on a first launch the bundled sample set.
    pub(super) fn restore_working_set(&mut self) {
        let saved = self
            .data_dir
            .as_ref()
            .map(|d| d.join(WORKING_SET_FILE))
            .filter(|p| p.exists());
        match saved {
            Some(p) => match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| state::set_from_json(&t))
            {
                Ok(set) => self.install_set(set),
                Err(e) => {
                    // Keep the unreadable file for the user; start from the samples.
                    let keep = p.with_extension("unreadable.json");
                    let _ = std::fs::rename(&p, &keep);
                    self.error(format!(
                        "The last working set could not be read ({e}); it was kept as {}",
                        keep.display()
                    ));
                    self.install_samples();
                }
            },
            None => self.install_samples(),
        }
    }

    fn install_samples(&mut self) {
        match state::set_from_json(&samples::sample_set_json()) {
            Ok(set) => {
                self.install_set(set);
                self.info("Welcome! Sample examples are loaded: once the model is ready (top bar), press Generate to caption the query, then change the examples and see the caption change.".into());
            }
            Err(e) => self.error(format!("The sample set is damaged: {e}")),
        }
    }

    pub(super) fn install_set(&mut self, set: state::LoadedSet) {
        self.ws = WorkingSet::new();
        self.editing_variant = false;
        self.status.variant_output = Default::default();
        let variant = self.submit_set(set, false);
        if let Some(v) = variant {
            let _ = self.submit_set(*v, true);
        }
    }

    /// Puts a loaded set's fields into the working set (or its variant) and its images on
    /// the image thread; returns the set's own variant.
    fn submit_set(
        &mut self,
        set: state::LoadedSet,
        as_variant: bool,
    ) -> Option<Box<state::LoadedSet>> {
        let ws = if as_variant {
            self.ws.variant.get_or_insert_with(Default::default)
        } else {
            &mut self.ws
        };
        ws.task = set.task;
        ws.question = set.question;
        ws.caption_templates = set.caption_templates;
        ws.vqa_templates = set.vqa_templates;
        ws.sweep = set.sweep;
        ws.history = set.history;
        ws.candidates = set.candidates;
        ws.run = set.run;
        for (name, bytes, text, enabled) in set.examples {
            self.loading_images += 1;
            let target = if as_variant {
                Target::VariantExample { text, enabled }
            } else {
                Target::Example { text, enabled }
            };
            self.loader.submit(Source::Bytes { name, bytes }, target);
        }
        if let Some((name, bytes)) = set.query {
            self.loading_images += 1;
            let target = if as_variant {
                Target::VariantQuery
            } else {
                Target::Query
            };
            self.loader.submit(Source::Bytes { name, bytes }, target);
        }
        set.variant
    }

    /// The working set as it is saved: the working set outermost, its variant inside
    /// (whichever of them the panels show now).
    pub(super) fn set_to_save(&self) -> WorkingSet {
        let mut a = self.set_a().clone();
        a.run = Some(state::RunSettings::of(&self.settings));
        if self.editing_variant {
            let mut b = self.ws.clone();
            b.variant = None;
            a.variant = Some(Box::new(b));
        }
        a
    }

    pub(super) fn remember_recent(&mut self, path: PathBuf) {
        self.settings.recent_sets.retain(|p| p != &path);
        self.settings.recent_sets.insert(0, path);
        self.settings.recent_sets.truncate(8);
    }

    pub(super) fn autosave(&mut self) {
        let Some(since) = self.dirty_since else {
            return;
        };
        if since.elapsed() < Duration::from_millis(800) || self.loading_images > 0 {
            return;
        }
        self.dirty_since = None;
        let Some(path) = self.working_set_path() else {
            return;
        };
        let ws = self.set_to_save();
        let tx = self.autosave_tx.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new()
            .name("flamingo-autosave".into())
            .spawn(move || {
                let json = state::set_to_json(&ws);
                let r = state::write_atomic(&path, json.as_bytes()).map_err(|e| {
                    format!(
                        "Could not save the working set to {} ({e}). Your work is still here; \
                         Set > Save as… keeps it elsewhere.",
                        path.display()
                    )
                });
                let _ = tx.send(r);
                ctx.request_repaint();
            });
    }

    /// Writes the working set now (tests; on exit).
    pub fn save_working_set_now(&mut self) -> std::io::Result<()> {
        self.dirty_since = None;
        match self.working_set_path() {
            Some(p) => state::write_atomic(&p, state::set_to_json(&self.set_to_save()).as_bytes()),
            None => Ok(()),
        }
    }

    /// Writes the working set and the settings now (on exit).
    pub fn save_now(&mut self) -> std::io::Result<()> {
        if let (Some(dir), Some(_)) = (&self.data_dir, &self.data_lock) {
            write_settings(dir, &self.settings)?;
        }
        self.save_working_set_now()
    }
}
