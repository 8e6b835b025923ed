//! The in-context-learning views: the caption token by token (shaded by probability, with
//! its alternatives, branching), the working set and its variant side by side, the shot
//! sweep's columns and what each example did. Each draws plain state and returns commands.

use egui::{Color32, RichText, Sense, Ui};

use super::engine_status::{Output, RunState};
use super::{Command, FlamingoApp, ModelState};
use crate::engine::{Caption, TokenInfo};

const SURE: Color32 = Color32::from_rgb(70, 160, 110);
const UNSURE: Color32 = Color32::from_rgb(230, 110, 60);

fn state_text(s: &RunState, running: &str) -> String {
    match s {
        RunState::Idle => String::new(),
        RunState::Running => running.to_string(),
        RunState::Done => "done".to_string(),
        RunState::Stopped => "stopped".to_string(),
        RunState::Failed(e) => format!("failed: {e}"),
    }
}

/// A token's shade: the less likely it was, the stronger the colour.
fn shade(logprob: f32) -> Color32 {
    let p = logprob.exp().clamp(0.0, 1.0);
    let c = if p >= 0.5 { SURE } else { UNSURE };
    c.gamma_multiply(0.15 + 0.55 * (1.0 - p))
}

/// A token as shown: the end-of-chunk token (no text of its own) as `[end]`.
fn token_label(t: &TokenInfo) -> String {
    if t.text.is_empty() {
        "[end]".to_string()
    } else {
        t.text.clone()
    }
}

fn alternatives_table(ui: &mut Ui, t: &TokenInfo) {
    ui.label(RichText::new(format!("{:?}: p = {:.3}", token_label(t), t.logprob.exp())).strong());
    egui::Grid::new("alternatives").show(ui, |ui| {
        for (_, text, lp) in &t.alternatives {
            ui.label(RichText::new(format!("{text:?}")).monospace());
            ui.label(format!("{:.3}", lp.exp()));
            ui.end_row();
        }
    });
}

/// The caption token by token: each shaded by its probability, its alternatives on hover;
/// a click selects it (`selected`) when `selectable`. Returns the token under the pointer.
fn token_text(
    ui: &mut Ui,
    c: &Caption,
    size: f32,
    selected: &mut Option<usize>,
    selectable: bool,
) -> Option<usize> {
    let mut hovered = None;
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        for (i, t) in c.tokens.iter().enumerate() {
            let mut text = RichText::new(token_label(t))
                .size(size)
                .background_color(shade(t.logprob));
            if *selected == Some(i) {
                text = text.underline().strong();
            }
            let sense = if selectable {
                Sense::click()
            } else {
                Sense::hover()
            };
            let resp = ui
                .add(egui::Label::new(text).sense(sense))
                .on_hover_ui(|ui| alternatives_table(ui, t));
            if resp.hovered() {
                hovered = Some(i);
            }
            if selectable && resp.clicked() {
                *selected = if *selected == Some(i) { None } else { Some(i) };
            }
        }
    });
    hovered
}

/// One output column: its state, the caption (token by token once finished) and, for the
/// set in the panels, the selected token's alternatives to branch from.
/// How an output column is shown.
struct Column<'a> {
    title: Option<&'a str>,
    /// Its set is the one in the panels (its tokens can be branched from).
    in_panels: bool,
    /// Its set changed since it was generated.
    stale: bool,
}

