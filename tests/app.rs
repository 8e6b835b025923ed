//! The real app state driven through egui_kittest: drops, typing, Generate with the tiny test
//! model, Stop, a corrupt file, and a prompt set saved and reopened.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use flamingo::app::{AppOptions, Command, FlamingoApp, ModelState, RunState};

#[derive(Debug)]
struct TestFile(PathBuf);

impl egui::DroppedFile for TestFile {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn harness(data_dir: &Path) -> Harness<'static, FlamingoApp> {
    let opts = AppOptions {
        data_dir: Some(data_dir.to_path_buf()),
        hub_cache: Some(hub("hf")),
        offline: true,
        autoload: true,
        model_id: None,
        // The reference's tokens are f32's.
        weights: Some(flamingo::types::WeightFormat::F32),
        stable_for_snapshots: true,
        ..Default::default()
    };
    Harness::builder()
        .with_size(egui::vec2(1180.0, 760.0))
        .build_eframe(move |cc| FlamingoApp::new(cc, opts))
}

/// Steps the UI until `cond` holds (background threads deliver through channels).
fn wait_until(h: &mut Harness<'_, FlamingoApp>, what: &str, cond: impl Fn(&FlamingoApp) -> bool) {
    let t0 = Instant::now();
    while !cond(h.state()) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        h.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

fn ready(h: &mut Harness<'_, FlamingoApp>) {
    wait_until(h, "the model and the sample images", |a| {
        matches!(a.status.model, ModelState::Ready(_)) && a.loading_images == 0
    });
}

fn drop_files(h: &mut Harness<'_, FlamingoApp>, at: egui::Pos2, files: &[PathBuf]) {
    h.hover_at(at);
    h.step();
    for f in files {
        h.input_mut()
            .dropped_files
            .push(Arc::new(TestFile(f.clone())));
    }
    h.step();
}

/// Presses Generate with `tokens` new tokens and waits for the caption.
fn generate_and_wait(h: &mut Harness<'_, FlamingoApp>, tokens: usize) {
    h.state_mut().settings.max_new_tokens = tokens;
    h.get_by_label("Generate").click();
    wait_until(h, "the caption", |a| {
        a.status.output.state == RunState::Done
    });
}

fn img(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

#[test]
fn first_launch_shows_samples_and_generates_from_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    assert_eq!(h.state().ws.examples.len(), 3, "the bundled example set");
    assert!(h.state().ws.query.is_some());
    h.snapshot("first_launch");

    h.get_by_label("Generate").click();
    wait_until(&mut h, "the caption", |a| {
        a.status.output.state == RunState::Done
    });
    let o = &h.state().status.output;
    assert!(
        o.tokens > 0 && o.first_token_s.is_some(),
        "tokens streamed in: {o:?}"
    );
    assert!(!o.raw.is_empty());
}

#[test]
fn examples_are_prepared_ahead_and_the_caption_is_the_same_without() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    wait_until(&mut h, "the work done ahead", |a| {
        a.status.prepared.is_some()
    });
    let p = h.state().status.prepared.unwrap();
    assert_eq!(
        p.images_encoded, 4,
        "three sample examples and the query: {p:?}"
    );
    assert!(p.prefix_tokens > 0, "{p:?}");

    // A caption edited: prepared again; the images are known, the examples' prompt runs.
    h.state_mut().status.prepared = None;
    h.state_mut().ws.examples[0].text.caption = "A cat.".into();
    h.state_mut().mark_dirty();
    wait_until(&mut h, "the work done ahead", |a| {
        a.status.prepared.is_some()
    });
    let p = h.state().status.prepared.unwrap();
    assert_eq!(p.images_encoded, 0, "{p:?}");
    assert!(p.prefix_tokens > 0, "{p:?}");
    h.get_by_label("Generate").click();
    wait_until(&mut h, "the caption", |a| {
        a.status.output.state == RunState::Done
    });
    let ahead = h.state().status.output.raw.clone();

    // The same working set with work-ahead off: nothing prepared, the same caption.
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    h.state_mut().settings.prepare_ahead = false;
    ready(&mut h);
    h.state_mut().ws.examples[0].text.caption = "A cat.".into();
    h.get_by_label("Generate").click();
    wait_until(&mut h, "the caption", |a| {
        a.status.output.state == RunState::Done
    });
    assert!(h.state().status.prepared.is_none());
    assert_eq!(h.state().status.output.raw, ahead);
    assert!(!ahead.is_empty());
}

#[test]
fn compute_threads_and_work_ahead_are_settings() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    assert_eq!(h.state().settings.threads, None, "automatic by default");
    assert!(h.state().settings.prepare_ahead);
    // Each click in the menu may close it: opened again for the next one.
    let click_in_menu = |h: &mut Harness<'_, FlamingoApp>, label: &str| {
        if h.query_by_label(label).is_none() {
            h.get_by_label("Decoding").click();
            h.run();
        }
        h.get_by_label(label).click();
        h.run();
    };
    click_in_menu(&mut h, "auto");
    assert_eq!(
        h.state().settings.threads,
        Some(flamingo::platform::default_threads()),
        "a number, starting from the automatic one"
    );
    click_in_menu(
        &mut h,
        "Work ahead: encode images and run the examples' prompt while you edit",
    );
    assert!(!h.state().settings.prepare_ahead);
    click_in_menu(&mut h, "auto");
    assert_eq!(h.state().settings.threads, None);
}

