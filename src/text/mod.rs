//! Text side: the LM's tokenizer with OpenFlamingo's special tokens, prompt templates and the
//! seed's post-processing.
//!
//! Two kinds of tokenizer files: a `tokenizer.json` (the GPT-NeoX BPE of the MosaicGPT, MPT
//! and RedPajama models), run by the `tokenizers` crate, and a SentencePiece `tokenizer.model`
//! (LLaMA), run as transformers' slow `LlamaTokenizer` runs it — the seed's tokenizer.

pub mod prompt;
pub mod sentencepiece;

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use sentencepiece::SentencePiece;

pub const EOC: &str = "<|endofchunk|>";
pub const IMAGE: &str = "<image>";
pub const PAD: &str = "<PAD>";

/// The LM tokenizer with `<|endofchunk|>`, `<image>` (and `<PAD>` when the base has no pad
/// token) added in that order, as OpenFlamingo's factory does (docs/openflamingo.md §7).
#[derive(Clone)]
pub struct TextTokenizer {
    backend: Backend,
    pub eoc_id: u32,
    pub media_id: u32,
    pub pad_id: u32,
}

#[derive(Clone)]
enum Backend {
    /// With transformers' `clean_up_tokenization_spaces` (on unless the repo's
    /// `tokenizer_config.json` turns it off).
    Json(Box<Tokenizer>, bool),
    Sp(Box<SpTokenizer>),
}

/// transformers' `clean_up_tokenization`: the spaces English puts no space before.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// A token that splits text and is never split itself, with whether the whitespace beside it
/// is stripped (transformers' slow tokenizers strip it beside special tokens given as plain
/// strings).
#[derive(Clone, Debug)]
struct Special {
    text: String,
    id: u32,
    strip_left: bool,
    strip_right: bool,
}

/// A SentencePiece model run as transformers' slow `LlamaTokenizer` (legacy behaviour):
/// special tokens split the text, the whitespace beside them is stripped, each piece of text
/// is encoded on its own (each with SentencePiece's dummy prefix), `<s>` goes first.
#[derive(Clone)]
struct SpTokenizer {
    sp: SentencePiece,
    specials: Vec<Special>,
    add_bos: bool,
}

/// Python's `str.isspace`.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

impl SpTokenizer {
    fn vocab_size(&self) -> usize {
        self.sp.len()
            + self
                .specials
                .iter()
                .filter(|s| s.id as usize >= self.sp.len())
                .count()
    }

    /// The text split at special tokens: `Err(index)` for a special token, `Ok(text)` between.
    fn split<'t>(&self, text: &'t str) -> Vec<std::result::Result<&'t str, usize>> {
        let mut out = Vec::new();
        let mut from = 0;
        let mut i = 0;
        while i < text.len() {
            let hit = self
                .specials
                .iter()
                .enumerate()
                .filter(|(_, s)| text[i..].starts_with(&s.text))
                .max_by_key(|(_, s)| s.text.len());
            match hit {
                Some((k, s)) => {
                    if from < i {
                        out.push(Ok(&text[from..i]));
                    }
                    out.push(Err(k));
                    i += s.text.len();
                    from = i;
                }
                None => i += text[i..].chars().next().map_or(1, char::len_utf8),
            }
        }
        if from < text.len() {
            out.push(Ok(&text[from..]));
        }
        out
    }

    fn encode(&self, text: &str, with_specials: bool) -> Vec<u32> {
        let mut parts: Vec<std::result::Result<&str, usize>> = self.split(text);
        for i in 0..parts.len() {
            if let Err(k) = parts[i] {
                let s = &self.specials[k];
                if s.strip_right {
                    if let Some(Ok(r)) = parts.get_mut(i + 1) {
                        *r = r.trim_start_matches(is_py_space);
                    }
                }
                if s.strip_left && i > 0 {
                    if let Some(Ok(l)) = parts.get_mut(i - 1) {
                        *l = l.trim_end_matches(is_py_space);
                    }
                }
            }
        }
        let mut ids = Vec::new();
        if with_specials && self.add_bos {
            ids.extend(self.sp.bos_id);
        }
        for p in parts {
            match p {
                Ok(t) => ids.extend(self.sp.encode(t)),
                Err(k) => ids.push(self.specials[k].id),
            }
        }
        ids
    }

    /// `decode(ids, skip_special_tokens=True)`: special tokens dropped, the first piece's
    /// leading `▁` removed, the rest decoded by SentencePiece.
    fn decode(&self, ids: &[u32]) -> String {
        let mut pieces: Vec<&str> = ids
            .iter()
            .filter(|id| !self.specials.iter().any(|s| s.id == **id))
            .filter_map(|&id| self.sp.pieces.get(id as usize).map(|p| p.text.as_str()))
            .collect();
        if let Some(first) = pieces.first_mut() {
            *first = first.strip_prefix(sentencepiece::SPACE).unwrap_or(first);
        }
        self.sp.decode_pieces(&pieces)
    }
}

