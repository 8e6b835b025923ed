//! The OpenFlamingo architecture: CLIP vision tower → perceiver resampler → gated
//! cross-attention blocks inside a decoder LM (one file per family in `lm/`). Built from
//! weight sources ([`crate::nn::WeightSource`]); it opens no file, reads no environment
//! variable and starts no thread of its own. Tensors in, tensors out.

pub mod config;
pub mod lm;
pub mod perceiver;
pub mod vision;
pub mod xattn;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::nn::{HasLinears, Linear, Vb};
use crate::types::{MediaAttention, WeightFormat};
use config::VisionConfig;
use lm::LmConfig;
use lm::{LanguageModel, LayerCache};
use perceiver::PerceiverResampler;
use vision::VisionTower;
use xattn::{xattn_every_n, GatedCrossAttention, MediaKv, MediaMask};

/// The weight sources a model is built from.
pub struct Sources<'a> {
    /// The CLIP repo's tensors, open_clip names (the tower under `visual.`).
    pub clip: Vb<'a>,
    /// OpenFlamingo's checkpoint under canonical names: `perceiver.*`, `xattn.{i}.*`, `embed`
    /// (and `embed_out` for a language model whose output projection is not tied).
    pub ckpt: Vb<'a>,
    /// The language model's repo under its own names.
    pub lm: Vb<'a>,
}

pub struct Flamingo {
    pub(crate) vision: VisionTower,
    pub(crate) perceiver: PerceiverResampler,
    pub(crate) lm: LanguageModel,
    pub(crate) xattn: Vec<Option<GatedCrossAttention>>,
    pub(crate) media_id: u32,
    pub(crate) device: Device,
    pub(crate) format: WeightFormat,
}