fn output_column(
    ui: &mut Ui,
    o: &Output,
    col: Column<'_>,
    selected: &mut Option<usize>,
    hovered: &mut Option<usize>,
    cmds: &mut Vec<Command>,
) {
    let Column {
        title,
        in_panels,
        stale,
    } = col;
    ui.horizontal(|ui| {
        if let Some(t) = title {
            ui.label(RichText::new(t).strong());
        }
        let s = state_text(&o.state, "generating…");
        if !s.is_empty() {
            ui.label(RichText::new(s).small().weak());
        }
        if stale && o.caption.is_some() {
            ui.label(RichText::new("stale").small().color(UNSURE))
                .on_hover_text(
                    "The examples, their order, the templates, the task or the query changed \
                 since this was generated; it stays in the history.",
                );
        }
    });
    egui::Frame::canvas(ui.style())
        .inner_margin(10.0)
        .show(ui, |ui| {
            ui.set_min_width(ui.available_width());
            ui.set_min_height(48.0);
            match &o.caption {
                Some(c) if !c.tokens.is_empty() => {
                    let h = token_text(ui, c, 20.0, selected, in_panels);
                    if in_panels && h.is_some() {
                        *hovered = h;
                    }
                }
                _ if o.answer.is_empty() && o.raw.is_empty() => {
                    ui.label(RichText::new("The caption appears here as it is generated.").weak());
                }
                _ => {
                    ui.label(RichText::new(&o.answer).size(20.0).strong());
                }
            }
        });
    if let Some(c) = &o.caption {
        ui.label(
            RichText::new(format!(
                "answer: {}   ·   log p = {:.2}   ·   {} tokens",
                o.answer,
                c.logprob(),
                c.tokens.len()
            ))
            .small()
            .weak(),
        )
        .on_hover_text(
            "Each token is shaded by its probability (green: likely, orange: unlikely; the \
             stronger, the less likely). Hover a token for the five most likely tokens at its \
             step; click it to branch from one of them.",
        );
    }
    if let Some((_, step)) = &o.branched_from {
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!("A branch: token {} was chosen by you.", step + 1)).small(),
            );
            if in_panels && ui.small_button("Back to the original").clicked() {
                cmds.push(Command::RestoreOriginal);
            }
        });
    }
    let picked = in_panels
        .then(|| o.caption.as_ref().zip(*selected))
        .flatten()
        .and_then(|(c, i)| c.tokens.get(i).map(|t| (i, t)));
    if let Some((i, t)) = picked {
        ui.horizontal_wrapped(|ui| {
            ui.label(RichText::new(format!("Continue from token {} with:", i + 1)).small());
            for (id, text, lp) in &t.alternatives {
                let label = format!("{text:?} {:.2}", lp.exp());
                let chosen = *id == t.id;
                if ui
                    .add_enabled(!chosen, egui::Button::new(label).small())
                    .on_disabled_hover_text("the token the caption has")
                    .clicked()
                {
                    cmds.push(Command::Branch {
                        step: i,
                        token: *id,
                    });
                }
            }
        });
    }
    if !o.raw.is_empty() && o.raw.trim() != o.answer {
        ui.label(RichText::new(format!("raw: {}", o.raw)).small().monospace());
    }
}

/// The output, and the variant's beside it when there is one (compare prompts).
pub fn output_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    let running = app.is_running();
    let ready = matches!(app.status.model, ModelState::Ready(_));
    ui.horizontal(|ui| {
        ui.heading("Output");
        if app.ws.variant.is_none() {
            if ui
                .button("Duplicate as variant")
                .on_hover_text(
                    "A copy of this set to change (an example's caption, the order, the \
                     templates) and caption side by side with it.",
                )
                .clicked()
            {
                cmds.push(Command::MakeVariant);
            }
        } else {
            if ui
                .selectable_label(!app.editing_variant, "Edit A")
                .on_hover_text("The panels on the left edit the working set (A).")
                .clicked()
            {
                cmds.push(Command::EditVariant(false));
            }
            if ui
                .selectable_label(app.editing_variant, "Edit B")
                .on_hover_text("The panels on the left edit the variant (B).")
                .clicked()
            {
                cmds.push(Command::EditVariant(true));
            }
            if ui
                .add_enabled(ready && !running, egui::Button::new("Generate both"))
                .clicked()
            {
                cmds.push(Command::GenerateBoth);
            }
        }
    });
    let mut selected = app.selected_token;
    let mut hovered = None;
    // Whether an output was made from a set other than that set is now.
    let stale_in = |o: &super::engine_status::Output, ws: &super::state::WorkingSet| {
        o.made_from
            .as_ref()
            .is_some_and(|m| *m != app.fingerprint(ws))
    };
    if app.ws.variant.is_some() {
        // Column A is always the working set, B the variant.
        let (a, b) = if app.editing_variant {
            (&app.status.variant_output, &app.status.output)
        } else {
            (&app.status.output, &app.status.variant_output)
        };
        let editing_b = app.editing_variant;
        let (set_a, set_b) = match (&app.ws.variant, editing_b) {
            (Some(v), false) => (&app.ws, &**v),
            (Some(v), true) => (&**v, &app.ws),
            (None, _) => (&app.ws, &app.ws),
        };
        let stale = [stale_in(a, set_a), stale_in(b, set_b)];
        ui.columns(2, |cols| {
            for (k, (o, title)) in [(a, "A: working set"), (b, "B: variant")]
                .into_iter()
                .enumerate()
            {
                let ui = &mut cols[k];
                let in_panels = (k == 1) == editing_b;
                let col = Column {
                    title: Some(title),
                    in_panels,
                    stale: stale[k],
                };
                output_column(ui, o, col, &mut selected, &mut hovered, cmds);
                if ui
                    .small_button("Keep this one")
                    .on_hover_text("This set becomes the working set; the other goes.")
                    .clicked()
                {
                    cmds.push(Command::KeepSet { variant: k == 1 });
                }
            }
        });
    } else {
        let stale = stale_in(&app.status.output, &app.ws);
        let col = Column {
            title: None,
            in_panels: true,
            stale,
        };
        output_column(
            ui,
            &app.status.output,
            col,
            &mut selected,
            &mut hovered,
            cmds,
        );
    }
    if hovered.is_some() {
        app.hovered_token = hovered;
    }
    // A new caption clears the selection.
    let tokens = app
        .status
        .output
        .caption
        .as_ref()
        .map_or(0, |c| c.tokens.len());
    app.selected_token = selected.filter(|&i| i < tokens);
}