impl TextTokenizer {
    /// Loads the tokenizer of an LM repo: `tokenizer.json`, or a SentencePiece
    /// `tokenizer.model` (with `tokenizer_config.json` and `special_tokens_map.json` beside it
    /// where the repo has them).
    pub fn from_file(path: &Path) -> Result<Self> {
        let is_model = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("model"));
        if is_model {
            Self::from_sentencepiece(path)
        } else {
            Self::from_json(path)
        }
    }

    /// A JSON file beside `path`, if it is there and readable.
    fn sibling_json(path: &Path, name: &str) -> Option<serde_json::Value> {
        let p = path.parent()?.join(name);
        serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
    }

    /// The pad token `special_tokens_map.json` names, if any.
    fn named_pad(path: &Path) -> Option<String> {
        let v = Self::sibling_json(path, "special_tokens_map.json")?;
        let p = v.get("pad_token")?;
        p.as_str()
            .map(str::to_string)
            .or_else(|| p.get("content")?.as_str().map(str::to_string))
    }

    fn from_json(path: &Path) -> Result<Self> {
        let mut tok = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let existing_pad = Self::named_pad(path).filter(|p| tok.token_to_id(p).is_some());
        tok.add_special_tokens([AddedToken::from(EOC, true), AddedToken::from(IMAGE, true)])
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let pad = match existing_pad {
            Some(p) => p,
            None => {
                tok.add_special_tokens([AddedToken::from(PAD, true)])
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                PAD.to_string()
            }
        };
        let id = |t: &str| {
            tok.token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("token {t} missing after adding it")))
        };
        let cleanup = Self::sibling_json(path, "tokenizer_config.json")
            .and_then(|c| c.get("clean_up_tokenization_spaces")?.as_bool())
            .unwrap_or(true);
        Ok(Self {
            eoc_id: id(EOC)?,
            media_id: id(IMAGE)?,
            pad_id: id(&pad)?,
            backend: Backend::Json(Box::new(tok), cleanup),
        })
    }

    fn from_sentencepiece(path: &Path) -> Result<Self> {
        let sp = SentencePiece::from_file(path)?;
        let config = Self::sibling_json(path, "tokenizer_config.json");
        let setting = |k: &str| config.as_ref().and_then(|c| c.get(k));
        // A special token from the config: a plain string strips the whitespace beside it (the
        // slow tokenizer's default), an `AddedToken` object says itself.
        let mut specials: Vec<Special> = Vec::new();
        let mut base = |key: &str, id: Option<u32>| {
            let Some(id) = id else { return };
            let text = sp.pieces[id as usize].text.clone();
            let (l, r) = match setting(key) {
                Some(serde_json::Value::Object(o)) => (
                    o.get("lstrip").and_then(|v| v.as_bool()).unwrap_or(false),
                    o.get("rstrip").and_then(|v| v.as_bool()).unwrap_or(false),
                ),
                _ => (true, true),
            };
            specials.push(Special {
                text,
                id,
                strip_left: l,
                strip_right: r,
            });
        };
        base("bos_token", sp.bos_id);
        base("eos_token", sp.eos_id);
        base("unk_token", Some(sp.unk_id));
        let mut next = sp.len() as u32;
        let mut add = |text: &str| {
            specials.push(Special {
                text: text.into(),
                id: next,
                strip_left: true,
                strip_right: true,
            });
            next += 1;
            next - 1
        };
        let eoc_id = add(EOC);
        let media_id = add(IMAGE);
        let pad_id = match Self::named_pad(path).and_then(|p| sp.piece_id(&p)) {
            Some(id) => id,
            None => add(PAD),
        };
        let add_bos = setting("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        Ok(Self {
            eoc_id,
            media_id,
            pad_id,
            backend: Backend::Sp(Box::new(SpTokenizer {
                sp,
                specials,
                add_bos,
            })),
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Json(t, _) => t.get_vocab_size(true),
            Backend::Sp(t) => t.vocab_size(),
        }
    }

    /// The ids of a prompt, with what the tokenizer adds at its start (LLaMA's `<s>`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Json(t, _) => Ok(t
                .encode(text, true)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec()),
            Backend::Sp(t) => Ok(t.encode(text, true)),
        }
    }

    /// Ids of a text without any special token the tokenizer would add (a BOS, say): for text
    /// appended to a prompt.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Json(t, _) => Ok(t
                .encode(text, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec()),
            Backend::Sp(t) => Ok(t.encode(text, false)),
        }
    }

    /// Decodes without special tokens, as the reference's `decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Json(t, cleanup) => {
                let text = t
                    .decode(ids, true)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(if *cleanup {
                    clean_up_tokenization(&text)
                } else {
                    text
                })
            }
            Backend::Sp(t) => Ok(t.decode(ids)),
        }
    }

    /// Each token's piece of the decoded text: what the text grows by when the token is added
    /// (empty for a special token), so that a view can shade token by token.
    pub fn token_texts(&self, ids: &[u32]) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut before = String::new();
        for i in 0..ids.len() {
            let now = self.decode(&ids[..=i])?;
            let piece = match now.strip_prefix(before.as_str()) {
                Some(p) => p.to_string(),
                // The clean-up joined this token to the text before: show it alone.
                None => self.decode(&ids[i..=i])?,
            };
            out.push(piece);
            before = now;
        }
        Ok(out)
    }

    /// Incremental decoder: feed ids one by one and get text chunks that concatenate to
    /// [`Self::decode`] of all of them.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream {
            tok: self,
            ids: Vec::new(),
            emitted: 0,
        }
    }
}

/// Streams text as tokens arrive. It holds back an incomplete UTF-8 sequence, and, where the
/// decoder cleans up spaces (a space before "." goes once the "." comes), everything from the
/// last space on: what it gives out never changes. [`TextStream::finish`] gives the rest.
pub struct TextStream<'a> {
    tok: &'a TextTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl TextStream<'_> {
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let stable = match &self.tok.backend {
            Backend::Json(_, true) => text.rfind(' ').unwrap_or(0),
            _ => text.len(),
        };
        Ok(self.take(&text, stable))
    }

    /// The text not given out yet, once no token follows.
    pub fn finish(&mut self) -> Result<Option<String>> {
        let text = self.tok.decode(&self.ids)?;
        Ok(self.take(&text, text.len()))
    }

    fn take(&mut self, text: &str, upto: usize) -> Option<String> {
        if upto > self.emitted && text.is_char_boundary(self.emitted) && text.is_char_boundary(upto)
        {
            let chunk = text[self.emitted..upto].to_string();
            self.emitted = upto;
            Some(chunk)
        } else {
            None
        }
    }
}
