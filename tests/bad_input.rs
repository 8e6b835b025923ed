//! Bad input that must end in a clear error, never an abort or an unbounded allocation: image
//! headers that claim huge dimensions (decompression bombs) in every format the decoder
//! reads, refused from the header with the limit in the message, through the entry points
//! the app (the image thread's decode) and the CLI (`caption`) use.

mod common;

use common::*;
use flamingo::image::{decode_rgb, MAX_PIXELS};

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

/// A real PNG whose IHDR says `w`×`h` (CRC fixed, so only the size is wrong).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut b = fixture("coffee.png");
    // Signature (8), length (4), "IHDR" (4), then width and height.
    assert_eq!(&b[12..16], b"IHDR");
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A real JPEG whose start-of-frame says `w`×`h`.
fn jpeg_claiming(w: u16, h: u16) -> Vec<u8> {
    let mut b = fixture("rocket.jpg");
    let sof = (0..b.len() - 1)
        .find(|&i| b[i] == 0xFF && (0xC0..=0xC2).contains(&b[i + 1]))
        .unwrap();
    // Marker (2), length (2), precision (1), height (2), width (2).
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// A GIF whose logical screen is 65535×65535 with one 1×1 frame.
fn gif_claiming_screen() -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend(65535u16.to_le_bytes());
    b.extend(65535u16.to_le_bytes());
    b.extend([0x80, 0, 0]); // a global colour table of 2 entries
    b.extend([0, 0, 0, 255, 255, 255]);
    b.extend([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // image descriptor: 1×1 at 0,0
    b.extend([2, 2, 0x44, 0x01, 0]); // LZW min code size 2, one sub-block, end
    b.push(0x3B);
    b
}

/// A BMP header claiming `w`×`h` at 24 bits with a few bytes of pixels.
fn bmp_claiming(w: i32, h: i32) -> Vec<u8> {
    let mut b = b"BM".to_vec();
    b.extend(70u32.to_le_bytes());
    b.extend([0, 0, 0, 0]);
    b.extend(54u32.to_le_bytes());
    b.extend(40u32.to_le_bytes());
    b.extend(w.to_le_bytes());
    b.extend(h.to_le_bytes());
    b.extend(1u16.to_le_bytes());
    b.extend(24u16.to_le_bytes());
    b.extend([0u8; 24]);
    b.extend([0u8; 16]);
    b
}

/// A lossless WebP (VP8L) whose header says `w`×`h` (each at most 16384).
fn webp_claiming(w: u32, h: u32) -> Vec<u8> {
    let bits = (w - 1) | ((h - 1) << 14);
    let mut chunk = b"VP8L".to_vec();
    chunk.extend(8u32.to_le_bytes());
    chunk.push(0x2f);
    chunk.extend(bits.to_le_bytes());
    chunk.extend([0, 0, 0]);
    let mut b = b"RIFF".to_vec();
    b.extend((4 + chunk.len() as u32).to_le_bytes());
    b.extend(b"WEBP");
    b.extend(chunk);
    b
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("png-100000x100000.png", png_claiming(100_000, 100_000)),
        ("png-20000x20000.png", png_claiming(20_000, 20_000)),
        ("jpeg-60000x60000.jpg", jpeg_claiming(60_000, 60_000)),
        ("gif-65535-screen.gif", gif_claiming_screen()),
        ("bmp-60000x60000.bmp", bmp_claiming(60_000, 60_000)),
    ];
    for (name, bytes) in &cases {
        let err = decode_rgb(bytes, name).unwrap_err().to_string();
        assert!(err.contains(name), "{name}: {err}");
        assert!(
            err.contains(&MAX_PIXELS.to_string()),
            "{name}: the limit is in the message: {err}"
        );
    }
    // WebP's decoder checks its header against the chunk sizes before we see the dimensions:
    // an error either way, never an allocation.
    let err = decode_rgb(&webp_claiming(16_384, 16_384), "huge.webp").unwrap_err();
    assert!(err.to_string().contains("huge.webp"), "{err}");
    // Under the limit a lying header is still an error, not an abort.
    let err = decode_rgb(&png_claiming(9000, 9000), "big.png").unwrap_err();
    assert!(err.to_string().contains("big.png"), "{err}");
}

/// `caption` with a bomb among the examples: a clear error naming the file, exit status 1, no
/// abort.
#[test]
fn the_cli_refuses_a_bomb_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("huge.png");
    std::fs::write(&bomb, png_claiming(100_000, 100_000)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", fixtures().join("hf"))
        .arg("caption")
        .arg("--shot")
        .arg(&bomb)
        .arg("A cat.")
        .arg(fixtures().join("images").join("rocket.jpg"))
        .args(["--max-new-tokens", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("huge.png") && err.contains("pixels"), "{err}");
}

fn caption_cli(extra: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", fixtures().join("hf"))
        .env("RUST_BACKTRACE", "1")
        .arg("caption")
        .arg(fixtures().join("images").join("rocket.jpg"))
        .args(["--max-new-tokens", "2"])
        .args(extra)
        .output()
        .unwrap()
}

/// Temperatures that would overflow the scores (or make every token equal) are refused with
/// the range; so are other decoding values that are not numbers.
#[test]
fn extreme_decoding_values_are_refused() {
    for t in ["1e-30", "0", "1e30", "NaN", "inf"] {
        let out = caption_cli(&["--do-sample", "--temperature", t]);
        assert_eq!(out.status.code(), Some(1), "temperature {t}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("temperature must be between 0.01 and 100"),
            "{t}: {err}"
        );
        assert!(!err.contains("stack backtrace"), "{err}");
    }
    let out = caption_cli(&["--repetition-penalty", "NaN"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("repetition_penalty"));
    // A temperature in range is fine.
    assert!(caption_cli(&["--do-sample", "--temperature", "0.7"])
        .status
        .success());
}

/// Logits that are not numbers (damaged weights) are a clear error, never a caption.
#[test]
fn non_finite_logits_are_an_error() {
    use flamingo::generate::{decode, GenerateOptions, Generated};
    let c = flamingo::pipeline::Captioner::load_from(
        &hub("hf"),
        flamingo::hub::DEFAULT_MODEL,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let latents = candle_core::Tensor::zeros(
        (1, 1, 64, 64),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut s = c.model.session(&latents).unwrap();
    let prompt = vec![c.tokenizer.media_id, 500, 501];
    let logits = s.forward(std::slice::from_ref(&prompt)).unwrap();
    let nan = (logits * f64::NAN).unwrap();
    let err = decode(
        &mut s,
        &nan,
        &prompt,
        &GenerateOptions {
            eos_id: c.tokenizer.eoc_id,
            config: flamingo::generate::GenerationConfig {
                max_new_tokens: 3,
                ..Default::default()
            },
            ..Default::default()
        },
        &std::sync::atomic::AtomicBool::new(false),
        &mut |_| {},
        &mut Generated::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, flamingo::Error::NotFinite { step: 0 }),
        "{err}"
    );
    assert!(err.to_string().contains("not a number"), "{err}");
}

/// A full standard output is an error with a message (no panic); an absurd thread variable is
/// replaced with a warning.
#[test]
#[cfg(unix)]
fn full_stdout_and_absurd_threads() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flamingo"))
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1000000")
        .arg("models")
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write to standard output"), "{err}");
    assert!(err.contains("RAYON_NUM_THREADS=1000000"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A copy of the tiny model's hub cache (files copied, links followed) to damage.
fn hub_copy(dir: &std::path::Path) -> std::path::PathBuf {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let target = to.join(e.file_name());
            if p.is_dir() {
                copy(&p, &target);
            } else {
                std::fs::copy(&p, &target).unwrap();
            }
        }
    }
    let hub = dir.join("hub");
    copy(&hub_dir(), &hub);
    hub
}

fn hub_dir() -> std::path::PathBuf {
    fixtures().join("hf").join("hub")
}

/// A tokenizer.json that lost one of its added tokens would give `<image>` another id than
/// the model learned: refused, naming the file.
#[test]
fn a_tokenizer_that_does_not_match_the_embedding_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_copy(dir.path());
    let snaps = hub.join("models--anas-awadalla--mpt-1b-redpajama-200b/snapshots");
    let snap = std::fs::read_dir(&snaps)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let path = snap.join("tokenizer.json");
    let mut t: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    t["added_tokens"].as_array_mut().unwrap().pop();
    std::fs::write(&path, t.to_string()).unwrap();
    let err = flamingo::pipeline::Captioner::load_from(
        &hub,
        flamingo::hub::DEFAULT_MODEL,
        &candle_core::Device::Cpu,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("50279") && err.contains("50280"),
        "{err}"
    );
}

/// A truncated JPEG is refused (PIL's "image file is truncated"), not captioned from the grey
/// rows libjpeg fills in; data after the end-of-image marker is fine.
#[test]
fn truncated_jpegs_are_refused() {
    let full = fixture("rocket.jpg");
    for cut in [full.len() / 2, full.len() - 2] {
        let err = decode_rgb(&full[..cut], "cut.jpg").unwrap_err().to_string();
        assert!(
            err.contains("cut.jpg") && err.contains("truncated"),
            "{cut}: {err}"
        );
    }
    let mut trailing = full.clone();
    trailing.extend(b"trailing bytes a camera appended");
    let a = decode_rgb(&full, "a.jpg").unwrap();
    let b = decode_rgb(&trailing, "b.jpg").unwrap();
    assert_eq!(a.as_raw(), b.as_raw());
    // Every fixture JPEG still decodes.
    for name in ["rocket.jpg", "synth_333x500.jpg", "synth_exif_rot6.jpg"] {
        decode_rgb(&fixture(name), name).unwrap();
    }
}
