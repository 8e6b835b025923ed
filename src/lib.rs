//! Flamingo: few-shot image captioning and VQA with OpenFlamingo, in Rust.
//!
//! The rooms follow the pipeline (see ARCHITECTURE.md): [`nn`] layers and kernels →
//! [`model`] the OpenFlamingo architecture → [`store`] weight files and caches, [`hub`]
//! where the files are, [`image`] bytes to pixels, [`text`] tokens and prompts →
//! [`generate`] decoding over a session → [`pipeline`] a request to text → [`engine`] the
//! inference thread → [`app`] and [`cli`].

#![deny(unsafe_op_in_unsafe_fn)]

pub mod app;
pub mod cli;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod hub;
pub mod image;
pub mod model;
pub mod nn;
pub mod pipeline;
pub mod platform;
pub mod store;
pub mod text;
pub mod types;

pub use error::{Error, Result};
