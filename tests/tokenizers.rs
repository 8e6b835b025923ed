//! The tokenizers give the reference's ids and texts: the GPT-NeoX `tokenizer.json` of the
//! MPT-7B and RedPajama repos, and LLaMA's SentencePiece `tokenizer.model` run as the seed's
//! slow `LlamaTokenizer` (recorded by `tests/reference/generate_families.py`).

mod common;

use common::*;
use flamingo::hub::{registry, resolve_in};
use flamingo::text::TextTokenizer;

fn check(set: &str, model: &str, file: &str) {
    let spec = registry::find(model).unwrap();
    let files = resolve_in(&hub(set), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let r = reference_json(file);
    let mut failures = Vec::new();
    for row in r["encode"].as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        if got != ids(&row["ids"]) {
            failures.push(format!(
                "encode {text:?}: {got:?} vs {:?}",
                ids(&row["ids"])
            ));
        }
        let plain = tok.encode_plain(text).unwrap();
        if plain != ids(&row["ids_plain"]) {
            failures.push(format!(
                "plain {text:?}: {plain:?} vs {:?}",
                ids(&row["ids_plain"])
            ));
        }
    }
    for row in r["decode"].as_array().unwrap() {
        let want = row["text"].as_str().unwrap();
        let got = tok.decode(&ids(&row["ids"])).unwrap();
        if got != want {
            failures.push(format!(
                "decode {:?}: {got:?} vs {want:?}",
                ids(&row["ids"])
            ));
        }
    }
    assert!(failures.is_empty(), "{file}:\n{}", failures.join("\n"));
}

#[test]
fn gpt_neox_tokenizer_matches_the_reference() {
    check(
        "hf-neox",
        "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        "neox_tokenizer.json",
    );
}

#[test]
fn llama_sentencepiece_matches_the_seeds_slow_tokenizer() {
    check(
        "hf-llama",
        "openflamingo/OpenFlamingo-9B-deprecated",
        "llama_tokenizer.json",
    );
    let spec = registry::find("openflamingo/OpenFlamingo-9B-deprecated").unwrap();
    let files = resolve_in(&hub("hf-llama"), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    // OpenFlamingo's tokens follow the 600 pieces; the pad token is added (LLaMA has none).
    assert_eq!((tok.eoc_id, tok.media_id, tok.pad_id), (600, 601, 602));
    assert_eq!(tok.vocab_size(), 603);
}
