//! Flamingo: few-shot image captioning and VQA with OpenFlamingo, in Rust.
//!
//! Rooms: [`model`] (pure candle), [`text`] (tokenizer and prompts), [`generate`] (decoding),
//! [`hub`] (where the files are), [`pipeline`] (a loaded model answering a request),
//! [`cli`] (the command line).

pub mod app;
pub mod cli;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod generate;
pub mod hub;
pub mod model;
pub mod pipeline;
pub mod text;

pub use error::{Error, Result};
