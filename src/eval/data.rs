//! Labelled folders: images with their reference captions, or questions with their answers.
//!
//! Read in this order, the first that is there: `captions.jsonl`, `captions.csv`, COCO caption
//! annotations (`captions_*.json` or a Karpathy-split `dataset_*.json`), VQAv2 questions with
//! their annotations (`*questions*.json` + `*annotations*.json`), and last `.txt` files beside
//! the images (one caption a line). A bad row is reported with its file and line and skipped;
//! the rest loads.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::text::prompt::Task;

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "gif", "bmp"];

/// One evaluated item: an image with its references (captions, or a question's answers).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledItem {
    pub image: PathBuf,
    /// The image's path relative to the folder: how predictions name it.
    pub file: String,
    /// VQA: the question asked of the image.
    pub question: Option<String>,
    pub references: Vec<String>,
}

impl LabelledItem {
    /// What identifies an item in a predictions file.
    pub fn key(&self) -> (String, String) {
        (self.file.clone(), self.question.clone().unwrap_or_default())
    }
}

#[derive(Clone, Debug)]
pub struct LabelledFolder {
    pub root: PathBuf,
    pub task: Task,
    /// Which file the labels came from.
    pub source: String,
    pub items: Vec<LabelledItem>,
    /// Rows that could not be used, each naming its file and line.
    pub problems: Vec<String>,
}

impl LabelledFolder {
    /// Reads a labelled folder (or, given a file, the folder it is in with that file's labels).
    pub fn load(path: &Path) -> Result<Self> {
        let invalid = |reason: String| Error::Invalid(format!("{}: {reason}", path.display()));
        let (root, label_file) = if path.is_file() {
            let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (root, Some(path.to_path_buf()))
        } else if path.is_dir() {
            (path.to_path_buf(), None)
        } else {
            return Err(invalid("no such folder".into()));
        };
        let mut f = LabelledFolder {
            root: root.clone(),
            task: Task::Caption,
            source: String::new(),
            items: Vec::new(),
            problems: Vec::new(),
        };
        let named = |n: &str| {
            let p = root.join(n);
            p.is_file().then_some(p)
        };
        let jsons = json_files(&root);
        if let Some(file) = label_file {
            let name = file_name(&file);
            if name.ends_with(".jsonl") {
                f.read_jsonl(&file)?;
            } else if name.ends_with(".csv") {
                f.read_csv(&file)?;
            } else if name.ends_with(".json") {
                f.read_json_annotations(&file, &jsons)?;
            } else {
                return Err(invalid(
                    "labels must be .jsonl, .csv or COCO/VQAv2 .json".into(),
                ));
            }
        } else if let Some(p) = named("captions.jsonl") {
            f.read_jsonl(&p)?;
        } else if let Some(p) = named("captions.csv") {
            f.read_csv(&p)?;
        } else if let Some(p) = jsons.iter().find(|p| {
            let n = file_name(p);
            n.starts_with("captions_") || n.starts_with("dataset_") || n.contains("questions")
        }) {
            f.read_json_annotations(&p.clone(), &jsons)?;
        } else {
            f.read_sidecars()?;
        }
        if f.items.is_empty() {
            let mut reason = format!(
                "no labelled images found (looked for captions.jsonl, captions.csv, COCO or VQAv2 JSON, and .txt captions beside images{})",
                if f.source.is_empty() { String::new() } else { format!("; read {}", f.source) }
            );
            if let Some(p) = f.problems.first() {
                reason.push_str(&format!("; first problem: {p}"));
            }
            return Err(invalid(reason));
        }
        Ok(f)
    }

    fn push(&mut self, file: &str, question: Option<String>, refs: Vec<String>, at: &str) {
        let image = self.root.join(file);
        if !image.is_file() {
            self.problems
                .push(format!("{at}: the image {file} is not in the folder"));
            return;
        }
        if refs.iter().all(|r| r.trim().is_empty()) {
            self.problems
                .push(format!("{at}: no reference caption or answer"));
            return;
        }
        if question.is_some() {
            self.task = Task::Vqa;
        }
        // A caption file may give one image's captions on several rows.
        if question.is_none() {
            if let Some(item) = self
                .items
                .iter_mut()
                .find(|i| i.file == file && i.question.is_none())
            {
                item.references.extend(refs);
                return;
            }
        }
        self.items.push(LabelledItem {
            image,
            file: file.to_string(),
            question,
            references: refs,
        });
    }