#[test]
fn drops_typing_generate_stop_and_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().apply(Command::NewSet);
    h.step();
    assert!(h.state().ws.examples.is_empty() && h.state().ws.query.is_none());

    // Two files onto the examples panel become two examples, in order.
    let [examples_rect, query_rect] = h.state().drop_rects();
    drop_files(
        &mut h,
        examples_rect.center(),
        &[img("chelsea.png"), img("coffee.png")],
    );
    wait_until(&mut h, "two examples", |a| {
        a.ws.examples.len() == 2 && a.loading_images == 0
    });
    let names: Vec<_> = h
        .state()
        .ws
        .examples
        .iter()
        .map(|e| e.image.name.clone())
        .collect();
    assert_eq!(names, ["chelsea.png", "coffee.png"]);

    // One file onto the query area becomes the query.
    let [_, query_rect_now] = h.state().drop_rects();
    assert_eq!(query_rect, query_rect_now);
    drop_files(&mut h, query_rect.center(), &[img("astronaut.png")]);
    wait_until(&mut h, "the query", |a| {
        a.ws.query.is_some() && a.loading_images == 0
    });
    assert_eq!(h.state().ws.query.as_ref().unwrap().name, "astronaut.png");

    // Type the captions into the two caption fields.
    for (i, text) in ["A cat lying on a rug.", "A cup of coffee on a table."]
        .iter()
        .enumerate()
    {
        let fields = h
            .get_all_by_role(egui::accesskit::Role::MultilineTextInput)
            .collect::<Vec<_>>();
        assert_eq!(fields.len(), 2);
        fields[i].focus();
        fields[i].type_text(text);
        h.step();
    }
    let captions: Vec<_> = h
        .state()
        .ws
        .examples
        .iter()
        .map(|e| e.text.caption.clone())
        .collect();
    assert_eq!(
        captions,
        ["A cat lying on a rug.", "A cup of coffee on a table."]
    );
    // The prompt is exactly the reference's 2-shot prompt.
    let want = reference_json("every1_twoshot.json");
    assert_eq!(
        h.state().ws.prompt().unwrap(),
        want["prompt"].as_str().unwrap()
    );
    h.snapshot("two_examples_and_query");

    // Generate streams the reference's tokens (6 new tokens, greedy).
    generate_and_wait(&mut h, 6);
    assert_eq!(
        h.state().status.output.raw,
        want["generated_text"].as_str().unwrap()
    );

    // Stop takes effect within a step.
    h.state_mut().settings.max_new_tokens = 1900;
    h.get_by_label("Generate").click();
    h.step();
    h.get_by_label("Stop").click();
    wait_until(&mut h, "the stop", |a| {
        a.status.output.state != RunState::Running
    });
    assert_eq!(h.state().status.output.state, RunState::Stopped);
    assert!(h.state().status.output.tokens < 1900);

    // A file that is not an image: a visible message, nothing else changes.
    let bad = dir.path().join("holiday.png");
    std::fs::write(&bad, b"definitely not a png").unwrap();
    let before = h.state().ws.examples.len();
    drop_files(&mut h, examples_rect.center(), &[bad]);
    wait_until(&mut h, "the error", |a| {
        a.loading_images == 0 && !a.messages.is_empty()
    });
    assert_eq!(h.state().ws.examples.len(), before);
    let msg = &h.state().messages.last().unwrap().text;
    assert!(msg.contains("holiday.png"), "{msg}");
    assert!(
        h.query_all_by_label_contains("holiday.png")
            .next()
            .is_some(),
        "the message is on screen"
    );
}

#[test]
fn a_prompt_set_saved_and_reopened_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    {
        let app = h.state_mut();
        app.ws.examples[1].enabled = false;
        app.ws.examples[0].text.caption = "edited caption".into();
        app.ws.question = "What is shown?".into();
        app.ws.caption_templates.final_ = "<image>Caption:".into();
        app.apply(Command::MoveExample { from: 2, to: 0 });
    }
    let fingerprint = |a: &FlamingoApp| {
        let ex: Vec<_> =
            a.ws.examples
                .iter()
                .map(|e| {
                    (
                        e.image.name.clone(),
                        e.image.bytes.clone(),
                        e.text.clone(),
                        e.enabled,
                    )
                })
                .collect();
        let q =
            a.ws.query
                .as_ref()
                .map(|q| (q.name.clone(), q.bytes.clone()));
        (
            ex,
            q,
            a.ws.task,
            a.ws.question.clone(),
            a.ws.caption_templates.clone(),
            a.ws.vqa_templates.clone(),
        )
    };
    let before = fingerprint(h.state());
    let path = dir.path().join("mine.flamingo.json");
    h.state_mut().apply(Command::SaveSet(path.clone()));
    h.state_mut().apply(Command::NewSet);
    h.step();
    assert!(h.state().ws.examples.is_empty());
    h.state_mut().apply(Command::OpenSet(path.clone()));
    wait_until(&mut h, "the reopened set", |a| a.loading_images == 0);
    assert_eq!(fingerprint(h.state()), before);
    assert_eq!(h.state().settings.recent_sets.first(), Some(&path));

    // The working set survives a restart.
    h.state_mut().save_working_set_now().unwrap();
    drop(h);
    let mut h2 = harness(dir.path());
    ready(&mut h2);
    assert_eq!(fingerprint(h2.state()), before);

    // A damaged set file changes nothing.
    std::fs::write(&path, "{ not json").unwrap();
    h2.state_mut().apply(Command::OpenSet(path));
    h2.step();
    assert_eq!(fingerprint(h2.state()), before);
    assert!(h2.state().messages.last().unwrap().error);
}

