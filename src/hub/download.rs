//! Getting a model's files into the Hugging Face cache: cache first, then hf-hub downloads
//! with progress, retries, a stall watchdog, cancel, and a hash check of every new file.
//!
//! What is already in the cache is never fetched again, and with `HF_HUB_OFFLINE` set no
//! network request is made at all. `HF_ENDPOINT` (a mirror) and `HF_TOKEN` are honoured by
//! hf-hub exactly as Python's huggingface_hub does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hf_hub::progress::{DownloadEvent as HubEvent, ProgressEvent, ProgressHandler};
use hf_hub::HFError;
use sha2::Digest;

use super::registry::{ModelSpec, Need};
use super::ModelFiles;
use super::{cached_file, offline, repo_folder, resolve_in, resolve_need, shard_names};
use crate::error::{Error, Result};

/// What a download reports to its observer. Bytes only grow within a file; `Finished` comes
/// last when everything is in the cache.
#[derive(Clone, Debug, PartialEq)]
pub enum DownloadEvent {
    /// The files that are not in the cache yet (`repo/file`, alternatives joined by " or ").
    Plan {
        missing: Vec<String>,
    },
    /// A file's transfer began; `bytes` is its size as the server announced it (0 if unknown).
    FileStarted {
        label: String,
        bytes: u64,
    },
    Progress(DownloadProgress),
    /// The whole file arrived and its hash is being checked.
    Verifying {
        label: String,
    },
    FileDone {
        label: String,
        bytes: u64,
    },
    /// An attempt failed (cut connection, stall, bad hash); the file is fetched again.
    Retrying {
        label: String,
        attempt: usize,
        reason: String,
    },
    Finished {
        files: usize,
        bytes: u64,
        seconds: f64,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DownloadProgress {
    pub label: String,
    /// 1-based index of this file among the files to fetch, and their number.
    pub file_index: usize,
    pub file_count: usize,
    pub file_done: u64,
    pub file_total: u64,
    /// Bytes received for this model so far (finished files plus this one's).
    pub done: u64,
    pub bytes_per_s: f64,
    /// Seconds left for this file at the current rate.
    pub eta_s: Option<f64>,
}

/// How downloads behave; the defaults suit a laptop on flaky Wi-Fi.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    pub cache: PathBuf,
    /// Hub address; `None` means `HF_ENDPOINT` or https://huggingface.co (hf-hub decides).
    pub endpoint: Option<String>,
    /// Attempts per file (a cut or stalled transfer, or a bad hash, is retried).
    pub attempts: usize,
    /// An attempt with no new bytes for this long is abandoned.
    pub stall: Duration,
    /// No network at all (default: `HF_HUB_OFFLINE`).
    pub offline: bool,
}

impl DownloadOptions {
    pub fn new(cache: &Path) -> Self {
        let stall = std::env::var("FLAMINGO_DOWNLOAD_STALL_S")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(60));
        Self {
            cache: cache.to_path_buf(),
            endpoint: None,
            attempts: 3,
            stall,
            offline: offline(),
        }
    }

    fn endpoint_label(&self) -> String {
        self.endpoint
            .clone()
            .or_else(|| std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| "https://huggingface.co".to_string())
    }
}

/// The model's files, fetching whatever the cache lacks unless offline. With everything
/// cached, no network request is made.
pub fn ensure_model(
    spec: &ModelSpec,
    opts: &DownloadOptions,
    cancel: &AtomicBool,
    observer: &mut dyn FnMut(DownloadEvent),
) -> Result<ModelFiles> {
    if let Ok(files) = resolve_in(&opts.cache, spec) {
        return Ok(files);
    }
    let missing: Vec<Need> = spec
        .files()
        .into_iter()
        .filter(|n| resolve_need(&opts.cache, n).is_err())
        .collect();
    if missing.is_empty() {
        return resolve_in(&opts.cache, spec);
    }
    if opts.offline {
        // No network attempt: say at once everything that is missing.
        return Err(Error::MissingFiles {
            model: spec.id.to_string(),
            files: missing.iter().map(Need::label).collect(),
            cache: opts.cache.clone(),
            hint: "HF_HUB_OFFLINE is set, so nothing is downloaded: unset it on a machine with network access (or run `flamingo download` there), or point HF_HOME / HF_HUB_CACHE at a cache that has the model.".into(),
        });
    }
    observer(DownloadEvent::Plan {
        missing: missing.iter().map(Need::label).collect(),
    });
    let mut dl = Downloader::new(opts)?;
    let t0 = Instant::now();
    let count = missing.len();
    for (i, need) in missing.iter().enumerate() {
        dl.fetch_need(need, i + 1, count, cancel, observer)?;
    }
    observer(DownloadEvent::Finished {
        files: dl.files,
        bytes: dl.done,
        seconds: t0.elapsed().as_secs_f64(),
    });
    resolve_in(&opts.cache, spec)
}