impl Flamingo {
    /// Builds the model from its weight sources; `media_id` is the `<image>` token id of its
    /// tokenizer. Linear layers come in the sources' format.
    pub fn new(
        src: &Sources,
        vcfg: &VisionConfig,
        lm_cfg: &LmConfig,
        media_id: u32,
        device: &Device,
    ) -> Result<Self> {
        let vision = VisionTower::load(&src.clip.pp("visual"), vcfg)?;
        let ckpt = &src.ckpt;
        let perceiver = PerceiverResampler::load(&ckpt.pp("perceiver"), vcfg.width)?;
        let checkpoint = || std::path::PathBuf::from(ckpt.label());

        let d = lm_cfg.hidden_size();
        let n_layers = lm_cfg.n_layers();
        let idx: BTreeSet<usize> = ckpt
            .names()
            .iter()
            .filter_map(|n| n.strip_prefix("xattn."))
            .filter_map(|r| r.split('.').next()?.parse().ok())
            .collect();
        let idx: Vec<usize> = idx.into_iter().collect();
        if idx.iter().any(|&i| i >= n_layers) {
            return Err(Error::BadWeights {
                path: checkpoint(),
                reason: format!(
                    "cross-attention blocks for layers {idx:?} but the language model has {n_layers} layers: the checkpoint belongs to another language model"
                ),
            });
        }
        let every = xattn_every_n(&idx, n_layers).ok_or_else(|| Error::BadWeights {
            path: checkpoint(),
            reason: format!(
                "cross-attention blocks at layers {idx:?} do not follow the 'every n layers' rule"
            ),
        })?;
        let xattn = (0..n_layers)
            .map(|i| {
                if (i + 1) % every == 0 {
                    GatedCrossAttention::load(&ckpt.pp(format!("xattn.{i}")), d, vcfg.width)
                        .map(Some)
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let lm: LanguageModel = lm_cfg.build(&src.lm, ckpt)?;
        let vocab = lm.vocab_size();
        if media_id as usize >= vocab {
            return Err(Error::Tokenizer(format!(
                "the <image> token id {media_id} is outside the checkpoint's vocabulary of {vocab}"
            )));
        }
        Ok(Flamingo {
            vision,
            perceiver,
            lm,
            xattn,
            media_id,
            device: device.clone(),
            format: Default::default(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        DType::F32
    }

    pub fn media_id(&self) -> u32 {
        self.media_id
    }

    pub fn vocab_size(&self) -> usize {
        self.lm.vocab_size()
    }

    pub fn max_seq_len(&self) -> usize {
        self.lm.max_seq_len()
    }

    pub fn image_size(&self) -> usize {
        self.vision.config().image_size
    }

    pub fn vision_config(&self) -> &config::VisionConfig {
        self.vision.config()
    }

    /// Converts every linear layer (vision tower, perceiver, cross-attention, LM and its output
    /// projection) to `fmt`. Embedding lookups, norms and biases stay f32.
    pub fn convert_weights(&mut self, fmt: WeightFormat) -> Result<()> {
        for l in self.linears_mut() {
            l.convert(fmt)?;
        }
        self.format = fmt;
        Ok(())
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut all = self.vision.linears_mut();
        all.extend(self.perceiver.linears_mut());
        for x in self.xattn.iter_mut().flatten() {
            all.extend(x.linears_mut());
        }
        all.extend(self.lm.linears_mut());
        all
    }

    /// Makes the repacked copies of quantized CPU weights that the kernels read (ours for q8_0
    /// and q4k where the CPU has them, else candle's, made on a layer's first product) for every layer
    /// now, spread over candle's thread count, instead of one layer after another inside the
    /// first request.
    pub fn prepare_weights(&mut self) -> Result<()> {
        let mut all = self.linears_mut();
        // Largest first, each to the thread with the least so far.
        all.sort_by_key(|l| std::cmp::Reverse(l.weight_bytes()));
        let threads = candle_core::utils::get_num_threads().clamp(1, all.len().max(1));
        let mut bands: Vec<(usize, Vec<&mut Linear>)> =
            (0..threads).map(|_| (0, Vec::new())).collect();
        for l in all {
            if let Some(b) = bands.iter_mut().min_by_key(|b| b.0) {
                b.0 += l.weight_bytes();
                b.1.push(l);
            }
        }
        let tasks: Vec<_> = bands
            .into_iter()
            .map(|(_, band)| move || band.into_iter().try_for_each(|l| l.prepare()))
            .collect();
        crate::nn::fused::in_parallel("preparing the weights", tasks)?;
        Ok(())
    }

    pub fn weight_format(&self) -> WeightFormat {
        self.format
    }

    /// Every how many decoder layers a cross-attention block sits.
    pub fn cross_attn_every(&self) -> usize {
        self.xattn
            .iter()
            .position(|x| x.is_some())
            .map(|i| i + 1)
            .unwrap_or(0)
    }

    /// Patch tokens of the vision tower: pixels [N, 3, S, S] → [N, patches, width].
    pub fn vision_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.forward(&pixels.to_device(&self.device)?)
    }

    /// CLIP image embeddings of images [B, C, H, W], unit length: [B, embed_dim].
    pub fn embed_images(&self, pixels: &Tensor) -> Result<Tensor> {
        self.vision.embed(pixels)
    }

    /// Which CLIP weights [`Flamingo::embed_images`] uses (a digest of `proj`).
    pub fn embedding_fingerprint(&self) -> Result<String> {
        self.vision.embedding_fingerprint()
    }

    /// Vision tower + perceiver: pixels [N, 3, S, S] → latents [N, num_latents, width].
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        self.encode_images_or_stop(pixels, &|| false)
    }

    /// [`Flamingo::encode_images`] that asks `stop` before each vision layer and gives up with
    /// [`Error::Cancelled`] when it says so (a stop waits for one layer, not a whole image).
    pub fn encode_images_or_stop(
        &self,
        pixels: &Tensor,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let tokens = self
            .vision
            .forward_or_stop(&pixels.to_device(&self.device)?, stop)?;
        self.perceiver.forward(&tokens)
    }

    /// The seed's `extract_vision_feats`: images (B, C, H, W) for one image per sample, or
    /// (B, T_img, C, H, W), → latents (B, T_img, num_latents, width).
    pub fn extract_vision_feats(&self, images: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = match images.rank() {
            4 => {
                let (b, c, h, w) = images.dims4()?;
                (b, 1, c, h, w)
            }
            5 => images.dims5()?,
            r => {
                return Err(Error::Invalid(format!(
                    "images must be (B, C, H, W) or (B, T_img, C, H, W), got rank {r}"
                )))
            }
        };
        let lat = self.encode_images(&images.reshape((b * t, c, h, w))?)?;
        let (_, l, d) = lat.dims3()?;
        Ok(lat.reshape((b, t, l, d))?)
    }

    /// Starts a decoding session for a batch whose images are `media` [B, T_img, L, Dv]
    /// (T_img may be 0 for a text-only prompt), with v2's media attention.
    pub fn session(&self, media: &Tensor) -> Result<Session<'_>> {
        self.session_in(media, MediaAttention::Previous)
    }

    /// [`Flamingo::session`] with the media attention `mode`.
    pub fn session_in(&self, media: &Tensor, mode: MediaAttention) -> Result<Session<'_>> {
        let (b, t_img, l, dv) = media.dims4()?;
        let flat = media.reshape((b, t_img * l, dv))?.to_device(&self.device)?;
        let media_kv = self
            .xattn
            .iter()
            .map(|x| x.as_ref().map(|x| x.media_kv(&flat)).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Session {
            model: self,
            st: SessionState {
                media_kv,
                caches: vec![LayerCache::default(); self.lm.n_layers()],
                images_seen: vec![0; b],
                key_mask: vec![Vec::new(); b],
                n_images: t_img,
                mode,
                n_latents: l,
                batch: b,
            },
        })
    }
}

/// The state of one prompt being decoded: media keys/values, KV caches, image counts. It owns
/// its tensors, so it can be kept (a prompt prefix) and resumed later with
/// [`Flamingo::resume`].
#[derive(Clone)]
pub struct SessionState {
    media_kv: Vec<Option<MediaKv>>,
    caches: Vec<LayerCache>,
    images_seen: Vec<u32>,
    key_mask: Vec<Vec<bool>>,
    n_images: usize,
    mode: MediaAttention,
    n_latents: usize,
    batch: usize,
}

/// A session: a state and the model it runs on.
#[derive(Clone)]
pub struct Session<'a> {
    model: &'a Flamingo,
    st: SessionState,
}

impl Flamingo {
    /// Continues a kept state.
    pub fn resume(&self, state: SessionState) -> Session<'_> {
        Session {
            model: self,
            st: state,
        }
    }
}

