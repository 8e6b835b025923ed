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
/// gives two `<image>` markers for one image (docs/openflamingo.md §8), so a zero-shot template
/// here is complete by itself.
pub fn caption_prompt(t: &Templates, shot_captions: &[&str]) -> Result<String> {
    let shots: Vec<ShotText> = shot_captions
        .iter()
        .map(|c| ShotText {
            caption: c.to_string(),
            ..Default::default()
        })
        .collect();
    task_prompt(Task::Caption, t, &shots, "")
}

/// What the model is asked to do (the seed's `task`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Task {
    #[default]
    Caption,
    Vqa,
}

pub const VQA_SHOT_TEMPLATE: &str =
    "<image>Question:{question} Short Answer:{answer}<|endofchunk|>";
pub const VQA_FINAL_TEMPLATE: &str = "<image>Question:{question} Short Answer:";

impl Templates {
    /// The seed's defaults for a task (mmpretrain's few-shot configs for VQA).
    pub fn for_task(task: Task) -> Self {
        match task {
            Task::Caption => Self::default(),
            Task::Vqa => Self {
                shot: VQA_SHOT_TEMPLATE.into(),
                final_: VQA_FINAL_TEMPLATE.into(),
                zeroshot: VQA_FINAL_TEMPLATE.into(),
            },
        }
    }
}

/// Named prompt styles (docs/openflamingo.md §8): `mmpretrain` (the seed's configs, the
/// default) and `open_flamingo` (its v2 evaluation: a newline after each example, "Short
/// answer").
pub const PRESETS: &[&str] = &["mmpretrain", "open_flamingo"];

pub fn preset(name: &str, task: Task) -> Option<Templates> {
    match (name, task) {
        ("mmpretrain", t) => Some(Templates::for_task(t)),
        ("open_flamingo", Task::Caption) => Some(Templates {
            shot: "<image>Output:{caption}<|endofchunk|>\n".into(),
            final_: "<image>Output:".into(),
            zeroshot: "<image>Output:".into(),
        }),
        ("open_flamingo", Task::Vqa) => Some(Templates {
            shot: "<image>Question:{question} Short answer:{answer}<|endofchunk|>\n".into(),
            final_: "<image>Question:{question} Short answer:".into(),
            zeroshot: "<image>Question:{question} Short answer:".into(),
        }),
        _ => None,
    }
}

/// One example's text: a caption, or a question and its answer.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShotText {
    pub caption: String,
    pub question: String,
    pub answer: String,
}

/// The prompt for a task: shots' templates in order, then the final template (with the query's
/// question for VQA); without shots the zero-shot template alone.
pub fn task_prompt(
    task: Task,
    t: &Templates,
    shots: &[ShotText],
    question: &str,
) -> Result<String> {
    let final_fields = [("question", question)];
    if shots.is_empty() {
        return format_template(&t.zeroshot, &final_fields);
    }
    let mut p = String::new();
    for s in shots {
        let f = match task {
            Task::Caption => vec![("caption", s.caption.as_str())],
            Task::Vqa => vec![
                ("question", s.question.as_str()),
                ("answer", s.answer.as_str()),
            ],
        };
        p.push_str(&format_template(&t.shot, &f)?);
    }
    p.push_str(&format_template(&t.final_, &final_fields)?);
    Ok(p)
}

/// The seed's `post_process`, exactly: a caption is cut before the first "Output" and loses its
/// double quotes; a VQA answer is cut before the first "Question" or "Answer". Nothing is
/// trimmed (see [`answer`]).
pub fn post_process(task: Task, raw: &str) -> String {
    match task {
        Task::Caption => raw.split("Output").next().unwrap_or("").replace('"', ""),
        Task::Vqa => {
            let cut = ["Question", "Answer"]
                .iter()
                .filter_map(|m| raw.find(m))
                .min()
                .unwrap_or(raw.len());
            raw[..cut].to_string()
        }
    }
}

/// What users see: [`post_process`] with surrounding white space removed.
pub fn answer(task: Task, raw: &str) -> String {
    post_process(task, raw).trim().to_string()
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

    #[test]
    fn vqa_prompt_and_post_processing() {
        let t = Templates::for_task(Task::Vqa);
        let shots = [ShotText {
            question: "What is it?".into(),
            answer: "a cat".into(),
            ..Default::default()
        }];
        assert_eq!(
            task_prompt(Task::Vqa, &t, &shots, "Where?").unwrap(),
            "<image>Question:What is it? Short Answer:a cat<|endofchunk|><image>Question:Where? Short Answer:"
        );
        assert_eq!(answer(Task::Vqa, " on a mat Question: x"), "on a mat");
        assert_eq!(
            post_process(Task::Vqa, " on a mat Question: x"),
            " on a mat "
        );
        assert_eq!(answer(Task::Vqa, "yes Answer"), "yes");
        assert_eq!(answer(Task::Caption, " A \"cat\". Output: more"), "A cat.");
    }
}
