//! The panels. Each function draws and returns the commands the user asked for; only text
//! fields and toggles are edited in place.

use egui::{Color32, RichText, Ui};

use super::{Command, DropTarget, FlamingoApp, ModelState};
use crate::text::prompt::Task;

const ACCENT: Color32 = Color32::from_rgb(244, 114, 160);

/// How much larger presentation mode draws everything.
pub const PRESENT_ZOOM: f32 = 1.5;

pub fn show(app: &mut FlamingoApp, ui: &mut Ui) -> Vec<Command> {
    let mut cmds = Vec::new();
    let ctx = ui.ctx().clone();
    // Keyboard: Ctrl/Cmd+Enter generates, Escape stops.
    if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Enter)) {
        cmds.push(Command::Generate);
    }
    if app.is_running()
        && ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::Escape))
    {
        cmds.push(Command::Stop);
    }
    // Ctrl/Cmd+Z undoes a removal or a replaced set, unless a text field has the keyboard
    // (it undoes its own typing).
    if !ctx.egui_wants_keyboard_input()
        && ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Z))
    {
        cmds.push(Command::Undo);
    }
    if ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::F5)) {
        app.settings.presentation = !app.settings.presentation;
    }
    // Presentation mode scales the whole window (as Ctrl + does), so every view grows alike.
    let zoom = if app.settings.presentation {
        PRESENT_ZOOM
    } else {
        1.0
    };
    if (ctx.zoom_factor() - zoom).abs() > f32::EPSILON {
        ctx.set_zoom_factor(zoom);
    }
    egui::Panel::top("top").show(ui, |ui| super::top_bar::top_bar(app, ui, &mut cmds));
    if !app.settings.presentation {
        egui::Panel::bottom("status").show(ui, |ui| status_bar(app, ui));
    }
    // The examples take at most 45 % of a narrow window, so the query and caption keep room.
    let max_left = (ctx.content_rect().width() * 0.45).max(240.0);
    let examples_rect = egui::Panel::left("examples")
        .resizable(true)
        .default_size(380.0f32.min(max_left))
        .min_size(240.0)
        .max_size(max_left)
        .show(ui, |ui| examples_panel(app, ui, &mut cmds))
        .response
        .rect;
    let mut query_rect = egui::Rect::NOTHING;
    egui::CentralPanel::default().show(ui, |ui| {
        egui::ScrollArea::vertical().show(ui, |ui| {
            messages(app, ui, &mut cmds);
            query_rect = query_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::icl_view::output_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::icl_view::sweep_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::icl_view::ablation_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::icl_view::attention_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::history_view::history_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            super::eval_view::evaluate_area(app, ui, &mut cmds);
            ui.add_space(8.0);
            ranking(app, ui, &mut cmds);
            ui.add_space(8.0);
            prompt_preview(app, ui, &mut cmds);
        });
    });
    app.set_drop_rects(examples_rect, query_rect);
    toasts(app, &ctx, &mut cmds);
    hovering_files_overlay(&ctx);
    cmds
}