/// The shot sweep: its settings, a Run button and one column per count.
pub fn sweep_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    let header = egui::CollapsingHeader::new("Shot sweep: the caption with 0, 1, 2, … examples")
        .id_salt("sweep")
        .default_open(false);
    header.show(ui, |ui| {
        let mut changed = false;
        ui.horizontal_wrapped(|ui| {
            ui.label("Example counts");
            changed |= ui
                .add(
                    egui::TextEdit::singleline(&mut app.ws.sweep.counts)
                        .desired_width(90.0)
                        .hint_text("0,1,2,4")
                        .id_salt("sweep-counts"),
                )
                .on_hover_text("Comma-separated; empty: 0, 1, 2, 4, … up to the enabled examples.")
                .changed();
            changed |= ui
                .checkbox(&mut app.ws.sweep.random, "random draws")
                .on_hover_text(
                    "The first n of one shuffle of the examples (with this seed) instead of \
                     the first n in order.",
                )
                .changed();
            if app.ws.sweep.random {
                ui.label("seed");
                changed |= ui
                    .add(egui::DragValue::new(&mut app.ws.sweep.seed))
                    .changed();
            }
            let ready = matches!(app.status.model, ModelState::Ready(_)) && !app.is_running();
            if ui
                .add_enabled(ready, egui::Button::new("Run sweep"))
                .on_hover_text("Each row runs on from the prompt state of the row before.")
                .clicked()
            {
                cmds.push(Command::RunSweep);
            }
        });
        if changed {
            app.mark_dirty();
        }
        let sw = &app.status.sweep;
        let stable = app.stable_for_snapshots;
        let s = state_text(&sw.state, "sweeping…");
        if !s.is_empty() {
            ui.label(RichText::new(s).small().weak());
        }
        if sw.rows.is_empty() {
            return;
        }
        let mut none = None;
        ui.columns(sw.rows.len(), |cols| {
            for (ui, r) in cols.iter_mut().zip(&sw.rows) {
                ui.label(
                    RichText::new(format!(
                        "{} shot{}",
                        r.shots,
                        if r.shots == 1 { "" } else { "s" }
                    ))
                    .strong(),
                );
                if r.started {
                    let names: Vec<String> = r
                        .examples
                        .iter()
                        .map(|&i| {
                            let n = sw.example_names.get(i).map(String::as_str).unwrap_or("?");
                            format!("{}. {}", i + 1, short(n))
                        })
                        .collect();
                    ui.label(
                        RichText::new(if names.is_empty() {
                            "no examples".to_string()
                        } else {
                            names.join(", ")
                        })
                        .small()
                        .weak(),
                    );
                }
                egui::Frame::canvas(ui.style())
                    .inner_margin(6.0)
                    .show(ui, |ui| {
                        ui.set_min_width(ui.available_width());
                        ui.set_min_height(36.0);
                        match (&r.caption, &r.error) {
                            (_, Some(e)) => {
                                ui.colored_label(Color32::LIGHT_RED, e);
                            }
                            (Some(c), _) => {
                                token_text(ui, c, 15.0, &mut none, false);
                            }
                            (None, _) if r.started => {
                                ui.label(RichText::new(&r.raw).size(15.0));
                            }
                            _ => {
                                ui.label(RichText::new("waiting").weak());
                            }
                        }
                    });
                if let (Some(c), Some(s)) = (&r.caption, r.seconds) {
                    let time = if stable {
                        String::new()
                    } else {
                        format!(" · {s:.2} s")
                    };
                    ui.label(
                        RichText::new(format!("log p = {:.2}{time}", c.logprob()))
                            .small()
                            .weak(),
                    );
                }
            }
        });
    });
}

