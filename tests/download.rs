//! Downloads through hf-hub from a loopback server that speaks the hub's resolve protocol:
//! a full download into an empty cache, no network once cached, retries after a cut
//! connection, detection of altered and truncated files, stalls, cancel, and the progress
//! events an observer sees.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use candle_core::Device;
use common::hub_server::{Fault, HubServer};
use common::*;
use flamingo::hub::download::{ensure_model, DownloadEvent, DownloadOptions};
use flamingo::hub::registry;
use flamingo::pipeline::Captioner;

const LM: &str = "anas-awadalla/mpt-1b-redpajama-200b";

fn spec() -> &'static registry::ModelSpec {
    registry::find(flamingo::hub::DEFAULT_MODEL).unwrap()
}

fn options(server: &HubServer, cache: &Path) -> DownloadOptions {
    let mut o = DownloadOptions::new(cache);
    o.endpoint = Some(server.url.clone());
    // Generous, so that a busy CI machine never looks stalled (the stall test sets its own).
    o.stall = Duration::from_secs(10);
    o
}

fn download(
    server: &HubServer,
    cache: &Path,
    tweak: impl FnOnce(&mut DownloadOptions),
) -> (flamingo::Result<()>, Vec<DownloadEvent>) {
    let mut o = options(server, cache);
    tweak(&mut o);
    let mut events = Vec::new();
    let r = ensure_model(spec(), &o, &AtomicBool::new(false), &mut |e| events.push(e));
    (r.map(|_| ()), events)
}

fn caption_tokens(cache: &Path) -> Vec<u32> {
    let c = Captioner::load_from(cache, flamingo::hub::DEFAULT_MODEL, &Device::Cpu).unwrap();
    let req = caption_request(
        &[("chelsea.png", "A cat lying on a rug.")],
        "astronaut.png",
        5,
    );
    c.caption(&req, &AtomicBool::new(false), |_| {})
        .unwrap()
        .generated
        .tokens
}

/// Every blob in the cache holds the bytes the server serves for its file.
fn assert_cache_matches(server: &HubServer, cache: &Path, repo: &str, file: &str) {
    let p = flamingo::hub::cached_file(cache, repo, file)
        .unwrap_or_else(|| panic!("{repo}/{file} not cached"));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        *server.bytes(repo, file),
        "{repo}/{file}"
    );
}

fn partials(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for repo in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        for b in std::fs::read_dir(repo.path().join("blobs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = b.file_name().to_string_lossy().to_string();
            if name.ends_with(".incomplete") {
                out.push(name);
            }
        }
    }
    out
}

#[test]
fn full_download_then_caption_and_no_network_after() {
    let server = HubServer::serve(&hub("hf"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let (r, events) = download(&server, &cache, |_| {});
    r.unwrap();

    // What was fetched: the six files the model needs (alternatives it lacks were 404s).
    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET "))
        .collect();
    assert_eq!(gets.len(), 6, "{gets:?}");
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("HEAD ") && r.ends_with("/model.safetensors.index.json")));
    for (repo, file) in [
        (
            "timm/vit_large_patch14_clip_224.openai",
            "open_clip_config.json",
        ),
        (
            "timm/vit_large_patch14_clip_224.openai",
            "open_clip_model.safetensors",
        ),
        (LM, "config.json"),
        (LM, "tokenizer.json"),
        (LM, "pytorch_model.bin"),
        ("openflamingo/OpenFlamingo-3B-vitl-mpt1b", "checkpoint.pt"),
    ] {
        assert_cache_matches(&server, &cache, repo, file);
    }

    // Progress: a plan first, bytes never go back (per file and in total), each started
    // file completes, and the last event says everything is there.
    assert!(matches!(&events[0], DownloadEvent::Plan { missing } if missing.len() == 6));
    let mut last_total = 0;
    let mut last_file: Option<(String, u64)> = None;
    let mut progress_events = 0;
    for e in &events {
        if let DownloadEvent::Progress(p) = e {
            progress_events += 1;
            assert!(p.done >= last_total, "total went back: {e:?}");
            last_total = p.done;
            if let Some((label, bytes)) = &last_file {
                if *label == p.label {
                    assert!(p.file_done >= *bytes, "file bytes went back: {e:?}");
                }
            }
            assert!(p.file_done <= p.file_total && p.file_index <= p.file_count);
            last_file = Some((p.label.clone(), p.file_done));
        }
        if let DownloadEvent::FileDone { label, bytes } = e {
            // Each file ends on a complete progress event of its own.
            assert_eq!(last_file.as_ref(), Some(&(label.clone(), *bytes)), "{e:?}");
        }
    }
    let started = events
        .iter()
        .filter(|e| matches!(e, DownloadEvent::FileStarted { .. }))
        .count();
    let done: u64 = events
        .iter()
        .filter_map(|e| match e {
            DownloadEvent::FileDone { bytes, .. } => Some(*bytes),
            _ => None,
        })
        .sum();
    assert_eq!(started, 6);
    assert!(progress_events >= 6, "{progress_events} progress events");
    match events.last() {
        Some(DownloadEvent::Finished { files, bytes, .. }) => {
            assert_eq!(*files, 6);
            assert_eq!(*bytes, done);
            assert!(*bytes > 10_000_000, "{bytes}");
        }
        other => panic!("last event {other:?}"),
    }

    // The downloaded cache captions exactly like the fixture cache it was served from.
    assert_eq!(caption_tokens(&cache), caption_tokens(&hub("hf")));

    // A second run makes no request at all, not even a HEAD.
    let before = server.requests().len();
    let (r, events) = download(&server, &cache, |_| {});
    r.unwrap();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(server.requests().len(), before);
}

