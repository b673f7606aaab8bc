//! Polling (off by default): every `poll.interval`, plus a random part of
//! `poll.jitter`, the agent reads the signed head of the channel's bundle
//! (`poll.url`: the URL a publisher points at its newest release) and, when
//! it offers a newer version of this machine's product, installs it as an
//! `update` operation — only inside `poll.window` when one is set. The
//! thread sleeps between checks; a check downloads the bundle's head only.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use abkit_bundle::Keyring;
use abkit_bundle::reader::BundleReader;
use abkit_update::record::{HealthResult, SlotState, now};
use abkit_update::{Slot, Status};
use serde::Serialize;
use serde_with::skip_serializing_none;

use crate::Agent;
use crate::ops::OpError;

/// When, in UTC, updates may be installed: `"HH:MM-HH:MM"`, crossing
/// midnight when the end is earlier than the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight UTC.
    pub start: u32,
    pub end: u32,
}

const DAY: u64 = 24 * 60;

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("{text:?} is not a window like \"02:00-05:30\" (UTC)");
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && !t.trim().starts_with('+')).then_some(h * 60 + m)
        };
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("{text:?} is an empty window"));
        }
        Ok(Window { start, end })
    }

    fn minute_of(unix: u64) -> u32 {
        ((unix / 60) % DAY) as u32
    }

    /// Whether the window is open at `unix` (seconds since the epoch).
    pub fn contains(&self, unix: u64) -> bool {
        let m = Self::minute_of(unix);
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// How long the window stays open.
    pub fn length(&self) -> Duration {
        let minutes = (u64::from(self.end) + DAY - u64::from(self.start)) % DAY;
        Duration::from_secs(minutes * 60)
    }

    /// Time from `unix` until the window next opens (zero when open).
    pub fn until_open(&self, unix: u64) -> Duration {
        if self.contains(unix) {
            return Duration::ZERO;
        }
        let into_day = unix % (DAY * 60);
        let start = u64::from(self.start) * 60;
        let wait = (start + DAY * 60 - into_day) % (DAY * 60);
        Duration::from_secs(wait)
    }
}

/// What a check found, as `GET /v1/status` shows it under `agent.poll`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollState {
    pub url: String,
    /// Seconds since the epoch of the last check's end.
    pub last_check_at: Option<u64>,
    /// The version the channel offered at the last check.
    pub offered: Option<String>,
    /// `install`, `skip` or `error`.
    pub outcome: Option<String>,
    /// Why (a skip's reason, an error's message, the operation started).
    pub detail: Option<String>,
    pub next_check_at: Option<u64>,
}

/// What the channel's bundle says about itself (its signature checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub compatible: String,
    pub version: semver::Version,
    pub min_version: Option<semver::Version>,
}

/// Whether to install an offer on a machine in state `st`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Install,
    Skip(String),
}

/// Decides on an offer: a newer version of the running product, not below
/// its `min_version`, that is neither installed and waiting for its trial
/// nor already failed its trial in the other slot (no reinstall loops).
pub fn judge(offer: &Offer, st: &Status) -> Verdict {
    let slot = |s: Slot| st.slots.get(&s.letter().to_string()).map(|s| &s.record);
    let running = st.running_slot;
    if st.on_trial {
        return Verdict::Skip(format!(
            "slot {} runs on trial: no update before it is committed",
            running.letter()
        ));
    }
    let Some(rec) = slot(running) else {
        return Verdict::Skip(format!("no record of slot {}", running.letter()));
    };
    let (Some(compatible), Some(version)) = (&rec.compatible, &rec.version) else {
        return Verdict::Skip(format!(
            "slot {} has no recorded product and version",
            running.letter()
        ));
    };
    if *compatible != offer.compatible {
        return Verdict::Skip(format!(
            "the channel offers {} {}, this machine runs {compatible}",
            offer.compatible, offer.version
        ));
    }
    if offer.version <= *version {
        return Verdict::Skip(format!(
            "up to date: running {version}, the channel offers {}",
            offer.version
        ));
    }
    if let Some(min) = &offer.min_version
        && version < min
    {
        return Verdict::Skip(format!(
            "{} updates from {min} or later; running {version}",
            offer.version
        ));
    }
    let other = running.other();
    if let Some(o) = slot(other)
        && o.version.as_ref() == Some(&offer.version)
        && o.compatible.as_deref() == Some(offer.compatible.as_str())
    {
        if let Some(h) = &o.health
            && h.result == HealthResult::Failed
        {
            return Verdict::Skip(format!(
                "{} failed its trial on slot {} (at {}): not installed again",
                offer.version,
                other.letter(),
                h.failed_check.as_deref().unwrap_or("?")
            ));
        }
        if o.state == SlotState::Installed && st.trial_pending {
            return Verdict::Skip(format!(
                "{} is installed in slot {} and waits for its trial boot",
                offer.version,
                other.letter()
            ));
        }
    }
    Verdict::Install
}

