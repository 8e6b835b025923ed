//! Layers and kernels: the linear layer and its weight formats, layer norms, attention, the
//! fused element-wise passes, our x86-64 kernels, and the weights-source interface the model
//! is built through. Nothing here knows OpenFlamingo.

pub mod attention;
pub mod dense_x86;
pub mod fused;
pub mod linear;
pub mod mapped;
pub mod norm;
pub mod quantized_x86;
pub mod rotary;

use candle_core::Tensor;

use crate::error::{Error, Result};
pub use linear::{Linear, LinearWeight};

/// Where a model's tensors come from: a weight file, a section of the model cache, random
/// weights. The model asks by name; the source reads, converts linear layers to its weight
/// format and (where it records) keeps what was taken for the model cache.
pub trait WeightSource {
    /// Where the tensors come from, for messages (a repo and file, a cache section).
    fn label(&self) -> &str;
    /// The tensor `name` as f32 on the model's device, kept by a recording source.
    fn tensor(&self, name: &str) -> Result<Tensor>;
    /// The tensor `name` as f32, not kept: an ingredient of a derived weight.
    fn ingredient(&self, name: &str) -> Result<Tensor>;
    /// A linear layer's [out, in] weight in the source's format: read as `name`, or computed
    /// by `make` (a reshaped convolution, a tied embedding) and kept under `name`.
    fn linear_weight(
        &self,
        name: &str,
        shape: &[usize],
        make: Option<&dyn Fn() -> Result<Tensor>>,
    ) -> Result<LinearWeight>;
    fn contains(&self, name: &str) -> bool;
    /// Every tensor name the source has.
    fn names(&self) -> Vec<String>;
}

/// A view of a [`WeightSource`] under a name prefix (`a.b.` + name), like candle's
/// `VarBuilder`, with shape checks whose errors name the tensor and the source.
#[derive(Clone)]
pub struct Vb<'a> {
    src: &'a dyn WeightSource,
    prefix: String,
}

impl<'a> Vb<'a> {
    pub fn new(src: &'a dyn WeightSource) -> Self {
        Self {
            src,
            prefix: String::new(),
        }
    }

    /// The full name of `name` under this view.
    pub fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Vb<'a> {
        Vb {
            src: self.src,
            prefix: self.full(&name.to_string()),
        }
    }

    /// The source's label, for messages.
    pub fn label(&self) -> &str {
        self.src.label()
    }

    fn check(&self, name: &str, t: Tensor, shape: &[usize]) -> Result<Tensor> {
        if t.dims() != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                source_file: self.src.label().to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    /// The tensor `name`, whose shape must be `shape`.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let t = self.src.tensor(&full)?;
        self.check(&full, t, shape)
    }

    /// The tensor `name` of shape [any, `width`]: a table whose row count the file decides
    /// (an embedding resized for added tokens). Read once.
    pub fn get_rows(&self, width: usize, name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let t = self.src.tensor(&full)?;
        let rows = t.dims().first().copied().unwrap_or(0);
        self.check(&full, t, &[rows, width])
    }

    /// The tensor `name`, whatever its shape.
    pub fn get_any(&self, name: &str) -> Result<Tensor> {
        self.src.tensor(&self.full(name))
    }

    /// The tensor `name` without keeping it for the model cache (it is only an ingredient).
    pub fn fetch(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let t = self.src.ingredient(&full)?;
        self.check(&full, t, shape)
    }

    /// A linear layer's weight `name` of shape `shape`, in the source's format.
    pub fn linear_weight(&self, name: &str, shape: &[usize]) -> Result<LinearWeight> {
        self.src.linear_weight(&self.full(name), shape, None)
    }

    /// A linear layer's weight computed by `make` (kept under `key` by the model cache).
    pub fn derived_linear_weight(
        &self,
        key: &str,
        shape: &[usize],
        make: &dyn Fn() -> Result<Tensor>,
    ) -> Result<LinearWeight> {
        self.src.linear_weight(&self.full(key), shape, Some(make))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.src.contains(&self.full(name))
    }

    /// The names under this view's prefix, without it.
    pub fn names(&self) -> Vec<String> {
        let names = self.src.names();
        if self.prefix.is_empty() {
            return names;
        }
        let head = format!("{}.", self.prefix);
        names
            .into_iter()
            .filter_map(|n| n.strip_prefix(&head).map(String::from))
            .collect()
    }
}

/// Something that holds linear layers, for converting them all to one format.
pub trait HasLinears {
    fn linears_mut(&mut self) -> Vec<&mut Linear>;
}

/// Splits [b, n, h·d] into [b, h, n, d] (head index outer, as `rearrange(..., "b n (h d)")`).
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, hd) = x.dims3()?;
    Ok(x.reshape((b, n, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()?)
}
