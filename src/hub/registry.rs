//! The released OpenFlamingo models (docs/openflamingo.md §1).

use crate::types::MediaAttention;

/// Language-model families; only some can run yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum LmFamily {
    MosaicGpt,
    GptNeoX,
    Mpt,
    Llama,
}

impl LmFamily {
    pub fn supported(self) -> bool {
        true
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelSpec {
    pub id: &'static str,
    pub checkpoint_repo: &'static str,
    pub checkpoint_file: &'static str,
    pub lm_repo: &'static str,
    pub clip_repo: &'static str,
    pub family: LmFamily,
    pub cross_attn_every: usize,
    /// Approximate total download, GB.
    pub download_gb: f64,
    /// What a user should know about it (shown by `flamingo models` and in the app).
    pub note: Option<&'static str>,
    /// Which image text attends to by default: v2's for the v2 models, v1's for the v1 one.
    pub media_attention: MediaAttention,
}

/// The v1 model's two departures from the v2 ones (docs/openflamingo.md §4.3, §6.3).
pub const V1_NOTE: &str = "OpenFlamingo v1: text attends to the image after it (mmpretrain's \
    masking; --media-attention previous for v2's). Its checkpoint has no output rows for the \
    three tokens OpenFlamingo added (<|endofchunk|>, <image>, <PAD>); they are zero here, so \
    their logits are 0, far below a real model's best: a caption runs to the token limit and \
    the post-processing cuts it, as with the reference's random rows.";

pub const DEFAULT_MODEL: &str = "openflamingo/OpenFlamingo-3B-vitl-mpt1b";
const CLIP: &str = "timm/vit_large_patch14_clip_224.openai";

pub const MODELS: &[ModelSpec] = &[
    ModelSpec {
        id: "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        checkpoint_repo: "openflamingo/OpenFlamingo-3B-vitl-mpt1b",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "anas-awadalla/mpt-1b-redpajama-200b",
        clip_repo: CLIP,
        family: LmFamily::MosaicGpt,
        cross_attn_every: 1,
        download_gb: 11.0,
        note: None,
        media_attention: MediaAttention::Previous,
    },
    ModelSpec {
        id: "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
        checkpoint_repo: "openflamingo/OpenFlamingo-3B-vitl-mpt1b-langinstruct",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "anas-awadalla/mpt-1b-redpajama-200b-dolly",
        clip_repo: CLIP,
        family: LmFamily::MosaicGpt,
        cross_attn_every: 1,
        download_gb: 11.0,
        note: None,
        media_attention: MediaAttention::Previous,
    },
    ModelSpec {
        id: "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        checkpoint_repo: "openflamingo/OpenFlamingo-4B-vitl-rpj3b",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "togethercomputer/RedPajama-INCITE-Base-3B-v1",
        clip_repo: CLIP,
        family: LmFamily::GptNeoX,
        cross_attn_every: 2,
        download_gb: 12.5,
        note: None,
        media_attention: MediaAttention::Previous,
    },
    ModelSpec {
        id: "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
        checkpoint_repo: "openflamingo/OpenFlamingo-4B-vitl-rpj3b-langinstruct",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "togethercomputer/RedPajama-INCITE-Instruct-3B-v1",
        clip_repo: CLIP,
        family: LmFamily::GptNeoX,
        cross_attn_every: 2,
        download_gb: 12.5,
        note: None,
        media_attention: MediaAttention::Previous,
    },
    ModelSpec {
        id: "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
        checkpoint_repo: "openflamingo/OpenFlamingo-9B-vitl-mpt7b",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "anas-awadalla/mpt-7b",
        clip_repo: CLIP,
        family: LmFamily::Mpt,
        cross_attn_every: 4,
        download_gb: 20.0,
        note: None,
        media_attention: MediaAttention::Previous,
    },
    ModelSpec {
        id: "openflamingo/OpenFlamingo-9B-deprecated",
        checkpoint_repo: "openflamingo/OpenFlamingo-9B-deprecated",
        checkpoint_file: "checkpoint.pt",
        lm_repo: "luodian/llama-7b-hf",
        clip_repo: CLIP,
        family: LmFamily::Llama,
        cross_attn_every: 4,
        download_gb: 20.0,
        note: Some(V1_NOTE),
        media_attention: MediaAttention::Next,
    },
];

/// One file the model needs from a repo: the first of `choices` the repo has. A choice
/// ending in `.index.json` stands for a sharded checkpoint (the index and its shards).
#[derive(Clone, Debug)]
pub struct Need {
    pub repo: &'static str,
    pub choices: Vec<&'static str>,
}

impl Need {
    pub fn label(&self) -> String {
        format!("{}/{}", self.repo, self.choices.join(" or "))
    }
}

/// What a model needs, each need once: the files the loader reads and the downloader fetches.
pub struct Files {
    pub clip_config: Need,
    pub lm_config: Need,
    pub tokenizer: Need,
    pub clip_weights: Need,
    pub lm_weights: Need,
    pub checkpoint: Need,
}

/// In the order they are fetched: small files first.
impl IntoIterator for Files {
    type Item = Need;
    type IntoIter = std::array::IntoIter<Need, 6>;

    fn into_iter(self) -> Self::IntoIter {
        [
            self.clip_config,
            self.lm_config,
            self.tokenizer,
            self.clip_weights,
            self.lm_weights,
            self.checkpoint,
        ]
        .into_iter()
    }
}

impl ModelSpec {
    /// The files this model needs from its three repos. Safetensors come before pickles
    /// (they load without unpickling), a sharded checkpoint before a single file of its kind.
    pub fn files(&self) -> Files {
        let need = |repo, choices: &[&'static str]| Need {
            repo,
            choices: choices.to_vec(),
        };
        Files {
            clip_config: need(self.clip_repo, &["open_clip_config.json"]),
            lm_config: need(self.lm_repo, &["config.json"]),
            // A SentencePiece model where the repo has no `tokenizer.json` (LLaMA repos).
            tokenizer: need(self.lm_repo, &["tokenizer.json", "tokenizer.model"]),
            clip_weights: need(
                self.clip_repo,
                &["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
            ),
            lm_weights: need(
                self.lm_repo,
                &[
                    "model.safetensors.index.json",
                    "model.safetensors",
                    "pytorch_model.bin.index.json",
                    "pytorch_model.bin",
                ],
            ),
            checkpoint: need(self.checkpoint_repo, &[self.checkpoint_file]),
        }
    }
}

pub fn find(id: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.id.eq_ignore_ascii_case(id))
}
