//! CLIP ViT vision tower (open_clip key names) → patch tokens of the last residual stream,
//! without the class token and without `ln_post`, as OpenFlamingo consumes them
//! (docs/openflamingo.md §2); and CLIP's image embedding (`ln_post` of the class token times
//! `proj`, open_clip's `encode_image`), which RICES compares images by.

use candle_core::{Module, Tensor, D};

use crate::error::{Error, Result};
use crate::model::config::VisionConfig;
use crate::nn::fused::Activation;
use crate::nn::norm::layer_norm;
use crate::nn::Vb;
use crate::nn::{HasLinears, Linear};

const LN_EPS: f64 = 1e-5;

struct ResBlock {
    ln_1: crate::nn::norm::LayerNorm,
    in_proj: Linear,
    out_proj: Linear,
    ln_2: crate::nn::norm::LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    heads: usize,
    quick_gelu: bool,
}

impl ResBlock {
    fn load(vb: &Vb, cfg: &VisionConfig) -> Result<Self> {
        let w = cfg.width;
        let hidden = cfg.mlp_hidden();
        Ok(Self {
            ln_1: layer_norm(vb, "ln_1", w, LN_EPS, true)?,
            in_proj: Linear::load_parts(
                &vb.pp("attn"),
                "in_proj_weight",
                Some("in_proj_bias"),
                w,
                3 * w,
            )?,
            out_proj: Linear::load(&vb.pp("attn"), "out_proj", w, w, true)?,
            ln_2: layer_norm(vb, "ln_2", w, LN_EPS, true)?,
            c_fc: Linear::load(&vb.pp("mlp"), "c_fc", w, hidden, true)?,
            c_proj: Linear::load(&vb.pp("mlp"), "c_proj", hidden, w, true)?,
            heads: cfg.heads(),
            quick_gelu: cfg.quick_gelu,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.ln_1.forward(x)?;
        let qkv = self.in_proj.forward(&h)?; // [b, n, 3w]
        let o = crate::nn::attention::self_attention(&qkv, self.heads)?; // [b, n, w]
        let x = (x + self.out_proj.forward(&o)?)?;
        let h = self.ln_2.forward(&x)?;
        let act = if self.quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::GeluErf
        };
        let h = self.c_proj.forward(&self.c_fc.forward_then(&h, act)?)?;
        Ok((x + h)?)
    }
}

impl HasLinears for VisionTower {
    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = vec![&mut self.patch];
        for b in &mut self.blocks {
            v.extend([&mut b.in_proj, &mut b.out_proj, &mut b.c_fc, &mut b.c_proj]);
        }
        v
    }
}

pub struct VisionTower {
    patch: Linear, // conv1 as a matmul over flattened patches
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: crate::nn::norm::LayerNorm,
    blocks: Vec<ResBlock>,
    /// `ln_post` and `proj`, when the weights have them (open_clip's always do).
    head: Option<(crate::nn::norm::LayerNorm, Tensor)>,
    cfg: VisionConfig,
}

impl VisionTower {
    /// The tensors the tower takes from the open_clip `visual` module, with their shapes.
    pub fn tensor_shapes(cfg: &VisionConfig) -> Vec<(String, Vec<usize>)> {
        let (w, p, g, hid) = (cfg.width, cfg.patch_size, cfg.grid(), cfg.mlp_hidden());
        let mut t = vec![
            ("conv1.weight".to_string(), vec![w, 3, p, p]),
            ("class_embedding".into(), vec![w]),
            ("positional_embedding".into(), vec![g * g + 1, w]),
            ("ln_pre.weight".into(), vec![w]),
            ("ln_pre.bias".into(), vec![w]),
            ("ln_post.weight".into(), vec![w]),
            ("ln_post.bias".into(), vec![w]),
            ("proj".into(), vec![w, cfg.embed_dim]),
        ];
        for i in 0..cfg.layers {
            let b = format!("transformer.resblocks.{i}");
            for (name, shape) in [
                ("ln_1.weight", vec![w]),
                ("ln_1.bias", vec![w]),
                ("ln_2.weight", vec![w]),
                ("ln_2.bias", vec![w]),
                ("attn.in_proj_weight", vec![3 * w, w]),
                ("attn.in_proj_bias", vec![3 * w]),
                ("attn.out_proj.weight", vec![w, w]),
                ("attn.out_proj.bias", vec![w]),
                ("mlp.c_fc.weight", vec![hid, w]),
                ("mlp.c_fc.bias", vec![hid]),
                ("mlp.c_proj.weight", vec![w, hid]),
                ("mlp.c_proj.bias", vec![w]),
            ] {
                t.push((format!("{b}.{name}"), shape));
            }
        }
        t
    }