fn examples_panel(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        ui.heading("Examples");
        if ui.button("Add images…").clicked() {
            cmds.push(Command::PickImages(DropTarget::Examples));
        }
        if ui
            .button("Paste")
            .on_hover_text("an image or image files from the clipboard")
            .clicked()
        {
            cmds.push(Command::PasteImage(DropTarget::Examples));
        }
        if ui
            .button("From library…")
            .on_hover_text(
                "Pick a labelled folder: the examples become its images most like the query \
                 (RICES), most similar last, each with its caption.",
            )
            .clicked()
        {
            cmds.push(Command::PickLibrary);
        }
    });
    if let Some(lib) = app.eval.library.clone() {
        ui.horizontal_wrapped(|ui| {
            let name = lib.file_name().map_or(lib.display().to_string(), |n| {
                n.to_string_lossy().into_owned()
            });
            ui.label(RichText::new(format!("Library: {name}")).small());
            let l = ui.label(RichText::new("examples").small());
            ui.add(egui::DragValue::new(&mut app.eval.library_k).range(1..=16))
                .labelled_by(l.id);
            ui.checkbox(&mut app.eval.follow_query, "re-pick for each query");
            if ui.small_button("Pick again").clicked() {
                cmds.push(Command::ExamplesFromLibrary(lib.clone()));
            }
        });
    }
    ui.label(RichText::new("Drop image files here. Each example is an image with its caption; they go into the prompt in this order.").small().weak());
    if app.loading_images > 0 {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!("reading {} image(s)…", app.loading_images));
        });
    }
    ui.separator();
    let task = app.ws.task;
    let n = app.ws.examples.len();
    let mut changed = false;
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            if n == 0 {
                ui.add_space(24.0);
                ui.vertical_centered(|ui| {
                    ui.label(RichText::new("No examples: the prompt is zero-shot.").weak())
                });
            }
            for i in 0..n {
                let ex = &mut app.ws.examples[i];
                let id = ex.id;
                let frame = egui::Frame::group(ui.style()).inner_margin(6.0);
                let (_, dropped) = ui.dnd_drop_zone::<usize, ()>(frame, |ui| {
                    ui.horizontal(|ui| {
                        ui.dnd_drag_source(egui::Id::NULL.with(("drag-example", id)), i, |ui| {
                            ui.label(RichText::new("::").size(16.0).strong())
                                .on_hover_text("drag to reorder");
                        });
                        if let Some(t) = &ex.image.thumb {
                            let size = t.size_vec2();
                            let scale = (96.0 / size.x.max(size.y)).min(1.0);
                            ui.add(egui::Image::new(t).fit_to_exact_size(size * scale))
                                .on_hover_text(format!(
                                    "{} ({}×{})",
                                    ex.image.name, ex.image.size[0], ex.image.size[1]
                                ));
                        }
                        ui.vertical(|ui| {
                            ui.horizontal(|ui| {
                                changed |= ui
                                    .checkbox(&mut ex.enabled, "")
                                    .on_hover_text("use this example")
                                    .changed();
                                ui.label(
                                    RichText::new(format!("{}. {}", i + 1, ex.image.name)).small(),
                                );
                            });
                            match task {
                                Task::Caption => {
                                    changed |= ui
                                        .add(
                                            egui::TextEdit::multiline(&mut ex.text.caption)
                                                .desired_rows(2)
                                                .hint_text("caption")
                                                .id_salt(("caption", id))
                                                .desired_width(ui.available_width()),
                                        )
                                        .changed();
                                }
                                Task::Vqa => {
                                    changed |= ui
                                        .add(
                                            egui::TextEdit::singleline(&mut ex.text.question)
                                                .hint_text("question")
                                                .id_salt(("q", id))
                                                .desired_width(ui.available_width()),
                                        )
                                        .changed();
                                    changed |= ui
                                        .add(
                                            egui::TextEdit::singleline(&mut ex.text.answer)
                                                .hint_text("answer")
                                                .id_salt(("a", id))
                                                .desired_width(ui.available_width()),
                                        )
                                        .changed();
                                }
                            }
                            // What goes into the prompt empty, said before Generate.
                            let missing = match task {
                                Task::Caption if ex.text.caption.trim().is_empty() => {
                                    Some("No caption: the example goes in with an empty one.")
                                }
                                Task::Vqa
                                    if ex.text.question.trim().is_empty()
                                        || ex.text.answer.trim().is_empty() =>
                                {
                                    Some("No question or answer: it goes in empty.")
                                }
                                _ => None,
                            };
                            if let (Some(m), true) = (missing, ex.enabled) {
                                ui.label(
                                    RichText::new(m)
                                        .small()
                                        .color(Color32::from_rgb(240, 170, 90)),
                                );
                            }
                            ui.horizontal_wrapped(|ui| {
                                if ui
                                    .add_enabled(i > 0, egui::Button::new("Up").small())
                                    .on_hover_text("move up")
                                    .clicked()
                                {
                                    cmds.push(Command::MoveExample { from: i, to: i - 1 });
                                }
                                if ui
                                    .add_enabled(i + 1 < n, egui::Button::new("Down").small())
                                    .on_hover_text("move down")
                                    .clicked()
                                {
                                    cmds.push(Command::MoveExample { from: i, to: i + 1 });
                                }
                                if ui.add(egui::Button::new("Remove").small()).clicked() {
                                    cmds.push(Command::RemoveExample(id));
                                }
                            });
                        });
                    });
                });
                if let Some(from) = dropped {
                    cmds.push(Command::MoveExample { from: *from, to: i });
                }
            }
            // Space below the cards that still accepts file drops.
            ui.allocate_space(egui::vec2(
                ui.available_width(),
                80.0_f32.max(ui.available_height()),
            ));
        });
    if changed {
        app.mark_dirty();
    }
}