#[test]
fn without_a_model_it_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed path: the message names it, and the snapshot must not change from run to run.
    let empty = std::env::temp_dir().join("flamingo-test-empty-hub");
    let _ = std::fs::remove_dir_all(&empty);
    std::fs::create_dir_all(&empty).unwrap();
    let opts = AppOptions {
        data_dir: Some(dir.path().to_path_buf()),
        hub_cache: Some(empty.clone()),
        offline: true,
        autoload: true,
        model_id: None,
        weights: None,
        stable_for_snapshots: true,
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1180.0, 760.0))
        .build_eframe(move |cc| FlamingoApp::new(cc, opts));
    wait_until(&mut h, "the load failure", |a| {
        matches!(a.status.model, ModelState::Failed { .. }) && a.loading_images == 0
    });
    assert!(h
        .query_all_by_label_contains("could not be loaded")
        .next()
        .is_some());
    assert!(h
        .query_all_by_label_contains("Retry downloads what is missing")
        .next()
        .is_some());
    // What to do comes first; the missing files are behind "details".
    assert!(h
        .query_all_by_label_contains("of its files are not in the Hugging Face cache")
        .next()
        .is_some());
    assert!(h
        .query_all_by_label_contains("checkpoint.pt")
        .next()
        .is_none());
    h.snapshot("no_model");
    h.get_by_label("details").click();
    h.run();
    assert!(h
        .query_all_by_label_contains("checkpoint.pt")
        .next()
        .is_some());
}

#[test]
fn pasted_file_paths_become_images() {
    let text = format!(
        "file://{}\n{}\n/not/there.png\n",
        img("chelsea.png").display(),
        img("coffee.png").display()
    );
    let paths = flamingo::app::paths_in_text(&text);
    assert_eq!(paths, vec![img("chelsea.png"), img("coffee.png")]);

    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().apply(Command::NewSet);
    h.step();
    h.event(egui::Event::Paste(
        img("astronaut.png").display().to_string(),
    ));
    h.step();
    wait_until(&mut h, "the pasted query", |a| {
        a.ws.query.is_some() && a.loading_images == 0
    });
    assert_eq!(h.state().ws.query.as_ref().unwrap().name, "astronaut.png");
}

#[test]
fn ranking_candidates_in_the_app_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let info = reference_json("every1_score.json");
    h.state_mut().apply(Command::NewSet);
    h.step();
    let [examples_rect, query_rect] = h.state().drop_rects();
    let shots: Vec<PathBuf> = info["shots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| img(s["image"].as_str().unwrap()))
        .collect();
    drop_files(&mut h, examples_rect.center(), &shots);
    wait_until(&mut h, "the examples", |a| {
        a.ws.examples.len() == 2 && a.loading_images == 0
    });
    drop_files(
        &mut h,
        query_rect.center(),
        &[img(info["query"].as_str().unwrap())],
    );
    wait_until(&mut h, "the query", |a| {
        a.ws.query.is_some() && a.loading_images == 0
    });
    let cands = info["candidates"].as_array().unwrap();
    {
        let app = h.state_mut();
        for (e, s) in app
            .ws
            .examples
            .iter_mut()
            .zip(info["shots"].as_array().unwrap())
        {
            e.text.caption = s["caption"].as_str().unwrap().into();
        }
        app.ws.candidates = cands
            .iter()
            .map(|c| c["candidate"].as_str().unwrap().trim().to_string())
            .filter(|c| c != "two  spaces")
            .collect::<Vec<_>>()
            .join("\n");
        app.apply(Command::Score);
    }
    wait_until(&mut h, "the ranking", |a| {
        a.status.ranking_state == RunState::Done
    });
    let got: Vec<String> = h
        .state()
        .status
        .ranked
        .iter()
        .map(|(t, _, _)| t.clone())
        .collect();
    let mut want: Vec<(f64, String)> = cands
        .iter()
        .filter(|c| c["candidate"] != " two  spaces")
        .map(|c| {
            let s = -c["loss"].as_f64().unwrap() * c["n_tokens"].as_f64().unwrap();
            (s, c["candidate"].as_str().unwrap().to_string())
        })
        .collect();
    want.sort_by(|a, b| b.0.total_cmp(&a.0));
    assert_eq!(got, want.into_iter().map(|(_, t)| t).collect::<Vec<_>>());
}

