//! Progress of long operations, as events a front end renders (a progress
//! bar on a terminal, JSON lines for scripts). Every long operation reports
//! through [`Reporter`]: install, building a disk from a bundle, creating a
//! bundle (its byte counts through [`bytes`]), and the download's retries
//! (through [`retry_warning`]).

use serde::Serialize;

/// The steps of an install, in the order of DESIGN.md's update flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Bundle header and signature checked; product and version checked.
    Verify,
    /// Target slot's entry made inactive, BootNext cleared, slot recorded empty.
    Prepare,
    /// Delta install: hashing what the machine holds (the running slot)
    /// to find the blocks of the new version it already has.
    Delta,
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
    /// Creating a bundle: hashing and writing its payloads (`abkit bundle create`).
    CreateBundle,
    /// Uploading a bundle to an OCI registry (`abkit bundle push`).
    PushBundle,
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

/// A byte counter for work that reports byte counts (such as
/// `abkit_bundle::create_bundle`): each count becomes an [`Event::Progress`]
/// of `step`, `done` out of `total`.
pub fn bytes<'a>(rep: &'a mut dyn Reporter, step: Step, total: u64) -> impl FnMut(u64) + 'a {
    let mut done = 0u64;
    move |n| {
        done = done.saturating_add(n);
        rep.event(Event::Progress { step, done, total });
    }
}

/// A download's retry or resume as a warning, for
/// [`abkit_fetch::Opener::observe`]: without it a retried download is silent.
pub fn retry_warning(retry: &abkit_fetch::RetryEvent) -> Event {
    let from = if retry.position == 0 {
        "from the start".to_owned()
    } else {
        format!("resuming at byte {}", retry.position)
    };
    Event::Warning {
        message: format!(
            "download: {}; attempt {} of {} {from} in {:.1} s",
            retry.problem,
            retry.attempt,
            retry.max_attempts,
            retry.wait.as_secs_f64()
        ),
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn byte_counts_become_progress_of_the_total() {
        let mut rep = Collect::default();
        {
            let mut count = bytes(&mut rep, Step::CreateBundle, 10);
            count(4);
            count(6);
        }
        let done: Vec<u64> = rep
            .0
            .iter()
            .map(|e| match e {
                Event::Progress {
                    done, total: 10, ..
                } => *done,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(done, [4, 10]);
    }

    #[test]
    fn a_resumed_download_is_a_warning_that_says_where() {
        let retry = abkit_fetch::RetryEvent {
            attempt: 2,
            max_attempts: 6,
            position: 500,
            wait: Duration::from_millis(1500),
            problem: "too slow".into(),
        };
        let Event::Warning { message } = retry_warning(&retry) else {
            panic!("not a warning");
        };
        assert_eq!(
            message,
            "download: too slow; attempt 2 of 6 resuming at byte 500 in 1.5 s"
        );
    }
}
