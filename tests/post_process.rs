//! Post-processing against the seed's own `Flamingo.post_process` (mmpretrain 1.2.0), run by
//! `tests/reference/post_process_table.py` on a table of raw outputs.

mod common;

use common::*;
use flamingo::text::prompt::{post_process, Task};
use flamingo::text::TextTokenizer;

#[test]
fn post_processing_matches_the_seed() {
    let spec = flamingo::hub::registry::find(flamingo::hub::DEFAULT_MODEL).unwrap();
    let files = flamingo::hub::resolve_in(&hub("hf"), spec).unwrap();
    let tok = TextTokenizer::from_file(&files.tokenizer).unwrap();
    let rows = reference_json("post_process.json");
    let rows = rows.as_array().unwrap();
    assert!(rows.len() >= 40);
    for r in rows {
        let task = if r["task"] == "caption" {
            Task::Caption
        } else {
            Task::Vqa
        };
        let decoded = tok.decode(&ids(&r["token_ids"])).unwrap();
        assert_eq!(decoded, r["decoded"].as_str().unwrap());
        assert_eq!(
            post_process(task, &decoded),
            r["post_processed"].as_str().unwrap(),
            "{task:?} {decoded:?}"
        );
    }
}