#[test]
fn a_missing_model_downloads_with_progress_and_cancel() {
    let server = common::hub_server::HubServer::serve(&hub("hf"));
    // Slow enough to see the progress view and press Cancel in time.
    server
        .state
        .trickle_ms
        .store(20, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let opts = AppOptions {
        data_dir: Some(dir.path().to_path_buf()),
        hub_cache: Some(cache.path().to_path_buf()),
        hub_endpoint: Some(server.url.clone()),
        autoload: true,
        stable_for_snapshots: true,
        ..Default::default()
    };
    let mut h = Harness::builder()
        .with_size(egui::vec2(1180.0, 760.0))
        .build_eframe(move |cc| FlamingoApp::new(cc, opts));
    // Nothing is fetched before the user asks: gigabytes wait for a click.
    wait_until(&mut h, "the engine's word that a download is needed", |a| {
        a.status.download_needed.is_some()
    });
    assert!(matches!(h.state().status.model, ModelState::NotLoaded));
    assert_eq!(server.gets(), 0);
    h.get_by_label_contains("Download (~11 GB) and load")
        .click();
    wait_until(&mut h, "download progress", |a| {
        a.status.download.as_ref().is_some_and(|d| d.file_done > 0)
    });
    assert!(h
        .query_all_by_label_contains("Downloading ")
        .next()
        .is_some());
    h.get_by_label("Cancel download").click();
    wait_until(&mut h, "the cancelled load", |a| {
        matches!(a.status.model, ModelState::Failed { .. })
    });
    assert!(h
        .query_all_by_label_contains("download cancelled")
        .next()
        .is_some());
    assert!(h.state().status.download.is_none());

    // Retry fetches the rest (at full speed) and the model loads from the new cache.
    server
        .state
        .trickle_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    h.get_by_label("Retry").click();
    wait_until(&mut h, "the downloaded model", |a| {
        matches!(a.status.model, ModelState::Ready(_))
    });
    assert!(flamingo::hub::resolve_in(
        cache.path(),
        flamingo::hub::registry::find(flamingo::hub::DEFAULT_MODEL).unwrap()
    )
    .is_ok());
}

/// The pipeline's own caption of `req` (the tiny model, f32, no caches): what the app's views
/// must show.
fn caption_of(req: &flamingo::pipeline::CaptionRequest) -> String {
    let c = flamingo::pipeline::Captioner::load_from(
        &hub("hf"),
        flamingo::hub::DEFAULT_MODEL,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    c.caption(req, &std::sync::atomic::AtomicBool::new(false), |_| {})
        .unwrap()
        .raw_text
}

#[test]
fn a_shot_sweep_shows_a_column_per_count_and_stop_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().settings.max_new_tokens = 6;
    h.state_mut().ws.sweep.counts = "0,1,2".into();
    h.get_by_label_contains("Shot sweep").click();
    h.run();
    h.get_by_label("Run sweep").click();
    wait_until(&mut h, "the sweep", |a| {
        a.status.sweep.state == RunState::Done
    });
    let req = h.state().build_request().unwrap();
    let rows = h.state().status.sweep.rows.clone();
    assert_eq!(rows.len(), 3);
    for (r, n) in rows.iter().zip([0, 1, 2]) {
        assert_eq!(r.shots, n);
        let want = caption_of(&flamingo::pipeline::icl::with_examples(
            &req,
            &(0..n).collect::<Vec<_>>(),
        ));
        assert_eq!(r.caption.as_ref().unwrap().raw_text, want, "{n} shots");
    }
    for label in ["0 shots", "1 shot", "2 shots"] {
        assert!(h.query_by_label(label).is_some(), "a column headed {label}");
    }
    h.snapshot("shot_sweep");

    // Stop while the first row decodes: the sweep ends there.
    h.state_mut().settings.max_new_tokens = 1900;
    h.get_by_label("Run sweep").click();
    wait_until(&mut h, "the first row", |a| {
        a.status.sweep.rows.iter().any(|r| !r.raw.is_empty())
    });
    h.get_by_label("Stop").click();
    wait_until(&mut h, "the stop", |a| {
        a.status.sweep.state != RunState::Running
    });
    assert_eq!(h.state().status.sweep.state, RunState::Stopped);
    assert!(h
        .state()
        .status
        .sweep
        .rows
        .iter()
        .all(|r| r.caption.is_none()));
    assert!(!h.state().is_running());
}

#[test]
fn tokens_show_their_alternatives_and_a_click_branches() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.ctx.all_styles_mut(|s| {
        s.interaction.tooltip_delay = 0.0;
        s.interaction.show_tooltips_only_when_still = false;
    });
    generate_and_wait(&mut h, 6);
    let caption = h.state().status.output.caption.clone().unwrap();
    assert_eq!(caption.tokens.len(), 6);
    let second = &caption.tokens[1];
    assert_eq!(second.alternatives.len(), 5);
    // Hover the second token: its five alternatives with their probabilities.
    h.get_all_by_label(&second.text).nth(1).unwrap().hover();
    h.run();
    h.step();
    let head = format!("{:?}: p = {:.3}", second.text, second.logprob.exp());
    assert!(
        h.query_by_label(&head).is_some(),
        "the tooltip heads {head}"
    );
    for (_, text, lp) in &second.alternatives {
        let shown = |l: &str| h.query_all_by_label(l).next().is_some();
        assert!(shown(&format!("{text:?}")), "{text:?}");
        assert!(shown(&format!("{:.3}", lp.exp())));
    }
    h.snapshot("token_alternatives");

    // Click it, then its third alternative: the caption continues from there.
    h.get_all_by_label(&second.text).nth(1).unwrap().click();
    h.run();
    let (alt, alt_text, alt_lp) = second.alternatives[2].clone();
    h.get_by_label(&format!("{alt_text:?} {:.2}", alt_lp.exp()))
        .click();
    h.step();
    wait_until(&mut h, "the branch", |a| {
        a.status.output.state == RunState::Done && a.status.output.caption.is_some()
    });
    let branch = h.state().status.output.caption.clone().unwrap();
    assert_eq!(branch.tokens[0].id, caption.tokens[0].id);
    assert_eq!(branch.tokens[1].id, alt);
    h.get_by_label("Back to the original").click();
    h.step();
    assert_eq!(h.state().status.output.caption.as_ref(), Some(&caption));
}

