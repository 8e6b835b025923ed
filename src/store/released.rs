//! The shapes of the released models (what their config files say), known without their files:
//! for benchmarks on random weights and for the memory a model needs in each weight format.

use crate::hub::registry::LmFamily;
use crate::model::config::VisionConfig;
use crate::model::lm::gpt_neox::GptNeoXConfig;
use crate::model::lm::llama::LlamaConfig;
use crate::model::lm::mosaic_gpt::MosaicGptConfig;
use crate::model::lm::mpt::MptConfig;
use crate::model::lm::LmConfig;
use crate::nn::linear::{format_for, Role};
use crate::types::WeightFormat;

/// A model's shape: its vision tower, language model, cross-attention interval and
/// vocabulary with OpenFlamingo's tokens.
#[derive(Clone, Debug)]
pub struct Shape {
    pub vision: VisionConfig,
    pub lm: LmConfig,
    pub every: usize,
    pub vocab: usize,
    pub eoc_id: u32,
    pub media_id: u32,
}

impl Shape {
    fn neox_vocab(vision: VisionConfig, lm: LmConfig, every: usize) -> Self {
        Self {
            vision,
            lm,
            every,
            vocab: 50280,
            eoc_id: 50277,
            media_id: 50278,
        }
    }

    /// The released models of a family (the v2 4B and 9B, the v1 9B, the 3B).
    pub fn released(family: LmFamily) -> Self {
        let vit = VisionConfig::vit_l14;
        let lm = |c: std::sync::Arc<dyn crate::model::lm::LmSpec>| LmConfig(c);
        match family {
            LmFamily::MosaicGpt => {
                Self::neox_vocab(vit(), lm(std::sync::Arc::new(MosaicGptConfig::mpt_1b())), 1)
            }
            LmFamily::GptNeoX => Self::neox_vocab(
                vit(),
                lm(std::sync::Arc::new(GptNeoXConfig::redpajama_3b())),
                2,
            ),
            LmFamily::Mpt => {
                Self::neox_vocab(vit(), lm(std::sync::Arc::new(MptConfig::mpt_7b())), 4)
            }
            LmFamily::Llama => Self {
                vision: vit(),
                lm: lm(std::sync::Arc::new(LlamaConfig::llama_7b())),
                every: 4,
                vocab: 32003,
                eoc_id: 32000,
                media_id: 32001,
            },
        }
    }

    /// The test fixtures' tiny MosaicGPT shape.
    pub fn tiny() -> Self {
        Self::neox_vocab(
            VisionConfig {
                width: 64,
                layers: 2,
                head_width: 32,
                embed_dim: 32,
                ..VisionConfig::vit_l14()
            },
            LmConfig(std::sync::Arc::new(MosaicGptConfig {
                d_model: 32,
                n_heads: 4,
                n_layers: 4,
                ..MosaicGptConfig::mpt_1b()
            })),
            1,
        )
    }

    /// Bytes of the weights in `format` once loaded: linear layers in their format (q4k
    /// repacked for the kernels at 4.75 bits a weight), everything else in f32; the tied
    /// output projections of MosaicGPT and MPT as a copy of their own.
    pub fn weights_bytes(&self, format: WeightFormat) -> u64 {
        let per = |f: WeightFormat| -> f64 {
            match f {
                WeightFormat::F32 => 4.0,
                WeightFormat::F16 => 2.0,
                WeightFormat::Q8_0 => 34.0 / 32.0,
                WeightFormat::Q4K | WeightFormat::Q4KM => 4.75 / 8.0,
            }
        };
        let plain = [
            "positional_embedding",
            "latents",
            "embed",
            "class_embedding",
        ];
        let mut bytes = 0f64;
        for (name, shape) in crate::store::random::tensor_shapes(self).iter().flatten() {
            let n: usize = shape.iter().product();
            let last = name.rsplit('.').next().unwrap_or(name);
            let linear =
                shape.len() >= 2 && !plain.contains(&last) && !plain.contains(&name.as_str());
            let f = if linear {
                format_for(format, Role::of(name))
            } else {
                WeightFormat::F32
            };
            bytes += n as f64 * per(f);
        }
        let tied = matches!(self.lm.family(), "MosaicGPT" | "MPT");
        if tied {
            let n = self.vocab * self.lm.hidden_size();
            bytes += n as f64 * per(format_for(format, Role::Output));
        }
        bytes as u64
    }

    /// The peak memory a caption takes in `format`: the weights and a twentieth more for
    /// activations, caches and the program (the 3B model measured 1.01–1.12x its weights).
    pub fn peak_bytes(&self, format: WeightFormat) -> u64 {
        let w = self.weights_bytes(format);
        w + w / 20 + (300 << 20)
    }
}
