//! Rotary position embedding in its "rotate half" form (GPT-NeoX, LLaMA): the first half of
//! each rotated head is paired with the second half.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// The rotation frequencies of one head's first `dim` features.
#[derive(Clone, Debug)]
pub struct Rotary {
    inv_freq: Vec<f32>,
    dim: usize,
}

impl Rotary {
    /// `dim` rotated features (even), frequencies `base^(-2i/dim)`, computed in f32 as the
    /// reference computes them.
    pub fn new(dim: usize, base: f64) -> Self {
        let inv_freq = (0..dim / 2)
            .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        Self { inv_freq, dim }
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// cos and sin [B, T, dim/2] of the angles `position · frequency` for each row's positions.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> Result<(Tensor, Tensor)> {
        let b = positions.len();
        let t = positions.first().map(Vec::len).unwrap_or(0);
        let half = self.dim / 2;
        let mut cos = Vec::with_capacity(b * t * half);
        let mut sin = Vec::with_capacity(b * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (b, t, half), device)?,
            Tensor::from_vec(sin, (b, t, half), device)?,
        ))
    }

    /// Rotates the first `dim` features of each head of `x` [B, H, T, D]; the rest pass.
    pub fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let d = x.dim(3)?;
        if self.dim == d {
            return Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?);
        }
        let rot = x.narrow(3, 0, self.dim)?.contiguous()?;
        let pass = x.narrow(3, self.dim, d - self.dim)?;
        let rot = candle_nn::rotary_emb::rope(&rot, cos, sin)?;
        Ok(Tensor::cat(&[&rot, &pass], 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's form: x·cos + rotate_half(x)·sin with the angles duplicated.
    #[test]
    fn rotation_matches_the_rotate_half_formula() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 8), &dev).unwrap();
        for dim in [8, 4] {
            let r = Rotary::new(dim, 10000.0);
            let positions = vec![vec![0, 1, 2, 3], vec![5, 6, 7, 100]];
            let (cos, sin) = r.tables(&positions, &dev).unwrap();
            let got = r.apply(&x, &cos, &sin).unwrap();
            let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let out: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
            for (b, row) in positions.iter().enumerate() {
                for h in 0..3 {
                    for (t, &pos) in row.iter().enumerate() {
                        let at = ((b * 3 + h) * 4 + t) * 8;
                        let v = &flat[at..at + 8];
                        for i in 0..8 {
                            let want = if i < dim {
                                let half = dim / 2;
                                let f = 1.0 / 10000f32.powf((2 * (i % half)) as f32 / dim as f32);
                                let a = pos as f32 * f;
                                let rot = if i < half { -v[i + half] } else { v[i - half] };
                                v[i] * a.cos() + rot * a.sin()
                            } else {
                                v[i]
                            };
                            assert!((out[at + i] - want).abs() < 1e-5, "{b} {h} {t} {i}");
                        }
                    }
                }
            }
        }
    }
}
