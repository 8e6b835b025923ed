//! The top bar: prompt sets, the model and its weight format (with download), the device, the
//! task, the decoding menu, max new tokens and presentation mode.

use egui::{Color32, RichText, Ui};

use super::{Command, FlamingoApp, ModelState};
use crate::hub::registry;
use crate::text::prompt::Task;

pub(super) fn top_bar(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    ui.horizontal_wrapped(|ui| {
        ui.menu_button("Set", |ui| {
            if ui.button("New (empty)").clicked() {
                cmds.push(Command::NewSet);
            }
            if ui.button("Open…").clicked() {
                cmds.push(Command::OpenSetDialog);
            }
            if ui.button("Save as…").clicked() {
                cmds.push(Command::SaveSetDialog);
            }
            let undo = app.undo_label().map(|w| format!("Undo {w}"));
            if ui
                .add_enabled(
                    undo.is_some(),
                    egui::Button::new(undo.as_deref().unwrap_or("Undo")),
                )
                .on_hover_text("Ctrl+Z")
                .clicked()
            {
                cmds.push(Command::Undo);
            }
            if !app.settings.recent_sets.is_empty() {
                ui.separator();
                ui.label("Recent");
                for p in app.settings.recent_sets.clone() {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    if ui
                        .button(name)
                        .on_hover_text(p.display().to_string())
                        .clicked()
                    {
                        cmds.push(Command::OpenSet(p));
                    }
                }
            }
        });
        ui.separator();
        let model_label = ui.label("Model");
        let current = app.settings.model_id.clone();
        let machine = crate::platform::total_memory_bytes().unwrap_or(u64::MAX);
        egui::ComboBox::from_id_salt("model")
            .selected_text(short_model(&current))
            .width(240.0)
            .show_ui(ui, |ui| {
                for m in registry::MODELS {
                    let best = crate::engine::default_format(m, machine);
                    let label = match best {
                        Some(f) => format!(
                            "{}  ~{:.0} GB download, {:.1} GB in {}",
                            short_model(m.id),
                            m.download_gb,
                            gb(crate::engine::memory_needed(m, f)),
                            f.name()
                        ),
                        None => format!("{}  (too big for this machine)", short_model(m.id)),
                    };
                    let mut hover = memory_lines(m, machine);
                    if let Some(note) = m.note {
                        hover.push_str("\n\n");
                        hover.push_str(note);
                    }
                    let resp = ui
                        .add_enabled(
                            m.family.supported() && best.is_some(),
                            egui::Button::selectable(current == m.id, label),
                        )
                        .on_hover_text(hover.clone())
                        .on_disabled_hover_text(hover);
                    if resp.clicked() && current != m.id {
                        cmds.push(Command::SelectModel(m.id.to_string()));
                    }
                }
            })
            .response
            .labelled_by(model_label.id);
        // A model the cache lacks: the download waits for this click, whatever is loaded now.
        if let Some((gb_needed, free)) = app.status.download_needed {
            let resp = ui.button(format!("Download (~{gb_needed:.0} GB) and load"));
            let free_text = match free {
                Some(f) => format!("{:.1} GB free in the Hugging Face cache's disk", gb(f)),
                None => "free disk space unknown".to_string(),
            };
            resp.clone().on_hover_text(format!(
                "{} is not in the Hugging Face cache; {free_text}.",
                short_model(&current)
            ));
            if resp.clicked() {
                cmds.push(Command::LoadModel(current.clone()));
            }
        }
        match &app.status.model {
            ModelState::NotLoaded => {
                if app.status.download_needed.is_none() && ui.button("Load").clicked() {
                    cmds.push(Command::LoadModel(current.clone()));
                }
            }
            ModelState::Loading(_) => match &app.status.download {
                Some(d) => {
                    let frac = if d.file_total > 0 {
                        d.file_done as f32 / d.file_total as f32
                    } else {
                        0.0
                    };
                    ui.add(
                        egui::ProgressBar::new(frac)
                            .desired_width(160.0)
                            .show_percentage(),
                    )
                    .on_hover_text(d.missing.join("\n"));
                    ui.label(d.note.clone().unwrap_or_else(|| d.summary()));
                    if ui.button("Cancel download").clicked() {
                        cmds.push(Command::CancelDownload);
                    }
                }
                None => {
                    ui.spinner();
                    ui.label("loading…");
                }
            },
            ModelState::Ready(info) => {
                ui.label(RichText::new("ready").color(Color32::from_rgb(90, 200, 120)))
                    .on_hover_text(format!(
                        "loaded in {:.1} s, context {} tokens",
                        info.load_s, info.context_len
                    ));
            }
            ModelState::Failed { .. } => {
                if ui.button("Retry").clicked() {
                    cmds.push(Command::LoadModel(current.clone()));
                }
            }
        }
        let weights_label = ui.label("Weights");
        let mut fmt = app.settings.weights;
        let spec = registry::find(&current);
        egui::ComboBox::from_id_salt("weights")
            .selected_text(fmt.name())
            .show_ui(ui, |ui| {
                for f in crate::types::WeightFormat::ALL {
                    let need = spec.map(|m| crate::engine::memory_needed(m, f));
                    let fits = need.is_none_or(|n| n < machine);
                    let label = match need {
                        Some(n) => format!("{}  {:.1} GB", f.name(), gb(n)),
                        None => f.name().to_string(),
                    };
                    let resp = ui
                        .add_enabled(fits, egui::Button::selectable(fmt == f, label))
                        .on_disabled_hover_text(format!(
                            "needs about {:.1} GB; this machine has {:.1} GB",
                            gb(need.unwrap_or(0)),
                            gb(machine)
                        ));
                    if resp.clicked() {
                        fmt = f;
                    }
                }
            })
            .response
            .on_hover_text(
                "f32: the reference's numbers; f16: closest to them; q8_0: fast, close; \
                 q4k_m, q4k: smallest",
            )
            .labelled_by(weights_label.id);
        if fmt != app.settings.weights {
            app.settings.weights = fmt;
            cmds.push(Command::LoadModel(current.clone()));
        }
        ui.separator();
        ui.label("Device");
        let device = match &app.status.model {
            ModelState::Ready(info) => info.device.clone(),
            _ => crate::platform::device_label().to_string(),
        };
        ui.label(RichText::new(device).strong());
        ui.separator();
        ui.label("Task");
        let mut task = app.ws.task;
        ui.selectable_value(&mut task, Task::Caption, "Caption");
        ui.selectable_value(&mut task, Task::Vqa, "VQA");
        if task != app.ws.task {
            cmds.push(Command::SetTask(task));
        }
        ui.separator();
        // The menu stays open while its values are clicked and typed (a click outside closes it).
        egui::containers::menu::MenuButton::new("Decoding")
            .config(
                egui::containers::menu::MenuConfig::new()
                    .close_behavior(egui::PopupCloseBehavior::CloseOnClickOutside),
            )
            .ui(ui, |ui| decoding_menu(app, ui));
        let max_label = ui.label("Max new tokens");
        ui.add(egui::DragValue::new(&mut app.settings.max_new_tokens).range(1..=2000))
            .labelled_by(max_label.id);
        ui.separator();
        ui.toggle_value(&mut app.settings.presentation, "Present")
            .on_hover_text(
                "Presentation mode (F5): everything larger, readable from the back of a room; \
                 timings and memory hidden.",
            );
    });
    if let ModelState::Failed {
        model_id,
        error,
        details,
    } = &app.status.model
    {
        ui.colored_label(
            Color32::from_rgb(240, 120, 100),
            format!("{model_id} could not be loaded: {error}"),
        );
        if let Some(d) = details {
            egui::CollapsingHeader::new("details")
                .id_salt("load-details")
                .show(ui, |ui| {
                    ui.label(RichText::new(d).monospace().small());
                });
        }
        ui.label("Retry downloads what is missing from the Hugging Face cache (HF_HOME / HF_HUB_CACHE, default ~/.cache/huggingface/hub) and keeps what is complete; after that the app works offline. HF_ENDPOINT picks a mirror, HF_TOKEN a token, and HF_HUB_OFFLINE=1 forbids the network.");
    }
}