#[test]
fn a_variant_column_generates_its_own_text_and_is_kept_in_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().settings.max_new_tokens = 6;
    let a_req = h.state().build_request().unwrap();
    h.get_by_label("Duplicate as variant").click();
    h.run();
    // Edit B: the panels show it; its first example's caption changes and its last goes.
    h.get_by_label("Edit B").click();
    h.run();
    assert!(h.state().editing_variant);
    h.state_mut().ws.examples[0].text.caption = "A rocket on a launch pad.".into();
    h.state_mut().ws.examples[2].enabled = false;
    h.state_mut().mark_dirty();
    let b_req = h.state().build_request().unwrap();
    h.get_by_label("Generate both").click();
    wait_until(&mut h, "both captions", |a| {
        !a.is_running()
            && a.status.output.caption.is_some()
            && a.status.variant_output.caption.is_some()
    });
    // The panels show B: its output is `output`, A's is beside it.
    let s = &h.state().status;
    assert_eq!(s.output.raw, caption_of(&b_req));
    assert_eq!(s.variant_output.raw, caption_of(&a_req));
    assert!(h.query_by_label("A: working set").is_some());
    h.snapshot("variant_columns");

    // Saved with the set: reopened, the variant and the sweep settings come back.
    h.state_mut().ws.sweep.counts = "0,2".into();
    h.state_mut().save_working_set_now().unwrap();
    let mut h2 = harness(dir.path());
    ready(&mut h2);
    let ws = &h2.state().ws;
    assert!(!h2.state().editing_variant);
    assert_eq!(ws.examples[0].text.caption, a_req.shots[0].text.caption);
    let v = ws.variant.as_ref().expect("the variant came back");
    assert_eq!(v.examples[0].text.caption, "A rocket on a launch pad.");
    assert!(!v.examples[2].enabled);
    assert_eq!(v.sweep.counts, "0,2", "B's sweep settings");

    // Keep B: it becomes the working set.
    h.get_all_by_label("Keep this one").nth(1).unwrap().click();
    h.step();
    assert!(h.state().ws.variant.is_none() && !h.state().editing_variant);
    assert_eq!(
        h.state().ws.examples[0].text.caption,
        "A rocket on a launch pad."
    );
}

#[test]
fn what_each_example_did() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    generate_and_wait(&mut h, 6);
    h.get_by_label("What did each example do?").click();
    h.run();
    h.get_by_label("Explain the caption").click();
    wait_until(&mut h, "the ablation", |a| {
        a.status.ablation.state == RunState::Done
    });
    let ab = h.state().status.ablation.result.clone().unwrap();
    assert_eq!(ab.without.len(), 3);
    assert!(ab.reversed.is_some());
    assert!(
        (ab.logprob - h.state().status.output.caption.as_ref().unwrap().logprob()).abs() < 1e-3
    );
    h.snapshot("ablation");
    // Compare without the first example: the variant column captions the set without it.
    h.get_all_by_label("Compare without it")
        .next()
        .unwrap()
        .click();
    wait_until(&mut h, "the caption without it", |a| {
        !a.is_running() && a.status.variant_output.caption.is_some()
    });
    let v = h.state().ws.variant.as_ref().unwrap();
    assert!(!v.examples[0].enabled && v.examples[1].enabled);
}

#[test]
fn where_it_looked_follows_the_token_under_the_pointer() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    generate_and_wait(&mut h, 6);
    h.get_by_label("Where did it look?").click();
    h.run();
    h.get_by_label("Show attention").click();
    h.step();
    wait_until(&mut h, "the maps", |a| {
        a.status.attention.state == RunState::Done
    });
    let maps = h.state().status.attention.maps.clone().unwrap();
    assert_eq!(maps.tokens.len(), 6);
    assert!(h.query_by_label_contains("Token 1 ").is_some());
    let third = h.state().status.output.caption.as_ref().unwrap().tokens[2]
        .text
        .clone();
    h.get_all_by_label(&third).nth(2).unwrap().hover();
    h.run();
    assert_eq!(h.state().hovered_token, Some(2));
    assert!(h.query_by_label_contains("Token 3 ").is_some());
    h.snapshot("attention");
}

/// Rank after Generate: the caption stays in Output (it used to go back to its placeholder).
#[test]
fn ranking_keeps_the_caption() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    generate_and_wait(&mut h, 4);
    let caption = h.state().status.output.raw.clone();
    h.state_mut().ws.candidates = "a cat\nan astronaut".into();
    h.state_mut().apply(Command::Score);
    wait_until(&mut h, "the ranking", |a| {
        a.status.ranking_state == RunState::Done
    });
    assert_eq!(h.state().status.ranked.len(), 2);
    let o = &h.state().status.output;
    assert_eq!((o.state.clone(), o.raw.clone()), (RunState::Done, caption));
    assert!(o.caption.is_some());
}

/// Remove, New set and a reset of the templates can be undone (Set → Undo, Ctrl+Z).
#[test]
fn removals_and_replaced_sets_can_be_undone() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let names = |a: &FlamingoApp| -> Vec<String> {
        a.ws.examples.iter().map(|e| e.image.name.clone()).collect()
    };
    let before = names(h.state());
    let id = h.state().ws.examples[1].id;
    h.state_mut().apply(Command::RemoveExample(id));
    h.state_mut().apply(Command::NewSet);
    assert!(h.state().ws.examples.is_empty());
    h.run();
    h.get_by_label("Set").click();
    h.run();
    h.get_by_label("Undo new set").click();
    h.run();
    assert_eq!(names(h.state()).len(), 2, "back to before New");
    // Ctrl+Z with no text field focused.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    h.run();
    assert_eq!(
        names(h.state()),
        before,
        "the removed example is back, in its place"
    );
    assert!(h.state().undo_label().is_none());
}

