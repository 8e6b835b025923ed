//! Logits processing with transformers' `GenerationConfig` semantics (4.33): repetition
//! penalty and no-repeat n-grams over the whole sequence (prompt included), the minimum number
//! of new tokens, then for sampling temperature → top-k → top-p, and a seeded draw.

/// The decoding options, spelled as `GenerationConfig` spells them.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f64,
    /// 1.0 disables.
    pub repetition_penalty: f64,
    /// 0 disables.
    pub no_repeat_ngram_size: usize,
    pub seed: u64,
    /// 1 = no beam search.
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: super::beam::EarlyStopping,
    pub num_return_sequences: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            min_new_tokens: 0,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            no_repeat_ngram_size: 0,
            seed: 0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: super::beam::EarlyStopping::False,
            num_return_sequences: 1,
        }
    }
}

/// The temperatures a request may ask for.
pub const MIN_TEMPERATURE: f64 = 0.01;
pub const MAX_TEMPERATURE: f64 = 100.0;

impl GenerationConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.length_penalty.is_finite() {
            return Err("length_penalty must be a number".into());
        }
        if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&self.temperature) {
            return Err(format!(
                "temperature must be between {MIN_TEMPERATURE} and {MAX_TEMPERATURE} (got {}): \
                 below, the scores overflow (and it is greedy decoding anyway); above, every \
                 token is about equally likely",
                self.temperature
            ));
        }
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err("repetition_penalty must be a number > 0".into());
        }
        if self.num_beams == 0 {
            return Err("num_beams must be at least 1".into());
        }
        if self.num_beams > 1 && self.do_sample {
            return Err(
                "beam sampling is not supported: use either num_beams > 1 or do_sample".into(),
            );
        }
        if self.num_beams > 1 && (self.repetition_penalty != 1.0 || self.no_repeat_ngram_size != 0)
        {
            return Err("repetition_penalty and no_repeat_ngram_size are not supported with beam search yet".into());
        }
        if self.num_return_sequences == 0 || self.num_return_sequences > self.num_beams.max(1) {
            return Err("num_return_sequences must be between 1 and num_beams".into());
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err("min_new_tokens is larger than max_new_tokens".into());
        }
        Ok(())
    }
}

