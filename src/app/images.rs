//! A background thread that reads and checks images and makes their thumbnails, so the UI
//! thread never decodes a large image.

use std::path::PathBuf;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::text::prompt::ShotText;

/// Thumbnails' longer side: large enough for the query's preview at its largest.
pub const THUMB: u32 = 384;

#[derive(Clone, Debug)]
pub enum Source {
    Path(PathBuf),
    Bytes { name: String, bytes: Arc<[u8]> },
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            Source::Bytes { name, .. } => name.clone(),
        }
    }
}

/// Where a loaded image goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Example {
        text: ShotText,
        enabled: bool,
    },
    Query,
    /// The variant set's (a prompt set that holds one).
    VariantExample {
        text: ShotText,
        enabled: bool,
    },
    VariantQuery,
}

pub struct Job {
    pub source: Source,
    pub target: Target,
}

pub enum Loaded {
    Ok {
        target: Target,
        name: String,
        bytes: Arc<[u8]>,
        thumb: egui::ColorImage,
        size: [u32; 2],
    },
    Failed {
        name: String,
        error: String,
    },
}

pub struct ImageLoader {
    tx: Sender<Job>,
    pub rx: Receiver<Loaded>,
}

impl ImageLoader {
    pub fn start(waker: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, jobs) = crossbeam_channel::unbounded::<Job>();
        let (done_tx, rx) = crossbeam_channel::unbounded();
        let _ = std::thread::Builder::new()
            .name("flamingo-images".into())
            .spawn(move || {
                for job in jobs {
                    let _ = done_tx.send(load(job));
                    waker();
                }
            });
        Self { tx, rx }
    }

    pub fn submit(&self, source: Source, target: Target) {
        let _ = self.tx.send(Job { source, target });
    }
}

fn load(job: Job) -> Loaded {
    let name = job.source.name();
    let bytes: Arc<[u8]> = match &job.source {
        Source::Path(p) => match std::fs::read(p) {
            Ok(b) => b.into(),
            Err(e) => {
                return Loaded::Failed {
                    name,
                    error: format!("cannot read the file: {e}"),
                }
            }
        },
        Source::Bytes { bytes, .. } => bytes.clone(),
    };
    match crate::image::decode_rgb(&bytes, &name) {
        Ok(rgb) => {
            let size = [rgb.width(), rgb.height()];
            let t = fit(&rgb);
            let thumb =
                egui::ColorImage::from_rgb([t.width() as usize, t.height() as usize], t.as_raw());
            Loaded::Ok {
                target: job.target,
                name,
                bytes,
                thumb,
                size,
            }
        }
        Err(e) => Loaded::Failed {
            name,
            error: e.to_string(),
        },
    }
}

/// A thumbnail that keeps the aspect ratio, at most THUMB on its longer side.
fn fit(src: &image::RgbImage) -> image::RgbImage {
    fit_within(src, THUMB)
}

/// A thumbnail that keeps the aspect ratio, at most `side` on its longer side.
pub fn fit_within(src: &image::RgbImage, side: u32) -> image::RgbImage {
    let (w, h) = src.dimensions();
    let scale = (side as f32 / w.max(h) as f32).min(1.0);
    let (tw, th) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    image::imageops::thumbnail(src, tw, th)
}
