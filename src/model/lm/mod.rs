//! Decoder language models, one file per family. Each exposes the same small surface so
//! that the Flamingo wrapper can run a gated cross-attention block before any decoder block.

pub mod mosaic_gpt;

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Additive attention bias [B or 1, heads, s_q, s_k] for one forward pass.
pub struct AttnBias(pub Tensor);

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
            crate::model::ops::max_abs_diff(&k.narrow(2, 0, 120).unwrap(), &want),
            0.0
        );
    }
}
