//! The history panel: every result, newest first, with its settings on hover; pin, copy,
//! export; the pinned ones side by side.

use egui::{RichText, Ui};

use super::history::{ExportFormat, HistoryEntry};
use super::{Command, FlamingoApp};

fn details(e: &HistoryEntry) -> String {
    let g = &e.generation;
    let decoding = if g.num_beams > 1 {
        format!("beam search, {} beams", g.num_beams)
    } else if g.do_sample {
        format!(
            "sampling, temperature {}, top-k {}, top-p {}, seed {}",
            g.temperature, g.top_k, g.top_p, g.seed
        )
    } else {
        "greedy".to_string()
    };
    format!(
        "{} in {} ({})\n{} · max {} new tokens\nexamples: {}\nquery: {}\nlog p = {:.3} · {} tokens · {:.2} s\n\n{}",
        e.model_id,
        e.weights,
        e.source,
        decoding,
        g.max_new_tokens,
        if e.examples.is_empty() {
            "none".to_string()
        } else {
            e.examples.join(", ")
        },
        e.query,
        e.logprob,
        e.tokens,
        e.seconds,
        e.prompt
    )
}

pub fn history_area(app: &mut FlamingoApp, ui: &mut Ui, cmds: &mut Vec<Command>) {
    let history = &app.set_a().history;
    let stable = app.stable_for_snapshots;
    egui::CollapsingHeader::new(format!("History ({})", history.len()))
        .id_salt("history")
        .default_open(false)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                if ui.button("Export JSONL…").clicked() {
                    cmds.push(Command::ExportHistory(ExportFormat::Jsonl));
                }
                if ui.button("Export CSV…").clicked() {
                    cmds.push(Command::ExportHistory(ExportFormat::Csv));
                }
                if ui
                    .button("Clear unpinned")
                    .on_hover_text("Undo brings them back.")
                    .clicked()
                {
                    cmds.push(Command::ClearHistory);
                }
            });
            let pinned: Vec<&HistoryEntry> = history.iter().filter(|e| e.pinned).collect();
            if pinned.len() >= 2 {
                ui.label(RichText::new("Pinned, side by side").small().strong());
                ui.columns(pinned.len().min(4), |cols| {
                    for (ui, e) in cols.iter_mut().zip(&pinned) {
                        ui.label(
                            RichText::new(format!(
                                "{} · {} example{}",
                                e.source,
                                e.examples.len(),
                                if e.examples.len() == 1 { "" } else { "s" }
                            ))
                            .small()
                            .weak(),
                        )
                        .on_hover_text(details(e));
                        ui.label(RichText::new(&e.text).size(16.0).strong());
                    }
                });
                ui.separator();
            }
            egui::ScrollArea::vertical()
                .id_salt("history-list")
                .max_height(260.0)
                .show(ui, |ui| {
                    egui::Grid::new("history-grid")
                        .striped(true)
                        .show(ui, |ui| {
                            for (i, e) in history.iter().enumerate().rev() {
                                let label = if e.pinned { "pinned" } else { "pin" };
                                if ui
                                    .selectable_label(e.pinned, RichText::new(label).small())
                                    .on_hover_text(if e.pinned {
                                        "Unpin"
                                    } else {
                                        "Pin: pinned results show side by side"
                                    })
                                    .clicked()
                                {
                                    cmds.push(Command::TogglePin(i));
                                }
                                let time = if stable {
                                    "--:--".into()
                                } else {
                                    e.time_of_day()
                                };
                                ui.label(RichText::new(time).small().weak());
                                ui.label(
                                    RichText::new(format!(
                                        "{} · {} ex.",
                                        e.source,
                                        e.examples.len()
                                    ))
                                    .small(),
                                );
                                ui.label(&e.text).on_hover_text(details(e));
                                if ui.small_button("Copy").clicked() {
                                    ui.ctx().copy_text(e.text.clone());
                                }
                                ui.end_row();
                            }
                        });
                });
        });
}
