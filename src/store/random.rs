//! Models of the released shapes with random weights, for benchmarks: no files needed, built
//! through the same path as a real model. Each tensor is made when the model asks for it,
//! from a generator seeded by its name, so that the same shape gives the same weights in every
//! format and a 9B model never exists in f32 while it is built in q4k.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::build::{write_model_cache, Stores};
use super::released::Shape;
use super::{Recorded, TensorStore};
use crate::error::Result;
use crate::model::perceiver;
use crate::model::vision::VisionTower;
use crate::model::xattn::GatedCrossAttention;
use crate::model::Flamingo;
use crate::nn::LinearWeight;
use crate::types::WeightFormat;

/// Tensors of given shapes whose values are made on demand.
pub struct RandomTensors {
    shapes: HashMap<String, Vec<usize>>,
    seed: u64,
}

impl RandomTensors {
    pub fn new(shapes: impl IntoIterator<Item = (String, Vec<usize>)>, seed: u64) -> Self {
        Self {
            shapes: shapes.into_iter().collect(),
            seed,
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// The tensor `name`: ones for a norm's weight, normal values otherwise, with a spread
    /// that keeps activations near unit size (1/√fan-in for matrices, 0.02 for embeddings
    /// and biases, 1 for the perceiver's latents, 0.5 for the gates).
    pub fn make(&self, name: &str) -> Result<Option<Tensor>> {
        let Some(shape) = self.shapes.get(name) else {
            return Ok(None);
        };
        let last = name.rsplit('.').next().unwrap_or(name);
        let std = if name.ends_with("latents") {
            1.0
        } else if last == "attn_gate" || last == "ff_gate" {
            0.5
        } else if shape.len() == 1 && last == "weight" {
            return Ok(Some(Tensor::ones(
                shape.as_slice(),
                candle_core::DType::F32,
                &Device::Cpu,
            )?));
        } else if shape.len() >= 2 && !is_embedding(name) {
            1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
        } else {
            0.02
        };
        let n: usize = shape.iter().product();
        let seed = self.seed ^ fnv1a(name);
        let values = normal_values(n, std, seed)?;
        Ok(Some(Tensor::from_vec(
            values,
            shape.as_slice(),
            &Device::Cpu,
        )?))
    }
}

fn is_embedding(name: &str) -> bool {
    matches!(
        name,
        "embed" | "embed_out" | "class_embedding" | "positional_embedding"
    )
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `n` normal values of spread `std`, made in bands over candle's thread count, each band
/// from its own generator (the values depend on `seed` and `n` only).
fn normal_values(n: usize, std: f32, seed: u64) -> Result<Vec<f32>> {
    const BAND: usize = 1 << 20;
    let bands: Vec<usize> = (0..n.div_ceil(BAND)).collect();
    let threads = crate::platform::compute_threads().clamp(1, bands.len().max(1));
    let per = bands.len().div_ceil(threads).max(1);
    let tasks: Vec<_> = bands
        .chunks(per)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            move || -> Result<Vec<f32>> {
                let mut out = Vec::with_capacity(chunk.len() * BAND);
                for b in chunk {
                    let len = BAND.min(n - b * BAND);
                    let mut rng = SplitMix(seed ^ (b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let mut i = 0;
                    while i < len {
                        // Box–Muller: two normal values from two uniform ones.
                        let u1 = rng.unit().max(f64::MIN_POSITIVE);
                        let u2 = rng.unit();
                        let r = (-2.0 * u1.ln()).sqrt();
                        let (s, c) = (2.0 * std::f64::consts::PI * u2).sin_cos();
                        out.push((r * c) as f32 * std);
                        if i + 1 < len {
                            out.push((r * s) as f32 * std);
                        }
                        i += 2;
                    }
                }
                Ok(out)
            }
        })
        .collect();
    Ok(crate::nn::fused::in_parallel("making random weights", tasks)?.concat())
}

/// SplitMix64: small, fast, good enough for benchmark weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The tensors of a model of `shape`, as the three sources of a real one (CLIP repo,
/// checkpoint, LM repo), with their shapes.
pub fn tensor_shapes(shape: &Shape) -> [Vec<(String, Vec<usize>)>; 3] {
    let (vcfg, lm) = (&shape.vision, &shape.lm);
    let clip = VisionTower::tensor_shapes(vcfg)
        .into_iter()
        .map(|(n, s)| (format!("visual.{n}"), s))
        .collect();
    let mut ckpt: Vec<(String, Vec<usize>)> = perceiver::tensor_shapes(vcfg.width)
        .into_iter()
        .map(|(n, s)| (format!("perceiver.{n}"), s))
        .collect();
    for i in (0..lm.n_layers()).filter(|i| (i + 1) % shape.every == 0) {
        ckpt.extend(
            GatedCrossAttention::tensor_shapes(lm.hidden_size(), vcfg.width)
                .into_iter()
                .map(|(n, s)| (format!("xattn.{i}.{n}"), s)),
        );
    }
    ckpt.extend(lm.checkpoint_tensors(shape.vocab));
    [clip, ckpt, lm.lm_tensors()]
}

/// A model of `shape` with random weights, its linear layers in `format` as they are made;
/// with what it was built from when `record` (for [`keep_model`]).
pub fn random_model(
    shape: &Shape,
    device: &Device,
    format: WeightFormat,
    record: bool,
) -> Result<(Flamingo, Vec<(String, Recorded)>)> {
    let [clip, ckpt, lm] = tensor_shapes(shape);
    let store = |shapes: Vec<(String, Vec<usize>)>, what: &str, seed: u64| {
        let mut st = TensorStore::random(RandomTensors::new(shapes, seed), what, device);
        st.format = format;
        if record {
            st.start_recording();
        }
        st
    };
    let stores = Stores {
        clip: store(clip, "random CLIP", 1),
        ckpt: store(ckpt, "random checkpoint", 2),
        lm: store(lm, "random LM", 3),
    };
    stores.build(&shape.vision, &shape.lm, shape.media_id, device, format)
}

/// Writes the model a record describes (from [`random_model`]) as a model cache file in
/// `format`, its dense linear layers converted on the way.
pub fn keep_model(
    path: &Path,
    format: WeightFormat,
    record: Vec<(String, Recorded)>,
) -> Result<()> {
    let record = record
        .into_iter()
        .map(|(name, r)| {
            Ok(match r {
                Recorded::Linear(LinearWeight::Dense(w)) => {
                    let fmt =
                        crate::nn::linear::format_for(format, crate::nn::linear::Role::of(&name));
                    (
                        name,
                        Recorded::Linear(crate::nn::linear::convert_weight(w, fmt)?),
                    )
                }
                other => (name, other),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    write_model_cache(path, format, record)
}
