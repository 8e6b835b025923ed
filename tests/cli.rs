//! The `flamingo caption` contract, run as a user runs it: the binary, an HF cache, offline.

mod common;

use std::process::Command;

use common::*;

fn flamingo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flamingo"));
    c.env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn img(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

#[test]
fn caption_json_gives_the_reference_tokens() {
    for (set, tag) in [
        ("hf", "every1_twoshot"),
        ("hf-xattn2", "every2_twoshot"),
        ("hf", "every1_zeroshot"),
    ] {
        let info = reference_json(&format!("{tag}.json"));
        let logits = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = flamingo();
        cmd.env("HF_HOME", fixtures().join(set))
            .arg("caption")
            .arg("--json");
        for s in info["shots"].as_array().unwrap() {
            cmd.arg("--shot")
                .arg(img(s["image"].as_str().unwrap()))
                .arg(s["caption"].as_str().unwrap());
        }
        cmd.arg(img(info["query"].as_str().unwrap()))
            .arg("--max-new-tokens")
            .arg(info["max_new_tokens"].to_string())
            .arg("--logits-out")
            .arg(logits.path());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tag}: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            ids(&v["token_ids"]),
            ids(&info["generated_token_ids"]),
            "{tag}"
        );
        assert_eq!(
            ids(&v["prompt_token_ids"]),
            ids(&info["prompt_token_ids"]),
            "{tag}"
        );
        assert_eq!(v["prompt"], info["prompt"], "{tag}");
        let raw = info["generated_text"].as_str().unwrap();
        assert_eq!(v["raw_text"], raw, "{tag}");
        assert_eq!(
            v["text"].as_str().unwrap(),
            flamingo::text::prompt::answer(flamingo::text::prompt::Task::Caption, raw),
            "{tag}"
        );
        assert!(v["timings"]["prefill_s"].as_f64().unwrap() >= 0.0);

        let (shape, data) = flamingo::cli::npy::read_f32(logits.path()).unwrap();
        let steps = ids(&info["generated_token_ids"]).len();
        assert_eq!(shape, vec![steps, 50280], "{tag}: logits shape");
        let r = reference(&format!("{tag}.safetensors"));
        let want: Vec<f32> = r["step_logits"].flatten_all().unwrap().to_vec1().unwrap();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = data
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(
            err < 1e-4,
            "{tag}: --logits-out differs from the reference by {err:e}"
        );
    }
}