/// Progress as hf-hub reports it, kept in atomics (its handler must never block).
#[derive(Default)]
struct Watch {
    started: AtomicBool,
    total: AtomicU64,
    done: AtomicU64,
}

impl ProgressHandler for Watch {
    fn on_progress(&self, event: &ProgressEvent) {
        if let ProgressEvent::Download(e) = event {
            match e {
                HubEvent::Start { total_bytes, .. } => {
                    self.total.store(*total_bytes, Ordering::Relaxed);
                    self.started.store(true, Ordering::Relaxed);
                }
                HubEvent::Progress { files } => {
                    if let Some(f) = files.first() {
                        self.done.fetch_max(f.bytes_completed, Ordering::Relaxed);
                        if f.total_bytes > 0 {
                            self.total.store(f.total_bytes, Ordering::Relaxed);
                        }
                    }
                }
                // Files stored on Xet report their bytes only in aggregate (one file here).
                HubEvent::AggregateProgress {
                    bytes_completed,
                    total_bytes,
                    ..
                } => {
                    self.done.fetch_max(*bytes_completed, Ordering::Relaxed);
                    if *total_bytes > 0 {
                        self.total.store(*total_bytes, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    }
}

enum Attempt {
    Done(std::result::Result<PathBuf, HFError>),
    Cancelled,
    Stalled,
}

struct Downloader<'a> {
    opts: &'a DownloadOptions,
    client: hf_hub::HFClient,
    rt: tokio::runtime::Runtime,
    /// Bytes of the files finished so far, and how many.
    done: u64,
    files: usize,
}

impl<'a> Downloader<'a> {
    fn new(opts: &'a DownloadOptions) -> Result<Self> {
        let mut b = hf_hub::HFClient::builder()
            .cache_dir(&opts.cache)
            .user_agent(format!("flamingo/{}", env!("CARGO_PKG_VERSION")));
        if let Some(e) = &opts.endpoint {
            b = b.endpoint(e.clone());
        }
        let client = b
            .build()
            .map_err(|e| Error::Download(format!("cannot set up the hub client: {e}")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Download(format!("cannot start the download runtime: {e}")))?;
        Ok(Self {
            opts,
            client,
            rt,
            done: 0,
            files: 0,
        })
    }

    /// The first choice the repo has (a 404 moves on to the next), shards included.
    fn fetch_need(
        &mut self,
        need: &Need,
        index: usize,
        count: usize,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(DownloadEvent),
    ) -> Result<()> {
        let mut not_found = Vec::new();
        for choice in &need.choices {
            match self.fetch_file(need.repo, choice, index, count, cancel, observer) {
                Ok(path) => {
                    if choice.ends_with(".index.json") {
                        for shard in shard_names(&path)? {
                            if cached_file(&self.opts.cache, need.repo, &shard).is_none() {
                                self.fetch_file(need.repo, &shard, index, count, cancel, observer)
                                    .map_err(|e| match e {
                                        FetchError::NotFound => Error::Download(format!(
                                            "{}/{choice} lists {shard}, which the repo does not have",
                                            need.repo
                                        )),
                                        FetchError::Other(e) => e,
                                    })?;
                            }
                        }
                    }
                    return Ok(());
                }
                Err(FetchError::NotFound) => not_found.push(*choice),
                Err(FetchError::Other(e)) => return Err(e),
            }
        }
        Err(Error::Download(format!(
            "{} has none of {} at {}",
            need.repo,
            not_found.join(", "),
            self.opts.endpoint_label()
        )))
    }

    fn fetch_file(
        &mut self,
        repo: &str,
        file: &str,
        index: usize,
        count: usize,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(DownloadEvent),
    ) -> std::result::Result<PathBuf, FetchError> {
        let label = format!("{repo}/{file}");
        let attempts = self.opts.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            if attempt > 1 {
                observer(DownloadEvent::Retrying {
                    label: label.clone(),
                    attempt,
                    reason: last.clone(),
                });
                std::thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
            let started_at = std::time::SystemTime::now();
            let watch = Arc::new(Watch::default());
            let outcome = self.attempt(repo, file, &label, &watch, index, count, cancel, observer);
            let reason = match outcome {
                Attempt::Cancelled => {
                    remove_partials(&self.opts.cache, repo, started_at);
                    return Err(FetchError::Other(Error::Cancelled));
                }
                Attempt::Stalled => format!(
                    "no data for {:.0} s from {}",
                    self.opts.stall.as_secs_f64(),
                    self.opts.endpoint_label()
                ),
                Attempt::Done(Err(e)) => match e {
                    HFError::EntryNotFound { .. } => return Err(FetchError::NotFound),
                    HFError::RepoNotFound { .. }
                    | HFError::AuthRequired { .. }
                    | HFError::Forbidden { .. }
                    | HFError::RevisionNotFound { .. } => {
                        return Err(FetchError::Other(Error::Download(format!(
                            "cannot download {label} from {}: {e}{}",
                            self.opts.endpoint_label(),
                            if std::env::var_os("HF_TOKEN").is_none() {
                                " (if the repo is gated or private, set HF_TOKEN)"
                            } else {
                                ""
                            }
                        ))))
                    }
                    other => format!("{other}"),
                },
                Attempt::Done(Ok(path)) => {
                    observer(DownloadEvent::Verifying {
                        label: label.clone(),
                    });
                    let expected = watch.total.load(Ordering::Relaxed);
                    match verify(&path, expected) {
                        Ok(bytes) => {
                            self.done += bytes;
                            self.files += 1;
                            observer(DownloadEvent::FileDone { label, bytes });
                            return Ok(path);
                        }
                        Err(why) => {
                            discard(&path);
                            format!("{why}; the file was deleted")
                        }
                    }
                }
            };
            remove_partials(&self.opts.cache, repo, started_at);
            last = reason;
        }
        Err(FetchError::Other(Error::Download(format!(
            "could not download {label} from {} after {attempts} attempts: {last}. Nothing partial was kept; check the connection (or set HF_ENDPOINT to a mirror) and try again.",
            self.opts.endpoint_label()
        ))))
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        repo: &str,
        file: &str,
        label: &str,
        watch: &Arc<Watch>,
        index: usize,
        count: usize,
        cancel: &AtomicBool,
        observer: &mut dyn FnMut(DownloadEvent),
    ) -> Attempt {
        let (owner, name) = hf_hub::split_id(repo);
        let repo_handle = self.client.model(owner, name);
        let handler = hf_hub::progress::Progress::from(Arc::clone(watch));
        let stall = self.opts.stall;
        let base = self.done;
        let progress = |file_done: u64, file_total: u64, bytes_per_s: f64, eta_s: Option<f64>| {
            DownloadEvent::Progress(DownloadProgress {
                label: label.to_string(),
                file_index: index,
                file_count: count,
                file_done,
                file_total,
                done: base + file_done,
                bytes_per_s,
                eta_s,
            })
        };
        self.rt.block_on(async {
            let fut = repo_handle
                .download_file()
                .filename(file)
                .progress(handler)
                .send();
            tokio::pin!(fut);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut announced = false;
            let mut last_bytes = 0u64;
            let mut last_change = Instant::now();
            let mut rate = RateMeter::default();
            loop {
                tokio::select! {
                    r = &mut fut => {
                        // A small file can finish between two ticks: report it anyway, and
                        // end every finished file on a complete progress event.
                        let total = watch.total.load(Ordering::Relaxed);
                        if !announced && watch.started.load(Ordering::Relaxed) {
                            observer(DownloadEvent::FileStarted { label: label.to_string(), bytes: total });
                        }
                        let done = watch.done.load(Ordering::Relaxed);
                        if r.is_ok() && (done != last_bytes || !announced) {
                            let bps = rate.push(Instant::now(), done);
                            observer(progress(done, total.max(done), bps, Some(0.0)));
                        }
                        return Attempt::Done(r);
                    }
                    _ = tick.tick() => {
                        if cancel.load(Ordering::Relaxed) {
                            return Attempt::Cancelled;
                        }
                        let total = watch.total.load(Ordering::Relaxed);
                        if !announced && watch.started.load(Ordering::Relaxed) {
                            announced = true;
                            observer(DownloadEvent::FileStarted { label: label.to_string(), bytes: total });
                        }
                        let done = watch.done.load(Ordering::Relaxed);
                        let now = Instant::now();
                        if done != last_bytes {
                            last_bytes = done;
                            last_change = now;
                            let bps = rate.push(now, done);
                            let eta_s = (bps > 0.0 && total >= done).then(|| (total - done) as f64 / bps);
                            observer(progress(done, total, bps, eta_s));
                        } else if now.duration_since(last_change) > stall {
                            return Attempt::Stalled;
                        }
                    }
                }
            }
        })
    }
}

enum FetchError {
    NotFound,
    Other(Error),
}

/// Transfer rate over the last few seconds.
#[derive(Default)]
struct RateMeter {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl RateMeter {
    fn push(&mut self, now: Instant, bytes: u64) -> f64 {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(3)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        if dt > 0.0 {
            bytes.saturating_sub(b0) as f64 / dt
        } else {
            0.0
        }
    }
}

/// `1.2 GB`, `350.0 MB`, `12 KB` (decimal units, like the hub's file sizes).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.0} KB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

/// `42 s`, `3 min 5 s`, `1 h 12 min`.
pub fn human_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {} s", s / 60, s % 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

/// Checks a downloaded file against what the hub promised: the announced size, and the hash
/// its ETag names (sha256 for LFS files, the git blob sha1 for the others). Returns its size.
pub fn verify(path: &Path, expected_size: u64) -> std::result::Result<u64, String> {
    let blob = std::fs::canonicalize(path).map_err(|e| format!("cannot open it: {e}"))?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let len = std::fs::metadata(&blob)
        .map_err(|e| format!("cannot open it: {e}"))?
        .len();
    if expected_size > 0 && len != expected_size {
        // A short text in place of the file is the server's error page (a rate limit, an
        // outage): its words say more than the sizes.
        let said = (len < 4096)
            .then(|| std::fs::read(&blob).ok())
            .flatten()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|t| !t.is_empty())
            .map(|t| {
                let t: String = t.chars().take(200).collect();
                format!(" (the server sent this instead: \"{t}\")")
            })
            .unwrap_or_default();
        return Err(format!(
            "it is {len} bytes, but the server announced {expected_size}{said}"
        ));
    }
    let is_hex = |n: usize| etag.len() == n && etag.bytes().all(|b| b.is_ascii_hexdigit());
    let found = if is_hex(64) {
        hash_file::<sha2::Sha256>(&blob, None)
    } else if is_hex(40) {
        hash_file::<sha1::Sha1>(&blob, Some(len))
    } else {
        return Ok(len);
    }
    .map_err(|e| format!("cannot read it back: {e}"))?;
    if found != etag {
        return Err(format!(
            "its content hash is {found}, but the hub's ETag says {etag}"
        ));
    }
    Ok(len)
}

/// Hex digest of a file; with `git_len`, of git's blob object (`blob <len>\0` + content).
fn hash_file<D: Digest>(path: &Path, git_len: Option<u64>) -> std::io::Result<String> {
    use std::io::Read;
    let mut h = D::new();
    if let Some(n) = git_len {
        h.update(format!("blob {n}\0").as_bytes());
    }
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>())
}

/// Removes a bad file: its blob and the snapshot link to it.
fn discard(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(path);
}

/// Deletes `*.incomplete` blobs of `repo` written since `since` (an abandoned attempt's).
fn remove_partials(cache: &Path, repo: &str, since: std::time::SystemTime) {
    let Ok(dir) = std::fs::read_dir(repo_folder(cache, repo).join("blobs")) else {
        return;
    };
    for e in dir.filter_map(|e| e.ok()) {
        let p = e.path();
        // The file clock is coarser than the system clock: allow a second of slack.
        let since = since - Duration::from_secs(1);
        let recent = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|m| m >= since)
            .unwrap_or(false);
        if recent && p.extension().is_some_and(|x| x == "incomplete") {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_checks_size_and_both_hash_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"hello flamingo\n";
        // The digests `sha256sum` and `git hash-object` print for these bytes.
        let sha256 = "9a14ea23d4e262d90e02d083282a685e0e19c433fcae35e2e5421085c15fda1e";
        let git = "a494949fc19db42bab10a489e8d547712472334f";
        let p = write(dir.path(), sha256, data);
        assert_eq!(verify(&p, data.len() as u64), Ok(data.len() as u64));
        assert!(verify(&p, 3).unwrap_err().contains("announced 3"));
        let q = write(dir.path(), git, data);
        assert_eq!(verify(&q, 0), Ok(data.len() as u64));
        let bad = write(dir.path(), &"0".repeat(64), data);
        assert!(verify(&bad, 0).unwrap_err().contains("content hash"));
    }

    #[test]
    fn progress_counts_per_file_and_xet_aggregate_bytes() {
        use hf_hub::progress::{FileProgress, FileStatus};
        let w = Watch::default();
        let ev = |e| w.on_progress(&ProgressEvent::Download(e));
        ev(HubEvent::Start {
            total_files: 1,
            total_bytes: 1000,
        });
        ev(HubEvent::Progress {
            files: vec![FileProgress {
                filename: "a".into(),
                bytes_completed: 300,
                total_bytes: 1000,
                status: FileStatus::InProgress,
            }],
        });
        assert_eq!(w.done.load(Ordering::Relaxed), 300);
        ev(HubEvent::AggregateProgress {
            bytes_completed: 700,
            total_bytes: 1000,
            bytes_per_sec: None,
        });
        assert_eq!(w.done.load(Ordering::Relaxed), 700);
        assert_eq!(w.total.load(Ordering::Relaxed), 1000);
        assert!(w.started.load(Ordering::Relaxed));
    }

    fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}