fn decoding_menu(app: &mut FlamingoApp, ui: &mut Ui) {
    let g = &mut app.settings.generation;
    let beams = g.num_beams > 1;
    ui.horizontal(|ui| {
        ui.label("Strategy");
        if ui
            .selectable_label(!g.do_sample && !beams, "greedy")
            .clicked()
        {
            g.do_sample = false;
            g.num_beams = 1;
        }
        if ui
            .selectable_label(g.do_sample && !beams, "sample")
            .clicked()
        {
            g.do_sample = true;
            g.num_beams = 1;
        }
        if ui.selectable_label(beams, "beam search").clicked() && !beams {
            g.do_sample = false;
            g.num_beams = 3;
        }
    });
    let sampling = g.do_sample;
    let beams = g.num_beams > 1;
    egui::Grid::new("decoding").num_columns(2).show(ui, |ui| {
        let row = |ui: &mut Ui, name: &str, enabled: bool, w: egui::DragValue<'_>| {
            let l = ui.add_enabled(enabled, egui::Label::new(name));
            ui.add_enabled(enabled, w)
                .labelled_by(l.id)
                .on_disabled_hover_text("used when sampling");
            ui.end_row();
        };
        row(
            ui,
            "temperature",
            sampling,
            egui::DragValue::new(&mut g.temperature)
                .range(0.05..=5.0)
                .speed(0.01)
                .max_decimals(3),
        );
        row(
            ui,
            "top-k (0 = off)",
            sampling,
            egui::DragValue::new(&mut g.top_k).range(0..=1000),
        );
        row(
            ui,
            "top-p",
            sampling,
            egui::DragValue::new(&mut g.top_p)
                .range(0.01..=1.0)
                .speed(0.01)
                .max_decimals(3),
        );
        row(ui, "seed", sampling, egui::DragValue::new(&mut g.seed));
        let l = ui.add_enabled(beams, egui::Label::new("beams"));
        ui.add_enabled(
            beams,
            egui::DragValue::new(&mut g.num_beams)
                .range(2..=8)
                // Greedy and sampling keep 1 beam: shown, not clamped into beam search.
                .clamp_existing_to_range(false),
        )
        .labelled_by(l.id)
        .on_disabled_hover_text("used with beam search");
        ui.end_row();
        row(
            ui,
            "length penalty",
            beams,
            egui::DragValue::new(&mut g.length_penalty)
                .range(-2.0..=2.0)
                .speed(0.05),
        );
        row(
            ui,
            "repetition penalty",
            true,
            egui::DragValue::new(&mut g.repetition_penalty)
                .range(0.5..=3.0)
                .speed(0.01),
        );
        row(
            ui,
            "no-repeat n-gram",
            true,
            egui::DragValue::new(&mut g.no_repeat_ngram_size).range(0..=10),
        );
        row(
            ui,
            "min new tokens",
            true,
            egui::DragValue::new(&mut g.min_new_tokens).range(0..=512),
        );
    });
    if beams {
        ui.label(
            RichText::new("Beam search shows its best caption when it ends (no streaming).")
                .small()
                .weak(),
        );
    }
    if ui.button("Defaults (greedy)").clicked() {
        *g = Default::default();
    }
    ui.separator();
    ui.checkbox(
        &mut app.settings.prepare_ahead,
        "Work ahead: encode images and run the examples' prompt while you edit",
    )
    .on_hover_text(
        "Generate then starts from there: a caption costs the query's prompt and the \
         decoding. Uses the CPU while the app is idle.",
    );
    threads_setting(&mut app.settings.threads, ui);
}