fn query_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) -> egui::Rect {
    let resp = egui::Frame::group(ui.style())
        .inner_margin(10.0)
        .show(ui, |ui| {
            ui.set_min_width(ui.available_width());
            ui.horizontal_wrapped(|ui| {
                ui.heading("Query");
                if ui.button("Choose image…").clicked() {
                    cmds.push(Command::PickImages(DropTarget::Query));
                }
                if ui
                    .button("Paste")
                    .on_hover_text("an image from the clipboard")
                    .clicked()
                {
                    cmds.push(Command::PasteImage(DropTarget::Query));
                }
                if app.ws.query.is_some() && ui.button("Clear").clicked() {
                    cmds.push(Command::ClearQuery);
                }
            });
            match &app.ws.query {
                Some(q) => {
                    if let Some(t) = &q.thumb {
                        // The query grows with the window: up to 40 % of its width and 30 % of
                        // its height (the caption below stays in view).
                        let size = t.size_vec2();
                        let room = ui.ctx().content_rect();
                        let side = (ui.available_width() * 0.4)
                            .min(room.height() * 0.3)
                            .clamp(180.0, 480.0);
                        let scale = (side / size.x.max(size.y)).min(2.0);
                        let r = ui
                            .add(egui::Image::new(t).fit_to_exact_size(size * scale))
                            .rect;
                        if app.settings.show_crop {
                            shade_outside_crop(ui, r);
                        }
                    }
                    ui.checkbox(&mut app.settings.show_crop, "What the model sees")
                        .on_hover_text(
                            "The model sees the centre square of the image (shorter side resized \
                             to 224 pixels); the darkened parts are cut away.",
                        );
                    ui.label(
                        RichText::new(format!("{} ({}×{})", q.name, q.size[0], q.size[1])).small(),
                    );
                }
                None => {
                    ui.add_space(30.0);
                    ui.vertical_centered(|ui| {
                        ui.label(
                            RichText::new("Drop the image to caption here")
                                .size(16.0)
                                .weak(),
                        )
                    });
                    ui.add_space(30.0);
                }
            }
            if app.ws.task == Task::Vqa {
                ui.horizontal(|ui| {
                    ui.label("Question");
                    if ui
                        .add(
                            egui::TextEdit::singleline(&mut app.ws.question)
                                .desired_width(f32::INFINITY)
                                .id_salt("question"),
                        )
                        .changed()
                    {
                        app.mark_dirty();
                    }
                });
            }
            ui.horizontal(|ui| {
                let running = app.is_running();
                let ready = matches!(app.status.model, ModelState::Ready(_));
                let has_query = app.ws.query.is_some();
                if ui
                    .add_enabled(
                        !running && ready && has_query,
                        egui::Button::new(RichText::new("Generate").strong())
                            .fill(ACCENT.gamma_multiply(0.6)),
                    )
                    .on_disabled_hover_text(if !has_query {
                        "Drop a query image first."
                    } else if !ready {
                        "The model is not loaded yet (Model, at the top)."
                    } else {
                        "Running: Stop first."
                    })
                    .clicked()
                {
                    cmds.push(Command::Generate);
                }
                if ui.add_enabled(running, egui::Button::new("Stop")).clicked() {
                    cmds.push(Command::Stop);
                }
                if running {
                    ui.spinner();
                }
            });
        });
    resp.response.rect
}

