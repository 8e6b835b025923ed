//! The released OpenFlamingo models (SPEC §1.1).

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
        matches!(self, LmFamily::MosaicGpt)
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
    /// Approximate memory to run it in f32, GB (q8_0 needs about a third of it).
    pub ram_gb: f64,
}

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
        ram_gb: 11.0,
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
        ram_gb: 11.0,
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
        ram_gb: 16.0,
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
        ram_gb: 16.0,
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
        ram_gb: 36.0,
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
        ram_gb: 36.0,
    },
];

pub fn find(id: &str) -> Option<&'static ModelSpec> {
    MODELS.iter().find(|m| m.id.eq_ignore_ascii_case(id))
}
