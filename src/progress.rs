//! Per-phase progress on stderr (indicatif). Hidden when stderr is not a terminal and with JSON output, so
//! stdout carries only data. Durations are recorded either way, for `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseRecord {
    pub name: String,
    pub duration_seconds: f64,
}

pub struct Progress {
    multi: Option<MultiProgress>,
}

pub struct Phase {
    bar: Option<ProgressBar>,
    name: String,
    start: Instant,
}

impl Progress {
    /// `wanted` is false for machine-readable output; bars also stay hidden off-TTY.
    pub fn new(wanted: bool) -> Self {
        let show = wanted && std::io::stderr().is_terminal();
        Self {
            multi: show.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    pub fn phase(&self, name: &str) -> Phase {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(name.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Phase {
            bar,
            name: name.to_owned(),
            start: Instant::now(),
        }
    }
}

impl Phase {
    pub fn set_message(&self, msg: String) {
        if let Some(b) = &self.bar {
            b.set_message(msg);
        }
    }

    pub fn finish(self) -> PhaseRecord {
        let elapsed = self.start.elapsed();
        if let Some(b) = &self.bar {
            b.set_style(ProgressStyle::with_template("✓ {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            b.finish_with_message(format!("{} ({:.1}s)", self.name, elapsed.as_secs_f64()));
        }
        PhaseRecord {
            name: self.name,
            duration_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        }
    }
}

/// A byte-count progress bar on stderr (hidden off-TTY or when not wanted).
pub fn bytes(total: u64, label: &str, wanted: bool) -> ProgressBar {
    if !(wanted && std::io::stderr().is_terminal()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(label.to_owned());
    bar
}