fn short(name: &str) -> &str {
    let base = name.rsplit(['/', '\\']).next().unwrap_or(name);
    match base.char_indices().nth(18) {
        Some((i, _)) => &base[..i],
        None => base,
    }
}

/// What each example did to the current caption.
pub fn ablation_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    egui::CollapsingHeader::new("What did each example do?")
        .id_salt("ablation")
        .default_open(false)
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "The caption is rescored with each example left out, and with the examples \
                     in reverse order. Effect = log p(caption) with all examples − without it: \
                     positive means the example made this caption more likely.",
                )
                .small()
                .weak(),
            );
            let ready = matches!(app.status.model, ModelState::Ready(_))
                && !app.is_running()
                && app.status.output.caption.is_some();
            if ui
                .add_enabled(ready, egui::Button::new("Explain the caption"))
                .on_disabled_hover_text("Generate a caption first.")
                .clicked()
            {
                cmds.push(Command::Ablate);
            }
            let ab = &app.status.ablation;
            if ab.state == RunState::Running {
                let (d, t) = ab.progress;
                ui.add(
                    egui::ProgressBar::new(if t > 0 { d as f32 / t as f32 } else { 0.0 })
                        .desired_width(200.0)
                        .text(format!("{d}/{t} scorings")),
                );
            } else {
                let s = state_text(&ab.state, "");
                if !s.is_empty() && ab.state != RunState::Done {
                    ui.label(RichText::new(s).small().weak());
                }
            }
            let Some(res) = &ab.result else { return };
            ui.label(format!(
                "“{}”: log p = {:.3}",
                ab.caption.trim(),
                res.logprob
            ));
            let effects = res.effects();
            let scale = effects
                .iter()
                .chain(res.reversed.map(|r| res.logprob - r).as_ref())
                .fold(1e-3f32, |m, e| m.max(e.abs()));
            egui::Grid::new("ablation-grid")
                .striped(true)
                .show(ui, |ui| {
                    for ((id, name), e) in ab.examples.iter().zip(&effects) {
                        ui.label(short(name));
                        effect_bar(ui, *e, scale);
                        ui.label(format!("{e:+.3}"));
                        if ui
                            .small_button("Compare without it")
                            .on_hover_text(
                                "Caption the set without this example in the variant column.",
                            )
                            .clicked()
                        {
                            cmds.push(Command::GenerateWithout(*id));
                        }
                        ui.end_row();
                    }
                    if let Some(r) = res.reversed {
                        ui.label(RichText::new("reversed order").italics());
                        effect_bar(ui, res.logprob - r, scale);
                        ui.label(format!("{:+.3}", res.logprob - r));
                        ui.end_row();
                    }
                });
        });
}

fn effect_bar(ui: &mut Ui, effect: f32, scale: f32) {
    let w = 160.0;
    let (rect, _) = ui.allocate_exact_size(egui::vec2(w, 12.0), Sense::hover());
    let mid = rect.center().x;
    let len = (effect / scale).clamp(-1.0, 1.0) * w / 2.0;
    let bar = egui::Rect::from_x_y_ranges(mid.min(mid + len)..=mid.max(mid + len), rect.y_range());
    let color = if effect >= 0.0 { SURE } else { UNSURE };
    ui.painter().rect_filled(bar, 2.0, color);
    let stroke = egui::Stroke::new(1.0, ui.visuals().weak_text_color());
    ui.painter().vline(mid, rect.y_range(), stroke);
}

