//! Input from outside the window's widgets: files dropped from a file manager, file paths
//! pasted, the clipboard, and the file dialogs (run off the UI thread; what they give comes
//! back through a channel).

use std::path::PathBuf;

use super::images::Source;
use super::reducer::{Command, DropTarget};
use super::FlamingoApp;

/// What a dialog or the clipboard gave.
pub(crate) enum DialogResult {
    Images(DropTarget, Vec<PathBuf>),
    Pasted(DropTarget, Vec<Source>),
    Nothing(String),
    Open(PathBuf),
    Save(PathBuf),
    Export(super::history::ExportFormat, PathBuf),
    EvalFolder(PathBuf),
    Library(PathBuf),
    ExportEval(super::history::ExportFormat, PathBuf),
    /// The file dialog for this did not open (no xdg portal or zenity on this desktop).
    Unavailable(PathFor),
}

/// What a file dialog (or the path typed instead of it) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathFor {
    Images(DropTarget),
    Open,
    Save,
    Export(super::history::ExportFormat),
    EvalFolder,
    Library,
    ExportEval(super::history::ExportFormat),
}

/// A dialog that gives nothing sooner than this after it was asked for did not open: nobody
/// picks or cancels that fast.
const DIALOG_FAILED_WITHIN: std::time::Duration = std::time::Duration::from_millis(400);

impl FlamingoApp {
    /// Runs a dialog (or a clipboard read) off the UI thread. A file dialog (`for_`) that
    /// gives nothing at once did not open: the app then says so and offers a path field.
    pub(super) fn spawn_dialog(
        &self,
        for_: Option<PathFor>,
        fut: impl std::future::Future<Output = Option<DialogResult>> + Send + 'static,
    ) {
        let tx = self.dialog_tx.clone();
        let ctx = self.ctx.clone();
        let t0 = std::time::Instant::now();
        let _ = std::thread::Builder::new()
            .name("flamingo-dialog".into())
            .spawn(move || {
                let r = match (pollster::block_on(fut), for_) {
                    (Some(r), _) => Some(r),
                    (None, Some(f)) if t0.elapsed() < DIALOG_FAILED_WITHIN => {
                        Some(DialogResult::Unavailable(f))
                    }
                    (None, _) => None,
                };
                if let Some(r) = r {
                    let _ = tx.send(r);
                    ctx.request_repaint();
                }
            });
    }

    /// Drops from the file manager: onto the query area or the examples panel.
    pub(super) fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let (dropped, pos) = ctx.input(|i| (i.raw.dropped_files.clone(), i.pointer.latest_pos()));
        if dropped.is_empty() {
            return;
        }
        let mut sources = Vec::new();
        for f in dropped {
            let p = f.path().to_path_buf();
            if !p.as_os_str().is_empty() && p.is_file() {
                sources.push(Source::Path(p));
            } else {
                match f.bytes() {
                    Ok(b) => sources.push(Source::Bytes {
                        name: p.display().to_string(),
                        bytes: b.into(),
                    }),
                    Err(e) => self.error(format!("{}: {e}", p.display())),
                }
            }
        }
        let on_query = pos.map(|p| self.drop_rects[1].contains(p)).unwrap_or(false);
        let to = if on_query {
            DropTarget::Query
        } else {
            DropTarget::Examples
        };
        self.apply(Command::AddImages { sources, to });
    }

    /// Ctrl+V of file paths (copied in a file manager) while no text field has the focus.
    pub(super) fn take_pasted_paths(&mut self, ctx: &egui::Context) {
        if ctx.memory(|m| m.focused().is_some()) {
            return;
        }
        let pasted: Vec<String> = ctx.input(|i| {
            i.events
                .iter()
                .filter_map(|e| match e {
                    egui::Event::Paste(t) => Some(t.clone()),
                    _ => None,
                })
                .collect()
        });
        for text in pasted {
            let paths = paths_in_text(&text);
            if !paths.is_empty() {
                let to = if self.ws.query.is_none() && paths.len() == 1 {
                    DropTarget::Query
                } else {
                    DropTarget::Examples
                };
                self.apply(Command::AddImages {
                    sources: paths.into_iter().map(Source::Path).collect(),
                    to,
                });
            }
        }
    }
}

/// An image on the clipboard (as PNG bytes), or image files named by the clipboard's text.
pub(super) fn read_clipboard(to: DropTarget) -> DialogResult {
    let mut cb = match arboard::Clipboard::new() {
        Ok(c) => c,
        Err(e) => return DialogResult::Nothing(format!("The clipboard cannot be read: {e}")),
    };
    if let Ok(img) = cb.get_image() {
        let rgba =
            image::RgbaImage::from_raw(img.width as u32, img.height as u32, img.bytes.into_owned());
        if let Some(rgba) = rgba {
            let mut png = Vec::new();
            if image::DynamicImage::ImageRgba8(rgba)
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .is_ok()
            {
                let source = Source::Bytes {
                    name: "pasted image.png".into(),
                    bytes: png.into(),
                };
                return DialogResult::Pasted(to, vec![source]);
            }
        }
    }
    if let Ok(text) = cb.get_text() {
        let paths = paths_in_text(&text);
        if !paths.is_empty() {
            return DialogResult::Pasted(to, paths.into_iter().map(Source::Path).collect());
        }
    }
    DialogResult::Nothing("The clipboard holds no image and no image file.".into())
}

/// Files named in pasted text: one per line, plain paths or `file://` URIs.
pub fn paths_in_text(text: &str) -> Vec<PathBuf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_prefix("file://").unwrap_or(l))
        .map(|l| PathBuf::from(l.replace("%20", " ")))
        .filter(|p| p.is_file())
        .collect()
}
