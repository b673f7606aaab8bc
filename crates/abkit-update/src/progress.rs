//! Progress of long operations, as events a front end renders (a progress
//! bar on a terminal, JSON lines for scripts).

use serde::Serialize;

/// The steps of an install, in the order of DESIGN.md's update flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Bundle header and signature checked; product and version checked.
    Verify,
    /// Target slot's entry made inactive, BootNext cleared, slot recorded empty.
    Prepare,
    /// Streaming the system image into the target slot.
    WriteSystem,
    /// Reading the slot back and checking its hash.
    CheckSystem,
    /// Writing the new loader onto the ESP.
    WriteLoader,
    /// Creating or repairing the target's boot entry.
    BootEntry,
    /// Recording what the slot now holds.
    Record,
    /// BootNext set: the next boot is the trial boot.
    BootNext,
}

/// Something worth telling the user.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Step {
        step: Step,
        message: String,
    },
    /// Bytes of the current step done so far, out of `total`.
    Progress {
        step: Step,
        done: u64,
        total: u64,
    },
    Warning {
        message: String,
    },
}

/// Receives events.
pub trait Reporter {
    fn event(&mut self, event: Event);
}

/// Reports the start of `step`.
pub fn step(rep: &mut dyn Reporter, step: Step, message: impl Into<String>) {
    rep.event(Event::Step {
        step,
        message: message.into(),
    });
}

/// Drops every event.
pub struct Silent;

impl Reporter for Silent {
    fn event(&mut self, _: Event) {}
}

/// Collects events, for tests.
#[derive(Default)]
pub struct Collect(pub Vec<Event>);

impl Reporter for Collect {
    fn event(&mut self, event: Event) {
        self.0.push(event);
    }
}