/// Where the caption looked: for the token under the pointer (or the selected one), a heatmap
/// over the query image and the self-attention mass on each example.
pub fn attention_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    egui::CollapsingHeader::new("Where did it look?")
        .id_salt("attention")
        .default_open(false)
        .show(ui, |ui| {
            ui.label(
                RichText::new(
                    "Attention, not a causal attribution: for the token under the pointer, how \
                     much its cross-attention drew on each part of the query image (over the \
                     perceiver's latents, composed with the perceiver's attention over the \
                     patch grid of the centre crop the model sees; averaged over heads and \
                     layers), and the share of its self-attention on each example's text. \
                     \"What did each example do?\" is the causal measure.",
                )
                .small()
                .weak(),
            );
            let caption = app.status.output.caption.as_ref().map(|c| c.token_ids());
            let ready = matches!(app.status.model, ModelState::Ready(_))
                && !app.is_running()
                && caption.is_some();
            if ui
                .add_enabled(ready, egui::Button::new("Show attention"))
                .on_disabled_hover_text("Generate a caption first.")
                .clicked()
            {
                cmds.push(Command::Explain);
            }
            let view = &app.status.attention;
            let s = state_text(&view.state, "computing…");
            if !s.is_empty() && view.state != RunState::Done {
                ui.label(RichText::new(s).small().weak());
            }
            let Some(maps) = &view.maps else { return };
            if caption.as_ref() != Some(&view.caption) {
                ui.label(
                    RichText::new("These maps were for an earlier caption: show them again.")
                        .small()
                        .weak(),
                );
                return;
            }
            let i = app
                .hovered_token
                .or(app.selected_token)
                .unwrap_or(0)
                .min(maps.tokens.len().saturating_sub(1));
            let (Some(t), Some(c)) = (maps.tokens.get(i), app.status.output.caption.as_ref())
            else {
                return;
            };
            let text = c.tokens.get(i).map(token_label).unwrap_or_default();
            ui.label(format!(
                "Token {} {text:?} (hover another token of the caption for its maps)",
                i + 1
            ));
            ui.horizontal_top(|ui| {
                match (&t.heatmap, app.ws.query.as_ref()) {
                    (Some(h), Some(q)) => heatmap(ui, q, h, maps.grid),
                    (None, _) => {
                        ui.label(
                            RichText::new(
                                "Under v1's attention a generated token attends to no image.",
                            )
                            .small(),
                        );
                    }
                    _ => {}
                }
                ui.vertical(|ui| {
                    ui.label(RichText::new("Self-attention on").small().strong());
                    egui::Grid::new("spans").show(ui, |ui| {
                        for (label, m) in maps.spans.iter().zip(&t.spans) {
                            ui.label(RichText::new(label).small());
                            let (rect, _) =
                                ui.allocate_exact_size(egui::vec2(140.0, 10.0), Sense::hover());
                            let mut bar = rect;
                            bar.set_width(rect.width() * m.clamp(0.0, 1.0));
                            ui.painter().rect_filled(bar, 2.0, SURE);
                            ui.label(RichText::new(format!("{:.0} %", m * 100.0)).small());
                            ui.end_row();
                        }
                    });
                });
            });
        });
}

/// The query image with the heatmap over the centre crop the model sees (darkened outside).
fn heatmap(ui: &mut Ui, q: &super::state::ImageItem, h: &[f32], grid: usize) {
    let Some(tex) = &q.thumb else { return };
    let size = tex.size_vec2();
    let scale = 220.0 / size.x.max(size.y);
    let r = ui
        .add(egui::Image::new(tex).fit_to_exact_size(size * scale))
        .rect;
    let side = r.width().min(r.height());
    let crop = egui::Rect::from_center_size(r.center(), egui::vec2(side, side));
    super::ui::shade_outside_crop(ui, r);
    let p = ui.painter_at(r);
    let grid = grid.max(1);
    let max = h.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
    let cell = side / grid as f32;
    for (k, v) in h.iter().enumerate() {
        let min = crop.min + egui::vec2((k % grid) as f32 * cell, (k / grid) as f32 * cell);
        let a = (v / max).clamp(0.0, 1.0);
        p.rect_filled(
            egui::Rect::from_min_size(min, egui::vec2(cell, cell)),
            0.0,
            Color32::from_rgba_unmultiplied(255, 60, 40, (a * 170.0) as u8),
        );
    }
    p.rect_stroke(
        crop,
        0.0,
        egui::Stroke::new(1.0, Color32::WHITE),
        egui::StrokeKind::Inside,
    );
}