fn ranking(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    egui::CollapsingHeader::new("Rank candidates").default_open(false).show(ui, |ui| {
        ui.label(RichText::new("One caption or answer per line; each is scored by its log-likelihood right after the prompt (zero-shot classification).").small().weak());
        ui.add(
            egui::TextEdit::multiline(&mut app.ws.candidates)
                .desired_rows(3)
                .desired_width(f32::INFINITY)
                .hint_text("a cat\na dog\nan astronaut"),
        );
        let ready = matches!(app.status.model, ModelState::Ready(_)) && !app.is_running();
        if ui.add_enabled(ready, egui::Button::new("Rank")).clicked() {
            cmds.push(Command::Score);
        }
        if !app.status.ranked.is_empty() {
            ui.horizontal(|ui| {
                ui.label(RichText::new("Order by").small());
                ui.selectable_value(&mut app.settings.rank_by_mean, false, "sum")
                    .on_hover_text("log p of the whole text: favours short texts");
                ui.selectable_value(&mut app.settings.rank_by_mean, true, "per token")
                    .on_hover_text("log p divided by the text's tokens: length-neutral");
            });
            let mut rows = app.status.ranked.clone();
            let mean = |lp: f32, n: usize| lp / n.max(1) as f32;
            if app.settings.rank_by_mean {
                rows.sort_by(|a, b| mean(b.1, b.2).total_cmp(&mean(a.1, a.2)));
            }
            egui::Grid::new("ranked").striped(true).show(ui, |ui| {
                for h in ["", "log p", "per token", "p", "tokens", "text"] {
                    ui.label(RichText::new(h).small().strong());
                }
                ui.end_row();
                for (i, (text, lp, n)) in rows.iter().enumerate() {
                    ui.label(format!("{}.", i + 1));
                    ui.label(format!("{lp:.3}"));
                    ui.label(format!("{:.3}", mean(*lp, *n)));
                    ui.label(format!("{:.2e}", lp.exp()));
                    ui.label(n.to_string());
                    ui.label(text);
                    ui.end_row();
                }
            });
        }
    });
}