    fn read_jsonl(&mut self, path: &Path) -> Result<()> {
        let text = read_text(path)?;
        let name = file_name(path);
        self.source = name.clone();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let at = format!("{name} line {}", i + 1);
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    self.problems.push(format!("{at}: not JSON ({e})"));
                    continue;
                }
            };
            let Some(file) = v.get("file").or(v.get("image")).and_then(Value::as_str) else {
                self.problems
                    .push(format!("{at}: no \"file\" (the image's name)"));
                continue;
            };
            let question = v.get("question").and_then(Value::as_str).map(String::from);
            let refs = if question.is_some() {
                strings(&v, "answers").or_else(|| strings(&v, "answer"))
            } else {
                strings(&v, "captions").or_else(|| strings(&v, "caption"))
            };
            match refs {
                Some(refs) => self.push(file, question, refs, &at),
                None => self.problems.push(format!(
                    "{at}: no {}",
                    if question.is_some() {
                        "\"answers\""
                    } else {
                        "\"caption\" or \"captions\""
                    }
                )),
            }
        }
        Ok(())
    }

    fn read_csv(&mut self, path: &Path) -> Result<()> {
        let name = file_name(path);
        self.source = name.clone();
        let bad = |e: csv::Error| Error::Invalid(format!("{}: {e}", path.display()));
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(path)
            .map_err(bad)?;
        let headers: Vec<String> = reader
            .headers()
            .map_err(bad)?
            .iter()
            .map(|h| h.trim().to_lowercase())
            .collect();
        let col = |n: &str| headers.iter().position(|h| h == n);
        let Some(file_col) = col("file").or(col("image")) else {
            return Err(Error::Invalid(format!(
                "{}: the first row must name the columns, with \"file\" and \"caption\" (or \"question\" and \"answers\")",
                path.display()
            )));
        };
        let (caption_col, question_col, answers_col) = (
            col("caption").or(col("captions")),
            col("question"),
            col("answers").or(col("answer")),
        );
        for (i, row) in reader.records().enumerate() {
            let at = format!("{name} line {}", i + 2);
            let row = match row {
                Ok(r) => r,
                Err(e) => {
                    self.problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let get = |c: Option<usize>| c.and_then(|c| row.get(c)).map(str::to_string);
            let Some(file) = get(Some(file_col)).filter(|f| !f.trim().is_empty()) else {
                self.problems.push(format!("{at}: no file name"));
                continue;
            };
            // Several answers (or captions) in one cell are separated by "|".
            let split = |s: String| -> Vec<String> {
                s.split('|')
                    .map(|a| a.trim().to_string())
                    .filter(|a| !a.is_empty())
                    .collect()
            };
            let question = get(question_col).filter(|q| !q.trim().is_empty());
            let refs = if question.is_some() {
                get(answers_col).map(split)
            } else {
                get(caption_col).map(split)
            };
            match refs {
                Some(refs) => self.push(file.trim(), question, refs, &at),
                None => self.problems.push(format!("{at}: no caption or answers")),
            }
        }
        Ok(())
    }

    fn read_json_annotations(&mut self, path: &Path, jsons: &[PathBuf]) -> Result<()> {
        let v = read_json(path)?;
        let name = file_name(path);
        self.source = name.clone();
        let images = ImageIndex::new(&self.root);
        if let Some(qs) = v.get("questions").and_then(Value::as_array) {
            // VQAv2: the answers are in the annotation file beside it.
            let ann_path = jsons
                .iter()
                .find(|p| file_name(p).contains("annotations"))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: VQAv2 questions need their annotations file (*annotations*.json) in the same folder",
                        path.display()
                    ))
                })?;
            let ann = read_json(ann_path)?;
            self.source = format!("{name} + {}", file_name(ann_path));
            let mut answers: HashMap<u64, Vec<String>> = HashMap::new();
            for a in ann
                .get("annotations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(qid), Some(list)) = (
                    a.get("question_id").and_then(Value::as_u64),
                    a.get("answers").and_then(Value::as_array),
                ) else {
                    continue;
                };
                answers.insert(
                    qid,
                    list.iter()
                        .filter_map(|x| x.get("answer").and_then(Value::as_str))
                        .map(String::from)
                        .collect(),
                );
            }
            self.task = Task::Vqa;
            for (i, q) in qs.iter().enumerate() {
                let at = format!("{name} question {}", i + 1);
                let (Some(qid), Some(image_id), Some(text)) = (
                    q.get("question_id").and_then(Value::as_u64),
                    q.get("image_id").and_then(Value::as_u64),
                    q.get("question").and_then(Value::as_str),
                ) else {
                    self.problems
                        .push(format!("{at}: needs question_id, image_id and question"));
                    continue;
                };
                let Some(file) = images.by_id(image_id) else {
                    self.problems
                        .push(format!("{at}: no image file for image_id {image_id}"));
                    continue;
                };
                let Some(refs) = answers.get(&qid).cloned() else {
                    self.problems
                        .push(format!("{at}: question {qid} has no annotation"));
                    continue;
                };
                self.push(&file, Some(text.to_string()), refs, &at);
            }
            return Ok(());
        }
        let Some(imgs) = v.get("images").and_then(Value::as_array) else {
            return Err(Error::Invalid(format!(
                "{}: not COCO captions (no \"images\") nor VQAv2 questions (no \"questions\")",
                path.display()
            )));
        };
        if imgs.iter().any(|i| i.get("sentences").is_some()) {
            // Karpathy split: the test split when there is one.
            let has_test = imgs
                .iter()
                .any(|i| i.get("split").and_then(Value::as_str) == Some("test"));
            for (i, im) in imgs.iter().enumerate() {
                let at = format!("{name} image {}", i + 1);
                if has_test && im.get("split").and_then(Value::as_str) != Some("test") {
                    continue;
                }
                let Some(fname) = im.get("filename").and_then(Value::as_str) else {
                    self.problems.push(format!("{at}: no filename"));
                    continue;
                };
                let refs: Vec<String> = im
                    .get("sentences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.get("raw").and_then(Value::as_str))
                    .map(String::from)
                    .collect();
                match images.by_name(fname) {
                    Some(file) => self.push(&file, None, refs, &at),
                    None => self
                        .problems
                        .push(format!("{at}: the image {fname} is not in the folder")),
                }
            }
            if has_test {
                self.source.push_str(" (test split)");
            }
            return Ok(());
        }
        let mut files: BTreeMap<u64, String> = BTreeMap::new();
        for im in imgs {
            if let (Some(id), Some(f)) = (
                im.get("id").and_then(Value::as_u64),
                im.get("file_name").and_then(Value::as_str),
            ) {
                files.insert(id, f.to_string());
            }
        }
        let mut refs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (i, a) in v
            .get("annotations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            match (
                a.get("image_id").and_then(Value::as_u64),
                a.get("caption").and_then(Value::as_str),
            ) {
                (Some(id), Some(c)) => refs.entry(id).or_default().push(c.to_string()),
                _ => self.problems.push(format!(
                    "{name} annotation {}: needs image_id and caption",
                    i + 1
                )),
            }
        }
        for (id, caps) in refs {
            let at = format!("{name} image_id {id}");
            let Some(fname) = files.get(&id) else {
                self.problems
                    .push(format!("{at}: not among the file's images"));
                continue;
            };
            match images.by_name(fname) {
                Some(file) => self.push(&file, None, caps, &at),
                None => self
                    .problems
                    .push(format!("{at}: the image {fname} is not in the folder")),
            }
        }
        Ok(())
    }

    fn read_sidecars(&mut self) -> Result<()> {
        self.source = "captions in .txt files beside the images".into();
        for (file, image) in ImageIndex::new(&self.root).files {
            let txt = image.with_extension("txt");
            if !txt.is_file() {
                continue;
            }
            let text = read_text(&txt)?;
            let refs: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect();
            let at = file_name(&txt);
            self.push(&file, None, refs, &at);
        }
        Ok(())
    }
}

