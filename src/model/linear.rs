//! The one linear-layer type of the model. Every projection goes through it, so that other
//! weight formats (f16, quantized) are a change in this file only.

use candle_core::{Module, Tensor};

use crate::error::Result;
use crate::model::weights::Vb;

#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    /// `name.weight` of shape [out, in] and, if `bias`, `name.bias` of shape [out].
    pub fn load(vb: &Vb, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let vb = vb.pp(name);
        let w = vb.get(&[out_dim, in_dim], "weight")?;
        let b = if bias {
            Some(vb.get(&[out_dim], "bias")?)
        } else {
            None
        };
        Ok(Self::new(w, b))
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }
}

/// LayerNorm over the last dimension; `bias` absent means weight-only (zeros bias).
pub fn layer_norm(
    vb: &Vb,
    name: &str,
    dim: usize,
    eps: f64,
    bias: bool,
) -> Result<candle_nn::LayerNorm> {
    let vb = vb.pp(name);
    let w = vb.get(&[dim], "weight")?;
    let b = if bias {
        vb.get(&[dim], "bias")?
    } else {
        w.zeros_like()?
    };
    Ok(candle_nn::LayerNorm::new(w, b, eps))
}