/// Compute threads: automatic (every core but one, left to the window) or a
/// number; the model's thread pool is made once, so a change applies at the next start.
fn threads_setting(threads: &mut Option<usize>, ui: &mut Ui) {
    let cores = crate::platform::cores();
    ui.horizontal(|ui| {
        let label = ui.label("Compute threads");
        let mut auto = threads.is_none();
        if ui
            .checkbox(&mut auto, "auto")
            .on_hover_text(format!(
                "{} of this machine's {cores} cores: one is left to the window",
                crate::platform::default_threads()
            ))
            .changed()
        {
            *threads = if auto {
                None
            } else {
                Some(crate::platform::default_threads())
            };
        }
        if let Some(n) = threads.as_mut() {
            ui.add(egui::DragValue::new(n).range(1..=cores))
                .labelled_by(label.id);
        }
    });
    ui.label(RichText::new("Threads apply at the next start.").small());
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

/// A model's memory in each weight format, against this machine's.
fn memory_lines(m: &registry::ModelSpec, machine: u64) -> String {
    let mut s = format!("Memory needed (this machine: {:.1} GB):", gb(machine));
    for f in crate::types::WeightFormat::ALL {
        let need = crate::engine::memory_needed(m, f);
        s.push_str(&format!(
            "\n  {:<6} {:>5.1} GB{}",
            f.name(),
            gb(need),
            if need < machine { "" } else { "  (too big)" }
        ));
    }
    s
}

fn short_model(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}
