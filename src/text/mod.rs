//! Text side: the LM's tokenizer with OpenFlamingo's special tokens, and prompt templates.

pub mod prompt;

use std::path::Path;

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};

pub const EOC: &str = "<|endofchunk|>";
pub const IMAGE: &str = "<image>";
pub const PAD: &str = "<PAD>";

/// The LM tokenizer with `<|endofchunk|>`, `<image>` (and `<PAD>` when the base has no pad
/// token) added in that order, as OpenFlamingo's factory does (docs/openflamingo.md §7).
#[derive(Clone)]
pub struct TextTokenizer {
    tok: Tokenizer,
    pub eoc_id: u32,
    pub media_id: u32,
    pub pad_id: u32,
}

impl TextTokenizer {
    /// Loads `tokenizer.json`; a `special_tokens_map.json` beside it may name a pad token.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut tok = Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let existing_pad = path
            .parent()
            .map(|d| d.join("special_tokens_map.json"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| {
                let p = v.get("pad_token")?;
                p.as_str()
                    .map(str::to_string)
                    .or_else(|| p.get("content")?.as_str().map(str::to_string))
            })
            .filter(|p| tok.token_to_id(p).is_some());
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
        Ok(Self {
            eoc_id: id(EOC)?,
            media_id: id(IMAGE)?,
            pad_id: id(&pad)?,
            tok,
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids of a text without any special token the tokenizer would add (a BOS, say): for text
    /// appended to a prompt.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tok
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes without special tokens, as the reference's `batch_decode(skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
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

/// Streams text as tokens arrive; holds back incomplete UTF-8 sequences.
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
        if text.len() > self.emitted && text.is_char_boundary(self.emitted) {
            let chunk = text[self.emitted..].to_string();
            self.emitted = text.len();
            Ok(Some(chunk))
        } else {
            Ok(None)
        }
    }
}