#[test]
fn streams_text_to_stdout() {
    let info = reference_json("every1_zeroshot.json");
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .args(["caption", "--max-new-tokens", "6"])
        .arg(img("astronaut.png"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.trim_end_matches('\n'),
        info["generated_text"].as_str().unwrap()
    );
}

#[test]
fn empty_cache_is_a_clear_error() {
    let empty = tempfile::tempdir().unwrap();
    let out = flamingo()
        .env("HF_HOME", empty.path())
        .arg("caption")
        .arg(img("astronaut.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not in the Hugging Face cache"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    // Names a repo and a file.
    assert!(
        err.contains("anas-awadalla/mpt-1b-redpajama-200b")
            || err.contains("timm/vit_large_patch14_clip_224.openai")
            || err.contains("openflamingo/OpenFlamingo-3B-vitl-mpt1b"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// Runs `flamingo ARGS…` with the fixture cache; it must fail. Returns its stderr.
fn failing(args: &[&std::ffi::OsStr]) -> String {
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_image_and_bad_template_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("query.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    let err = failing(&["caption".as_ref(), bad.as_os_str()]);
    assert!(err.contains("query.jpg"), "{err}");

    let q = img("astronaut.png");
    let err = failing(&["caption", "--zeroshot-template", "Output:", &q].map(|a| a.as_ref()));
    assert!(err.contains("<image>"), "{err}");
}

#[test]
fn prompt_past_the_context_is_refused() {
    let q = img("astronaut.png");
    let err = failing(&["caption", "--max-new-tokens", "5000", &q].map(|a| a.as_ref()));
    assert!(err.contains("context"), "{err}");
}

#[test]
fn bench_tiny_prints_json() {
    for dtype in ["f32", "q8_0"] {
        let out = Command::new(env!("CARGO_BIN_EXE_flamingo"))
            .args(["bench", "--shape", "tiny", "--tokens", "3", "--images", "1"])
            .args(["--threads", "1", "--dtype", dtype, "--repeats", "2"])
            .output()
            .unwrap();
        let v = json_stdout(&out);
        // Every timed run is listed, and the figure is one of them.
        let runs = v["cold_caption_runs_s"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{v}");
        assert!(runs.contains(&v["cold_caption_s"]), "{v}");
        let requeries = v["requery_runs_s"].as_array().unwrap();
        assert_eq!(requeries.len(), 2, "{v}");
        assert!(
            requeries.iter().all(|r| r.as_array().unwrap().len() == 3),
            "{v}"
        );
        for k in [
            "encode_s_per_image",
            "prefill_s",
            "decode_s_per_token",
            "peak_rss_bytes",
            "weights_bytes",
            "threads",
        ] {
            assert!(v[k].as_f64().is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["prompt_tokens"], 37);
        assert_eq!(v["dtype"], dtype);
        if dtype != "f32" {
            // Timed from the model written as a model cache file, loaded by a process of its own.
            assert!(v["load_s"].as_f64().is_some(), "{v}");
            let top1 = v["fidelity_vs_f32"]["top1_agreement"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&top1), "{v}");
            // Four image-and-prompt sets of 37 positions.
            assert_eq!(v["fidelity_vs_f32"]["positions"], 148, "{v}");
        }
    }
    // With nowhere to write the converted model, the bench says so and times it in process
    // (TMPDIR names the temporary folder on Unix).
    if !cfg!(unix) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .args(["bench", "--shape", "tiny", "--tokens", "2", "--images", "1"])
        .args(["--threads", "1", "--dtype", "q8_0"])
        .env("TMPDIR", not_a_dir.join("sub"))
        .output()
        .unwrap();
    let v = json_stdout(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not write the converted model"), "{err}");
    assert!(v["weights_bytes"].is_null() && v["decode_s_per_token"].as_f64().is_some());
}

fn run_json(args: &[&str]) -> serde_json::Value {
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .args(args)
        .output()
        .unwrap();
    json_stdout(&out)
}

#[test]
fn sampling_with_a_seed_is_repeatable() {
    let q = img("astronaut.png");
    let args = |seed: &str| {
        vec![
            "caption",
            "--json",
            "--do-sample",
            "--temperature",
            "3.0",
            "--top-k",
            "50",
            "--max-new-tokens",
            "8",
            "--seed",
            seed,
            q.as_str(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let a1 = args("3");
    let a2 = args("4");
    let r1 = run_json(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let r2 = run_json(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let r3 = run_json(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r1["token_ids"], r2["token_ids"]);
    assert_ne!(r1["token_ids"], r3["token_ids"]);
}

#[test]
fn vqa_prompt_from_the_command_line() {
    let v = run_json(&[
        "caption",
        "--json",
        "--task",
        "vqa",
        "--question",
        "What is she wearing?",
        "--shot",
        img("chelsea.png").as_str(),
        "What animal is this?=>a cat",
        "--max-new-tokens",
        "3",
        img("astronaut.png").as_str(),
    ]);
    assert_eq!(
        v["prompt"],
        "<image>Question:What animal is this? Short Answer:a cat<|endofchunk|><image>Question:What is she wearing? Short Answer:"
    );
    let v = run_json(&[
        "caption",
        "--json",
        "--preset",
        "open_flamingo",
        "--shot",
        img("chelsea.png").as_str(),
        "A cat.",
        "--max-new-tokens",
        "2",
        img("astronaut.png").as_str(),
    ]);
    assert_eq!(
        v["prompt"],
        "<image>Output:A cat.<|endofchunk|>\n<image>Output:"
    );
}

#[test]
fn score_ranks_candidates() {
    let info = reference_json("every1_score.json");
    let mut args: Vec<String> = vec!["score".into(), "--json".into()];
    for s in info["shots"].as_array().unwrap() {
        args.push("--shot".into());
        args.push(img(s["image"].as_str().unwrap()));
        args.push(s["caption"].as_str().unwrap().into());
    }
    args.push(img(info["query"].as_str().unwrap()));
    for c in info["candidates"].as_array().unwrap() {
        args.push("--candidate".into());
        args.push(c["candidate"].as_str().unwrap().into());
    }
    let v = run_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let ranked = v["ranked"].as_array().unwrap();
    assert_eq!(ranked.len(), 4);
    let lps: Vec<f64> = ranked
        .iter()
        .map(|r| r["logprob"].as_f64().unwrap())
        .collect();
    assert!(lps.windows(2).all(|w| w[0] >= w[1]), "best first: {lps:?}");
    // The best one is the reference's best.
    let best = info["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .max_by(|a, b| {
            let s = |c: &serde_json::Value| {
                -c["loss"].as_f64().unwrap() * c["n_tokens"].as_f64().unwrap()
            };
            s(a).total_cmp(&s(b))
        })
        .unwrap();
    assert_eq!(ranked[0]["candidate"], best["candidate"]);
}

#[test]
fn beam_search_from_the_command_line_matches_transformers() {
    let cases = reference_json("every1_beams.json");
    let c = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "twoshot" && c["length_penalty"] == -2.0)
        .unwrap();
    let mut args: Vec<String> = vec!["caption".into(), "--json".into()];
    for s in c["shots"].as_array().unwrap() {
        args.push("--shot".into());
        args.push(img(s["image"].as_str().unwrap()));
        args.push(s["caption"].as_str().unwrap().into());
    }
    args.extend(
        [
            "--num-beams",
            "3",
            "--length-penalty",
            "-2.0",
            "--max-new-tokens",
            "6",
        ]
        .map(String::from),
    );
    args.push(img("astronaut.png"));
    let v = run_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(v["token_ids"], c["sequences"][0]);
    let got = v["sequence_score"].as_f64().unwrap();
    let want = c["sequence_scores"][0].as_f64().unwrap();
    assert!((got - want).abs() / want.abs() < 1e-4, "{got} vs {want}");
}

#[test]
fn batch_prints_one_json_line_per_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(img("astronaut.png"), dir.path().join("a_astronaut.png")).unwrap();
    std::fs::copy(img("rocket.jpg"), dir.path().join("b_rocket.jpg")).unwrap();
    std::fs::write(dir.path().join("c_broken.png"), b"not an image").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .args([
            "caption",
            "--max-new-tokens",
            "6",
            "--batch-size",
            "2",
            "--batch",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    // The astronaut, zero-shot: the reference's tokens.
    let want = reference_json("every1_zeroshot.json");
    assert!(lines[0]["image"]
        .as_str()
        .unwrap()
        .ends_with("a_astronaut.png"));
    assert_eq!(lines[0]["token_ids"], want["generated_token_ids"]);
    assert!(lines[1]["token_ids"].is_array());
    assert!(lines[2]["error"].as_str().unwrap().contains("c_broken.png"));
    // One image failed: the exit code says so.
    assert!(!out.status.success());
}

#[test]
fn models_lists_the_registry_and_the_cache() {
    let v = run_json(&["models", "--json"]);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 6);
    let default = models
        .iter()
        .find(|m| m["id"] == flamingo::hub::DEFAULT_MODEL)
        .unwrap();
    assert_eq!(default["cached"], true);
    assert_eq!(default["runs"], true);
    assert!(default["bytes_on_disk"].as_u64().unwrap() > 1_000_000);
    // Every family runs; the v1 model is not in this cache.
    assert!(models.iter().all(|m| m["runs"] == true));
    let llama = models.iter().find(|m| m["family"] == "Llama").unwrap();
    assert_eq!(llama["cached"], false);
}

/// `sweep --json`: one line per count in the order given, each with `shots` and the tokens of
/// a `caption --json` run with that many examples; `--top-logprobs` adds each token's
/// alternatives; `ablate --json` gives one effect per example.
#[test]
fn sweep_and_ablate_json() {
    let shots = [
        ("chelsea.png", "A cat lying on a rug."),
        ("coffee.png", "A cup of coffee on a table."),
    ];
    let run = |cmd: &str, n: usize, extra: &[&str]| {
        let mut c = flamingo();
        c.env("HF_HOME", fixtures().join("hf"))
            .arg(cmd)
            .arg("--json");
        for (i, t) in &shots[..n] {
            c.arg("--shot").arg(img(i)).arg(t);
        }
        c.arg(img("astronaut.png"))
            .args(["--max-new-tokens", "5"])
            .args(extra);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let lines: Vec<serde_json::Value> = run("sweep", 2, &["--shots", "2,0,1"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for (line, n) in lines.iter().zip([2, 0, 1]) {
        assert_eq!(line["shots"], n);
        let alone: serde_json::Value = serde_json::from_str(&run("caption", n, &[])).unwrap();
        assert_eq!(line["token_ids"], alone["token_ids"], "{n} shots");
        assert_eq!(line["prompt"], alone["prompt"], "{n} shots");
    }

    let v: serde_json::Value =
        serde_json::from_str(&run("caption", 2, &["--top-logprobs", "3"])).unwrap();
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), v["token_ids"].as_array().unwrap().len());
    let mut sum = 0.0;
    for t in tokens {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let best = top[0]["logprob"].as_f64().unwrap();
        assert!(
            t["logprob"].as_f64().unwrap() <= best + 1e-6,
            "greedy takes the best"
        );
        sum += t["logprob"].as_f64().unwrap();
    }
    assert!((sum - v["logprob"].as_f64().unwrap()).abs() < 1e-3);

    let a: serde_json::Value = serde_json::from_str(&run("ablate", 2, &[])).unwrap();
    assert_eq!(a["examples"].as_array().unwrap().len(), 2);
    assert!(a["reversed"]["effect"].is_number());
    assert_eq!(a["token_ids"], v["token_ids"], "the caption it explains");

    // A count past the examples is refused before the model loads.
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .args(["sweep", "--shots", "3"])
        .arg(img("astronaut.png"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3-shot"), "{err}");
}

/// `bench-stop` stops a caption, a beam search and a scoring in each phase and runs a request
/// after each stop (on the tiny model its phases are short; the figures come from full-size
/// runs, docs/performance.md).
#[test]
fn bench_stop_reports_every_phase() {
    let out = flamingo()
        .env("HF_HOME", fixtures().join("hf"))
        .arg("bench-stop")
        .arg("--shot")
        .arg(img("chelsea.png"))
        .arg("A cat.")
        .arg(img("astronaut.png"))
        .args(["--max-new-tokens", "8", "--points", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json_stdout(&out);
    let phases = v["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "image encoding",
            "prompt",
            "decoding",
            "beam search",
            "scoring"
        ]
    );
    for p in phases {
        assert!(p["worst_ms"].as_f64().unwrap() >= 0.0);
    }
}