    /// `vb` points at the open_clip `visual` module.
    pub fn load(vb: &Vb, cfg: &VisionConfig) -> Result<Self> {
        let w = cfg.width;
        let p = cfg.patch_size;
        // The patch convolution (stride = kernel, no bias) is a linear map of each patch.
        let patch = Linear::derived(vb, "conv1.as_linear", 3 * p * p, w, &|| {
            Ok(vb
                .fetch(&[w, 3, p, p], "conv1.weight")?
                .reshape((w, 3 * p * p))?)
        })?;
        let n_tok = cfg.grid() * cfg.grid() + 1;
        let blocks = (0..cfg.layers)
            .map(|i| ResBlock::load(&vb.pp(format!("transformer.resblocks.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        if vb.contains(&format!("transformer.resblocks.{}.ln_1.weight", cfg.layers)) {
            return Err(Error::Config {
                path: "open_clip_config.json".into(),
                reason: format!(
                    "the config says {} vision layers but the weights have more",
                    cfg.layers
                ),
            });
        }
        let head = if vb.contains("ln_post.weight") && vb.contains("proj") {
            let proj = vb.get_any("proj")?;
            if proj.rank() != 2 || proj.dim(0)? != w {
                return Err(Error::Config {
                    path: "open_clip_model".into(),
                    reason: format!(
                        "visual.proj has shape {:?}, not [{w}, embed_dim]",
                        proj.dims()
                    ),
                });
            }
            Some((layer_norm(vb, "ln_post", w, LN_EPS, true)?, proj))
        } else {
            None
        };
        Ok(Self {
            patch,
            head,
            class_embedding: vb.get(&[w], "class_embedding")?,
            positional_embedding: vb.get(&[n_tok, w], "positional_embedding")?,
            ln_pre: layer_norm(vb, "ln_pre", w, LN_EPS, true)?,
            blocks,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    /// pixels [B, 3, S, S] → patch tokens [B, grid², width].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.forward_or_stop(pixels, &|| false)
    }

    /// [`VisionTower::forward`], asking `stop` before each block.
    pub fn forward_or_stop(&self, pixels: &Tensor, stop: &dyn Fn() -> bool) -> Result<Tensor> {
        let x = self.residual_stream(pixels, stop)?;
        let n = x.dim(1)?;
        Ok(x.narrow(D::Minus2, 1, n - 1)?.contiguous()?)
    }

    /// pixels [B, 3, S, S] → CLIP image embeddings [B, embed_dim], scaled to unit length.
    pub fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let Some((ln_post, proj)) = &self.head else {
            return Err(Error::Invalid(
                "these CLIP weights have no ln_post/proj, so they give no image embedding".into(),
            ));
        };
        let x = self.residual_stream(pixels, &|| false)?;
        let cls = ln_post.forward(&x.narrow(D::Minus2, 0, 1)?.squeeze(1)?)?;
        let e = cls.matmul(proj)?;
        let norm = e.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        Ok(e.broadcast_div(&norm)?)
    }

    /// A short hex digest of `proj`: which CLIP weights an embedding came from (embeddings
    /// kept on disk are valid only for the same weights).
    pub fn embedding_fingerprint(&self) -> Result<String> {
        use sha2::Digest;
        let Some((_, proj)) = &self.head else {
            return Err(Error::Invalid("these CLIP weights have no proj".into()));
        };
        let values = proj
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut h = sha2::Sha256::new();
        for v in values {
            h.update(v.to_le_bytes());
        }
        Ok(h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// The residual stream after the last block, class token first: [B, grid² + 1, width].
    fn residual_stream(&self, pixels: &Tensor, stop: &dyn Fn() -> bool) -> Result<Tensor> {
        let (b, c, hgt, wid) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let g = self.cfg.grid();
        if c != 3 || hgt != g * p || wid != g * p {
            return Err(Error::Invalid(format!(
                "vision input must be [B, 3, {s}, {s}], got {:?}",
                pixels.dims(),
                s = g * p
            )));
        }
        // [B,3,g,p,g,p] → [B,g,g,3,p,p] → [B, g², 3p²]
        let patches = pixels
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let x = self.patch.forward(&patches)?; // [B, g², w]
        let w = self.cfg.width;
        let cls = self
            .class_embedding
            .reshape((1, 1, w))?
            .broadcast_as((b, 1, w))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        let x = x.broadcast_add(&self.positional_embedding.unsqueeze(0)?)?;
        let mut x = self.ln_pre.forward(&x)?;
        for blk in &self.blocks {
            if stop() {
                return Err(Error::Cancelled);
            }
            x = blk.forward(&x)?;
        }
        Ok(x)
    }
}
