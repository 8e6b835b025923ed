//! `flamingo eval` as a user runs it: the binary, the tiny model from an HF cache, offline.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn flamingo(cache: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flamingo"));
    c.env_remove("HF_HUB_CACHE")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", fixtures().join("hf"))
        .env("FLAMINGO_CACHE_DIR", cache)
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sorted(mut v: Vec<Value>) -> Vec<String> {
    let mut s: Vec<String> = v.drain(..).map(|x| x.to_string()).collect();
    s.sort();
    s
}

#[test]
fn eval_writes_predictions_scores_them_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("preds.jsonl");
    let library = fixtures().join("eval/library");
    let run = |extra: &[&str]| {
        let o = flamingo(dir.path())
            .args(["eval", "--data"])
            .arg(&library)
            .args([
                "--shots",
                "0,1,2",
                "--max-new-tokens",
                "4",
                "--json",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            json_stdout(&o),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (full, _) = run(&[]);
    assert_eq!(full["metric"], "cider_d");
    let results = full["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (r, k) in results.iter().zip([0, 1, 2]) {
        assert_eq!(r["shots"], k);
        assert_eq!(r["n"], 10);
        assert!(r["score"].as_f64().unwrap() >= 0.0);
    }
    let all = lines(&out);
    assert_eq!(all.len(), 30);
    for l in &all {
        let k = l["shots"].as_u64().unwrap() as usize;
        assert_eq!(l["examples"].as_array().map_or(0, |e| e.len()), k);
        // Never the query's own image as its example.
        if let Some(ex) = l["examples"].as_array() {
            assert!(ex.iter().all(|e| e != &l["image"]));
        }
        assert!(!l["references"].as_array().unwrap().is_empty());
    }

    // Killed while writing line 13: the cut line is dropped and the run goes on from there.
    let text = std::fs::read_to_string(&out).unwrap();
    let cut: usize = text.match_indices('\n').nth(11).unwrap().0 + 1;
    let half = cut + (text[cut..].find('\n').unwrap() / 2);
    std::fs::write(&out, &text[..half]).unwrap();
    let (resumed, stderr) = run(&[]);
    assert!(
        stderr.contains("Resuming") && stderr.contains("12 predictions"),
        "{stderr}"
    );
    assert!(stderr.contains("18 predictions in"), "{stderr}");
    assert_eq!(resumed, full);
    assert_eq!(sorted(lines(&out)), sorted(all.clone()));

    // Killed for real part-way through: run again, same file, same result.
    std::fs::remove_file(&out).unwrap();
    let mut child = flamingo(dir.path())
        .args(["eval", "--data"])
        .arg(&library)
        .args([
            "--shots",
            "0,1,2",
            "--max-new-tokens",
            "4",
            "--json",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        let n = std::fs::read_to_string(&out).map_or(0, |t| t.lines().count());
        if n >= 5 || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let (again, _) = run(&[]);
    assert_eq!(again, full);
    assert_eq!(sorted(lines(&out)), sorted(all));

    // The same predictions scored without a model.
    let o = flamingo(dir.path())
        .args(["eval", "--data"])
        .arg(&library)
        .arg("--predictions")
        .arg(&out)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(json_stdout(&o), full);
}

/// Rescoring a predictions file without shot counts gives pycocoevalcap's CIDEr-D from raw
/// text (the fixture's 60 images, 5 references each), with "shots": null.
#[test]
fn eval_rescores_predictions_like_pycocoevalcap() {
    let f: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/cider.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let png = std::fs::read(fixtures().join("eval/library/cat.png")).unwrap();
    let mut labels = String::new();
    let mut preds = String::new();
    for im in f["images"].as_array().unwrap() {
        let name = format!("img{}.png", im["id"]);
        std::fs::write(dir.path().join(&name), &png).unwrap();
        labels.push_str(&format!(
            "{}\n",
            serde_json::json!({"file": name, "captions": im["refs"]})
        ));
        preds.push_str(&format!(
            "{}\n",
            serde_json::json!({"image": name, "prediction": im["prediction"]})
        ));
    }
    std::fs::write(dir.path().join("captions.jsonl"), labels).unwrap();
    let p = dir.path().join("mine.jsonl");
    std::fs::write(&p, preds).unwrap();
    let o = flamingo(dir.path())
        .args(["eval", "--data"])
        .arg(dir.path())
        .arg("--predictions")
        .arg(&p)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json_stdout(&o);
    assert_eq!(r["results"][0]["shots"], Value::Null);
    assert_eq!(r["results"][0]["n"], 60);
    let ours = r["results"][0]["score"].as_f64().unwrap();
    let theirs = f["cider"].as_f64().unwrap();
    assert!((ours - theirs).abs() < 1e-6, "{ours} vs {theirs}");

    // One image: a warning, not a silent 0.
    let one = dir.path().join("one.jsonl");
    std::fs::write(
        &one,
        "{\"image\": \"img0.png\", \"prediction\": \"a dog\"}\n",
    )
    .unwrap();
    let o = flamingo(dir.path())
        .args(["eval", "--data"])
        .arg(dir.path())
        .arg("--predictions")
        .arg(&one)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: CIDEr-D over 1 image"));
}

#[test]
fn eval_vqa_with_rices_examples() {
    let dir = tempfile::tempdir().unwrap();
    let lib = fixtures().join("eval/library");
    let mut csv = String::from("file,question,answers\n");
    for (f, q, a) in [
        ("cat.png", "What animal is this?", "cat|cat|kitten"),
        ("coffee.png", "What is in the cup?", "coffee|coffee|tea"),
        ("rocket.png", "What is this?", "rocket|rocket|a rocket"),
        (
            "astronaut.png",
            "Who is this?",
            "astronaut|an astronaut|woman",
        ),
    ] {
        std::fs::copy(lib.join(f), dir.path().join(f)).unwrap();
        csv.push_str(&format!("{f},{q},{a}\n"));
    }
    std::fs::write(dir.path().join("captions.csv"), csv).unwrap();
    let out = dir.path().join("vqa.jsonl");
    let o = flamingo(dir.path())
        .args(["eval", "--data"])
        .arg(dir.path())
        .args(["--examples", "rices", "--library"])
        .arg(&lib)
        .args(["--shots", "0,2", "--json", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = json_stdout(&o);
    assert_eq!(r["metric"], "vqa_accuracy");
    assert_eq!(r["results"].as_array().unwrap().len(), 2);
    // RICES from the library: the query's own image (same content) is never its example.
    for l in BufReader::new(std::fs::File::open(&out).unwrap()).lines() {
        let l: Value = serde_json::from_str(&l.unwrap()).unwrap();
        assert!(l["question"].is_string());
        for e in l["examples"].as_array().into_iter().flatten() {
            assert_ne!(e, &l["image"]);
        }
    }

    // A folder that is not labelled: one clear error.
    let o = flamingo(dir.path())
        .args(["eval", "--data", "/no/such/folder"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/folder: no such folder"));
}

/// `caption --rices DIR --shots K`: the prompt holds the K library examples open_flamingo's
/// RICES picks (tests/fixtures/eval/rices.json), most similar last, with their first captions.
#[test]
fn caption_takes_its_examples_by_rices() {
    let dir = tempfile::tempdir().unwrap();
    let f: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("eval/rices.json")).unwrap())
            .unwrap();
    let lib = fixtures().join("eval/library");
    let captions: std::collections::HashMap<String, String> =
        std::fs::read_to_string(lib.join("captions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["file"].as_str().unwrap().to_string(),
                    v["captions"][0].as_str().unwrap().to_string(),
                )
            })
            .collect();
    for q in f["queries"].as_array().unwrap() {
        let o = flamingo(dir.path())
            .arg("caption")
            .arg(
                fixtures()
                    .join("eval/queries")
                    .join(q["file"].as_str().unwrap()),
            )
            .arg("--rices")
            .arg(&lib)
            .args(["--shots", "3", "--json", "--max-new-tokens", "2"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let prompt = json_stdout(&o)["prompt"].as_str().unwrap().to_string();
        let expected: String = q["top4_most_similar_last"].as_array().unwrap()[1..]
            .iter()
            .map(|n| {
                format!(
                    "<image>Output:{}<|endofchunk|>",
                    captions[n.as_str().unwrap()]
                )
            })
            .collect::<String>()
            + "<image>Output:";
        assert_eq!(prompt, expected);
    }
}
