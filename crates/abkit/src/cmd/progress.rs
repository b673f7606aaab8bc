//! Rendering engine events: a progress bar on a terminal, JSON lines
//! otherwise (one object per step or progress event, on stdout).

use std::io::IsTerminal;

use abkit_update::{Event, Reporter};
use indicatif::{ProgressBar, ProgressStyle};

pub enum Output {
    Terminal { bar: Option<ProgressBar> },
    JsonLines,
}

impl Output {
    /// A bar when both stdout and stderr are terminals and JSON was not asked for.
    pub fn choose(json: bool) -> Output {
        if !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Output::Terminal { bar: None }
        } else {
            Output::JsonLines
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(self, Output::JsonLines)
    }

    /// Ends the bar, if any.
    pub fn finish(&mut self) {
        if let Output::Terminal { bar } = self {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
        }
    }

    /// Prints a JSON value on its own line.
    pub fn json_line(value: &impl serde::Serialize) {
        if let Ok(s) = serde_json::to_string(value) {
            println!("{s}");
        }
    }
}

impl Reporter for Output {
    fn event(&mut self, event: Event) {
        match self {
            Output::JsonLines => Output::json_line(&event),
            Output::Terminal { bar } => match event {
                Event::Step { step, message } => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    let name = serde_json::to_value(step)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    eprintln!("[{name}] {message}");
                }
                Event::Progress { step, done, total } => {
                    let b = bar.get_or_insert_with(|| {
                        let b = ProgressBar::new(total);
                        b.set_style(
                            ProgressStyle::with_template(
                                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        b
                    });
                    let name = serde_json::to_value(step)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    if b.length() != Some(total) {
                        b.reset();
                        b.set_length(total);
                    }
                    b.set_message(name);
                    b.set_position(done);
                }
                Event::Warning { message } => {
                    if let Some(b) = bar {
                        b.suspend(|| eprintln!("abkit: warning: {message}"));
                    } else {
                        eprintln!("abkit: warning: {message}");
                    }
                }
            },
        }
    }
}