fn prompt_preview(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    egui::CollapsingHeader::new("Prompt and templates").default_open(false).show(ui, |ui| {
        let prompt = app.ws.prompt();
        match &prompt {
            Ok(p) => {
                let count = app.prompt_token_count(p);
                let ctx_len = match &app.status.model {
                    ModelState::Ready(i) => Some(i.context_len),
                    _ => None,
                };
                let line = match (count, ctx_len) {
                    (Some(Ok(n)), Some(c)) => format!("{n} prompt tokens + {} new of {c} context", app.settings.max_new_tokens),
                    (Some(Ok(n)), None) => format!("{n} prompt tokens"),
                    (Some(Err(e)), _) => format!("tokenizer: {e}"),
                    (None, _) => "token count once the model is loaded".into(),
                };
                ui.label(RichText::new(line).small());
                let images = app.ws.examples.iter().filter(|e| e.enabled).count() + 1;
                let markers = p.matches("<image>").count();
                if markers != images {
                    ui.colored_label(
                        Color32::from_rgb(240, 120, 100),
                        format!(
                            "The prompt has {markers} <image> markers for {images} images: the \
                             example template and the final template must each hold one \
                             <image>. Generate would refuse this prompt."
                        ),
                    );
                }
                let mut job = egui::text::LayoutJob::default();
                for (i, part) in p.split("<image>").enumerate() {
                    if i > 0 {
                        job.append("[image]", 0.0, egui::TextFormat { color: ACCENT, ..Default::default() });
                    }
                    for (j, seg) in part.split("<|endofchunk|>").enumerate() {
                        if j > 0 {
                            job.append("[end]", 0.0, egui::TextFormat { color: Color32::GRAY, ..Default::default() });
                        }
                        job.append(seg, 0.0, egui::TextFormat { font_id: egui::FontId::monospace(13.0), ..Default::default() });
                    }
                }
                ui.label(job).on_hover_text(
                    "[image]: where an image's latents go (<image>); [end]: the end of an example \
                     (<|endofchunk|>).",
                );
            }
            Err(e) => {
                ui.colored_label(Color32::from_rgb(240, 120, 100), e.to_string());
            }
        }
        ui.separator();
        let task = app.ws.task;
        let t = app.ws.templates_mut();
        let mut changed = false;
        egui::Grid::new("templates").num_columns(2).show(ui, |ui| {
            let l = ui.label("Example template");
            changed |= ui.add(egui::TextEdit::multiline(&mut t.shot).desired_rows(1).desired_width(520.0)).labelled_by(l.id).changed();
            ui.end_row();
            let l = ui.label("Final template");
            changed |= ui.add(egui::TextEdit::multiline(&mut t.final_).desired_rows(1).desired_width(520.0)).labelled_by(l.id).changed();
            ui.end_row();
            let l = ui.label("Zero-shot template");
            changed |= ui.add(egui::TextEdit::multiline(&mut t.zeroshot).desired_rows(1).desired_width(520.0)).labelled_by(l.id).changed();
            ui.end_row();
        });
        let fields = match task {
            Task::Caption => "{caption}",
            Task::Vqa => "{question}, {answer}",
        };
        ui.label(RichText::new(format!("Fields: {fields}. Each template holds one <image>. Without examples the zero-shot template is the whole prompt.")).small().weak());
        ui.horizontal(|ui| {
            if ui.button("Reset templates").clicked() {
                cmds.push(Command::ResetTemplates);
            }
            ui.label("Presets:");
            for name in crate::text::prompt::PRESETS {
                if ui.button(*name).clicked() {
                    cmds.push(Command::ApplyPreset(name.to_string()));
                }
            }
        });
        if changed {
            app.mark_dirty();
        }
    });
}

fn messages(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    if let Some((for_, text)) = &mut app.path_entry {
        ui.horizontal(|ui| {
            let label = ui.label(match for_ {
                super::input::PathFor::Images(_) => "Image file path:",
                super::input::PathFor::Open => "Prompt set to open:",
                super::input::PathFor::Save => "Save the set as:",
                super::input::PathFor::Export(_) => "Export the history to:",
                super::input::PathFor::EvalFolder => "Labelled folder:",
                super::input::PathFor::Library => "Example library (a labelled folder):",
                super::input::PathFor::ExportEval(_) => "Export the evaluation to:",
            });
            let r = ui
                .add(
                    egui::TextEdit::singleline(text)
                        .desired_width(360.0)
                        .id_salt("path-entry"),
                )
                .labelled_by(label.id);
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            if ui.button("OK").clicked() || enter {
                cmds.push(Command::SubmitPath);
            }
            if ui.button("Cancel").clicked() {
                cmds.push(Command::CancelPath);
            }
        });
    }
}

/// Messages as toasts in the window's lower right corner, over the panels (they never move
/// what is under the pointer): the newest four, errors until dismissed, the rest for a while.
fn toasts(app: &FlamingoApp, ctx: &egui::Context, cmds: &mut Vec<Command>) {
    let shown = app.visible_messages();
    if shown.is_empty() {
        return;
    }
    egui::Area::new(egui::Id::unique("flamingo-toasts"))
        .anchor(egui::Align2::RIGHT_BOTTOM, egui::vec2(-12.0, -36.0))
        .order(egui::Order::Foreground)
        .show(ctx, |ui| {
            ui.set_max_width(440.0);
            for (i, m) in shown.into_iter().rev().take(4).rev() {
                let color = if m.error {
                    Color32::from_rgb(120, 40, 40)
                } else {
                    Color32::from_rgb(40, 70, 110)
                };
                egui::Frame::new()
                    .fill(color)
                    .corner_radius(6.0)
                    .inner_margin(8.0)
                    .show(ui, |ui| {
                        ui.set_width(420.0);
                        ui.horizontal_wrapped(|ui| {
                            ui.label(RichText::new(&m.text).color(Color32::WHITE));
                            if ui.small_button("x").on_hover_text("Dismiss").clicked() {
                                cmds.push(super::Command::DismissMessage(i));
                            }
                        });
                    });
                ui.add_space(4.0);
            }
        });
}

