//! Decoder language models, one file per family. Each file holds its config (parsed from the
//! LM repo's `config.json`) and its forward; a family joins by one line in [`FAMILIES`]. The
//! Flamingo wrapper runs a gated cross-attention block before any decoder block, with the
//! same KV cache ([`LayerCache`]) for every family.

pub mod gpt_neox;
pub mod llama;
pub mod mosaic_gpt;
pub mod mpt;

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::nn::{HasLinears, Vb};

/// A family: the `model_type`s of `config.json` it reads, and how.
pub struct Family {
    pub model_types: &'static [&'static str],
    pub parse: fn(&Value, &Path) -> Result<std::sync::Arc<dyn LmSpec>>,
}

/// The families this version runs.
pub const FAMILIES: &[Family] = &[
    Family {
        model_types: &["mosaic_gpt"],
        parse: mosaic_gpt::MosaicGptConfig::parse,
    },
    Family {
        model_types: &["mpt"],
        parse: mpt::MptConfig::parse,
    },
    Family {
        model_types: &["gpt_neox"],
        parse: gpt_neox::GptNeoXConfig::parse,
    },
    Family {
        model_types: &["llama"],
        parse: llama::LlamaConfig::parse,
    },
];

/// A parsed `config.json`: the shape of a decoder and how to build it.
pub trait LmSpec: Send + Sync + std::fmt::Debug {
    /// The family's name, for messages.
    fn family(&self) -> &'static str;
    fn hidden_size(&self) -> usize;
    fn n_layers(&self) -> usize;
    fn max_seq_len(&self) -> usize;
    /// The LM repo's tensors the model takes, with their shapes (random weights for
    /// benchmarks, memory estimates). The embedding (and an untied output projection) come
    /// from OpenFlamingo's checkpoint instead ([`LmSpec::checkpoint_tensors`]).
    fn lm_tensors(&self) -> Vec<(String, Vec<usize>)>;
    /// The checkpoint's language-model tensors for a vocabulary of `vocab` (canonical names:
    /// `embed`, `embed_out`).
    fn checkpoint_tensors(&self, vocab: usize) -> Vec<(String, Vec<usize>)> {
        vec![("embed".into(), vec![vocab, self.hidden_size()])]
    }
    /// Builds the decoder: `lm` is the LM repo, `ckpt` the checkpoint (its `embed`).
    fn build(&self, lm: &Vb, ckpt: &Vb) -> Result<Box<dyn Decoder>>;
}

/// A language model's config, whatever its family.
#[derive(Clone, Debug)]
pub struct LmConfig(pub std::sync::Arc<dyn LmSpec>);

