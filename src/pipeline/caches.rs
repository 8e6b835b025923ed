//! What the pipeline keeps between requests: image latents by image content, and the
//! session states after the last few prompt prefixes (everything before the query's
//! `<image>`), so that a re-query with the same examples costs one image encode and the final
//! prompt, and a prompt whose examples extend a kept prefix (the k-shot prompt of a sweep
//! after the (k−1)-shot one) runs only its new examples.

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
    /// Prefixes run on from a shorter kept one (only their new examples ran).
    pub prefix_extends: u64,
    pub prefix_misses: u64,
}

/// States after this many prompt prefixes are kept, the least recently used going first (a
/// 0/1/2/4-shot sweep keeps three; a state holds the prefix's key/value cache, tens of MB for
/// the released models).
pub(crate) const PREFIX_ENTRIES: usize = 4;

struct PrefixEntry {
    ids: Vec<u32>,
    keys: Vec<u64>,
    mode: MediaAttention,
    state: SessionState,
}

/// A kept state that starts the prefix asked for: after its first `tokens` tokens and
/// `images` images.
pub(crate) struct PrefixStart {
    pub state: SessionState,
    pub tokens: usize,
    pub images: usize,
}

#[derive(Default)]
pub(crate) struct PromptCaches {
    vision: HashMap<u64, Tensor>,
    order: VecDeque<u64>,
    /// Most recently used last.
    prefixes: VecDeque<PrefixEntry>,
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

    /// The longest kept state that `prefix` with the images `keys` in media-attention `mode`
    /// starts with (counted as a hit when it is the whole prefix, an extension when it is a
    /// part, else a miss). Under v1's attention (text attends to the image after it) only a
    /// state that ends with an `<image>` can be run on; the pipeline keeps no other.
    pub fn longest_prefix(
        &mut self,
        prefix: &[u32],
        keys: &[u64],
        mode: MediaAttention,
        media_id: u32,
    ) -> Option<PrefixStart> {
        let found = self
            .prefixes
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.mode == mode
                    && prefix.starts_with(&e.ids)
                    && keys.starts_with(&e.keys)
                    && (e.ids.len() == prefix.len()
                        || mode == MediaAttention::Previous
                        || e.ids.last() == Some(&media_id))
            })
            .max_by_key(|(_, e)| e.ids.len())
            .map(|(i, _)| i);
        let Some(i) = found else {
            self.stats.prefix_misses += 1;
            return None;
        };
        let e = self.prefixes.remove(i)?;
        let start = PrefixStart {
            state: e.state.clone(),
            tokens: e.ids.len(),
            images: e.keys.len(),
        };
        if start.tokens == prefix.len() && start.images == keys.len() {
            self.stats.prefix_hits += 1;
        } else {
            self.stats.prefix_extends += 1;
        }
        self.prefixes.push_back(e);
        Some(start)
    }

    /// Keeps the state after `prefix` with the images `keys`, the least recently used one
    /// going when there are [`PREFIX_ENTRIES`].
    pub fn keep_prefix(
        &mut self,
        prefix: &[u32],
        keys: &[u64],
        mode: MediaAttention,
        state: SessionState,
    ) {
        self.prefixes
            .retain(|e| !(e.ids == prefix && e.keys == keys && e.mode == mode));
        self.prefixes.push_back(PrefixEntry {
            ids: prefix.to_vec(),
            keys: keys.to_vec(),
            mode,
            state,
        });
        while self.prefixes.len() > PREFIX_ENTRIES {
            self.prefixes.pop_front();
        }
    }
}