fn status_bar(app: &mut FlamingoApp, ui: &mut Ui) {
    if app.stable_for_snapshots {
        ui.label("status");
        return;
    }
    ui.horizontal(|ui| {
        let o = &app.status.output;
        if let Some(t) = &o.timings {
            ui.label(format!("image encode {:.2} s", t.encode_s));
            ui.separator();
            ui.label(format!("prefill {:.2} s", t.prefill_s));
            ui.separator();
        }
        if let Some(ft) = o.first_token_s {
            ui.label(format!("first token {ft:.2} s"));
            ui.separator();
        }
        if let (Some(first), Some(last)) = (o.first_token_s, o.last_token_s) {
            if o.tokens > 1 && last > first {
                ui.label(format!(
                    "{:.1} tokens/s",
                    (o.tokens - 1) as f64 / (last - first)
                ));
                ui.separator();
            }
        }
        if let Some(p) = app
            .status
            .prepared
            .filter(|p| p.images_encoded + p.prefix_tokens > 0)
        {
            ui.label(format!(
                "ready ahead: {} image{} encoded, {} prompt tokens run ({:.1} s)",
                p.images_encoded,
                if p.images_encoded == 1 { "" } else { "s" },
                p.prefix_tokens,
                p.seconds
            ));
            ui.separator();
        }
        if let Some(rss) = crate::platform::rss_bytes() {
            ui.label(format!("memory {:.2} GB", rss as f64 / 1e9));
            ui.separator();
        }
        ui.label(format!("frame {:.1} ms", app.frames.last_ms));
        if app.frames.frames_while_running > 0 {
            ui.label(format!(
                "(max {:.1} ms while generating)",
                app.frames.max_ms_while_running
            ));
        }
    });
}

fn hovering_files_overlay(ctx: &egui::Context) {
    let hovering = ctx.input(|i| !i.raw.hovered_files.is_empty());
    if !hovering {
        return;
    }
    let painter = ctx.layer_painter(egui::LayerId::new(
        egui::Order::Foreground,
        egui::Id::NULL.with("drop-overlay"),
    ));
    let rect = ctx.content_rect();
    painter.rect_filled(rect, 0.0, Color32::from_black_alpha(120));
    painter.text(
        rect.center(),
        egui::Align2::CENTER_CENTER,
        "Drop on the left to add examples, on the query area to set the query",
        egui::FontId::proportional(20.0),
        Color32::WHITE,
    );
}

/// Darkens what the model does not see of an image drawn in `r`: everything outside the
/// centre square (open_clip's resize of the shorter side, then a centre crop).
pub(super) fn shade_outside_crop(ui: &Ui, r: egui::Rect) {
    let side = r.width().min(r.height());
    let crop = egui::Rect::from_center_size(r.center(), egui::vec2(side, side));
    let p = ui.painter_at(r);
    for out in [
        egui::Rect::from_min_max(r.min, egui::pos2(crop.min.x, r.max.y)),
        egui::Rect::from_min_max(egui::pos2(crop.max.x, r.min.y), r.max),
        egui::Rect::from_min_max(r.min, egui::pos2(r.max.x, crop.min.y)),
        egui::Rect::from_min_max(egui::pos2(r.min.x, crop.max.y), r.max),
    ] {
        if out.is_positive() {
            p.rect_filled(out, 0.0, Color32::from_black_alpha(150));
        }
    }
}
