//! What ships inside the binary: the app icon and the first-launch example set.

pub const ICON_PNG: &[u8] = include_bytes!("../../assets/icon.png");
const SAMPLE_SET: &str = include_str!("../../assets/example-set.flamingo.json");

/// The ready-made example set (a prompt-set file; see `assets/README.md`).
pub fn sample_set_json() -> String {
    SAMPLE_SET.to_string()
}
