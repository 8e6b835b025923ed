//! Decoder language models, one file per family. Each exposes the same small surface so
//! that the Flamingo wrapper can run a gated cross-attention block before any decoder block.

pub mod mosaic_gpt;

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Additive attention bias [B or 1, heads, s_q, s_k] for one forward pass.
pub struct AttnBias(pub Tensor);

/// Keys and values of one layer, [B, heads, S, head_dim].
#[derive(Default, Clone)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.kv
            .as_ref()
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the batch rows `idx` (u32 indices, repeats allowed).
    pub fn select_rows(&mut self, idx: &Tensor) -> Result<()> {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.index_select(idx, 0)?, v.index_select(idx, 0)?));
        }
        Ok(())
    }

    /// Appends new keys/values and returns the full ones.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
        };
        self.kv = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// The decoder families the model code can run.
pub enum LanguageModel {
    MosaicGpt(mosaic_gpt::MosaicGpt),
}

impl LanguageModel {
    pub fn linears_mut(&mut self) -> Vec<&mut crate::model::linear::Linear> {
        use crate::model::linear::HasLinears;
        match self {
            LanguageModel::MosaicGpt(m) => m.linears_mut(),
        }
    }

    pub fn n_layers(&self) -> usize {
        match self {
            LanguageModel::MosaicGpt(m) => m.n_layers(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            LanguageModel::MosaicGpt(m) => m.vocab_size(),
        }
    }

    pub fn max_seq_len(&self) -> usize {
        match self {
            LanguageModel::MosaicGpt(m) => m.config().max_seq_len,
        }
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            LanguageModel::MosaicGpt(m) => m.embed(ids),
        }
    }

    pub fn attn_bias(
        &self,
        past: usize,
        s_q: usize,
        key_mask: Option<&[Vec<bool>]>,
        device: &Device,
    ) -> Result<AttnBias> {
        match self {
            LanguageModel::MosaicGpt(m) => m.attn_bias(past, s_q, key_mask, device),
        }
    }

    pub fn block(
        &self,
        i: usize,
        x: &Tensor,
        bias: &AttnBias,
        cache: &mut LayerCache,
    ) -> Result<Tensor> {
        match self {
            LanguageModel::MosaicGpt(m) => m.block(i, x, bias, cache),
        }
    }

    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            LanguageModel::MosaicGpt(m) => m.logits(x),
        }
    }
}
