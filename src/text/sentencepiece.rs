//! SentencePiece BPE models (`tokenizer.model`, LLaMA's), read and run without a
//! `tokenizer.json`: the model file's pieces and normaliser settings, SentencePiece's BPE
//! (merge the adjacent pair whose merged piece scores highest, leftmost first; bytes of unknown
//! characters as `<0xXX>` pieces) and its decoding.
//!
//! Only what LLaMA's model uses is supported: the BPE model type, the identity normaliser with
//! a dummy prefix and escaped whitespace, byte fallback. Anything else is refused with a
//! message, never guessed.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// SentencePiece's whitespace symbol.
pub const SPACE: char = '▁';

/// A piece's kind in the model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

#[derive(Clone, Debug)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// A SentencePiece BPE model.
#[derive(Clone, Debug)]
pub struct SentencePiece {
    pub pieces: Vec<Piece>,
    /// Pieces that take part in merges (normal, user-defined, unused) by text.
    lookup: HashMap<String, u32>,
    /// Every piece by text.
    all: HashMap<String, u32>,
    /// `<0xXX>` piece ids by byte.
    bytes: Vec<Option<u32>>,
    pub unk_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    add_dummy_prefix: bool,
}

/// Reads a protobuf varint at `*at`.
fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// One protobuf field: its number and its value (a varint, 32 or 64 fixed bits, or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

/// The fields of a protobuf message, in order; None when the bytes are not one.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let (num, wire) = (key >> 3, key & 7);
        let f = match wire {
            0 => Field::Varint(varint(buf, &mut at)?),
            1 => {
                at = at.checked_add(8).filter(|&e| e <= buf.len())?;
                Field::Fixed64
            }
            2 => {
                let len = varint(buf, &mut at)? as usize;
                let end = at.checked_add(len).filter(|&e| e <= buf.len())?;
                let b = &buf[at..end];
                at = end;
                Field::Bytes(b)
            }
            5 => {
                let end = at.checked_add(4).filter(|&e| e <= buf.len())?;
                let v = u32::from_le_bytes(buf[at..end].try_into().ok()?);
                at = end;
                Field::Fixed32(v)
            }
            _ => return None,
        };
        out.push((num, f));
    }
    Some(out)
}

