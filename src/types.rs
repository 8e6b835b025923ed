//! Plain data shared by every room, from the kernels to the app: no tensors, no models.

/// How the weights of the linear layers are held.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum WeightFormat {
    #[default]
    #[value(name = "f32")]
    F32,
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4k")]
    Q4K,
    /// Mixed, like llama.cpp's Q4_K_M: the language model's and the cross-attention blocks'
    /// feed-forward layers (most of what a token reads) in q4k, everything else in q8_0.
    #[value(name = "q4k_m")]
    Q4KM,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [Self::F32, Self::F16, Self::Q8_0, Self::Q4KM, Self::Q4K];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
            Self::Q4KM => "q4k_m",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which image a text token cross-attends to (docs/openflamingo.md §4.2, §4.3).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
pub enum MediaAttention {
    /// OpenFlamingo v2: the latest image before (or at) the token; generated tokens the last
    /// image of the prompt.
    #[default]
    #[value(name = "previous")]
    Previous,
    /// OpenFlamingo v1 and mmpretrain (`attend_previous=False`): the image that follows the
    /// token; text after the last image (and every generated token) attends to none.
    #[value(name = "next")]
    Next,
}

impl MediaAttention {
    pub fn name(self) -> &'static str {
        match self {
            Self::Previous => "previous",
            Self::Next => "next",
        }
    }
}

/// Which examples the k-shot row of a shot sweep takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ShotPick {
    /// The first k, in order.
    #[default]
    First,
    /// The first k of one seeded shuffle of the examples: random draws whose k-shot set
    /// still holds the (k−1)-shot one, so that each row runs on from the row before.
    Random { seed: u64 },
}
