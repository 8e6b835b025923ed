//! A generated bad-input corpus, run against the entry points the app and the CLI use: every
//! image format truncated at many lengths and with flipped bytes, garbled prompt sets, and
//! weight files (safetensors, GGUF, torch zip) cut short or with flipped header bytes. Each
//! input must end in Ok or in an error that names the thing; none may panic or abort. The
//! mutations are seeded, so a failure names an input that can be made again.

mod common;

use common::*;
use flamingo::image::decode_rgb;

/// SplitMix64, for seeded mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `bytes` cut at `cuts` lengths and with 1–8 bytes flipped in `flips` seeded ways.
fn mutations(bytes: &[u8], cuts: usize, flips: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![("empty".to_string(), Vec::new())];
    for i in 1..=cuts {
        let n = bytes.len() * i / (cuts + 1);
        out.push((format!("cut at {n}"), bytes[..n].to_vec()));
    }
    let mut rng = Rng(seed);
    for k in 0..flips {
        let mut b = bytes.to_vec();
        let count = 1 + rng.below(8);
        // Half of them in the first 512 bytes, where the headers are.
        let span = if k % 2 == 0 {
            b.len().min(512)
        } else {
            b.len()
        };
        for _ in 0..count {
            let at = rng.below(span);
            b[at] ^= 1 << rng.below(8);
        }
        out.push((format!("{count} flips, seed {seed}/{k}"), b));
    }
    out
}

fn encode(img: &image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
    let mut c = std::io::Cursor::new(Vec::new());
    img.write_to(&mut c, fmt).unwrap();
    c.into_inner()
}

#[test]
fn mutated_images_end_in_ok_or_a_named_error() {
    let base = decode_rgb(
        &std::fs::read(fixtures().join("images").join("synth_97x61_upscale.png")).unwrap(),
        "x.png",
    )
    .unwrap();
    let img = image::DynamicImage::ImageRgb8(base);
    let mut originals: Vec<(&str, Vec<u8>)> = vec![
        (
            "rocket.jpg",
            std::fs::read(fixtures().join("images").join("rocket.jpg")).unwrap(),
        ),
        ("synth.png", encode(&img, image::ImageFormat::Png)),
        ("synth.gif", encode(&img, image::ImageFormat::Gif)),
        ("synth.bmp", encode(&img, image::ImageFormat::Bmp)),
        ("synth.webp", encode(&img, image::ImageFormat::WebP)),
    ];
    originals.push((
        "alpha.png",
        std::fs::read(fixtures().join("images").join("synth_alpha_320x240.png")).unwrap(),
    ));
    let (mut tried, mut ok) = (0, 0);
    for (seed, (name, bytes)) in originals.iter().enumerate() {
        for (what, b) in mutations(bytes, 12, 30, seed as u64) {
            tried += 1;
            match std::panic::catch_unwind(|| decode_rgb(&b, name)) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => assert!(e.to_string().contains(name), "{name} ({what}): {e}"),
                Err(_) => panic!("{name} ({what}): the decoder panicked"),
            }
        }
    }
    eprintln!(
        "{tried} mutated images: {ok} decoded, {} refused",
        tried - ok
    );
    assert!(tried >= 250);
}

#[test]
fn garbled_prompt_sets_are_refused_without_panicking() {
    let good = flamingo::app::samples::sample_set_json();
    assert!(flamingo::app::state::set_from_json(&good).is_ok());
    let mut cases: Vec<(String, String)> = mutations(good.as_bytes(), 20, 30, 99)
        .into_iter()
        .map(|(w, b)| (w, String::from_utf8_lossy(&b).into_owned()))
        .collect();
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = v.clone();
        f(&mut v);
        v.to_string()
    };
    cases.extend([
        (
            "wrong type: examples".into(),
            with(&|v| v["examples"] = 3.into()),
        ),
        (
            "wrong type: task".into(),
            with(&|v| v["task"] = "Poetry".into()),
        ),
        (
            "undecodable image".into(),
            with(&|v| v["examples"][0]["image"]["data"] = "!!".into()),
        ),
        (
            "missing image".into(),
            with(&|v| {
                v["examples"][0].as_object_mut().unwrap().remove("image");
            }),
        ),
        ("newer version".into(), with(&|v| v["version"] = 99.into())),
        ("another format".into(), with(&|v| v["format"] = "x".into())),
        ("not JSON".into(), "\u{0}\u{1}binary".into()),
    ]);
    let mut refused = 0;
    for (what, text) in &cases {
        match std::panic::catch_unwind(|| flamingo::app::state::set_from_json(text)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                refused += 1;
                assert!(!e.is_empty(), "{what}");
            }
            Err(_) => panic!("{what}: the reader panicked"),
        }
    }
    eprintln!("{} garbled sets: {refused} refused", cases.len());
    // Unknown future fields are read (and ignored), not refused.
    let future = with(&|v| v["a_field_from_the_future"] = 1.into());
    assert!(flamingo::app::state::set_from_json(&future).is_ok());
}

#[test]
fn mutated_weight_files_are_refused_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fixtures().join("hf").join("hub");
    let find = |repo: &str, file: &str| {
        let snaps = hub
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("snapshots");
        let snap = std::fs::read_dir(snaps)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read(snap.join(file)).unwrap()
    };
    let st = find(
        "timm/vit_large_patch14_clip_224.openai",
        "open_clip_model.safetensors",
    );
    let pt = find("openflamingo/OpenFlamingo-3B-vitl-mpt1b", "checkpoint.pt");
    let mut tried = 0;
    for (kind, bytes) in [("safetensors", &st), ("pt", &pt)] {
        for (what, b) in mutations(bytes, 10, 20, 7) {
            tried += 1;
            let path = dir.path().join(format!("w.{kind}"));
            std::fs::write(&path, &b).unwrap();
            let r = std::panic::catch_unwind(|| -> Result<usize, String> {
                match kind {
                    "safetensors" => {
                        let s = flamingo::store::safetensors::LazySafetensors::open(&path)
                            .map_err(|e| e.to_string())?;
                        s.read_all().map(|t| t.len()).map_err(|e| e.to_string())
                    }
                    _ => flamingo::store::pickle::read_tensor_file(&path)
                        .map(|t| t.len())
                        .map_err(|e| e.to_string()),
                }
            });
            match r {
                Ok(Ok(_)) | Ok(Err(_)) => {}
                Err(_) => panic!("{kind} ({what}): the reader panicked"),
            }
        }
    }
    eprintln!("{tried} mutated weight files: no panic");
}

/// A `checkpoint.pt` with one flipped byte inside a tensor's data is refused (its zip entry's
/// CRC-32 no longer matches), naming the file and the entry.
#[test]
fn a_checkpoint_with_a_flipped_byte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let snaps =
        fixtures().join("hf/hub/models--openflamingo--OpenFlamingo-3B-vitl-mpt1b/snapshots");
    let snap = std::fs::read_dir(snaps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = std::fs::read(snap.join("checkpoint.pt")).unwrap();
    assert!(flamingo::store::pickle::verify_zip(&snap.join("checkpoint.pt")).is_ok());
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    let path = dir.path().join("checkpoint.pt");
    std::fs::write(&path, &b).unwrap();
    let err = flamingo::store::pickle::read_tensor_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoint.pt") && err.contains("damaged"),
        "{err}"
    );
}
