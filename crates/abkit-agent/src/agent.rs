//! The agent's state and what it does to the machine: the health gate and
//! the operations the API starts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abkit_update::record::{HealthRecord, HealthResult, now, read_record, write_record};
use abkit_update::{Machine, Slot, UpdateError};
use serde::Serialize;
use serde_json::Value;
use serde_with::skip_serializing_none;

use crate::config::Settings;
use crate::health::{self, CheckResult};
use crate::notify::notify;
use crate::ops::{OpError, OpReporter, Operations};
use crate::poll::PollState;

/// Opens the machine the agent acts on (each use opens it anew: a machine
/// is not shared between threads).
pub type OpenMachine = Arc<
    dyn Fn() -> Result<Box<dyn Machine>, Box<dyn std::error::Error + Send + Sync>> + Send + Sync,
>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthPhase {
    Pending,
    Running,
    Passed,
    Failed,
    /// The gate could not run (the machine could not be read).
    Error,
}

/// The health gate as `GET /v1/status` shows it.
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct HealthState {
    pub phase: HealthPhase,
    pub slot: Option<Slot>,
    pub on_trial: Option<bool>,
    pub checks: Vec<CheckResult>,
    pub failed_check: Option<String>,
    /// What the gate did: `committed`, `reboot`, `reported`.
    pub action: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

pub struct Agent {
    pub settings: Settings,
    open: OpenMachine,
    live: bool,
    /// Held by whatever in this process changes the machine: the engine's
    /// flock refuses a second holder even in one process, so the agent
    /// queues its own writers here instead.
    writer: Mutex<()>,
    health: Mutex<HealthState>,
    /// The last check of the release channel (`None` when not polling).
    poll: Mutex<Option<PollState>>,
    pub ops: Operations,
}

/// An engine (or machine-opening) failure, with its stable code.
pub(crate) fn op_error(err: &(dyn std::error::Error + 'static)) -> OpError {
    let mut code = "error";
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<UpdateError>() {
            code = e.code();
            break;
        }
        if let Some(e) = c.downcast_ref::<crate::AgentError>() {
            code = e.code();
            break;
        }
        cause = c.source();
    }
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    OpError {
        code: code.into(),
        message,
    }
}

impl Agent {
    pub fn new(settings: Settings, open: OpenMachine, live: bool) -> Arc<Agent> {
        let poll = settings.poll.as_ref().map(|p| PollState {
            url: p.url.clone(),
            ..Default::default()
        });
        Arc::new(Agent {
            settings,
            open,
            live,
            writer: Mutex::new(()),
            health: Mutex::new(HealthState {
                phase: HealthPhase::Pending,
                slot: None,
                on_trial: None,
                checks: Vec::new(),
                failed_check: None,
                action: None,
                error: None,
                started_at: None,
                finished_at: None,
            }),
            poll: Mutex::new(poll),
            ops: Operations::default(),
        })
    }

    /// Runs `f` on a freshly opened machine; `write`: as this process's only
    /// writer.
    pub fn with_machine<T>(
        &self,
        write: bool,
        f: impl FnOnce(&mut dyn Machine) -> Result<T, UpdateError>,
    ) -> Result<T, OpError> {
        let _guard = write.then(|| self.writer.lock().unwrap_or_else(|e| e.into_inner()));
        let mut m = (self.open)().map_err(|e| op_error(e.as_ref()))?;
        f(m.as_mut()).map_err(|e| op_error(&e))
    }

    pub fn health(&self) -> HealthState {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The polling state for `GET /v1/status` (`None`: not polling).
    pub fn poll_state(&self) -> Option<PollState> {
        self.poll.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_poll(&self, f: impl FnOnce(&mut PollState)) {
        if let Some(p) = self.poll.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f(p);
        }
    }

    fn set_health(&self, f: impl FnOnce(&mut HealthState)) {
        f(&mut self.health.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// The health gate: runs once, at start. On a trial boot, all checks
    /// passing commits the slot; a failure (or the deadline) records why in
    /// the slot record and reboots. On a committed boot the result is only
    /// recorded and reported.
    pub fn health_gate(&self) {
        self.set_health(|h| {
            h.phase = HealthPhase::Running;
            h.started_at = Some(now());
        });
        let started = Instant::now();
        let switched = self.check_boot_control();
        let read = self.with_machine(false, |m| {
            let s = abkit_update::status(m)?;
            Ok((s.running_slot, s.on_trial))
        });
        let (slot, on_trial) = match read {
            Ok(v) => v,
            Err(e) => {
                log::error!(
                    "health gate: cannot read the machine's state: {}",
                    e.message
                );
                notify(&format!(
                    "STATUS=health gate: cannot read the machine: {}",
                    e.message
                ));
                self.set_health(|h| {
                    h.phase = HealthPhase::Error;
                    h.error = Some(e.message);
                    h.finished_at = Some(now());
                });
                return;
            }
        };
        self.set_health(|h| {
            h.slot = Some(slot);
            h.on_trial = Some(on_trial);
        });
        let hs = &self.settings.health;
        notify(&format!(
            "STATUS=health checks running (slot {}, {})",
            slot.letter(),
            if on_trial { "trial boot" } else { "committed" }
        ));
        let mut outcome = match health::collect(hs) {
            Ok(checks) => {
                log::info!(
                    "health gate: {} checks on slot {} ({})",
                    checks.len(),
                    slot.letter(),
                    if on_trial {
                        "trial boot"
                    } else {
                        "committed boot"
                    }
                );
                let env = [
                    ("ABKIT_SLOT", slot.letter().to_string()),
                    (
                        "ABKIT_ON_TRIAL",
                        if on_trial { "1" } else { "0" }.to_string(),
                    ),
                ];
                health::run_all(&checks, hs.check_timeout, hs.deadline, &env, &mut |r| {
                    self.set_health(|h| h.checks.push(r.clone()))
                })
            }
            Err(e) => health::Outcome {
                passed: false,
                failed_check: Some("health.d".into()),
                output_tail: Some(format!("cannot read the health checks: {e}")),
            },
        };
        if outcome.passed
            && on_trial
            && let Err(e) = self.commit(hs.deadline.saturating_sub(started.elapsed()))
        {
            log::error!(
                "health gate: the checks passed but mark-good failed: {}",
                e.message
            );
            outcome = health::Outcome {
                passed: false,
                failed_check: Some("mark-good".into()),
                output_tail: Some(format!("[{}] {}", e.code, e.message)),
            };
        }
        let record = HealthRecord {
            result: if outcome.passed {
                HealthResult::Passed
            } else {
                HealthResult::Failed
            },
            at: now(),
            failed_check: outcome.failed_check.clone(),
            output_tail: outcome.output_tail.clone(),
        };
        if let Err(e) = self.with_machine(true, |m| {
            m.lock()?;
            let mut r = read_record(m.esp(), slot)?;
            r.health = Some(record);
            write_record(m.esp(), slot, &r)
        }) {
            log::error!(
                "health gate: cannot record the result in slot {}'s record: {}",
                slot.letter(),
                e.message
            );
        }
        let action = match (outcome.passed, on_trial) {
            (true, true) => "committed",
            (false, true) => "reboot",
            _ => "reported",
        };
        self.set_health(|h| {
            h.phase = if outcome.passed {
                HealthPhase::Passed
            } else {
                HealthPhase::Failed
            };
            h.failed_check = outcome.failed_check.clone();
            h.action = Some(action.into());
            h.finished_at = Some(now());
        });
        match action {
            "committed" => {
                log::info!(
                    "health gate: slot {} passed its trial and is committed",
                    slot.letter()
                );
                notify(&format!(
                    "STATUS=slot {} healthy and committed",
                    slot.letter()
                ));
            }
            "reboot" => {
                let why = format!(
                    "slot {} failed its trial boot at {}: {}",
                    slot.letter(),
                    outcome.failed_check.as_deref().unwrap_or("?"),
                    outcome.output_tail.as_deref().unwrap_or("").trim_end()
                );
                log::error!("health gate: {why}; rebooting so the firmware falls back");
                // Firmware that makes the entry it booted the default would
                // start the failed trial again: ask for the last good slot
                // explicitly (BootNext; on conforming firmware BootOrder
                // names it anyway).
                match self.with_machine(true, |m| abkit_update::rollback(m).map(|_| ())) {
                    Ok(()) => log::info!("health gate: BootNext names the last good slot"),
                    Err(e) => log::warn!("health gate: cannot arm the last good slot: {e:?}"),
                }
                notify(&format!(
                    "STATUS=health failed at {}: rebooting",
                    outcome.failed_check.as_deref().unwrap_or("?")
                ));
                self.reboot(&why);
            }
            _ if outcome.passed && switched => {
                // The install before this boot asked for a trial that the
                // firmware skipped; the pre-loader runs it now.
                let why = format!(
                    "slot {} is healthy; the firmware ignored BootNext, so the trial the last install asked for runs now through the pre-loader",
                    slot.letter()
                );
                log::warn!("health gate: {why}");
                notify("STATUS=rebooting into the pending trial (state file)");
                self.reboot(&why);
            }
            _ => {
                let text = if outcome.passed {
                    "healthy".to_string()
                } else {
                    format!(
                        "unhealthy at {}",
                        outcome.failed_check.as_deref().unwrap_or("?")
                    )
                };
                log::info!("health gate: slot {} (committed) {text}", slot.letter());
                notify(&format!("STATUS=slot {} committed, {text}", slot.letter()));
            }
        }
    }

    /// Applies the configured boot control, then `auto`'s check of the
    /// last trial reboot. Returns whether `auto` just switched to the state
    /// file with a trial pending (the gate then reboots into it).
    fn check_boot_control(&self) -> bool {
        if let Some(mode) = self.settings.boot_control {
            match self.with_machine(true, |m| abkit_update::boot_control::configure(m, mode)) {
                Ok(changes) => {
                    for c in changes {
                        log::info!("boot control: {c}");
                    }
                }
                Err(e) => log::error!("cannot set the boot control to {mode}: {}", e.message),
            }
        }
        match self.with_machine(true, abkit_update::boot_control::observe) {
            Ok(abkit_update::boot_policy::Observation::SwitchedToStateFile(reason)) => {
                log::warn!("boot control switched to the state file: {reason}");
                true
            }
            Ok(_) => false,
            Err(e) => {
                log::error!("boot control check failed: {}", e.message);
                false
            }
        }
    }

    /// mark-good, retried while another abkit command holds the lock.
    fn commit(&self, within: Duration) -> Result<(), OpError> {
        let end = Instant::now() + within.max(Duration::from_secs(1));
        loop {
            match self.with_machine(true, |m| abkit_update::mark_good(m).map(|_| ())) {
                Err(e) if e.code == "locked" && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                other => return other,
            }
        }
    }

    /// kexec activation of the freshly installed `slot` (live only): loads
    /// its kernel and jumps; returns when that cannot be done (the caller
    /// then reboots through the firmware, the trial armed again).
    fn activate_by_kexec(&self, slot: abkit_update::Slot) {
        if !self.live {
            log::warn!("kexec activation needs the running system: rebooting instead");
            return;
        }
        match self.with_machine(true, |m| abkit_update::kexec::load(m, slot)) {
            Ok(loaded) => {
                log::warn!("kexec into slot {}: {}", slot.letter(), loaded.cmdline);
                let err = {
                    let _guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
                    abkit_update::kexec::jump()
                };
                log::error!("{err}; rebooting through the firmware instead");
                if let Err(e) = self.with_machine(true, |m| {
                    abkit_update::boot_policy::arm_trial(
                        m,
                        slot,
                        abkit_update::boot_policy::Trial::Install,
                    )
                    .map(|_| ())
                }) {
                    log::error!("cannot arm the trial again: {}", e.message);
                }
            }
            Err(e) => log::error!("{}; rebooting through the firmware instead", e.message),
        }
    }

    /// Reboots: the configured command, or (live) sync and reboot(2);
    /// offline without a command nothing happens.
    pub fn reboot(&self, why: &str) {
        if let Some(cmd) = &self.settings.reboot_command {
            log::warn!("rebooting ({why}): {cmd}");
            match std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .env("ABKIT_REBOOT_REASON", why)
                .status()
            {
                Ok(s) if s.success() => {}
                Ok(s) => log::error!("reboot command {cmd:?} failed: {s}"),
                Err(e) => log::error!("reboot command {cmd:?} did not start: {e}"),
            }
        } else if self.live {
            log::warn!("rebooting ({why})");
            // SAFETY: sync and reboot take no pointers; reboot only returns on error.
            unsafe { libc::sync() };
            if unsafe { libc::reboot(libc::RB_AUTOBOOT) } != 0 {
                log::error!("reboot failed: {}", std::io::Error::last_os_error());
            }
        } else {
            log::warn!("offline machine: not rebooting ({why}); give --reboot-command to act");
        }
    }

    /// Installs `source` (operation `id`, already started), then reboots if
    /// asked.
    pub fn run_update(
        &self,
        id: &str,
        source: &str,
        reboot: bool,
        allow_downgrade: bool,
        kexec: bool,
    ) {
        let outcome = (|| {
            let keyring =
                abkit_bundle::Keyring::load_dir(&self.settings.keyring).map_err(|e| OpError {
                    code: "keyring".into(),
                    message: format!(
                        "cannot load the keyring {}: {e}",
                        self.settings.keyring.display()
                    ),
                })?;
            self.with_machine(true, |m| {
                let opener = abkit_fetch::Opener::new(&abkit_fetch::RetryPolicy::default());
                let mut rep = OpReporter { ops: &self.ops, id };
                abkit_update::source::install_from(
                    m,
                    source,
                    opener,
                    &abkit_oci::RegistryOptions::default(),
                    &keyring,
                    &abkit_update::InstallOptions {
                        allow_downgrade,
                        allow_unrecorded: false,
                    },
                    true,
                    &mut rep,
                )
            })
        })();
        match outcome {
            Ok(report) => {
                log::info!(
                    "operation {id}: installed {} {} into slot {}",
                    report.compatible,
                    report.version,
                    report.target_slot.letter()
                );
                let value = serde_json::to_value(&report).unwrap_or(Value::Null);
                self.ops.finish(id, Ok(value));
                if reboot && kexec {
                    self.activate_by_kexec(report.target_slot);
                }
                if reboot {
                    self.reboot_into_trial(&format!("update {} installed", report.version));
                }
            }
            Err(e) => {
                log::error!(
                    "operation {id}: install of {source} failed: [{}] {}",
                    e.code,
                    e.message
                );
                self.ops.finish(id, Err(e));
            }
        }
    }
}
