//! Gated cross-attention block and the media-location masks (docs/openflamingo.md §4).

use candle_core::{Device, Module, Tensor};

use crate::error::Result;
use crate::model::perceiver::{FeedForward, DIM_HEAD, HEADS};
use crate::nn::norm::layer_norm;
use crate::nn::split_heads;
use crate::nn::Vb;
use crate::nn::{HasLinears, Linear};
use crate::types::MediaAttention;

/// For each token, which image it may see: 0 = none, k = the k-th image (1-based), given the
/// images before these tokens and the `n_images` the row holds.
///
/// - [`MediaAttention::Previous`] (v2): the running count of `<image>` tokens up to and
///   including the token.
/// - [`MediaAttention::Next`] (v1): that count plus one for every token that is not `<image>`,
///   and none where it passes the row's last image.
pub fn text_time(
    ids: &[u32],
    media_id: u32,
    images_before: u32,
    n_images: u32,
    mode: MediaAttention,
) -> Vec<u32> {
    let mut count = images_before;
    ids.iter()
        .map(|&t| {
            if t == media_id {
                count += 1;
            }
            match mode {
                MediaAttention::Previous => count,
                MediaAttention::Next => {
                    let time = if t == media_id { count } else { count + 1 };
                    if time > n_images {
                        0
                    } else {
                        time
                    }
                }
            }
        })
        .collect()
}

/// Where a prompt can be cut so that the part before does not depend on its last image: the
/// index of the last `<image>` (v2: tokens before it never see it), or just after the one
/// before it (v1: text before an image attends to that image). None when there is no such cut.
pub fn split_before_last_image(ids: &[u32], media_id: u32, mode: MediaAttention) -> Option<usize> {
    let mut markers = ids
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == media_id)
        .map(|(i, _)| i)
        .rev();
    let last = markers.next()?;
    match mode {
        MediaAttention::Previous => Some(last),
        MediaAttention::Next => markers.next().map(|i| i + 1),
    }
}

/// The cross-attention mask of one forward pass, shared by every block.
pub struct MediaMask {
    /// [B, 1, Tq, Tk] f32 added to the scores: 0 where query i may attend to media key k,
    /// -f32::MAX (the reference's fill value) where it may not.
    bias: Tensor,
    /// [B, Tq, 1] f32: 0 for tokens before the first image (their output is zeroed).
    has_media: Tensor,
}

impl MediaMask {
    /// `times[b][i]` from [`text_time`]; `n_images` images of `n_latents` latents each.
    pub fn new(
        times: &[Vec<u32>],
        n_images: usize,
        n_latents: usize,
        device: &Device,
    ) -> Result<Self> {
        let b = times.len();
        let tq = times.first().map(|t| t.len()).unwrap_or(0);
        let tk = n_images * n_latents;
        let mut bias = vec![-f32::MAX; b * tq * tk];
        let mut has = vec![0f32; b * tq];
        for (bi, row) in times.iter().enumerate() {
            for (i, &t) in row.iter().enumerate() {
                let base = (bi * tq + i) * tk;
                if t == 0 {
                    continue;
                }
                has[bi * tq + i] = 1.0;
                let img = t as usize - 1;
                if img < n_images {
                    bias[base + img * n_latents..base + (img + 1) * n_latents].fill(0.0);
                }
                // More `<image>` markers than images: nothing matches, every logit is the same
                // fill value (a score plus -f32::MAX rounds to it) and the softmax is uniform
                // over all keys, as in the reference.
            }
        }
        Ok(Self {
            bias: Tensor::from_vec(bias, (b, 1, tq, tk), device)?,
            has_media: Tensor::from_vec(has, (b, tq, 1), device)?,
        })
    }
}

/// Keys and values of the media for one block, computed once per prompt.
#[derive(Clone)]
pub struct MediaKv {
    k: Tensor,
    v: Tensor,
}