impl SentencePiece {
    /// Reads `tokenizer.model`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|reason| {
            Error::Tokenizer(format!(
                "{} is not a usable SentencePiece model: {reason}",
                path.display()
            ))
        })
    }

    pub fn from_bytes(buf: &[u8]) -> std::result::Result<Self, String> {
        let top = fields(buf).ok_or("not a protobuf message")?;
        let mut pieces = Vec::new();
        let mut model_type = 1u64; // unigram, protobuf's default
        let mut byte_fallback = false;
        let (mut unk_id, mut bos_id, mut eos_id) = (0i64, 1i64, 2i64);
        let mut add_dummy_prefix = true;
        let mut escape_whitespaces = true;
        let mut remove_extra_whitespaces = true;
        let mut normalizer = String::new();
        let mut charsmap = false;
        for (num, f) in top {
            match (num, f) {
                (1, Field::Bytes(p)) => {
                    let mut piece = Piece {
                        text: String::new(),
                        score: 0.0,
                        kind: PieceKind::Normal,
                    };
                    for (n, f) in fields(p).ok_or("a damaged piece")? {
                        match (n, f) {
                            (1, Field::Bytes(s)) => {
                                piece.text = String::from_utf8(s.to_vec())
                                    .map_err(|_| "a piece that is not UTF-8")?
                            }
                            (2, Field::Fixed32(v)) => piece.score = f32::from_bits(v),
                            (3, Field::Varint(v)) => {
                                piece.kind = match v {
                                    1 => PieceKind::Normal,
                                    2 => PieceKind::Unknown,
                                    3 => PieceKind::Control,
                                    4 => PieceKind::UserDefined,
                                    5 => PieceKind::Unused,
                                    6 => PieceKind::Byte,
                                    _ => return Err(format!("piece type {v}")),
                                }
                            }
                            _ => {}
                        }
                    }
                    pieces.push(piece);
                }
                (2, Field::Bytes(t)) => {
                    for (n, f) in fields(t).ok_or("damaged trainer settings")? {
                        match (n, f) {
                            (3, Field::Varint(v)) => model_type = v,
                            (35, Field::Varint(v)) => byte_fallback = v != 0,
                            (40, Field::Varint(v)) => unk_id = v as i32 as i64,
                            (41, Field::Varint(v)) => bos_id = v as i32 as i64,
                            (42, Field::Varint(v)) => eos_id = v as i32 as i64,
                            _ => {}
                        }
                    }
                }
                (3, Field::Bytes(n)) => {
                    for (k, f) in fields(n).ok_or("damaged normaliser settings")? {
                        match (k, f) {
                            (1, Field::Bytes(s)) => {
                                normalizer = String::from_utf8_lossy(s).into_owned()
                            }
                            (2, Field::Bytes(s)) => charsmap = !s.is_empty(),
                            (3, Field::Varint(v)) => add_dummy_prefix = v != 0,
                            (4, Field::Varint(v)) => remove_extra_whitespaces = v != 0,
                            (5, Field::Varint(v)) => escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if pieces.is_empty() {
            return Err("it has no pieces".into());
        }
        if model_type != 2 {
            return Err(format!(
                "model type {model_type} (only BPE, LLaMA's, is supported)"
            ));
        }
        if charsmap || !(normalizer.is_empty() || normalizer == "identity") {
            return Err(format!(
                "normaliser `{normalizer}` (only LLaMA's identity normaliser is supported)"
            ));
        }
        if remove_extra_whitespaces || !escape_whitespaces {
            return Err("whitespace handling other than LLaMA's (spaces kept and escaped)".into());
        }
        let id = |v: i64| (v >= 0 && (v as usize) < pieces.len()).then_some(v as u32);
        let unk_id = id(unk_id).ok_or("no unknown piece")?;
        let mut lookup = HashMap::new();
        let mut bytes = vec![None; 256];
        for (i, p) in pieces.iter().enumerate() {
            match p.kind {
                PieceKind::Normal | PieceKind::UserDefined | PieceKind::Unused => {
                    lookup.insert(p.text.clone(), i as u32);
                }
                PieceKind::Byte => {
                    let b = byte_of(&p.text).ok_or_else(|| format!("byte piece `{}`", p.text))?;
                    bytes[b as usize] = Some(i as u32);
                }
                _ => {}
            }
        }
        if byte_fallback && bytes.iter().any(Option::is_none) {
            return Err("byte fallback without all 256 byte pieces".into());
        }
        if !byte_fallback {
            bytes = vec![None; 256];
        }
        let all = pieces
            .iter()
            .enumerate()
            .rev()
            .map(|(i, p)| (p.text.clone(), i as u32))
            .collect();
        Ok(Self {
            all,
            bos_id: id(bos_id),
            eos_id: id(eos_id),
            pieces,
            lookup,
            bytes,
            unk_id,
            add_dummy_prefix,
        })
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The id of a piece's text (normal, user-defined, control, unknown or byte).
    pub fn piece_id(&self, text: &str) -> Option<u32> {
        self.all.get(text).copied()
    }

    /// Encodes one text as SentencePiece does: the dummy prefix, spaces as `▁`, BPE merges,
    /// byte fallback for what no piece covers.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut norm = String::with_capacity(text.len() + 3);
        if self.add_dummy_prefix {
            norm.push(SPACE);
        }
        norm.extend(text.chars().map(|c| if c == ' ' { SPACE } else { c }));
        // Symbols: [start, end) byte ranges of `norm`, linked left to right.
        let bounds: Vec<(usize, usize)> = norm
            .char_indices()
            .map(|(i, c)| (i, i + c.len_utf8()))
            .collect();
        let n = bounds.len();
        let start: Vec<usize> = bounds.iter().map(|b| b.0).collect();
        let mut end: Vec<usize> = bounds.iter().map(|b| b.1).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        // Best pair by (score, leftmost), found by scanning: prompts are short.
        loop {
            let mut best: Option<(f32, usize, usize)> = None;
            let mut i = if n > 0 { Some(0) } else { None };
            while let Some(l) = i {
                if let Some(r) = next[l] {
                    if let Some(&id) = self.lookup.get(&norm[start[l]..end[r]]) {
                        let score = self.pieces[id as usize].score;
                        if best.is_none_or(|(s, _, _)| score > s) {
                            best = Some((score, l, r));
                        }
                    }
                }
                i = next[l];
            }
            let Some((_, l, r)) = best else { break };
            end[l] = end[r];
            next[l] = next[r];
        }
        let mut ids = Vec::new();
        let mut i = if n > 0 { Some(0) } else { None };
        while let Some(s) = i {
            let piece = &norm[start[s]..end[s]];
            match self.lookup.get(piece) {
                Some(&id) => ids.push(id),
                None if self.bytes[0].is_some() => {
                    ids.extend(piece.bytes().filter_map(|b| self.bytes[b as usize]))
                }
                None => ids.push(self.unk_id),
            }
            i = next[s];
        }
        ids
    }

    /// Decodes ids as SentencePiece does ([`SentencePiece::decode_pieces`] of their pieces).
    pub fn decode(&self, ids: &[u32]) -> String {
        let pieces: Vec<&str> = ids
            .iter()
            .filter_map(|&id| self.pieces.get(id as usize).map(|p| p.text.as_str()))
            .collect();
        self.decode_pieces(&pieces)
    }

    /// Decodes piece texts as SentencePiece 0.2 does: each looked up by its text (unknown
    /// when none has it, and then kept literally); `▁` as spaces; runs of byte pieces as
    /// UTF-8, each byte that starts no valid character as U+FFFD; control pieces as nothing;
    /// `<unk>` as " ⁇ "; the dummy prefix's `▁` removed from the first piece that has one, as
    /// long as nothing was written before it.
    pub fn decode_pieces(&self, pieces: &[&str]) -> String {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut is_bos_ws = true;
        let mut bos_ws_seen = false;
        for &text in pieces {
            let id = self.piece_id(text).unwrap_or(self.unk_id);
            let kind = self.pieces[id as usize].kind;
            if kind == PieceKind::Byte {
                bytes.push(byte_of(text).unwrap_or(0));
                continue;
            }
            flush_bytes(&mut bytes, &mut out);
            if bos_ws_seen || !out.is_empty() {
                is_bos_ws = false;
            }
            bos_ws_seen = false;
            match kind {
                PieceKind::Control => {}
                PieceKind::Unknown if self.pieces[id as usize].text == text => out.push_str(" ⁇ "),
                PieceKind::Unknown => out.push_str(text),
                _ => {
                    let mut t = text;
                    if is_bos_ws && self.add_dummy_prefix {
                        if let Some(rest) = t.strip_prefix(SPACE) {
                            t = rest;
                            bos_ws_seen = true;
                        }
                    }
                    out.extend(t.chars().map(|c| if c == SPACE { ' ' } else { c }));
                }
            }
        }
        flush_bytes(&mut bytes, &mut out);
        out
    }
}

/// The byte of a `<0xXX>` piece.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// Appends a run of bytes as UTF-8: each valid character as it is, each byte that starts no
/// valid character as U+FFFD.
fn flush_bytes(bytes: &mut Vec<u8>, out: &mut String) {
    let mut rest: &[u8] = bytes;
    while !rest.is_empty() {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.push_str(std::str::from_utf8(&rest[..good]).unwrap_or_default());
                out.push('\u{FFFD}');
                rest = &rest[good + 1..];
            }
        }
    }
    bytes.clear();
}