/// Small, portable, seeded generator (SplitMix64) so that a seed gives the same draws everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `RepetitionPenaltyLogitsProcessor`: each token already in the sequence has its score divided
/// by the penalty when positive, multiplied when negative.
pub fn repetition_penalty(scores: &mut [f32], seq: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &t in seq {
        if seen.insert(t) {
            if let Some(s) = scores.get_mut(t as usize) {
                *s = if *s < 0.0 {
                    *s * penalty as f32
                } else {
                    *s / penalty as f32
                };
            }
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: bans every token that would complete an n-gram already in
/// the sequence.
pub fn no_repeat_ngram(scores: &mut [f32], seq: &[u32], n: usize) {
    if n == 0 || seq.len() + 1 < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for w in seq.windows(n) {
        if &w[..n - 1] == prefix {
            if let Some(s) = scores.get_mut(w[n - 1] as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// Temperature, top-k and top-p (in that order), as transformers' warpers.
pub fn warp(scores: &mut [f32], temperature: f64, top_k: usize, top_p: f64) {
    if temperature != 1.0 {
        for s in scores.iter_mut() {
            *s /= temperature as f32;
        }
    }
    if top_k > 0 && top_k < scores.len() {
        let mut sorted: Vec<f32> = scores.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        for s in scores.iter_mut() {
            if *s < kth {
                *s = f32::NEG_INFINITY;
            }
        }
    }
    if top_p < 1.0 {
        // Ascending order; drop the low tail whose cumulative probability is <= 1 - top_p,
        // always keeping the most likely token.
        let probs = softmax(scores);
        let mut idx: Vec<usize> = (0..scores.len()).collect();
        idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let mut cum = 0.0f64;
        let last = idx.len().saturating_sub(1);
        for (rank, &i) in idx.iter().enumerate() {
            cum += probs[i];
            if cum <= 1.0 - top_p && rank < last {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}

pub fn softmax(scores: &[f32]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = scores
        .iter()
        .map(|&s| {
            if s == f32::NEG_INFINITY {
                0.0
            } else {
                (s as f64 - max).exp()
            }
        })
        .collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

/// Draws from softmax(scores).
pub fn sample(scores: &[f32], rng: &mut Rng) -> u32 {
    let p = softmax(scores);
    let mut u = rng.next_f64();
    for (i, &pi) in p.iter().enumerate() {
        if u < pi {
            return i as u32;
        }
        u -= pi;
    }
    argmax(scores)
}

/// Chooses the next token from raw logits: `seq` is the whole sequence so far (prompt and
/// generated), `new` how many tokens were generated, `suppress` tokens that are never chosen.
pub fn choose(
    raw: &[f32],
    seq: &[u32],
    new: usize,
    cfg: &GenerationConfig,
    eos: u32,
    suppress: &[u32],
    rng: &mut Rng,
) -> u32 {
    let mut s = raw.to_vec();
    for &t in suppress {
        if let Some(x) = s.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    repetition_penalty(&mut s, seq, cfg.repetition_penalty);
    no_repeat_ngram(&mut s, seq, cfg.no_repeat_ngram_size);
    if new < cfg.min_new_tokens {
        if let Some(x) = s.get_mut(eos as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    if cfg.do_sample {
        warp(&mut s, cfg.temperature, cfg.top_k, cfg.top_p);
        sample(&s, rng)
    } else {
        argmax(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![2.0, 1.0, 0.5, 0.0, -1.0, 3.0, -2.0, 1.5]
    }

    #[test]
    fn seeded_draws_repeat() {
        let cfg = GenerationConfig {
            do_sample: true,
            ..Default::default()
        };
        let draw = |seed| {
            let mut r = Rng::new(seed);
            (0..50)
                .map(|i| choose(&logits(), &[], i, &cfg, 99, &[], &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_never_leaves_the_top_k() {
        let cfg = GenerationConfig {
            do_sample: true,
            top_k: 3,
            ..Default::default()
        };
        let mut r = Rng::new(1);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..5000 {
            seen.insert(choose(&logits(), &[], 5, &cfg, 99, &[], &mut r));
        }
        // The three largest logits are at 5 (3.0), 0 (2.0), 7 (1.5).
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 5, 7]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let l = logits();
        let p = softmax(&l);
        // Nucleus for top_p = 0.6: the smallest top set whose mass exceeds 0.6.
        let mut order: Vec<usize> = (0..l.len()).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        let mut mass = 0.0;
        let mut nucleus = Vec::new();
        for &i in &order {
            nucleus.push(i as u32);
            mass += p[i];
            if mass > 0.6 {
                break;
            }
        }
        let cfg = GenerationConfig {
            do_sample: true,
            top_p: 0.6,
            ..Default::default()
        };
        let mut r = Rng::new(3);
        for _ in 0..5000 {
            let t = choose(&l, &[], 5, &cfg, 99, &[], &mut r);
            assert!(nucleus.contains(&t), "{t} outside {nucleus:?}");
        }
    }

    #[test]
    fn temperature_matches_the_softmax_frequencies() {
        let cfg = GenerationConfig {
            do_sample: true,
            temperature: 2.0,
            ..Default::default()
        };
        let scaled: Vec<f32> = logits().iter().map(|x| x / 2.0).collect();
        let p = softmax(&scaled);
        let n = 40_000;
        let mut counts = vec![0usize; p.len()];
        let mut r = Rng::new(11);
        for _ in 0..n {
            counts[choose(&logits(), &[], 5, &cfg, 99, &[], &mut r) as usize] += 1;
        }
        for (c, pi) in counts.iter().zip(&p) {
            let f = *c as f64 / n as f64;
            let sd = (pi * (1.0 - pi) / n as f64).sqrt();
            assert!((f - pi).abs() < 5.0 * sd + 1e-4, "freq {f} vs p {pi}");
        }
    }

    #[test]
    fn penalties_and_min_tokens() {
        let mut s = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);

        let mut s = vec![0.0; 5];
        no_repeat_ngram(&mut s, &[1, 2, 3, 1, 2], 3);
        assert_eq!(s[3], f32::NEG_INFINITY); // "1 2 3" would repeat
        assert_eq!(s.iter().filter(|x| x.is_infinite()).count(), 1);

        let cfg = GenerationConfig {
            min_new_tokens: 2,
            ..Default::default()
        };
        let l = vec![0.0, 5.0, 1.0];
        let mut r = Rng::new(0);
        assert_eq!(choose(&l, &[], 0, &cfg, 1, &[], &mut r), 2);
        assert_eq!(choose(&l, &[], 2, &cfg, 1, &[], &mut r), 1);
        assert_eq!(choose(&l, &[], 2, &cfg, 1, &[1], &mut r), 2);
    }
}