impl MediaKv {
    /// Appends the keys/values of later images.
    pub(crate) fn append(&mut self, later: MediaKv) -> Result<()> {
        self.k = Tensor::cat(&[&self.k, &later.k], 2)?;
        self.v = Tensor::cat(&[&self.v, &later.v], 2)?;
        Ok(())
    }

    pub(crate) fn select_rows(&mut self, idx: &Tensor) -> Result<()> {
        self.k = self.k.index_select(idx, 0)?;
        self.v = self.v.index_select(idx, 0)?;
        Ok(())
    }
}

impl HasLinears for GatedCrossAttention {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.to_q, &mut self.to_kv, &mut self.to_out];
        v.extend(self.ff.linears_mut());
        v
    }
}

pub struct GatedCrossAttention {
    attn_gate: Tensor,
    ff_gate: Tensor,
    norm: crate::nn::norm::LayerNorm,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    ff: FeedForward,
}

impl GatedCrossAttention {
    /// The tensors of one block for an LM of width `dim` and media of width `dim_visual`,
    /// with their shapes.
    pub fn tensor_shapes(dim: usize, dim_visual: usize) -> Vec<(String, Vec<usize>)> {
        let inner = HEADS * DIM_HEAD;
        [
            ("attn_gate", vec![1]),
            ("ff_gate", vec![1]),
            ("attn.norm.weight", vec![dim]),
            ("attn.norm.bias", vec![dim]),
            ("attn.to_q.weight", vec![inner, dim]),
            ("attn.to_kv.weight", vec![2 * inner, dim_visual]),
            ("attn.to_out.weight", vec![dim, inner]),
            ("ff.0.weight", vec![dim]),
            ("ff.0.bias", vec![dim]),
            ("ff.1.weight", vec![4 * dim, dim]),
            ("ff.3.weight", vec![dim, 4 * dim]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect()
    }

    /// `vb` points at `…gated_cross_attn_layer` (or its alias); `dim` = LM width.
    pub fn load(vb: &Vb, dim: usize, dim_visual: usize) -> Result<Self> {
        let inner = HEADS * DIM_HEAD;
        let a = vb.pp("attn");
        Ok(Self {
            attn_gate: vb.get(&[1], "attn_gate")?.tanh()?,
            ff_gate: vb.get(&[1], "ff_gate")?.tanh()?,
            norm: layer_norm(&a, "norm", dim, 1e-5, true)?,
            to_q: Linear::load(&a, "to_q", dim, inner, false)?,
            to_kv: Linear::load(&a, "to_kv", dim_visual, 2 * inner, false)?,
            to_out: Linear::load(&a, "to_out", inner, dim, false)?,
            ff: FeedForward::load(&vb.pp("ff"), dim)?,
        })
    }

    /// media: [B, n_images·n_latents, dim_visual] (image-major).
    pub fn media_kv(&self, media: &Tensor) -> Result<MediaKv> {
        let inner = HEADS * DIM_HEAD;
        let kv = self.to_kv.forward(media)?;
        Ok(MediaKv {
            k: split_heads(&kv.narrow(2, 0, inner)?, HEADS)?,
            v: split_heads(&kv.narrow(2, inner, inner)?, HEADS)?,
        })
    }

    /// x: [B, T, dim] hidden states entering the decoder block.
    pub fn forward(&self, x: &Tensor, kv: &MediaKv, mask: &MediaMask) -> Result<Tensor> {
        let h = self.norm.forward(x)?;
        let q = split_heads(&self.to_q.forward(&h)?, HEADS)?;
        let scale = (DIM_HEAD as f64).powf(-0.5);
        // Tokens before the first image see no media: their output is zeroed.
        let o = crate::nn::attention::attention(
            crate::nn::attention::Site::Cross,
            &q,
            &kv.k,
            &kv.v,
            scale,
            Some(&mask.bias),
        )?
        .broadcast_mul(&mask.has_media.to_dtype(q.dtype())?)?;
        let o = self.to_out.forward(&o)?;
        let x = (x + o.broadcast_mul(&self.attn_gate)?)?;
        let f = self.ff.forward(&x)?;
        Ok((&x + f.broadcast_mul(&self.ff_gate)?)?)
    }
}

/// Which decoder layers carry a cross-attention block: layer i iff (i+1) mod n == 0.
pub fn xattn_every_n(indices: &[usize], n_layers: usize) -> Option<usize> {
    let first = *indices.iter().min()?;
    let n = first + 1;
    let expected: Vec<usize> = (0..n_layers).filter(|i| (i + 1) % n == 0).collect();
    let mut got = indices.to_vec();
    got.sort_unstable();
    got.dedup();
    (got == expected).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_time_counts_images_up_to_and_including_the_marker() {
        // <img> Output : cap <eoc> <img> Output :   (docs/openflamingo.md §4.3 worked example, v2 column)
        let ids = [9, 1, 2, 3, 4, 8, 1, 2, 3];
        let prev = MediaAttention::Previous;
        assert_eq!(
            text_time(&ids, 1, 0, 2, prev),
            vec![0, 1, 1, 1, 1, 1, 2, 2, 2]
        );
        // Continuing after two images (cached media): new tokens see the last image.
        assert_eq!(text_time(&[5, 6], 1, 2, 2, prev), vec![2, 2]);
    }

    #[test]
    fn v1_text_time_looks_at_the_next_image() {
        // docs/openflamingo.md §4.3's worked example, v1 column.
        let ids = [9, 1, 2, 3, 4, 8, 1, 2, 3];
        let next = MediaAttention::Next;
        assert_eq!(
            text_time(&ids, 1, 0, 2, next),
            vec![1, 1, 2, 2, 2, 2, 2, 0, 0]
        );
        // In two passes (a kept prefix up to and including the first image, then the rest):
        // the same times.
        let cut = split_before_last_image(&ids, 1, next).unwrap();
        assert_eq!(cut, 2);
        let mut both = text_time(&ids[..cut], 1, 0, 1, next);
        both.extend(text_time(&ids[cut..], 1, 1, 2, next));
        assert_eq!(both, vec![1, 1, 2, 2, 2, 2, 2, 0, 0]);
        // Generated tokens after the prompt: none.
        assert_eq!(text_time(&[5, 6], 1, 2, 2, next), vec![0, 0]);
        // v2 cuts before the last image.
        assert_eq!(
            split_before_last_image(&ids, 1, MediaAttention::Previous),
            Some(6)
        );
        assert_eq!(split_before_last_image(&[1, 5], 1, next), None);
    }

    #[test]
    fn every_n_rule() {
        assert_eq!(xattn_every_n(&[0, 1, 2, 3], 4), Some(1));
        assert_eq!(xattn_every_n(&[1, 3], 4), Some(2));
        assert_eq!(xattn_every_n(&[3, 7, 11, 15, 19, 23, 27, 31], 32), Some(4));
        assert_eq!(xattn_every_n(&[1, 2], 4), None);
        assert_eq!(xattn_every_n(&[], 4), None);
    }

    #[test]
    fn mask_allows_only_the_current_image_and_zeroes_text_before_images() {
        let m = MediaMask::new(&[vec![0, 1, 2, 3]], 2, 2, &Device::Cpu).unwrap();
        let bias: Vec<f32> = m.bias.flatten_all().unwrap().to_vec1().unwrap();
        let allowed: Vec<u8> = bias.iter().map(|&b| u8::from(b == 0.0)).collect();
        assert_eq!(
            allowed,
            vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
        );
        assert!(bias.iter().all(|&b| b == 0.0 || b == -f32::MAX));
        let has: Vec<f32> = m.has_media.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(has, vec![0.0, 1.0, 1.0, 1.0]);
    }
}
