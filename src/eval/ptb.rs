//! The caption tokenisation COCO evaluation applies before CIDEr, without Java.
//!
//! pycocoevalcap runs Stanford CoreNLP 3.4.1's `PTBTokenizer -preserveLines -lowerCase` and then
//! drops the tokens in [`PUNCTUATION`]. This is our own rule set for the same result on captions:
//! lower-case; quotes, brackets and sentence punctuation split from words (brackets become
//! `-lrb-` and friends, which the drop list, written in upper case, keeps); a final period split
//! unless the word is an abbreviation (`u.s.`, `mr.`); `n't`, `'s`, `'re`, `'ve`, `'d`, `'ll`,
//! `'m` split from their word (`can't` → `ca n't`); `cannot`, `gonna`, `wanna`, `gotta` split;
//! `$` split from a number; dashes become `--`. Commas and colons between digits (`1,000`,
//! `10:30`), hyphens, slashes and `&` inside a word stay. `tests/eval.rs` states how far it is
//! from the Java tokenizer on the fixture.

/// The tokens pycocoevalcap removes after the Java tokenizer.
#[rustfmt::skip]
pub const PUNCTUATION: &[&str] = &[
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--",
    "...", ";",
];

/// Abbreviations whose period stays with them.
const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "vs", "etc", "inc", "ltd", "co", "corp",
    "mt", "ft", "no", "jan", "feb", "mar", "apr", "aug", "sep", "sept", "oct", "nov", "dec",
];

/// A caption as the evaluation compares it: tokens joined by single spaces.
pub fn tokenize(text: &str) -> String {
    let lower = text.replace(['\n', '\r'], " ").to_lowercase();
    let mut out: Vec<String> = Vec::new();
    for chunk in lower.split_whitespace() {
        split_chunk(chunk, &mut out);
    }
    out.retain(|t| !PUNCTUATION.contains(&t.as_str()));
    out.join(" ")
}

fn bracket(c: char) -> Option<&'static str> {
    Some(match c {
        '(' => "-lrb-",
        ')' => "-rrb-",
        '[' => "-lsb-",
        ']' => "-rsb-",
        '{' => "-lcb-",
        '}' => "-rcb-",
        _ => return None,
    })
}

fn split_chunk(chunk: &str, out: &mut Vec<String>) {
    // Dashes and inner sentence punctuation separate words inside a chunk.
    let chunk = chunk.replace(['\u{2014}', '\u{2013}'], " -- ");
    let chunk = chunk.replace(['\u{2019}', '\u{2018}'], "'");
    let chars: Vec<char> = chunk.chars().collect();
    let mut spaced = String::with_capacity(chunk.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        let digit_both = |i: usize| {
            i > 0
                && chars[i - 1].is_ascii_digit()
                && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit())
        };
        let inner = i > 0 && i + 1 < chars.len();
        let split = match c {
            ',' | ':' => inner && !digit_both(i),
            ';' | '?' | '!' | '"' => inner,
            _ => bracket(c).is_some() && inner,
        };
        if split {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let spaced = spaced.replace("--", " -- ");
    for word in spaced.split_whitespace() {
        split_word(word, out);
    }
}

fn split_word(word: &str, out: &mut Vec<String>) {
    let mut w = word;
    // Leading quotes, brackets and a currency sign.
    let mut lead: Vec<String> = Vec::new();
    while let Some(c) = w.chars().next() {
        let rest = &w[c.len_utf8()..];
        let tok = match c {
            '"' => "``".to_string(),
            '`' => "`".to_string(),
            '\'' if !rest.is_empty() && !is_clitic(w) => "`".to_string(),
            '$' if rest.chars().next().is_some_and(|n| n.is_ascii_digit()) => "$".into(),
            _ => match bracket(c) {
                Some(b) => b.to_string(),
                None => break,
            },
        };
        lead.push(tok);
        w = rest;
    }
    // Trailing punctuation, quotes and brackets, outermost last.
    let mut trail: Vec<String> = Vec::new();
    loop {
        if w.ends_with("..") {
            let body = w.trim_end_matches('.');
            trail.push("...".into());
            w = body;
            continue;
        }
        let Some(c) = w.chars().last() else { break };
        let body = &w[..w.len() - c.len_utf8()];
        let tok = match c {
            ',' | '?' | '!' | ';' | ':' => c.to_string(),
            '"' => "''".into(),
            '\'' if !body.is_empty() => "'".into(),
            '.' if !body.is_empty() && !is_abbreviation(body) => ".".into(),
            '.' if body.is_empty() => ".".into(),
            '-' if body.is_empty() || body.ends_with('-') => break,
            _ => match bracket(c) {
                Some(b) => b.to_string(),
                None => break,
            },
        };
        trail.push(tok);
        w = body;
    }
    out.extend(lead);
    if !w.is_empty() {
        split_contractions(w, out);
    }
    out.extend(trail.into_iter().rev());
}

fn is_clitic(w: &str) -> bool {
    ["'s", "'re", "'ve", "'d", "'ll", "'m", "'t"].contains(&w)
}

fn is_abbreviation(body: &str) -> bool {
    // `u.s`, `e.g`: letters separated by periods; or a known abbreviation; or one letter.
    body.contains('.') && body.chars().all(|c| c.is_alphabetic() || c == '.')
        || ABBREVIATIONS.contains(&body)
        || (body.chars().count() == 1 && body.chars().all(char::is_alphabetic))
}

fn split_contractions(w: &str, out: &mut Vec<String>) {
    for (whole, a, b) in [
        ("cannot", "can", "not"),
        ("gonna", "gon", "na"),
        ("gotta", "got", "ta"),
        ("wanna", "wan", "na"),
        ("lemme", "lem", "me"),
        ("gimme", "gim", "me"),
    ] {
        if w == whole {
            out.push(a.into());
            out.push(b.into());
            return;
        }
    }
    if w.len() > 3 && w.ends_with("n't") {
        out.push(w[..w.len() - 3].to_string());
        out.push("n't".into());
        return;
    }
    for clitic in ["'s", "'re", "'ve", "'d", "'ll", "'m"] {
        if w.len() > clitic.len() && w.ends_with(clitic) {
            out.push(w[..w.len() - clitic.len()].to_string());
            out.push(clitic.to_string());
            return;
        }
    }
    out.push(w.to_string());
}