/// Where no file dialog opens, the app says so and takes a typed path instead.
#[test]
fn without_a_file_dialog_a_path_can_be_typed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let n = h.state().ws.examples.len();
    let no_dialog = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none()
        && std::process::Command::new("zenity")
            .arg("--version")
            .output()
            .is_err();
    if no_dialog {
        // The real button: the dialog cannot open here, and the app says so.
        h.get_by_label("Add images…").click();
        wait_until(&mut h, "the message", |a| {
            a.messages.iter().any(|m| m.text.contains("No file dialog"))
        });
    } else {
        h.state_mut()
            .offer_path_entry(flamingo::app::PathFor::Images(
                flamingo::app::DropTarget::Examples,
            ));
        h.run();
    }
    let path = img("rocket.jpg").display().to_string();
    let field = h.get_by_role(egui::accesskit::Role::TextInput);
    field.focus();
    field.type_text(&path);
    h.run();
    h.get_by_label("OK").click();
    wait_until(&mut h, "the image", |a| {
        a.ws.examples.len() == n + 1 && a.loading_images == 0
    });
    assert_eq!(h.state().ws.examples[n].image.name, "rocket.jpg");
}

/// Ten generations are kept with their settings across a restart; two pinned ones show side
/// by side; the export writes one JSON line per result; a caption whose set changed is marked
/// stale.
#[test]
fn every_result_is_kept_pinned_compared_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    for i in 0..10 {
        h.state_mut().settings.max_new_tokens = 2 + i % 3;
        h.state_mut().apply(Command::Generate);
        wait_until(&mut h, "the caption", |a| {
            a.status.output.state == RunState::Done
        });
    }
    assert!(h.query_by_label("stale").is_none());
    // A caption edit makes the output stale (it stays in the history).
    h.state_mut().ws.examples[0].text.caption = "Something else.".into();
    h.state_mut().mark_dirty();
    h.run();
    assert!(h.query_by_label("stale").is_some());
    h.state_mut().save_working_set_now().unwrap();
    drop(h);

    let mut h = harness(dir.path());
    ready(&mut h);
    let history = h.state().ws.history.clone();
    assert_eq!(history.len(), 10);
    for (i, e) in history.iter().enumerate() {
        assert_eq!(
            e.generation.max_new_tokens,
            2 + i % 3,
            "entry {i}'s settings"
        );
        assert_eq!(e.examples.len(), 3);
        assert_eq!(e.source, "working set");
        assert!(!e.text.is_empty() || e.tokens > 0);
    }
    h.get_by_label("History (10)").click();
    h.run();
    let pins: Vec<_> = h.get_all_by_label("pin").collect();
    assert_eq!(pins.len(), 10);
    pins[0].click();
    h.run();
    h.get_all_by_label("pin").nth(3).unwrap().click();
    h.run();
    assert_eq!(h.state().ws.history.iter().filter(|e| e.pinned).count(), 2);
    assert!(h.query_by_label("Pinned, side by side").is_some());
    h.snapshot("history");

    // Export (no file dialog here: the typed path).
    let out = dir.path().join("history.jsonl");
    h.state_mut()
        .offer_path_entry(flamingo::app::PathFor::Export(
            flamingo::app::history::ExportFormat::Jsonl,
        ));
    h.run();
    let field = h.get_by_role(egui::accesskit::Role::TextInput);
    field.focus();
    field.type_text(&out.display().to_string());
    h.run();
    h.get_by_label("OK").click();
    h.run();
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 10);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["generation"]["max_new_tokens"].is_number() && v["model_id"].is_string());
    }
}

/// A saved set holds the decoding, the model and format, and the candidates: opening it
/// decodes as it was made (and says when the model differs).
#[test]
fn a_set_reopens_with_its_decoding_and_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let path = dir.path().join("mine.flamingo.json");
    {
        let a = h.state_mut();
        a.settings.max_new_tokens = 7;
        a.settings.generation.do_sample = true;
        a.settings.generation.temperature = 0.7;
        a.ws.candidates = "a cat\na dog".into();
        a.apply(Command::SaveSet(path.clone()));
        a.settings.max_new_tokens = 30;
        a.settings.generation = Default::default();
        a.settings.model_id = "openflamingo/OpenFlamingo-9B-vitl-mpt7b".into();
        a.ws.candidates.clear();
        a.apply(Command::OpenSet(path));
    }
    wait_until(&mut h, "the set", |a| a.loading_images == 0);
    let a = h.state();
    assert_eq!(a.settings.max_new_tokens, 7);
    assert!(a.settings.generation.do_sample);
    assert_eq!(a.settings.generation.temperature, 0.7);
    assert_eq!(a.ws.candidates, "a cat\na dog");
    assert!(
        a.messages.iter().any(|m| m
            .text
            .contains("This set was made with openflamingo/OpenFlamingo-3B")),
        "{:?}",
        a.messages
    );
}