/// Every image under a folder (two levels down), by relative path.
struct ImageIndex {
    files: BTreeMap<String, PathBuf>,
}

impl ImageIndex {
    fn new(root: &Path) -> Self {
        let mut files = BTreeMap::new();
        fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeMap<String, PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() && depth < 2 {
                    walk(root, &p, depth + 1, out);
                } else if is_image(&p) {
                    if let Ok(rel) = p.strip_prefix(root) {
                        out.insert(rel.to_string_lossy().replace('\\', "/"), p.clone());
                    }
                }
            }
        }
        walk(root, root, 0, &mut files);
        Self { files }
    }

    fn by_name(&self, name: &str) -> Option<String> {
        if self.files.contains_key(name) {
            return Some(name.to_string());
        }
        self.files
            .keys()
            .find(|k| k.rsplit('/').next() == Some(name))
            .cloned()
    }

    /// COCO names images by id: `COCO_val2014_000000000042.jpg`, `000000000042.jpg`.
    fn by_id(&self, id: u64) -> Option<String> {
        self.files
            .keys()
            .find(|k| {
                let stem = k.rsplit('/').next().unwrap_or(k);
                let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
                let digits: String = stem
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                !digits.is_empty() && digits.parse::<u64>().ok() == Some(id)
            })
            .cloned()
    }
}

pub fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn json_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p)
        .map_err(|e| Error::Invalid(format!("{}: cannot be read as text: {e}", p.display())))
}

fn read_json(p: &Path) -> Result<Value> {
    serde_json::from_str(&read_text(p)?)
        .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", p.display())))
}

/// A string or an array of strings under `key`.
fn strings(v: &Value, key: &str) -> Option<Vec<String>> {
    match v.get(key)? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(|x| {
                    x.as_str()
                        .or_else(|| x.get("answer").and_then(Value::as_str))
                })
                .map(String::from)
                .collect(),
        ),
        _ => None,
    }
}
