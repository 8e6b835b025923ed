//! What the pipeline keeps between requests: image latents by image content, and the
//! session state after the last prompt prefix (everything before the query's `<image>`), so
//! that a re-query with the same examples costs one image encode and the final prompt.

use std::collections::{HashMap, VecDeque};

use candle_core::Tensor;

use crate::model::SessionState;
use crate::types::MediaAttention;

/// Latents of this many images are kept (each is num_latents × width floats: 256 KB for the
/// released models).
pub(crate) const LATENT_ENTRIES: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub vision_hits: u64,
    pub vision_misses: u64,
    pub prefix_hits: u64,
    pub prefix_misses: u64,
}

#[derive(Default)]
pub(crate) struct PromptCaches {
    vision: HashMap<u64, Tensor>,
    order: VecDeque<u64>,
    prefix: Option<(Vec<u32>, Vec<u64>, MediaAttention, SessionState)>,
    pub stats: CacheStats,
}

impl PromptCaches {
    /// The latents of the image with content key `key`, if kept (counted as a hit or a miss).
    pub fn latents(&mut self, key: u64) -> Option<Tensor> {
        let t = self.vision.get(&key).cloned();
        match t {
            Some(_) => self.stats.vision_hits += 1,
            None => self.stats.vision_misses += 1,
        }
        t
    }

    /// Keeps an image's latents, the oldest going when the cache is full.
    pub fn keep_latents(&mut self, key: u64, t: Tensor) {
        if self.vision.insert(key, t).is_none() {
            self.order.push_back(key);
        }
        if self.order.len() > LATENT_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.vision.remove(&old);
            }
        }
    }

    /// The state after `prefix` with the images `keys` in media-attention `mode`, if it was
    /// the last one kept (counted as a hit or a miss).
    pub fn prefix(
        &mut self,
        prefix: &[u32],
        keys: &[u64],
        mode: MediaAttention,
    ) -> Option<SessionState> {
        match &self.prefix {
            Some((ids, ks, m, st)) if ids == prefix && ks[..] == keys[..] && *m == mode => {
                self.stats.prefix_hits += 1;
                Some(st.clone())
            }
            _ => {
                self.stats.prefix_misses += 1;
                None
            }
        }
    }

    pub fn keep_prefix(
        &mut self,
        prefix: &[u32],
        keys: &[u64],
        mode: MediaAttention,
        state: SessionState,
    ) {
        self.prefix = Some((prefix.to_vec(), keys.to_vec(), mode, state));
    }
}