/// What would go wrong is said before Generate: a template without `<image>`, an example
/// without a caption; too many new tokens are capped with a note instead of refused.
#[test]
fn invalid_state_is_flagged_and_max_tokens_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().ws.examples[1].text.caption.clear();
    h.state_mut().ws.caption_templates.shot = "Output:{caption}<|endofchunk|>".into();
    h.get_by_label("Prompt and templates").click();
    h.run();
    assert!(h
        .query_by_label_contains("No caption: the example goes in with an empty one.")
        .is_some());
    assert!(h
        .query_by_label_contains("<image> markers for 4 images")
        .is_some());
    h.state_mut().apply(Command::ResetTemplates);
    // The tiny model's context is 2048 tokens; with this caption the prompt takes over 100.
    h.state_mut().ws.examples[1].text.caption = "a long caption ".repeat(30);
    h.state_mut().settings.max_new_tokens = 2000;
    h.get_by_label("Generate").click();
    h.step();
    assert!(h
        .state()
        .messages
        .iter()
        .any(|m| m.text.contains("Max new tokens capped to")));
    h.step();
    h.get_by_label("Stop").click();
    wait_until(&mut h, "the stop", |a| {
        a.status.output.state != RunState::Running
    });
    assert!(!matches!(
        h.state().status.output.state,
        RunState::Failed(_)
    ));
}

/// A second window on the same data folder says so and never overwrites the first one's
/// working set; a data folder that cannot be written is reported once, the work stays.
#[test]
fn a_second_window_and_an_unwritable_folder_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = harness(dir.path());
    ready(&mut first);
    first.state_mut().ws.examples[0].text.caption = "The first window's caption.".into();
    first.state_mut().save_working_set_now().unwrap();
    let file = dir.path().join("working-set.flamingo.json");
    let saved = std::fs::read(&file).unwrap();

    let mut second = harness(dir.path());
    ready(&mut second);
    assert!(!second.state().saves_working_set());
    assert!(second
        .state()
        .messages
        .iter()
        .any(|m| m.text.contains("Another Flamingo window")));
    second.state_mut().ws.examples.clear();
    second.state_mut().mark_dirty();
    second.state_mut().save_working_set_now().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(900));
    second.run();
    assert_eq!(
        std::fs::read(&file).unwrap(),
        saved,
        "the first window's set is intact"
    );
    drop(second);
    assert!(first.state().saves_working_set());
    drop(first);

    // A data folder under a file: nothing can be written there.
    let blocker = dir.path().join("not-a-folder");
    std::fs::write(&blocker, b"x").unwrap();
    let mut h = harness(&blocker.join("data"));
    ready(&mut h);
    h.state_mut().ws.examples[0].text.caption = "Kept in memory.".into();
    h.state_mut().mark_dirty();
    wait_until(&mut h, "the autosave's report", |a| {
        a.messages
            .iter()
            .any(|m| m.text.contains("Could not save the working set"))
    });
    assert_eq!(h.state().ws.examples[0].text.caption, "Kept in memory.");
}

/// A message about something the user then fixes goes by itself; the same message twice is
/// shown once.
#[test]
fn messages_clear_when_their_cause_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let query = h.state().ws.query.clone();
    h.state_mut().apply(Command::ClearQuery);
    h.state_mut().apply(Command::Generate);
    h.state_mut().apply(Command::Generate);
    h.run();
    let count = |a: &FlamingoApp| {
        a.messages
            .iter()
            .filter(|m| m.text == "Drop a query image first.")
            .count()
    };
    assert_eq!(count(h.state()), 1);
    assert!(h.query_by_label("Drop a query image first.").is_some());
    h.state_mut().ws.query = query;
    h.run();
    assert_eq!(count(h.state()), 0);
}

#[test]
fn evaluate_shows_the_table_and_the_curve() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.state_mut().settings.max_new_tokens = 3;
    h.get_by_label("Evaluate on a labelled folder").click();
    h.run();
    let folder = fixtures().join("eval/library");
    let field = h.get_by_label("Labelled folder:");
    field.focus();
    field.type_text(&folder.display().to_string());
    h.run();
    assert_eq!(h.state().eval.folder, folder.display().to_string());
    h.state_mut().eval.shots = "0,1".into();
    h.run();
    assert_eq!(h.state().eval.shot_counts().unwrap(), vec![0, 1]);
    h.get_by_label("Evaluate").click();
    wait_until(&mut h, "the evaluation", |a| {
        a.eval
            .runs
            .first()
            .is_some_and(|r| !a.eval.is_running() && r.done == r.total)
    });
    let run = &h.state().eval.runs[0];
    assert_eq!(run.rows.len(), 20);
    let report = run.report.clone().unwrap();
    assert_eq!(report.results.len(), 2);
    assert_eq!(report, flamingo::eval::score(run.task, &run.rows));
    let first = run.rows[0].clone();
    h.run();
    // The curve's title, a row's image and prediction, and a sortable header are shown.
    h.get_by_label("CIDEr-D against shots");
    assert!(h.query_all_by_label("cat.png").count() >= 2);
    if !first.prediction.trim().is_empty() {
        assert!(h.query_all_by_label(&first.prediction).count() >= 1);
    }
    // Tall enough that the table's header is on screen.
    h.set_size(egui::vec2(1180.0, 2600.0));
    h.run();
    h.get_by_label("score").click();
    h.run();
    assert_eq!(
        h.state().eval.sort,
        flamingo::app::eval_view::EvalSort::Score
    );

    // A second run by RICES, stopped part-way: what it made is kept.
    h.get_by_label("RICES (most similar)").click();
    h.run();
    h.get_by_label("Evaluate").click();
    wait_until(&mut h, "a first row", |a| {
        a.eval.runs.len() == 2 && !a.eval.runs[1].rows.is_empty()
    });
    if h.state().eval.is_running() {
        h.get_all_by_label("Stop").next().unwrap().click();
    }
    wait_until(&mut h, "the stop", |a| !a.eval.is_running());
    let second = &h.state().eval.runs[1];
    assert!(!second.rows.is_empty());
    if second.phase == flamingo::app::eval_view::RunPhase::Stopped {
        assert!(second.rows.len() < second.total);
    }
    // Export: JSON lines with a score per row.
    let text = h.state().eval.render(false);
    assert_eq!(text.lines().count(), second.rows.len());
    assert!(text.lines().all(|l| l.contains("\"score\"")));
}

