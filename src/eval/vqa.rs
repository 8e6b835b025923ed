//! VQAv2 accuracy with the official answer normalisation, as OpenFlamingo's evaluation applies
//! it (`open_flamingo/eval/vqa_metric.py`, a copy of the VQA challenge's `vqaEval.py`).
//!
//! The prediction and every reference answer are normalised alike: punctuation removed or
//! replaced by a space, periods not followed by a digit dropped, lower case, number words to
//! digits, articles dropped, contractions restored. A prediction's accuracy is, averaged over
//! the references, min(1, matches among the *other* references / 3). Two quirks are kept: a
//! punctuation mark is deleted (not spaced) whenever the text has it next to a space, or has a
//! comma between digits anywhere; and at most 32 periods are dropped (Python's `re.sub` is
//! given `re.UNICODE` as its count).

const PUNCT: &[char] = &[
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

const NUMBERS: &[(&str, &str)] = &[
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: &[&str] = &["a", "an", "the"];

#[rustfmt::skip]
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"), ("arent", "aren't"), ("cant", "can't"), ("couldve", "could've"),
    ("couldnt", "couldn't"), ("couldn'tve", "couldn't've"), ("couldnt've", "couldn't've"),
    ("didnt", "didn't"), ("doesnt", "doesn't"), ("dont", "don't"), ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"), ("hadn'tve", "hadn't've"), ("hasnt", "hasn't"),
    ("havent", "haven't"), ("hed", "he'd"), ("hed've", "he'd've"), ("he'dve", "he'd've"),
    ("hes", "he's"), ("howd", "how'd"), ("howll", "how'll"), ("hows", "how's"),
    ("Id've", "I'd've"), ("I'dve", "I'd've"), ("Im", "I'm"), ("Ive", "I've"), ("isnt", "isn't"),
    ("itd", "it'd"), ("itd've", "it'd've"), ("it'dve", "it'd've"), ("itll", "it'll"),
    ("let's", "let's"), ("maam", "ma'am"), ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"), ("mightn'tve", "mightn't've"), ("mightve", "might've"),
    ("mustnt", "mustn't"), ("mustve", "must've"), ("neednt", "needn't"), ("notve", "not've"),
    ("oclock", "o'clock"), ("oughtnt", "oughtn't"), ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"), ("'ow'sat", "'ow's'at"), ("shant", "shan't"),
    ("shed've", "she'd've"), ("she'dve", "she'd've"), ("she's", "she's"),
    ("shouldve", "should've"), ("shouldnt", "shouldn't"), ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"), ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"), ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"), ("somebodys", "somebody's"), ("someoned", "someone'd"),
    ("someoned've", "someone'd've"), ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"), ("someones", "someone's"), ("somethingd", "something'd"),
    ("somethingd've", "something'd've"), ("something'dve", "something'd've"),
    ("somethingll", "something'll"), ("thats", "that's"), ("thered", "there'd"),
    ("thered've", "there'd've"), ("there'dve", "there'd've"), ("therere", "there're"),
    ("theres", "there's"), ("theyd", "they'd"), ("theyd've", "they'd've"),
    ("they'dve", "they'd've"), ("theyll", "they'll"), ("theyre", "they're"),
    ("theyve", "they've"), ("twas", "'twas"), ("wasnt", "wasn't"), ("wed've", "we'd've"),
    ("we'dve", "we'd've"), ("weve", "we've"), ("werent", "weren't"), ("whatll", "what'll"),
    ("whatre", "what're"), ("whats", "what's"), ("whatve", "what've"), ("whens", "when's"),
    ("whered", "where'd"), ("wheres", "where's"), ("whereve", "where've"), ("whod", "who'd"),
    ("whod've", "who'd've"), ("who'dve", "who'd've"), ("wholl", "who'll"), ("whos", "who's"),
    ("whove", "who've"), ("whyll", "why'll"), ("whyre", "why're"), ("whys", "why's"),
    ("wont", "won't"), ("wouldve", "would've"), ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"), ("wouldn'tve", "wouldn't've"), ("yall", "y'all"),
    ("yall'll", "y'all'll"), ("y'allll", "y'all'll"), ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"), ("y'all'dve", "y'all'd've"), ("youd", "you'd"),
    ("youd've", "you'd've"), ("you'dve", "you'd've"), ("youll", "you'll"),
    ("youre", "you're"), ("youve", "you've"),
];

fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit())
}

fn process_punctuation(text: &str) -> String {
    let mut out = text.to_string();
    let comma_digits = has_digit_comma_digit(text);
    for &p in PUNCT {
        let spaced = text.contains(&format!("{p} ")) || text.contains(&format!(" {p}"));
        out = out.replace(p, if spaced || comma_digits { "" } else { " " });
    }
    // Periods not followed by a digit, at most 32 of them.
    let chars: Vec<char> = out.chars().collect();
    let mut kept = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let drop =
            c == '.' && removed < 32 && !chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if drop {
            removed += 1;
        } else {
            kept.push(c);
        }
    }
    kept
}

fn process_digit_article(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split_whitespace()
        .map(|w| {
            NUMBERS
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, v)| *v)
                .unwrap_or(w)
        })
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map(|(_, v)| *v)
                .unwrap_or(w)
        })
        .collect();
    words.join(" ")
}

/// An answer as the evaluation compares it.
pub fn normalize_answer(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    process_digit_article(&process_punctuation(a.trim()))
}

/// The accuracy (0–1) of one prediction against its reference answers (VQAv2 has ten).
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    if answers.is_empty() {
        return 0.0;
    }
    let pred = normalize_answer(prediction);
    let refs: Vec<String> = answers.iter().map(|a| normalize_answer(a)).collect();
    let total: f64 = (0..refs.len())
        .map(|i| {
            let matches = refs
                .iter()
                .enumerate()
                .filter(|&(j, r)| j != i && *r == pred)
                .count();
            (matches as f64 / 3.0).min(1.0)
        })
        .sum();
    total / refs.len() as f64
}