/// Reads and verifies the head of the bundle at `url` (nothing more is
/// downloaded).
pub fn read_offer(url: &str, keyring: &Keyring) -> Result<Offer, OpError> {
    let policy = abkit_fetch::RetryPolicy {
        attempts: 2,
        ..Default::default()
    };
    let stream: Box<dyn Read + Send> =
        abkit_update::source::open_source(url, &policy).map_err(|e| crate::agent::op_error(&e))?;
    let reader = BundleReader::open(stream, keyring).map_err(|e| OpError {
        code: e.code().into(),
        message: format!("{url}: {e}"),
    })?;
    let m = reader.manifest();
    Ok(Offer {
        compatible: m.compatible.clone(),
        version: m.version.clone(),
        min_version: m.min_version.clone(),
    })
}

/// A random duration in `[0, max]` (from the OS's random source, through
/// uuid's v4 generator, which the agent already uses for operation ids).
fn random_up_to(max: Duration) -> Duration {
    let ms = max.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    let r = (uuid::Uuid::new_v4().as_u128() as u64) % (ms + 1);
    Duration::from_millis(r)
}

/// Starts the polling thread when `poll.url` is set.
pub fn start(agent: Arc<Agent>) {
    let Some(p) = agent.settings.poll.clone() else {
        return;
    };
    log::info!(
        "polling {} every {} (+ up to {} jitter){}",
        p.url,
        humantime::format_duration(p.interval),
        humantime::format_duration(p.jitter),
        p.window_text
            .as_deref()
            .map(|w| format!(", installing only within {w} UTC"))
            .unwrap_or_default()
    );
    let spawned = std::thread::Builder::new()
        .name("poll".into())
        .spawn(move || {
            let mut wait = random_up_to(p.jitter);
            loop {
                agent.set_poll(|s| s.next_check_at = Some(now() + wait.as_secs()));
                std::thread::sleep(wait);
                if let Some(w) = p.window
                    && !w.contains(now())
                {
                    let open_in = w.until_open(now());
                    wait = open_in + random_up_to(p.jitter.min(w.length() / 2));
                    log::info!(
                        "poll: outside the maintenance window; next check in {}",
                        humantime::format_duration(Duration::from_secs(wait.as_secs()))
                    );
                    continue;
                }
                check_once(&agent);
                wait = p.interval + random_up_to(p.jitter);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the polling thread: {e}");
    }
}

/// One check: read the offer, judge it, install it (in this thread) when
/// it is wanted and no other operation runs.
pub fn check_once(agent: &Arc<Agent>) {
    let Some(p) = agent.settings.poll.clone() else {
        return;
    };
    let outcome = (|| {
        let keyring = Keyring::load_dir(&agent.settings.keyring).map_err(|e| OpError {
            code: "keyring".into(),
            message: format!(
                "cannot load the keyring {}: {e}",
                agent.settings.keyring.display()
            ),
        })?;
        let offer = read_offer(&p.url, &keyring)?;
        let st = agent.with_machine(false, |m| abkit_update::status(m))?;
        Ok::<_, OpError>((judge(&offer, &st), offer))
    })();
    let (outcome_word, offered, detail) = match outcome {
        Err(e) => {
            log::warn!("poll: {}: [{}] {}", p.url, e.code, e.message);
            ("error", None, format!("[{}] {}", e.code, e.message))
        }
        Ok((Verdict::Skip(why), offer)) => {
            log::info!("poll: {why}");
            ("skip", Some(offer.version.to_string()), why)
        }
        Ok((Verdict::Install, offer)) => match agent.ops.start("update", Some(p.url.clone())) {
            Err(running) => {
                let why = format!("operation {running} is running: next time");
                log::info!("poll: {} offered; {why}", offer.version);
                ("skip", Some(offer.version.to_string()), why)
            }
            Ok(id) => {
                log::info!(
                    "poll: the channel offers {} {}: operation {id} installs it",
                    offer.compatible,
                    offer.version
                );
                let version = offer.version.to_string();
                agent.set_poll(|s| {
                    s.last_check_at = Some(now());
                    s.offered = Some(version.clone());
                    s.outcome = Some("install".into());
                    s.detail = Some(format!("operation {id}"));
                });
                agent.run_update(&id, &p.url, p.reboot, false, false);
                return;
            }
        },
    };
    agent.set_poll(|s| {
        s.last_check_at = Some(now());
        s.offered = offered;
        s.outcome = Some(outcome_word.into());
        s.detail = Some(detail);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap() {
        let w = Window::parse("02:00-05:30").unwrap();
        assert_eq!((w.start, w.end), (120, 330));
        let at = |h: u64, m: u64| 20_000 * 86_400 + h * 3600 + m * 60;
        assert!(w.contains(at(2, 0)) && w.contains(at(5, 29)));
        assert!(!w.contains(at(5, 30)) && !w.contains(at(1, 59)));
        assert_eq!(w.until_open(at(1, 0)), Duration::from_secs(3600));
        assert_eq!(w.until_open(at(6, 0)), Duration::from_secs(20 * 3600));
        assert_eq!(w.until_open(at(3, 0)), Duration::ZERO);
        assert_eq!(w.length(), Duration::from_secs(210 * 60));
        let night = Window::parse("23:00-01:00").unwrap();
        assert!(night.contains(at(23, 30)) && night.contains(at(0, 30)));
        assert!(!night.contains(at(1, 0)) && !night.contains(at(12, 0)));
        assert_eq!(night.length(), Duration::from_secs(7200));
        for bad in [
            "",
            "2-5",
            "02:00",
            "25:00-01:00",
            "02:00-02:00",
            "02:60-03:00",
            "a:b-c:d",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn record(state: SlotState, version: &str) -> abkit_update::SlotRecord {
        serde_json::from_value(serde_json::json!({
            "state": state.to_string(),
            "compatible": "demo-os",
            "version": version,
        }))
        .unwrap()
    }

    fn machine(a: abkit_update::SlotRecord, b: abkit_update::SlotRecord) -> Status {
        let slot = |record| abkit_update::status::SlotStatus {
            record,
            loader_present: true,
        };
        Status {
            running_slot: Slot::A,
            committed_slot: Slot::A,
            committed_by_boot_order: true,
            trial_pending: false,
            on_trial: false,
            boot_next: None,
            boot_order: vec![0, 1],
            problems: Vec::new(),
            slots: [("A".to_string(), slot(a)), ("B".to_string(), slot(b))].into(),
            entries: Vec::new(),
            boot_control: abkit_update::status::BootControlStatus {
                mode: abkit_update::boot_control::BootControl::BootNext,
                active: abkit_update::boot_control::Mechanism::BootNext,
                reason: None,
                changed_at: None,
                probe: None,
                loader_state: None,
                preloader_entry: None,
                booted_by_preloader: None,
            },
        }
    }

    fn offer(compatible: &str, version: &str) -> Offer {
        Offer {
            compatible: compatible.into(),
            version: version.parse().unwrap(),
            min_version: None,
        }
    }

    fn skipped(v: Verdict, why: &str) {
        match v {
            Verdict::Skip(text) => assert!(text.contains(why), "{text:?} lacks {why:?}"),
            Verdict::Install => panic!("installed, expected a skip for {why:?}"),
        }
    }

    #[test]
    fn only_newer_versions_of_this_product_are_installed() {
        let st = machine(
            record(SlotState::Good, "1.0.0"),
            record(SlotState::Good, "0.9.0"),
        );
        assert_eq!(judge(&offer("demo-os", "1.1.0"), &st), Verdict::Install);
        assert_eq!(
            judge(&offer("demo-os", "1.0.1-rc.1"), &st),
            Verdict::Install
        );
        skipped(judge(&offer("demo-os", "1.0.0"), &st), "up to date");
        skipped(judge(&offer("demo-os", "0.9.0"), &st), "up to date");
        skipped(
            judge(&offer("other-os", "2.0.0"), &st),
            "this machine runs demo-os",
        );
        let mut needs = offer("demo-os", "2.0.0");
        needs.min_version = Some("1.5.0".parse().unwrap());
        skipped(judge(&needs, &st), "from 1.5.0 or later");
        let mut trial = st.clone();
        trial.on_trial = true;
        skipped(judge(&offer("demo-os", "1.1.0"), &trial), "on trial");
        let unrecorded = machine(
            serde_json::from_value(serde_json::json!({"state": "unknown"})).unwrap(),
            record(SlotState::Good, "0.9.0"),
        );
        skipped(
            judge(&offer("demo-os", "1.1.0"), &unrecorded),
            "no recorded",
        );
    }

    #[test]
    fn a_version_that_failed_its_trial_or_waits_for_it_is_not_installed_again() {
        let mut failed = record(SlotState::Installed, "1.1.0");
        failed.health = Some(abkit_update::record::HealthRecord {
            result: HealthResult::Failed,
            at: 1,
            failed_check: Some("unit:app.service".into()),
            output_tail: None,
        });
        let st = machine(record(SlotState::Good, "1.0.0"), failed);
        skipped(
            judge(&offer("demo-os", "1.1.0"), &st),
            "failed its trial on slot B (at unit:app.service)",
        );
        // A newer one than the failed version is welcome.
        assert_eq!(judge(&offer("demo-os", "1.2.0"), &st), Verdict::Install);
        let mut pending = machine(
            record(SlotState::Good, "1.0.0"),
            record(SlotState::Installed, "1.1.0"),
        );
        pending.trial_pending = true;
        skipped(
            judge(&offer("demo-os", "1.1.0"), &pending),
            "waits for its trial",
        );
        // Installed but not armed (someone rolled back): installing again is
        // how to try it once more.
        pending.trial_pending = false;
        assert_eq!(
            judge(&offer("demo-os", "1.1.0"), &pending),
            Verdict::Install
        );
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        assert_eq!(random_up_to(Duration::ZERO), Duration::ZERO);
        for _ in 0..100 {
            assert!(random_up_to(Duration::from_millis(5)) <= Duration::from_millis(5));
        }
    }
}