#[test]
fn examples_come_from_a_library_by_rices() {
    let f: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/rices.json")).unwrap())
            .unwrap();
    let expect = |i: usize| -> Vec<String> {
        f["queries"][i]["top4_most_similar_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    let set_query = |h: &mut Harness<'_, FlamingoApp>, name: &str| {
        h.state_mut().apply(Command::AddImages {
            sources: vec![flamingo::app::images::Source::Path(
                fixtures().join("eval/queries").join(name),
            )],
            to: flamingo::app::DropTarget::Query,
        });
    };
    set_query(&mut h, "cat_query.png");
    wait_until(&mut h, "the query", |a| {
        a.loading_images == 0
            && a.ws
                .query
                .as_ref()
                .is_some_and(|q| q.name == "cat_query.png")
    });
    let library = fixtures().join("eval/library");
    h.state_mut()
        .apply(Command::ExamplesFromLibrary(library.clone()));
    wait_until(&mut h, "the picked examples", |a| {
        a.eval.pick_job.is_none() && a.loading_images == 0 && a.ws.examples.len() == 4
    });
    let names: Vec<String> = h
        .state()
        .ws
        .examples
        .iter()
        .map(|e| e.image.name.clone())
        .collect();
    assert_eq!(names, expect(0));
    assert_eq!(
        h.state().ws.examples[3].text.caption,
        "A tabby cat looks to the left."
    );
    h.get_by_label("re-pick for each query").click();
    h.run();
    assert!(h.state().eval.follow_query);
    // A new query picks its own examples.
    set_query(&mut h, "rocket_query.png");
    wait_until(&mut h, "the re-picked examples", |a| {
        a.eval.pick_job.is_none()
            && a.loading_images == 0
            && a.ws
                .examples
                .first()
                .is_some_and(|e| e.image.name == expect(1)[0])
    });
    let names: Vec<String> = h
        .state()
        .ws
        .examples
        .iter()
        .map(|e| e.image.name.clone())
        .collect();
    assert_eq!(names, expect(1));
    // Undo brings back the examples before the pick.
    h.state_mut().apply(Command::Undo);
    h.run();
    let names: Vec<String> = h
        .state()
        .ws
        .examples
        .iter()
        .map(|e| e.image.name.clone())
        .collect();
    assert_eq!(names, expect(0));
}

fn disabled(h: &Harness<'_, FlamingoApp>, label: &str) -> bool {
    use egui_kittest::kittest::NodeT;
    h.get_by_role_and_label(egui::accesskit::Role::SpinButton, label)
        .accesskit_node()
        .is_disabled()
}

#[test]
fn the_decoding_menu_stays_open_greys_what_is_unused_and_has_beam_search() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.get_by_label("Decoding").click();
    h.run();
    // Greedy: the sampling values are there but greyed out.
    assert!(disabled(&h, "temperature"));
    h.get_by_label("sample").click();
    h.run();
    // The click did not close the menu, and the sampling values are now enabled.
    assert!(h.state().settings.generation.do_sample);
    assert!(!disabled(&h, "temperature"));
    assert!(disabled(&h, "beams"));
    h.get_by_label("beam search").click();
    h.run();
    let g = h.state().settings.generation.clone();
    assert_eq!((g.do_sample, g.num_beams), (false, 3));
    assert!(!disabled(&h, "beams"));
    assert!(disabled(&h, "top-p"));
    // Press Escape to close the menu; beam search captions as the pipeline does.
    h.key_press(egui::Key::Escape);
    h.run();
    generate_and_wait(&mut h, 5);
    let caption = h.state().status.output.caption.clone().unwrap();
    let req = h.state().build_request().unwrap();
    assert_eq!(req.generation.num_beams, 3);
    assert_eq!(caption.raw_text, caption_of(&req));
}

#[test]
fn presentation_mode_is_larger_and_hides_developer_figures() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path());
    ready(&mut h);
    h.set_size(egui::vec2(1400.0, 900.0));
    h.run();
    assert!(h.query_by_label("status").is_some());
    h.get_by_label("Present").click();
    h.run();
    assert!(h.state().settings.presentation);
    assert_eq!(h.ctx.zoom_factor(), flamingo::app::PRESENT_ZOOM);
    assert!(
        h.query_by_label("status").is_none(),
        "the status bar is hidden"
    );
    h.snapshot("presentation");
    h.key_press(egui::Key::F5);
    h.run();
    assert!(!h.state().settings.presentation);
    assert_eq!(h.ctx.zoom_factor(), 1.0);
    assert!(h.query_by_label("status").is_some());
}