#[test]
fn a_cut_connection_is_retried_and_ends_with_a_correct_file() {
    let server = HubServer::serve(&hub("hf"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    server.fault("pytorch_model.bin", Fault::Cut, 1);
    let (r, events) = download(&server, &cache, |_| {});
    r.unwrap();
    assert!(
        events.iter().any(|e| matches!(e, DownloadEvent::Retrying { label, attempt: 2, .. } if label.ends_with("pytorch_model.bin"))),
        "{events:?}"
    );
    assert_cache_matches(&server, &cache, LM, "pytorch_model.bin");
    assert!(partials(&cache).is_empty(), "{:?}", partials(&cache));

    // With no retries left, the cut fails the download, keeps nothing partial, and the next
    // run (the user's retry) completes it.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    server.fault("checkpoint.pt", Fault::Cut, 1);
    let (r, _) = download(&server, &cache, |o| o.attempts = 1);
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("checkpoint.pt") && msg.contains("try again"),
        "{msg}"
    );
    assert!(flamingo::hub::cached_file(&cache, spec().checkpoint_repo, "checkpoint.pt").is_none());
    assert!(partials(&cache).is_empty(), "{:?}", partials(&cache));
    let (r, _) = download(&server, &cache, |o| o.attempts = 1);
    r.unwrap();
    assert_cache_matches(&server, &cache, spec().checkpoint_repo, "checkpoint.pt");
}

#[test]
fn altered_or_truncated_files_are_detected_and_never_loaded() {
    let server = HubServer::serve(&hub("hf"));
    for (file, fault, expect) in [
        ("pytorch_model.bin", Fault::Alter, "content hash"),
        ("checkpoint.pt", Fault::Truncate, "announced"),
        ("config.json", Fault::Alter, "content hash"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        server.fault(file, fault, 2);
        let (r, _) = download(&server, &cache, |o| o.attempts = 2);
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(file) && msg.contains(expect), "{msg}");
        // The bad file is gone, so neither the resolver nor a load can pick it up.
        let repo = if file == "checkpoint.pt" {
            spec().checkpoint_repo
        } else {
            LM
        };
        assert!(flamingo::hub::cached_file(&cache, repo, file).is_none());
        let blobs: Vec<_> =
            std::fs::read_dir(flamingo::hub::repo_folder(&cache, repo).join("blobs"))
                .into_iter()
                .flatten()
                .flatten()
                .collect();
        for b in blobs {
            let got = std::fs::read(b.path()).unwrap();
            assert_ne!(got.len(), 0);
            assert!(
                server.serves_exactly(&got),
                "a blob that the server never served intact: {:?}",
                b.path()
            );
        }
        let err = Captioner::load_from(&cache, flamingo::hub::DEFAULT_MODEL, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not in the Hugging Face cache"), "{err}");
    }
}

#[test]
fn a_stalled_transfer_is_abandoned_with_a_clear_message() {
    let server = HubServer::serve(&hub("hf"));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    server.fault("open_clip_model.safetensors", Fault::Stall, 2);
    let t0 = std::time::Instant::now();
    let (r, _) = download(&server, &cache, |o| {
        o.attempts = 2;
        o.stall = Duration::from_millis(700);
    });
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("no data for"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(partials(&cache).is_empty(), "{:?}", partials(&cache));
}

#[test]
fn cancel_stops_mid_file_and_keeps_nothing_partial() {
    let server = HubServer::serve(&hub("hf"));
    server
        .state
        .trickle_ms
        .store(30, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let cancel = AtomicBool::new(false);
    let mut events = Vec::new();
    let r = ensure_model(spec(), &options(&server, &cache), &cancel, &mut |e| {
        if let DownloadEvent::Progress(p) = &e {
            if p.label.ends_with("open_clip_model.safetensors") && p.file_done > 0 {
                cancel.store(true, Ordering::SeqCst);
            }
        }
        events.push(e);
    });
    assert!(matches!(r, Err(flamingo::Error::Cancelled)), "{r:?}");
    assert!(flamingo::hub::cached_file(
        &cache,
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_model.safetensors"
    )
    .is_none());
    assert!(partials(&cache).is_empty(), "{:?}", partials(&cache));
    assert!(!events
        .iter()
        .any(|e| matches!(e, DownloadEvent::Finished { .. })));
}

#[test]
fn no_server_fails_fast_with_what_is_missing() {
    let mut server = HubServer::serve(&hub("hf"));
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    let t0 = std::time::Instant::now();
    let (r, _) = download(&server, &cache, |_| {});
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("open_clip_config.json"), "{msg}");
    assert!(msg.contains(&server.url), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
}

fn cli(hf_home: &Path, convert: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_flamingo"));
    c.env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env("HF_HOME", hf_home)
        .env("FLAMINGO_CACHE_DIR", convert)
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

#[test]
fn cli_downloads_with_hf_endpoint_then_works_offline_with_the_server_stopped() {
    let mut server = HubServer::serve(&hub("hf"));
    let home = tempfile::tempdir().unwrap();
    let convert = tempfile::tempdir().unwrap();
    let out = cli(home.path(), convert.path())
        .env("HF_ENDPOINT", &server.url)
        .args(["download", flamingo::hub::DEFAULT_MODEL])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Downloading 6 missing file(s)"), "{err}");
    assert!(err.contains("Downloaded 6 file(s)"), "{err}");
    assert!(err.contains("hash checked"), "{err}");
    assert_eq!(server.gets(), 6);

    // A second download has nothing to do and asks the server nothing.
    let before = server.requests().len();
    let out = cli(home.path(), convert.path())
        .env("HF_ENDPOINT", &server.url)
        .arg("download")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in the cache"));
    assert_eq!(server.requests().len(), before);

    // With the server gone: offline captioning works from the cache.
    server.stop();
    let out = cli(home.path(), convert.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", &server.url)
        .args(["caption", "--json", "--max-new-tokens", "3"])
        .arg(image("astronaut.png"))
        .output()
        .unwrap();
    let v = json_stdout(&out);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 3);

    // Offline without the cache: a clear error at once, naming what is missing.
    let empty = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let out = cli(empty.path(), convert.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", &server.url)
        .args(["caption", "--json"])
        .arg(image("astronaut.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[test]
fn cli_caption_downloads_what_is_missing() {
    let server = HubServer::serve(&hub("hf"));
    let home = tempfile::tempdir().unwrap();
    let convert = tempfile::tempdir().unwrap();
    // Only the checkpoint is missing: exactly that file is fetched.
    let hub_dir = home.path().join("hub");
    copy_dir(&hub("hf"), &hub_dir);
    std::fs::remove_dir_all(flamingo::hub::repo_folder(&hub_dir, spec().checkpoint_repo)).unwrap();
    let out = cli(home.path(), convert.path())
        .env("HF_ENDPOINT", &server.url)
        .args(["caption", "--json", "--max-new-tokens", "3"])
        .arg(image("astronaut.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("Downloading 1 missing file(s)"), "{err}");
    assert_eq!(server.gets(), 1, "{:?}", server.requests());
    assert!(server.requests()[0].ends_with("/checkpoint.pt"));
}

/// Copies a hub cache, links resolved to plain files (enough for the resolver).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        let meta = std::fs::metadata(e.path()).unwrap();
        if meta.is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Server errors: a 500 or 503 once is retried and the file ends correct; a 429 that does not
/// go away fails with a message naming the file and the status, keeping nothing partial.
#[test]
fn server_errors_are_retried_then_reported() {
    let server = HubServer::serve(&hub("hf"));
    for code in [500, 503] {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("hub");
        server.fault("checkpoint.pt", Fault::Status(code), 1);
        let (r, _) = download(&server, &cache, |_| {});
        r.unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_cache_matches(&server, &cache, spec().checkpoint_repo, "checkpoint.pt");
        assert!(partials(&cache).is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("hub");
    server.fault("checkpoint.pt", Fault::Status(429), 1000);
    let (r, _) = download(&server, &cache, |_| {});
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("checkpoint.pt") && msg.contains("429"),
        "{msg}"
    );
    assert!(flamingo::hub::cached_file(&cache, spec().checkpoint_repo, "checkpoint.pt").is_none());
    assert!(partials(&cache).is_empty(), "{:?}", partials(&cache));
}