impl Session<'_> {
    /// The model's context length.
    pub fn max_seq_len(&self) -> usize {
        self.model.max_seq_len()
    }

    /// Tokens processed so far.
    pub fn len(&self) -> usize {
        self.st.caches.first().map(|c| c.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs new tokens `ids[b]` (equal lengths; `pad[b][i]` true marks left padding) through
    /// the model and returns logits [B, T, vocab].
    pub fn forward_padded(
        &mut self,
        ids: &[Vec<u32>],
        pad: Option<&[Vec<bool>]>,
    ) -> Result<Tensor> {
        self.run(ids, pad, &|| false)
    }

    /// [`Session::forward`] that asks `stop` before each layer and gives up with
    /// [`Error::Cancelled`] when it says so: a long prompt can be left within one layer's time.
    /// A session stopped that way is half-updated and must be dropped.
    pub fn forward_or_stop(&mut self, ids: &[Vec<u32>], stop: &dyn Fn() -> bool) -> Result<Tensor> {
        self.run(ids, None, stop)
    }

    fn run(
        &mut self,
        ids: &[Vec<u32>],
        pad: Option<&[Vec<bool>]>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tensor> {
        let m = self.model;
        if ids.len() != self.st.batch {
            return Err(Error::Invalid(format!(
                "batch of {} rows for a session of {}",
                ids.len(),
                self.st.batch
            )));
        }
        let t = ids.first().map(|r| r.len()).unwrap_or(0);
        if t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(Error::Invalid(
                "rows must be non-empty and of equal length".into(),
            ));
        }
        let past = self.len();
        if past + t > m.max_seq_len() {
            return Err(Error::ContextTooLong {
                needed: past + t,
                limit: m.max_seq_len(),
            });
        }
        let vocab = m.vocab_size() as u32;
        if let Some(bad) = ids.iter().flatten().find(|&&id| id >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary ({vocab})"
            )));
        }
        // Cross-attention times continue from the images already seen (cached media).
        let times: Vec<Vec<u32>> = ids
            .iter()
            .zip(self.st.images_seen.iter_mut())
            .map(|(row, seen)| {
                let tt = xattn::text_time(
                    row,
                    m.media_id,
                    *seen,
                    self.st.n_images as u32,
                    self.st.mode,
                );
                *seen += row.iter().filter(|&&t| t == m.media_id).count() as u32;
                tt
            })
            .collect();
        for (b, row) in self.st.key_mask.iter_mut().enumerate() {
            match pad {
                Some(p) => row.extend(p[b].iter().map(|&is_pad| !is_pad)),
                None => row.extend(std::iter::repeat_n(true, t)),
            }
        }
        let any_pad = self.st.key_mask.iter().flatten().any(|&k| !k);
        let mask = MediaMask::new(&times, self.st.n_images, self.st.n_latents, &m.device)?;
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids_t = Tensor::from_vec(flat, (self.st.batch, t), &m.device)?;
        let step = m.lm.step(
            self.st.batch,
            past,
            t,
            any_pad.then_some(self.st.key_mask.as_slice()),
            &m.device,
        )?;
        let mut x = m.lm.embed(&ids_t)?;
        for (i, cache) in self.st.caches.iter_mut().enumerate() {
            if stop() {
                return Err(Error::Cancelled);
            }
            if let (Some(xa), Some(kv)) = (&m.xattn[i], &self.st.media_kv[i]) {
                x = xa.forward(&x, kv, &mask)?;
            }
            x = m.lm.block(i, &x, &step, cache)?;
        }
        m.lm.logits(&x)
    }

    /// The state, to keep and resume later.
    pub fn state(&self) -> SessionState {
        self.st.clone()
    }

    /// Adds images after the ones the session has: `latents` [B, n, L, Dv]. Tokens that come
    /// later can attend to them; earlier tokens are unaffected (they never attend to later
    /// images).
    pub fn add_images(&mut self, latents: &Tensor) -> Result<()> {
        let (b, n, l, dv) = latents.dims4()?;
        if b != self.st.batch || (self.st.n_images > 0 && l != self.st.n_latents) {
            return Err(Error::Invalid(
                "added images do not match the session".into(),
            ));
        }
        let flat = latents
            .reshape((b, n * l, dv))?
            .to_device(&self.model.device)?;
        for (x, kv) in self.model.xattn.iter().zip(self.st.media_kv.iter_mut()) {
            if let (Some(x), Some(kv)) = (x, kv) {
                kv.append(x.media_kv(&flat)?)?;
            }
        }
        self.st.n_images += n;
        self.st.n_latents = l;
        Ok(())
    }

    /// Keeps (and repeats) batch rows: row i of the result is row `rows[i]` now. Used to expand
    /// a prompt to several beams and to reorder beams.
    pub fn select_rows(&mut self, rows: &[usize]) -> Result<()> {
        let dev = &self.model.device;
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            dev,
        )?;
        for c in &mut self.st.caches {
            c.select_rows(&idx)?;
        }
        for kv in self.st.media_kv.iter_mut().flatten() {
            kv.select_rows(&idx)?;
        }
        self.st.images_seen = rows.iter().map(|&r| self.st.images_seen[r]).collect();
        self.st.key_mask = rows.iter().map(|&r| self.st.key_mask[r].clone()).collect();
        self.st.batch = rows.len();
        Ok(())
    }

    /// [`Self::forward_padded`] without padding.
    pub fn forward(&mut self, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.forward_padded(ids, None)
    }
}
