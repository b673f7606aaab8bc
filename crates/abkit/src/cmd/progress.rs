//! The one renderer of [`Event`]s, for every long command (install, image
//! build, bundle create): a progress bar on a terminal, JSON lines on stdout
//! for scripts, or plain lines on stderr. Handles are clones of one
//! renderer, so a download's retry observer (which runs inside the engine's
//! reads) reports through the same output as the engine.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};

use abkit_update::{Event, Reporter, Step};
use indicatif::{ProgressBar, ProgressStyle};

enum Mode {
    /// Steps and warnings on stderr, byte progress as a bar there.
    Terminal { bar: Option<ProgressBar> },
    /// One JSON object per event on stdout.
    JsonLines,
    /// Steps and warnings on stderr, one line each; byte progress dropped.
    Lines,
}

#[derive(Clone)]
pub struct Output(Arc<Mutex<Mode>>);

impl Output {
    fn new(mode: Mode) -> Output {
        Output(Arc::new(Mutex::new(mode)))
    }

    fn mode(&self) -> std::sync::MutexGuard<'_, Mode> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a command whose events are its output (install): a bar when both
    /// stdout and stderr are terminals and JSON was not asked for, else JSON
    /// lines.
    pub fn choose(json: bool) -> Output {
        if !json && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Output::new(Mode::Terminal { bar: None })
        } else {
            Output::new(Mode::JsonLines)
        }
    }

    /// For a command whose stdout carries only its report (image build,
    /// bundle create): a bar when stderr is a terminal, else plain lines.
    pub fn on_stderr() -> Output {
        if std::io::stderr().is_terminal() {
            Output::new(Mode::Terminal { bar: None })
        } else {
            Output::new(Mode::Lines)
        }
    }

    pub fn is_json(&self) -> bool {
        matches!(*self.mode(), Mode::JsonLines)
    }

    /// Ends the bar, if any.
    pub fn finish(&self) {
        if let Mode::Terminal { bar } = &mut *self.mode()
            && let Some(b) = bar.take()
        {
            b.finish_and_clear();
        }
    }

    /// Prints a JSON value on its own line.
    pub fn json_line(value: &impl serde::Serialize) {
        if let Ok(s) = serde_json::to_string(value) {
            println!("{s}");
        }
    }

    /// An observer for `abkit_fetch::Opener::observe`: each retry or resume
    /// of the download becomes a warning event.
    pub fn retry_observer(&self) -> impl FnMut(&abkit_fetch::RetryEvent) + Send + 'static {
        let mut out = self.clone();
        move |retry| out.event(abkit_update::progress::retry_warning(retry))
    }
}

fn step_name(step: Step) -> String {
    serde_json::to_value(step)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn warn(bar: Option<&ProgressBar>, message: &str) {
    match bar {
        Some(b) => b.suspend(|| eprintln!("abkit: warning: {message}")),
        None => eprintln!("abkit: warning: {message}"),
    }
}

impl Reporter for Output {
    fn event(&mut self, event: Event) {
        match &mut *self.mode() {
            Mode::JsonLines => Output::json_line(&event),
            Mode::Lines => match event {
                Event::Step { message, .. } => eprintln!("abkit: {message}"),
                Event::Warning { message } => warn(None, &message),
                Event::Progress { .. } => {}
            },
            Mode::Terminal { bar } => match event {
                Event::Step { step, message } => {
                    if let Some(b) = bar.take() {
                        b.finish_and_clear();
                    }
                    eprintln!("[{}] {message}", step_name(step));
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
                    if b.length() != Some(total) {
                        b.reset();
                        b.set_length(total);
                    }
                    b.set_message(step_name(step));
                    b.set_position(done);
                }
                Event::Warning { message } => warn(bar.as_ref(), &message),
            },
        }
    }
}