impl LmConfig {
    /// Parses a language model's `config.json` (read from `path`) by its `model_type`.
    pub fn from_value(v: &Value, path: &Path) -> Result<Self> {
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let family = FAMILIES
            .iter()
            .find(|f| f.model_types.contains(&model_type))
            .ok_or_else(|| Error::Config {
                path: path.to_path_buf(),
                reason: format!(
                    "language model type `{model_type}` is not supported (supported: {})",
                    FAMILIES
                        .iter()
                        .flat_map(|f| f.model_types.iter().copied())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        Ok(Self((family.parse)(v, path)?))
    }
}

impl std::ops::Deref for LmConfig {
    type Target = dyn LmSpec;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// What every block of one forward pass shares: the attention bias [B or 1, heads, s_q, s_k]
/// (causal, padding, ALiBi where the family has it) and, for rotary families, the cos and sin
/// tables [B, s_q, rotary/2] of the new tokens' positions.
pub struct Step {
    pub bias: Tensor,
    pub rotary: Option<(Tensor, Tensor)>,
}

impl Step {
    /// A rotary family's step: the causal (+ padding) bias and the rotary tables of the new
    /// tokens' positions.
    pub(super) fn rotary(
        rotary: &crate::nn::rotary::Rotary,
        batch: usize,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<Self> {
        let pos = positions(batch, past, s_q, key_mask);
        Ok(Self {
            bias: causal_bias(past, s_q, key_mask, None, device)?,
            rotary: Some(rotary.tables(&pos, device)?),
        })
    }
}

/// The rows of an embedding table [vocab, d] for ids [B, T]: [B, T, d].
pub(super) fn embed_rows(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let d = table.dim(1)?;
    Ok(table
        .index_select(&ids.flatten_all()?, 0)?
        .reshape((b, t, d))?)
}

/// One decoder's forward, block by block.
pub trait Decoder: HasLinears + Send + Sync {
    fn n_layers(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn max_seq_len(&self) -> usize;
    /// Token embeddings: ids [B, T] → [B, T, d].
    fn embed(&self, ids: &Tensor) -> Result<Tensor>;
    /// What the blocks of a pass of `s_q` new tokens after `past` cached ones share, for
    /// `batch` rows; `key_mask[b][k]` false marks a padding key.
    fn step(
        &self,
        batch: usize,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<Step>;
    /// Decoder block `i` with its KV cache.
    fn block(&self, i: usize, x: &Tensor, step: &Step, cache: &mut LayerCache) -> Result<Tensor>;
    /// Final norm and output projection: [B, T, d] → [B, T, vocab].
    fn logits(&self, x: &Tensor) -> Result<Tensor>;
}

/// The language model of a Flamingo.
pub type LanguageModel = Box<dyn Decoder>;

/// Positions of `s_q` new tokens after `past` keys in each of `batch` rows: the count of
/// non-padding keys before each (HF's `cumsum(attention_mask) - 1`, as rotary families take
/// it under left padding; a padding position gets 1, as there); without a mask,
/// `past..past + s_q`.
pub fn positions(
    batch: usize,
    past: usize,
    s_q: usize,
    key_mask: Option<&[Vec<bool>]>,
) -> Vec<Vec<usize>> {
    match key_mask {
        None => vec![(past..past + s_q).collect(); batch],
        Some(rows) => rows
            .iter()
            .map(|row| {
                let mut n = row[..past].iter().filter(|&&k| k).count();
                row[past..past + s_q]
                    .iter()
                    .map(|&k| {
                        if k {
                            n += 1;
                            n - 1
                        } else {
                            1
                        }
                    })
                    .collect()
            })
            .collect(),
    }
}

/// The first `vocab` rows of an output projection `w` [rows, d]: cut when the checkpoint's
/// vocabulary is smaller than the LM repo's, zero rows added when it is larger (the tokens
/// OpenFlamingo added, whose rows the checkpoint does not hold; docs/openflamingo.md §6.3).
pub fn rows_for_vocab(w: &Tensor, vocab: usize) -> Result<Tensor> {
    let (rows, d) = w.dims2()?;
    if vocab <= rows {
        return Ok(w.narrow(0, 0, vocab)?.contiguous()?);
    }
    let extra = Tensor::zeros((vocab - rows, d), w.dtype(), w.device())?;
    Ok(Tensor::cat(&[w, &extra], 0)?)
}

/// Causal (+ key padding) bias with an optional per-head ALiBi slope, [B, heads, s_q, s_k]
/// (one head and no slopes: [B, 1, s_q, s_k]).
pub fn causal_bias(
    past: usize,
    s_q: usize,
    key_mask: Option<&[Vec<bool>]>,
    alibi_slopes: Option<&[f32]>,
    device: &Device,
) -> Result<Tensor> {
    let h = alibi_slopes.map(|s| s.len()).unwrap_or(1);
    let s_k = past + s_q;
    let batch = key_mask.map(|m| m.len()).unwrap_or(1);
    let mut v = vec![0f32; batch * h * s_q * s_k];
    for b in 0..batch {
        for hi in 0..h {
            let slope = alibi_slopes.map(|s| s[hi]);
            for i in 0..s_q {
                let row = ((b * h + hi) * s_q + i) * s_k;
                for k in 0..s_k {
                    let masked = k > past + i || key_mask.map(|m| !m[b][k]).unwrap_or(false);
                    v[row + k] = if masked {
                        f32::MIN
                    } else {
                        slope.map_or(0.0, |s| (k as f32 - (s_k as f32 - 1.0)) * s)
                    };
                }
            }
        }
    }
    Ok(Tensor::from_vec(v, (batch, h, s_q, s_k), device)?)
}

/// Positions a layer's key/value buffers get beyond what they need when they are made: a
/// caption's tokens are written in place after its prompt's.
const KV_ROOM: usize = 64;

/// Keys and values of one layer, [B, heads, S, head_dim], in buffers with room to grow: each
/// step writes its keys and values after the others, instead of copying the whole cache into
/// a new tensor every token. A clone (a kept prompt prefix) shares the buffers until it or the
/// original appends: whichever does while they are shared first copies what it has into
/// buffers of its own.
#[derive(Default, Clone)]
pub struct LayerCache {
    /// [B, heads, room, head_dim] each, the first `len` positions filled.
    kv: Option<(Tensor, Tensor)>,
    len: usize,
    /// One count per clone sharing `kv`.
    sharers: std::sync::Arc<()>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the batch rows `idx` (u32 indices, repeats allowed).
    pub fn select_rows(&mut self, idx: &Tensor) -> Result<()> {
        if let Some((k, v)) = self.kv.take() {
            let keep = |t: &Tensor| t.narrow(2, 0, self.len)?.contiguous()?.index_select(idx, 0);
            self.kv = Some((keep(&k)?, keep(&v)?));
            self.sharers = Default::default();
        }
        Ok(())
    }

    /// A decoder layer's self-attention: the new keys/values appended, then the queries
    /// attend over all of them with `bias` (causal mask and ALiBi or padding, from the step).
    pub fn attend(
        &mut self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        scale: f64,
        bias: &Tensor,
    ) -> Result<Tensor> {
        let (k, v) = self.append(k, v)?;
        Ok(crate::nn::attention::attention(
            crate::nn::attention::Site::SelfAttention,
            q,
            &k,
            &v,
            scale,
            Some(bias),
        )?)
    }

    /// Appends new keys/values [B, heads, s, head_dim] and returns all of them (views of the
    /// buffers).
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (b, h, s, d) = k.dims4()?;
        let need = self.len + s;
        let room = match &self.kv {
            Some((bk, _)) => bk.dim(2)?,
            None => 0,
        };
        let shared = std::sync::Arc::strong_count(&self.sharers) > 1;
        let (bk, bv) = match self.kv.take() {
            Some(kv) if need <= room && !shared => kv,
            old => {
                // New buffers, with what there is copied in: a quarter more room than needed,
                // at least KV_ROOM positions.
                let room = need + KV_ROOM.max(need / 4);
                let fresh = |t: &Tensor| Tensor::zeros((b, h, room, d), t.dtype(), t.device());
                let (nk, nv) = (fresh(&k)?, fresh(&v)?);
                if let Some((ok, ov)) = old.filter(|_| self.len > 0) {
                    nk.slice_set(&ok.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    nv.slice_set(&ov.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                }
                self.sharers = Default::default();
                (nk, nv)
            }
        };
        bk.slice_set(&k.contiguous()?, 2, self.len)?;
        bv.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len = need;
        let all = (bk.narrow(2, 0, need)?, bv.narrow(2, 0, need)?);
        self.kv = Some((bk, bv));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(c: &mut LayerCache, from: f32, s: usize) -> (Vec<f32>, Vec<f32>) {
        let t = |base: f32| {
            Tensor::arange(base, base + (2 * 3 * s * 4) as f32, &Device::Cpu)
                .unwrap()
                .reshape((2, 3, s, 4))
                .unwrap()
        };
        let (k, v) = c.append(t(from), t(-from)).unwrap();
        let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(k), flat(v))
    }

    /// What `steps` appended one after another should give: each step's [2, 3, s, 4] along
    /// the positions.
    fn concatenated(steps: &[(f32, usize)], sign: f32) -> Vec<f32> {
        let parts: Vec<Tensor> = steps
            .iter()
            .map(|&(from, s)| {
                let base = sign * from;
                Tensor::arange(base, base + (2 * 3 * s * 4) as f32, &Device::Cpu)
                    .unwrap()
                    .reshape((2, 3, s, 4))
                    .unwrap()
            })
            .collect();
        Tensor::cat(&parts, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn the_cache_grows_in_place_and_a_clone_keeps_its_own_tokens() {
        let mut a = LayerCache::default();
        // A prompt, then single tokens past the first buffers' room.
        let mut steps = vec![(1000.0, 37)];
        step(&mut a, 1000.0, 37);
        for i in 0..80 {
            let from = i as f32 * 10.0;
            steps.push((from, 1));
            let (k, v) = step(&mut a, from, 1);
            assert_eq!(k, concatenated(&steps, 1.0), "step {i}");
            assert_eq!(v, concatenated(&steps, -1.0), "step {i}");
        }
        assert_eq!(a.len(), 117);
        // A kept prefix and the original go on differently; neither sees the other's tokens.
        let mut kept = a.clone();
        let (ka, _) = step(&mut a, 5.0, 2);
        let (kk, _) = step(&mut kept, 7.0, 1);
        let mut sa = steps.clone();
        sa.push((5.0, 2));
        let mut sk = steps.clone();
        sk.push((7.0, 1));
        assert_eq!(ka, concatenated(&sa, 1.0));
        assert_eq!(kk, concatenated(&sk, 1.0));
        // And on again, each in its own buffers now.
        let (ka, _) = step(&mut a, 9.0, 1);
        sa.push((9.0, 1));
        assert_eq!(ka, concatenated(&sa, 1.0));
        let (kk, _) = step(&mut kept, 11.0, 1);
        sk.push((11.0, 1));
        assert_eq!(kk, concatenated(&sk, 1.0));
        // Rows kept or repeated (beams).
        let idx = Tensor::new(&[1u32, 1, 0], &Device::Cpu).unwrap();
        a.select_rows(&idx).unwrap();
        assert_eq!(a.len(), 120);
        let (k, _) = a
            .append(
                Tensor::zeros((3, 3, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
                Tensor::zeros((3, 3, 1, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
        assert_eq!(k.dims(), &[3, 3, 121, 4]);
        let whole = Tensor::new(concatenated(&sa, 1.0), &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 120, 4))
            .unwrap();
        let want = whole.index_select(&idx, 0).unwrap();
        assert_eq!(
            crate::nn::fused::max_abs_diff(&k.narrow(2, 0, 120).unwrap(), &want),
            0.0
        );
    }
}
