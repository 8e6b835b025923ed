//! The converted-weights cache: pickled files (`pytorch_model.bin`, `checkpoint.pt`) are
//! unpickled once and kept as safetensors in the app's cache, keyed by their blob; later
//! loads read the copy, give the same model, and a changed source is converted again.
//! Run with `--nocapture` for the timings.

mod common;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use candle_core::Device;
use common::*;
use flamingo::hub::{registry, resolve_in};
use flamingo::pipeline::Captioner;
use flamingo::store::converted::{ConvertCache, Source};
use flamingo::store::read_tensor_file;
use flamingo::types::WeightFormat;

fn tokens(c: &Captioner) -> Vec<u32> {
    c.caption(
        &caption_request(&[], "astronaut.png", 5),
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap()
    .generated
    .tokens
}

fn load(hub_dir: &Path, convert: &Path) -> (Captioner, f64) {
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(hub_dir, spec).unwrap();
    let t0 = Instant::now();
    let c = Captioner::from_files_with(
        spec,
        files,
        &Device::Cpu,
        WeightFormat::F32,
        Some(ConvertCache::new(convert)),
    )
    .unwrap();
    (c, t0.elapsed().as_secs_f64())
}

fn entries(dir: &Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == ext))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn pickled_weights_are_converted_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let convert = dir.path().join("converted");
    let (first, t_first) = load(&hub("hf"), &convert);
    // pytorch_model.bin and checkpoint.pt are converted; the CLIP file is safetensors already.
    assert_eq!(entries(&convert, "safetensors"), 2);
    assert_eq!(entries(&convert, "json"), 2);
    let (second, t_second) = load(&hub("hf"), &convert);
    assert_eq!(tokens(&first), tokens(&second));
    // The model alone, best of five: from the converted copies, and from the pickles read
    // entry by entry with no converted copy.
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(&hub("hf"), spec).unwrap();
    let media = flamingo::text::TextTokenizer::from_file(&files.tokenizer)
        .unwrap()
        .media_id;
    let best_load = |convert: Option<ConvertCache>| {
        (0..5)
            .map(|_| {
                let t0 = Instant::now();
                flamingo::store::build::load_as(
                    &files,
                    media,
                    &Device::Cpu,
                    WeightFormat::F32,
                    convert.as_ref(),
                )
                .unwrap();
                t0.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let t_copy = best_load(Some(ConvertCache::new(&convert)));
    let t_pickle = best_load(None);
    eprintln!(
        "load: first (unpickle + convert) {t_first:.3} s, second (converted copy) {t_second:.3} s; model only, best of 5: converted copies {t_copy:.4} s, pickles {t_pickle:.4} s"
    );

    // The file-level figures (best of five): reading each pickled file against reading its
    // converted copy; and the copy holds the same tensors.
    let cache = ConvertCache::new(&convert);
    let best = |f: &dyn Fn() -> f64| (0..5).map(|_| f()).fold(f64::MAX, f64::min);
    let time = |f: &dyn Fn()| {
        let t0 = Instant::now();
        f();
        t0.elapsed().as_secs_f64()
    };
    for f in [&files.checkpoint, &files.lm_weights[0]] {
        let t_orig = best(&|| time(&|| drop(read_tensor_file(&f.path).unwrap())));
        let t_copy = best(&|| time(&|| drop(cache.read(&f.path, read_tensor_file).unwrap())));
        let original = read_tensor_file(&f.path).unwrap();
        let (copy, src) = cache.read(&f.path, read_tensor_file).unwrap();
        assert_eq!(src, Source::Converted);
        assert_eq!(original.len(), copy.len());
        for (name, t) in &original {
            let (_, c) = copy.iter().find(|(n, _)| n == name).unwrap();
            assert_eq!(t.dims(), c.dims(), "{name}");
            assert_eq!(t.dtype(), c.dtype(), "{name}");
            let same = t
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
                .ne(&c
                    .flatten_all()
                    .unwrap()
                    .to_dtype(candle_core::DType::F64)
                    .unwrap())
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert_eq!(same, 0.0, "{name} differs in the converted copy");
        }
        eprintln!(
            "{}: unpickle {t_orig:.3} s, converted copy {t_copy:.3} s ({:.1}x)",
            f.label,
            t_orig / t_copy.max(1e-9)
        );
    }
}

#[test]
fn a_changed_or_damaged_source_is_converted_again() {
    let dir = tempfile::tempdir().unwrap();
    let convert = ConvertCache::new(dir.path().join("converted"));
    // A pickled file outside the hub layout is keyed by path, size and time.
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(&hub("hf"), spec).unwrap();
    let src = dir.path().join("checkpoint.pt");
    std::fs::copy(&files.checkpoint.path, &src).unwrap();
    let (_, s1) = convert.read(&src, read_tensor_file).unwrap();
    let (_, s2) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!((s1, s2), (Source::Original, Source::Converted));

    // Another file in its place (the fixture LM weights): a new key, a new conversion, and
    // the tensors of the new file.
    let key1 = ConvertCache::key(&src).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(&files.lm_weights[0].path, &src).unwrap();
    let key2 = ConvertCache::key(&src).unwrap();
    assert_ne!(key1, key2);
    let (t, s3) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!(s3, Source::Original);
    assert!(t.iter().any(|(n, _)| n.contains("transformer.blocks")));

    // A damaged copy is not trusted: the source is read again and the copy rewritten.
    let copy = convert.dir.join(format!("{key2}.safetensors"));
    cut_to(&copy, 2);
    let (_, s4) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!(s4, Source::Original);
    let (_, s5) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!(s5, Source::Converted);

    // One flipped byte in the copy's tensor data (its header still parses): the kept CRC-32
    // catches it, the source is read again, and the tensors are the source's.
    let mut bytes = std::fs::read(&copy).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x40;
    std::fs::write(&copy, &bytes).unwrap();
    let (t6, s6) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!(s6, Source::Original);
    let original = read_tensor_file(&src).unwrap();
    for ((n1, a), (n2, b)) in t6.iter().zip(original.iter()) {
        assert_eq!(n1, n2);
        let f = |t: &candle_core::Tensor| {
            t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(f(a), f(b), "{n1}");
    }
    let (_, s7) = convert.read(&src, read_tensor_file).unwrap();
    assert_eq!(s7, Source::Converted);
}

fn load_as(hub_dir: &Path, convert: &Path, fmt: WeightFormat) -> (Captioner, f64) {
    load_with(hub_dir, Some(convert), fmt)
}

/// Loads in `fmt`, with the app's caches in `convert` (None: no caches, converted in memory).
fn load_with(hub_dir: &Path, convert: Option<&Path>, fmt: WeightFormat) -> (Captioner, f64) {
    let spec = registry::find(registry::DEFAULT_MODEL).unwrap();
    let files = resolve_in(hub_dir, spec).unwrap();
    let t0 = Instant::now();
    let c = Captioner::from_files_with(
        spec,
        files,
        &Device::Cpu,
        fmt,
        convert.map(ConvertCache::new),
    )
    .unwrap();
    (c, t0.elapsed().as_secs_f64())
}

fn models(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("models"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    v.sort();
    v
}

#[test]
fn quantized_models_are_kept_per_format_and_reload_identically() {
    let dir = tempfile::tempdir().unwrap();
    let convert = dir.path().join("converted");
    let mut n = 0;
    for fmt in [WeightFormat::Q8_0, WeightFormat::Q4K, WeightFormat::F16] {
        // No cached model: built from the weight files, quantized as read, then kept.
        let (fresh, t_fresh) = load_as(&hub("hf"), &convert, fmt);
        n += 1;
        let files = models(dir.path());
        assert_eq!(files.len(), n, "{files:?}");
        assert!(files.iter().any(|p| p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(fmt.name())));
        // From the kept model (the first load, too, goes on with the kept file): the same
        // tokens as the model converted in memory with no caches at all.
        let (cached, t_cached) = load_as(&hub("hf"), &convert, fmt);
        let (in_memory, _) = load_with(&hub("hf"), None, fmt);
        assert_eq!(tokens(&fresh), tokens(&cached), "{fmt:?}");
        assert_eq!(tokens(&in_memory), tokens(&cached), "{fmt:?}");
        assert_eq!(cached.model.weight_format(), fmt);
        eprintln!(
            "{}: first load {t_fresh:.3} s, from the kept model {t_cached:.3} s",
            fmt.name()
        );
    }
    // A damaged kept model is not used: the model is rebuilt (same tokens) and kept again.
    let q8 = models(dir.path())
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("q8_0"))
        .unwrap();
    let len = cut_to(&q8, 3);
    let (rebuilt, _) = load_as(&hub("hf"), &convert, WeightFormat::Q8_0);
    let (plain, _) = load_as(&hub("hf"), &dir.path().join("other"), WeightFormat::Q8_0);
    assert_eq!(tokens(&rebuilt), tokens(&plain));
    assert_eq!(std::fs::metadata(&q8).unwrap().len(), len);
}

/// Truncates the file to 1/`divisor` of its length, as an interrupted write would leave it;
/// returns the length it had.
fn cut_to(path: &std::path::Path, divisor: u64) -> u64 {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / divisor)
        .unwrap();
    len
}

/// A kept model with a flipped byte in a tensor fails that tensor's checksum: it is rebuilt
/// from the weight files, never used, and the tokens are those of the intact model.
#[test]
fn a_damaged_kept_model_is_rebuilt_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let convert = dir.path().join("converted");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let req = caption_request(&[("chelsea.png", "A cat.")], "rocket.jpg", 5);
    let (c, _) = load_as(&hub("hf"), &convert, WeightFormat::Q8_0);
    let want = c.caption(&req, &cancel, |_| {}).unwrap().generated.tokens;
    drop(c);
    let kept = models(dir.path());
    assert_eq!(kept.len(), 1);
    let intact = std::fs::read(&kept[0]).unwrap();
    let mut damaged = intact.clone();
    let at = damaged.len() * 3 / 4;
    damaged[at] ^= 0x40;
    std::fs::write(&kept[0], &damaged).unwrap();

    let (c, _) = load_as(&hub("hf"), &convert, WeightFormat::Q8_0);
    assert_eq!(
        c.caption(&req, &cancel, |_| {}).unwrap().generated.tokens,
        want
    );
    assert_eq!(
        std::fs::read(&kept[0]).unwrap(),
        intact,
        "rebuilt as it was"
    );
}
