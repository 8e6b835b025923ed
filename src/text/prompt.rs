//! Prompt templates: mmpretrain's `Flamingo` defaults (the seed) and how a prompt is built.

use crate::error::{Error, Result};

pub const DEFAULT_SHOT_TEMPLATE: &str = "<image>Output:{caption}<|endofchunk|>";
pub const DEFAULT_FINAL_TEMPLATE: &str = "<image>Output:";
pub const DEFAULT_ZEROSHOT_TEMPLATE: &str = "<image>Output:";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Templates {
    pub shot: String,
    pub final_: String,
    pub zeroshot: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            shot: DEFAULT_SHOT_TEMPLATE.into(),
            final_: DEFAULT_FINAL_TEMPLATE.into(),
            zeroshot: DEFAULT_ZEROSHOT_TEMPLATE.into(),
        }
    }
}

/// Python `str.format` with named fields only: `{name}` is replaced, `{{`/`}}` are braces.
pub fn format_template(tmpl: &str, fields: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(tmpl.len());
    let mut chars = tmpl.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(ch) => name.push(ch),
                        None => {
                            return Err(Error::Prompt(format!(
                                "unclosed `{{` in template `{tmpl}`"
                            )))
                        }
                    }
                }
                let v = fields
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| *v)
                    .ok_or_else(|| {
                        Error::Prompt(format!(
                            "template `{tmpl}` uses `{{{name}}}`, which is not given"
                        ))
                    })?;
                out.push_str(v);
            }
            '}' => return Err(Error::Prompt(format!("single `}}` in template `{tmpl}`"))),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The caption prompt: each shot's template in order, then the final template. Without shots
/// the zero-shot template is the whole prompt (it holds the query's `<image>`).
///
/// mmpretrain appends the final template to its zero-shot prompt too; with its defaults that
/// gives two `<image>` markers for one image (SPEC §12.17), so a zero-shot template here is
/// complete by itself.
pub fn caption_prompt(t: &Templates, shot_captions: &[&str]) -> Result<String> {
    if shot_captions.is_empty() {
        return format_template(&t.zeroshot, &[]);
    }
    let mut p = String::new();
    for c in shot_captions {
        p.push_str(&format_template(&t.shot, &[("caption", c)])?);
    }
    p.push_str(&format_template(&t.final_, &[])?);
    Ok(p)
}

/// Counts `<image>` markers in a prompt.
pub fn count_images(prompt: &str) -> usize {
    prompt.matches(super::IMAGE).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_like_python() {
        assert_eq!(
            format_template("a{x}b{{c}}", &[("x", "1")]).unwrap(),
            "a1b{c}"
        );
        assert!(format_template("{missing}", &[]).is_err());
        assert!(format_template("{open", &[]).is_err());
        assert!(format_template("close}", &[]).is_err());
    }

    #[test]
    fn prompts_follow_the_seed_templates() {
        let t = Templates::default();
        assert_eq!(caption_prompt(&t, &[]).unwrap(), "<image>Output:");
        assert_eq!(
            caption_prompt(&t, &["A.", "B."]).unwrap(),
            "<image>Output:A.<|endofchunk|><image>Output:B.<|endofchunk|><image>Output:"
        );
        assert_eq!(count_images(&caption_prompt(&t, &["A.", "B."]).unwrap()), 3);
    }
}
