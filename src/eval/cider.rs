//! CIDEr-D as pycocoevalcap computes it (`Cider`, n = 4, σ = 6), on tokenised captions.
//!
//! Each caption is a tf-idf vector of its 1–4-grams, the document frequency of an n-gram being
//! the number of evaluated images whose references hold it; the score of a prediction is the
//! mean over n of the clipped cosine with each reference (hypothesis weights capped at the
//! reference's), times a Gaussian penalty on the length difference, averaged over references
//! and scaled by 10. Two details are kept as pycocoevalcap has them: the "length" is the number
//! of bigrams, and the idf uses ln(number of images), so a single image scores 0.

use std::collections::HashMap;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// One evaluated image: its prediction and references, already tokenised
/// ([`super::ptb::tokenize`]).
pub struct CiderInput<'a> {
    pub prediction: &'a str,
    pub references: &'a [String],
}

/// The corpus mean and each image's score.
#[derive(Clone, Debug, PartialEq)]
pub struct CiderScores {
    pub mean: f64,
    pub per_image: Vec<f64>,
    /// Set when the score cannot mean anything (fewer than two images: every idf is 0).
    pub warning: Option<String>,
}

type Counts = HashMap<Vec<String>, f64>;

fn ngrams(sentence: &str) -> Counts {
    let words: Vec<&str> = sentence.split_whitespace().collect();
    let mut counts = Counts::new();
    for k in 1..=N {
        for w in words.windows(k) {
            *counts
                .entry(w.iter().map(|s| s.to_string()).collect())
                .or_insert(0.0) += 1.0;
        }
    }
    counts
}

struct Vector {
    weights: [HashMap<Vec<String>, f64>; N],
    norm: [f64; N],
    length: f64,
}

fn vector(counts: &Counts, df: &HashMap<Vec<String>, f64>, ref_len: f64) -> Vector {
    let mut weights: [HashMap<Vec<String>, f64>; N] = Default::default();
    let mut norm = [0.0; N];
    let mut length = 0.0;
    for (gram, &tf) in counts {
        let n = gram.len() - 1;
        let d = df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
        let w = tf * (ref_len - d);
        weights[n].insert(gram.clone(), w);
        norm[n] += w * w;
        if n == 1 {
            length += tf;
        }
    }
    Vector {
        weights,
        norm: norm.map(f64::sqrt),
        length,
    }
}

fn similarity(hyp: &Vector, r: &Vector) -> [f64; N] {
    let delta = hyp.length - r.length;
    std::array::from_fn(|n| {
        let mut v = 0.0;
        for (gram, &h) in &hyp.weights[n] {
            let rv = r.weights[n].get(gram).copied().unwrap_or(0.0);
            v += h.min(rv) * rv;
        }
        if hyp.norm[n] != 0.0 && r.norm[n] != 0.0 {
            v /= hyp.norm[n] * r.norm[n];
        }
        v * (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp()
    })
}

/// CIDEr-D over the given images.
pub fn cider_d(inputs: &[CiderInput]) -> CiderScores {
    let refs: Vec<Vec<Counts>> = inputs
        .iter()
        .map(|i| i.references.iter().map(|r| ngrams(r)).collect())
        .collect();
    let mut df: HashMap<Vec<String>, f64> = HashMap::new();
    for image_refs in &refs {
        let mut seen: std::collections::HashSet<&Vec<String>> = Default::default();
        for r in image_refs {
            seen.extend(r.keys());
        }
        for g in seen {
            *df.entry(g.clone()).or_insert(0.0) += 1.0;
        }
    }
    let ref_len = (inputs.len().max(1) as f64).ln();
    let per_image: Vec<f64> = inputs
        .iter()
        .zip(&refs)
        .map(|(input, image_refs)| {
            if image_refs.is_empty() {
                return 0.0;
            }
            let hyp = vector(&ngrams(input.prediction), &df, ref_len);
            let mut sum = [0.0; N];
            for r in image_refs {
                let s = similarity(&hyp, &vector(r, &df, ref_len));
                for n in 0..N {
                    sum[n] += s[n];
                }
            }
            let mean = sum.iter().sum::<f64>() / N as f64;
            mean / image_refs.len() as f64 * 10.0
        })
        .collect();
    let mean = if per_image.is_empty() {
        0.0
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    let warning = (inputs.len() < 2).then(|| {
        format!(
            "CIDEr-D over {} image(s) is 0 by construction (its idf is ln of the number of images); score at least two",
            inputs.len()
        )
    });
    CiderScores {
        mean,
        per_image,
        warning,
    }
}
