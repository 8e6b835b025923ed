//! Where a caption looked: for each generated token, a heatmap over the query image (its
//! cross-attention over the query's latents, averaged over heads and layers, composed with the
//! perceiver's attention of those latents over the patch grid, averaged likewise) and the
//! self-attention mass it put on each example's text. These are attention weights, not a
//! causal attribution (the ablation is the causal measure). They come from one recorded
//! forward pass of the prompt and the caption ([`crate::nn::attention::recording`]).

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::nn::attention::{recording, Site};
use crate::types::MediaAttention;

use super::{read_images, CaptionRequest, Captioner};

/// The recorded weights of one forward pass, per layer in order, batch dimension dropped.
pub struct AttentionWeights {
    /// The query image's perceiver attention [heads, latents, patches + latents].
    pub perceiver: Vec<Tensor>,
    /// Each cross-attention block's [heads, tokens, images · latents].
    pub cross: Vec<Tensor>,
    /// Each decoder layer's self-attention [heads, tokens, tokens].
    pub self_attention: Vec<Tensor>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenAttention {
    /// Over the query image's patch grid, row-major, summing to 1; None where the token
    /// attends to no image (v1's attention: text after the last image sees none).
    pub heatmap: Option<Vec<f32>>,
    /// Self-attention mass on each span of [`AttentionMaps::spans`].
    pub spans: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AttentionMaps {
    /// The patch grid's side (16 for the released models: 224 / 14).
    pub grid: usize,
    /// "example 1", …, "query prompt", "caption so far".
    pub spans: Vec<String>,
    /// One per caption token, in order.
    pub tokens: Vec<TokenAttention>,
}

/// Mean over the heads and layers of `w[layer]` [heads, ..] → [..].
fn mean_over(ws: &[Tensor]) -> Result<Tensor> {
    let means = ws
        .iter()
        .map(|w| w.mean(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&means, 0)?.mean(0)?)
}

impl Captioner {
    /// The attention weights of the request's prompt followed by `extra` tokens, in one
    /// forward pass without caches (and the query image's perceiver weights).
    pub fn attention_weights(
        &self,
        req: &CaptionRequest,
        extra: &[u32],
        cancel: &AtomicBool,
    ) -> Result<AttentionWeights> {
        let (_, mut ids) = self.checked_prompt(req)?;
        ids.extend_from_slice(extra);
        if ids.len() > self.model.max_seq_len() {
            return Err(Error::ContextTooLong {
                needed: ids.len(),
                limit: self.model.max_seq_len(),
            });
        }
        let images = read_images(&req.images())?;
        let (query, shots) = images
            .split_last()
            .ok_or_else(|| Error::Invalid("no query image".into()))?;
        let mut latents = {
            let mut caches = self.lock_caches()?;
            shots
                .iter()
                .map(|i| self.latents(&mut caches, i, &|| cancel.load(Ordering::Relaxed)))
                .collect::<Result<Vec<_>>>()?
        };
        // Encoded afresh, not from the cache: the recording needs its perceiver pass.
        let (q, perceiver) = recording(|| self.encode(query, &|| cancel.load(Ordering::Relaxed)));
        latents.push(q?);
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let media = Tensor::cat(&latents, 0)?.unsqueeze(0)?;
        let mode = self.media_attention(req);
        let mut s = self.model.session_in(&media, mode)?;
        let stop = || cancel.load(Ordering::Relaxed);
        let (ran, recorded) = recording(|| s.forward_or_stop(&[ids.clone()], &stop));
        ran?;
        let mut w = AttentionWeights {
            perceiver: Vec::new(),
            cross: Vec::new(),
            self_attention: Vec::new(),
        };
        for (site, t) in perceiver.into_iter().chain(recorded) {
            let t = t.squeeze(0)?;
            match site {
                Site::Perceiver => w.perceiver.push(t),
                Site::Cross => w.cross.push(t),
                Site::SelfAttention => w.self_attention.push(t),
                Site::Vision => {}
            }
        }
        Ok(w)
    }

    /// Where each token of `caption` (token ids, as generated after the request's prompt)
    /// looked.
    pub fn attention_maps(
        &self,
        req: &CaptionRequest,
        caption: &[u32],
        cancel: &AtomicBool,
    ) -> Result<AttentionMaps> {
        let (_, prompt) = self.checked_prompt(req)?;
        let n = caption.len();
        let w = self.attention_weights(req, &caption[..n.saturating_sub(1)], cancel)?;
        let media = self.tokenizer.media_id;
        let markers: Vec<usize> = prompt
            .iter()
            .enumerate()
            .filter(|(_, &t)| t == media)
            .map(|(i, _)| i)
            .collect();
        let p_len = prompt.len();
        let n_shots = markers.len().saturating_sub(1);
        let mut spans: Vec<String> = (1..=n_shots).map(|k| format!("example {k}")).collect();
        spans.push("query prompt".into());
        spans.push("caption so far".into());
        let mut bounds: Vec<(usize, usize)> =
            (0..n_shots).map(|k| (markers[k], markers[k + 1])).collect();
        bounds.push((markers.last().copied().unwrap_or(0), p_len));

        // The perceiver's attention of the query's latents over its patches [latents, patches].
        let per = mean_over(&w.perceiver)?;
        let (n_lat, keys) = per.dims2()?;
        let patches = keys - n_lat;
        let per = per.narrow(1, 0, patches)?;
        let grid = (patches as f64).sqrt().round() as usize;
        let cross = mean_over(&w.cross)?; // [tokens, images · latents]
        let selfa: Vec<Vec<f32>> = mean_over(&w.self_attention)?.to_vec2()?;
        let q_off = cross.dim(D::Minus1)? - n_lat;
        let sees_query = self.media_attention(req) == MediaAttention::Previous;
        let tokens = (0..n)
            .map(|i| {
                let p = p_len - 1 + i;
                let heatmap = if sees_query {
                    let x = cross.get(p)?.narrow(0, q_off, n_lat)?.unsqueeze(0)?;
                    let h: Vec<f32> = x.matmul(&per)?.squeeze(0)?.to_vec1()?;
                    let sum: f32 = h.iter().sum();
                    Some(h.iter().map(|v| v / sum.max(f32::MIN_POSITIVE)).collect())
                } else {
                    None
                };
                let row = &selfa[p];
                let mass = |(a, b): (usize, usize)| row[a..b.min(p + 1)].iter().sum::<f32>();
                let mut s: Vec<f32> = bounds.iter().map(|&b| mass(b)).collect();
                s.push(mass((p_len, p + 1)));
                Ok(TokenAttention { heatmap, spans: s })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AttentionMaps {
            grid,
            spans,
            tokens,
        })
    }
}
