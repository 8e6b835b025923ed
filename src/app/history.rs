//! Every result the app produced (captions of the working set and its variant, branches,
//! sweep rows), kept with the set: what was asked (model, format, examples, query, prompt,
//! decoding) and what came out, to scroll, pin, compare side by side, copy and export.

use serde::{Deserialize, Serialize};

use crate::engine::{Caption, GenerationConfig};
use crate::text::prompt::Task;

/// At most this many results are kept (the oldest unpinned go first).
pub const HISTORY_LIMIT: usize = 500;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Seconds since 1970 when it finished.
    pub when: u64,
    pub model_id: String,
    pub weights: String,
    /// Where it came from: "working set", "variant", "branch", "3-shot sweep row".
    pub source: String,
    pub task: Task,
    pub prompt: String,
    /// The examples' image names, in prompt order.
    pub examples: Vec<String>,
    pub query: String,
    pub generation: GenerationConfig,
    pub text: String,
    pub raw_text: String,
    pub tokens: usize,
    pub logprob: f32,
    /// Image encoding, prompt and decoding.
    pub seconds: f64,
    #[serde(default)]
    pub pinned: bool,
}

impl HistoryEntry {
    /// The entry for `caption`, from what was asked (`asked`, whose result fields are empty).
    pub fn finished(mut asked: HistoryEntry, caption: &Caption) -> Self {
        asked.when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        asked.text = caption.text.clone();
        asked.raw_text = caption.raw_text.clone();
        asked.tokens = caption.tokens.len();
        asked.logprob = caption.logprob();
        let t = &caption.timings;
        asked.seconds = t.encode_s + t.prefill_s + t.decode_s;
        asked
    }

    /// "HH:MM" (UTC) of `when`.
    pub fn time_of_day(&self) -> String {
        let s = self.when % 86_400;
        format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
    }
}

/// Adds an entry, dropping the oldest unpinned ones past [`HISTORY_LIMIT`].
pub fn push(history: &mut Vec<HistoryEntry>, e: HistoryEntry) {
    history.push(e);
    while history.len() > HISTORY_LIMIT {
        match history.iter().position(|e| !e.pinned) {
            Some(i) => history.remove(i),
            None => history.remove(0),
        };
    }
}

/// One JSON object per line, oldest first.
pub fn to_jsonl(history: &[HistoryEntry]) -> String {
    history
        .iter()
        .filter_map(|e| serde_json::to_string(e).ok())
        .map(|l| l + "\n")
        .collect()
}

/// A CSV with a header row, oldest first (fields quoted where they need it).
pub fn to_csv(history: &[HistoryEntry]) -> String {
    fn field(s: &str) -> String {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    let mut out = String::from(
        "when,model,weights,source,task,examples,query,text,raw_text,tokens,logprob,seconds,pinned,max_new_tokens,do_sample,temperature,num_beams,prompt\n",
    );
    for e in history {
        let g = &e.generation;
        let row = [
            e.when.to_string(),
            field(&e.model_id),
            field(&e.weights),
            field(&e.source),
            format!("{:?}", e.task),
            field(&e.examples.join("; ")),
            field(&e.query),
            field(&e.text),
            field(&e.raw_text),
            e.tokens.to_string(),
            format!("{:.4}", e.logprob),
            format!("{:.3}", e.seconds),
            e.pinned.to_string(),
            g.max_new_tokens.to_string(),
            g.do_sample.to_string(),
            g.temperature.to_string(),
            g.num_beams.to_string(),
            field(&e.prompt),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// Which file an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        }
    }

    pub fn render(self, history: &[HistoryEntry]) -> String {
        match self {
            Self::Jsonl => to_jsonl(history),
            Self::Csv => to_csv(history),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str, pinned: bool) -> HistoryEntry {
        HistoryEntry {
            when: 3_600 * 13 + 60 * 5,
            model_id: "m".into(),
            weights: "q8_0".into(),
            source: "working set".into(),
            task: Task::Caption,
            prompt: "<image>Output:".into(),
            examples: vec!["a.png".into(), "b, c.png".into()],
            query: "q.png".into(),
            generation: GenerationConfig::default(),
            text: text.into(),
            raw_text: text.into(),
            tokens: 3,
            logprob: -1.5,
            seconds: 0.25,
            pinned,
        }
    }

    #[test]
    fn exports_and_the_limit() {
        let h = vec![
            entry("A \"cat\", sitting", false),
            entry("two\nlines", true),
        ];
        let jsonl = to_jsonl(&h);
        assert_eq!(jsonl.lines().count(), 2);
        let back: HistoryEntry = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
        assert_eq!(back, h[0]);
        let csv = to_csv(&h);
        assert!(csv.contains("\"A \"\"cat\"\", sitting\""), "{csv}");
        assert!(csv.contains("\"a.png; b, c.png\""), "{csv}");
        assert_eq!(h[0].time_of_day(), "13:05");
        let mut many = vec![entry("pinned", true)];
        for i in 0..HISTORY_LIMIT + 5 {
            push(&mut many, entry(&i.to_string(), false));
        }
        assert_eq!(many.len(), HISTORY_LIMIT);
        assert!(many[0].pinned, "pinned entries stay");
        assert_eq!(many[1].text, "6", "the six oldest unpinned went");
    }
}
