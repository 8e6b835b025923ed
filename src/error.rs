//! One error type for the library; each variant says what went wrong in words a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "file `{file}` of the model repo `{repo}` is not in the Hugging Face cache ({cache}). {hint}"
    )]
    MissingFile {
        repo: String,
        file: String,
        cache: PathBuf,
        hint: String,
    },
    #[error("{model}: these files are not in the Hugging Face cache ({cache}): {}. {hint}", .files.join(", "))]
    MissingFiles {
        model: String,
        files: Vec<String>,
        cache: PathBuf,
        hint: String,
    },
    #[error("tensor `{name}` is missing from {source_file}")]
    MissingTensor { name: String, source_file: String },
    #[error("tensor `{name}` in {source_file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        source_file: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("cannot read weights from {path}: {reason}")]
    BadWeights { path: PathBuf, reason: String },
    #[error("bad model configuration in {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot read image {name}: {reason}")]
    Image { name: String, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("prompt: {0}")]
    Prompt(String),
    /// A request the model or the pipeline cannot take (not about the prompt's text).
    #[error("{0}")]
    Invalid(String),
    #[error(
        "the model's output at generation step {step} is not a number (NaN or infinite): its weights or configuration are damaged"
    )]
    NotFinite { step: usize },
    #[error(
        "the prompt and the tokens to generate need {needed} tokens, but the model's context holds {limit}"
    )]
    ContextTooLong { needed: usize, limit: usize },
    #[error("download: {0}")]
    Download(String),
    #[error("cancelled")]
    Cancelled,
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", candle_message(.0))]
    Candle(#[from] candle_core::Error),
}

/// candle's message without the backtrace it carries when `RUST_BACKTRACE` is set: a
/// message is for the user, the backtrace is in the logs' business.
fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        other => other.to_string(),
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
