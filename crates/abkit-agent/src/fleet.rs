//! The agent as a member of a fleet: reboots coordinated through FleetLock
//! and releases followed from etcd (`abkit rollout`, crates/abkit-fleet).
//!
//! At every start, once the health gate is done (committed, or back on
//! the old slot), the agent settles the rollout step its last boot was
//! about (committed or rolled back, in its etcd record), lets the rollout
//! re-evaluate itself (an install cut short is simply tried again), and
//! gives back its FleetLock slot
//! (`steady-state`). Then it watches the plan: when its wave is open it
//! takes a reboot slot (`pre-reboot`, retried with backoff), checks the
//! plan once more (no install after a halt), installs, records
//! `rebooting` and reboots into the trial. Config: the `[fleet]` table.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use abkit_fleet::Store;
use abkit_fleet::rollout::{self, MachineRecord, Phase, Plan};
use serde::Deserialize;

use crate::agent::Agent;
use crate::error::{AgentError, Result};
use crate::fleetlock_client::{Backoff, FleetLockClient};
use crate::ops::OpState;

/// The `[fleet]` table of agent.toml (and the flags that override it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs: follow rollouts (needs `fleetlock`).
    #[serde(default)]
    pub etcd: Vec<String>,
    /// FleetLock server base URLs (the next is tried when one is down).
    #[serde(default)]
    pub fleetlock: Vec<String>,
    /// FleetLock group [default: "default"].
    pub group: Option<String>,
    /// [default: /etc/machine-id on the running system; required offline].
    pub machine_id: Option<String>,
    /// Longest pause between FleetLock retries [default: 5m].
    #[serde(default, deserialize_with = "crate::config::duration")]
    pub max_backoff: Option<Duration>,
}

/// Fleet membership, resolved.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub etcd: Vec<String>,
    pub fleetlock: Vec<String>,
    pub group: String,
    pub machine_id: String,
    pub max_backoff: Duration,
}

impl FleetConfig {
    pub fn overridden_by(self, over: FleetConfig) -> FleetConfig {
        fn list(base: Vec<String>, over: Vec<String>) -> Vec<String> {
            if over.is_empty() { base } else { over }
        }
        FleetConfig {
            etcd: list(self.etcd, over.etcd),
            fleetlock: list(self.fleetlock, over.fleetlock),
            group: over.group.or(self.group),
            machine_id: over.machine_id.or(self.machine_id),
            max_backoff: over.max_backoff.or(self.max_backoff),
        }
    }

    /// `None`: not a fleet member (no FleetLock server configured).
    pub fn resolve(self, live: bool) -> Result<Option<FleetSettings>> {
        if self.fleetlock.is_empty() {
            if !self.etcd.is_empty() {
                return Err(AgentError::BadOption(
                    "following rollouts in etcd needs a FleetLock server to coordinate \
                     reboots (--fleetlock-url / fleet.fleetlock)"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let group = self.group.unwrap_or_else(|| "default".into());
        abkit_fleet::semaphore::check_group(&group)
            .map_err(|e| AgentError::BadOption(e.to_string()))?;
        let machine_id = match self.machine_id {
            Some(id) => id,
            None if live => read_machine_id(Path::new("/etc/machine-id"))?,
            None => {
                return Err(AgentError::BadOption(
                    "an offline agent in a fleet needs --machine-id".into(),
                ));
            }
        };
        abkit_fleet::semaphore::check_id(&machine_id)
            .map_err(|e| AgentError::BadOption(e.to_string()))?;
        let etcd = if self.etcd.is_empty() {
            Vec::new()
        } else {
            abkit_fleet::parse_endpoints(&self.etcd.join(","))
                .map_err(|e| AgentError::BadOption(e.to_string()))?
        };
        for u in &self.fleetlock {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(AgentError::BadOption(format!(
                    "FleetLock URL {u:?} is not an http(s) URL"
                )));
            }
        }
        Ok(Some(FleetSettings {
            etcd,
            fleetlock: self.fleetlock,
            group,
            machine_id,
            max_backoff: self.max_backoff.unwrap_or(Duration::from_secs(300)),
        }))
    }
}

fn read_machine_id(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(AgentError::io(format!(
        "read the machine id {}",
        path.display()
    )))?;
    Ok(text.trim().to_string())
}

/// The machine as the fleet sees it: running slot, trial, committed version.
struct Local {
    on_trial: bool,
    version: Option<String>,
}

impl Agent {
    fn local(&self) -> Option<Local> {
        let read = self.with_machine(false, |m| {
            let s = abkit_update::status(m)?;
            let version = s
                .slots
                .get(&s.running_slot.letter().to_string())
                .and_then(|slot| slot.record.version.as_ref())
                .map(|v| v.to_string());
            Ok(Local {
                on_trial: s.on_trial,
                version,
            })
        });
        read.map_err(|e| log::error!("fleet: cannot read the machine: {}", e.message))
            .ok()
    }

    /// Reboots into a freshly installed trial: with a FleetLock slot first
    /// when the machine is in a fleet (the API's `POST /v1/update`).
    pub(crate) fn reboot_into_trial(&self, why: &str) {
        if let Some(fs) = &self.settings.fleet {
            let lock = FleetLockClient::new(fs.fleetlock.clone(), &fs.machine_id, &fs.group);
            let mut backoff = Backoff::new(Duration::from_secs(1), fs.max_backoff, &fs.machine_id);
            while let Err(e) = lock.pre_reboot() {
                log::info!("fleet: no reboot slot yet ({e}); waiting");
                std::thread::sleep(backoff.pause());
            }
            log::info!("fleet: FleetLock granted a reboot slot");
        }
        self.reboot(why);
    }

    /// Installs `source` as an operation the API shows; the installed version.
    fn install_for_fleet(&self, source: &str) -> std::result::Result<String, String> {
        let id = loop {
            match self.ops.start("update", Some(source.to_string())) {
                Ok(id) => break id,
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        };
        self.run_update(&id, source, false, false, false);
        match self.ops.get(&id) {
            Some(op) if op.state == OpState::Succeeded => Ok(op
                .result
                .as_ref()
                .and_then(|r| r["version"].as_str())
                .unwrap_or("?")
                .to_string()),
            Some(op) => Err(op
                .error
                .map(|e| format!("[{}] {}", e.code, e.message))
                .unwrap_or_else(|| "failed".into())),
            None => Err("the operation vanished".into()),
        }
    }
}

/// Starts following the fleet (after the health gate).
pub fn start(agent: Arc<Agent>) {
    let Some(fs) = agent.settings.fleet.clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("fleet".into())
        .spawn(move || Follower::new(agent, fs).run());
    if let Err(e) = spawned {
        log::error!("fleet: cannot start: {e}");
    }
}

struct Follower {
    agent: Arc<Agent>,
    fs: FleetSettings,
    lock: FleetLockClient,
}

impl Follower {
    fn new(agent: Arc<Agent>, fs: FleetSettings) -> Follower {
        let lock = FleetLockClient::new(fs.fleetlock.clone(), &fs.machine_id, &fs.group);
        Follower { agent, fs, lock }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_millis(500),
            self.fs.max_backoff,
            &self.fs.machine_id,
        )
    }

    /// `steady-state`, retried until a server answers 200.
    fn release(&self) {
        let mut backoff = self.backoff();
        loop {
            match self.lock.steady_state() {
                Ok(()) => {
                    log::info!("fleet: steady state reported to FleetLock");
                    return;
                }
                Err(e) => {
                    log::warn!("fleet: steady-state: {e}; retrying");
                    std::thread::sleep(backoff.pause());
                }
            }
        }
    }

    fn connect(&self) -> Store {
        let mut backoff = self.backoff();
        loop {
            match Store::connect(&self.fs.etcd) {
                Ok(s) => return s,
                Err(e) => {
                    log::warn!("fleet: {e}; retrying");
                    std::thread::sleep(backoff.pause());
                }
            }
        }
    }

    /// Retries an etcd step until it works (etcd down is waited out).
    fn retry<T>(&self, what: &str, mut f: impl FnMut() -> abkit_fleet::Result<T>) -> T {
        let mut backoff = self.backoff();
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) => {
                    log::warn!("fleet: {what}: {e}; retrying");
                    std::thread::sleep(backoff.pause());
                }
            }
        }
    }

    fn run(self) {
        let Some(local) = self.agent.local() else {
            return;
        };
        if local.on_trial {
            // The gate did not commit (offline without a reboot command):
            // the slot is still held; the next boot settles it.
            log::warn!("fleet: still on an uncommitted trial; nothing to coordinate");
            return;
        }
        if self.fs.etcd.is_empty() {
            self.release();
            return;
        }
        let store = self.connect();
        self.settle(&store, &local);
        self.release();
        self.follow(&store);
    }

    /// Records how the step of the last boot ended and registers the machine.
    fn settle(&self, store: &Store, local: &Local) {
        let id = &self.fs.machine_id;
        let old = self.retry("read my record", || rollout::read_machine(store, id));
        let mut rec = old
            .clone()
            .unwrap_or(MachineRecord::new(id, &self.fs.group));
        rec.group = self.fs.group.clone();
        rec.version = local.version.clone();
        match rec.phase {
            Phase::Rebooting => {
                if rec.target_version.is_some() && rec.target_version == local.version {
                    rec.phase = Phase::Committed;
                    log::info!(
                        "fleet: committed on {}",
                        rec.version.as_deref().unwrap_or("?")
                    );
                } else {
                    rec.phase = Phase::RolledBack;
                    log::warn!(
                        "fleet: the trial of {} did not commit: back on {}",
                        rec.target_version.as_deref().unwrap_or("?"),
                        rec.version.as_deref().unwrap_or("?")
                    );
                }
            }
            Phase::Installing => {
                // Cut short (a crash, a power cut): the engine left the
                // target slot empty and the old one committed. Not a failed
                // release: this machine takes its step again.
                log::warn!("fleet: an install was interrupted; trying again");
                rec.phase = Phase::Idle;
                rec.rollout = None;
            }
            _ => {}
        }
        rec.updated_at = rollout::now();
        if old.as_ref() != Some(&rec) {
            self.retry("write my record", || rollout::write_machine(store, &rec));
        }
        if rec.rollout.is_some() && rec.phase.finished() {
            self.retry("advance the rollout", || rollout::advance(store));
        }
    }

    /// Whether this machine should act on `plan` now.
    fn wanted(&self, store: &Store, plan: &Plan) -> bool {
        if !plan.may_install(&self.fs.machine_id) {
            return false;
        }
        let rec = self.retry("read my record", || {
            rollout::read_machine(store, &self.fs.machine_id)
        });
        rec.is_none_or(|r| r.rollout.as_deref() != Some(plan.id.as_str()))
    }

    fn follow(&self, store: &Store) {
        loop {
            let current = self.retry("read the rollout", || rollout::read_plan(store));
            let Some((plan, rev)) = current else {
                // No plan: wait from the store's present revision (not from
                // the start of history, which may hold a deleted plan).
                let (now, _) = self.retry("read the rollout", || store.list(rollout::PLAN_KEY));
                store.wait_for_change(rollout::PLAN_KEY, now, Duration::from_secs(60));
                continue;
            };
            if self.wanted(store, &plan) {
                self.take_part(store, &plan);
                continue;
            }
            store.wait_for_change(rollout::PLAN_KEY, rev, Duration::from_secs(60));
        }
    }

    /// One machine's step of a rollout: slot, install, reboot.
    fn take_part(&self, store: &Store, plan: &Plan) {
        let id = &self.fs.machine_id;
        let mut backoff = self.backoff();
        loop {
            match self.lock.pre_reboot() {
                Ok(()) => break,
                Err(e) => log::info!("fleet: no reboot slot yet ({e}); waiting"),
            }
            std::thread::sleep(backoff.pause());
            let now = self.retry("read the rollout", || rollout::read_plan(store));
            if !now.is_some_and(|(p, _)| p.id == plan.id && self.wanted(store, &p)) {
                return;
            }
        }
        log::info!(
            "fleet: FleetLock granted a reboot slot (rollout {})",
            plan.id
        );
        // A halt or abort while we waited: no install after it.
        let now = self.retry("read the rollout", || rollout::read_plan(store));
        if !now.is_some_and(|(p, _)| p.id == plan.id && self.wanted(store, &p)) {
            log::info!("fleet: the rollout changed while waiting; not installing");
            self.release();
            return;
        }
        let mut rec = self
            .retry("read my record", || rollout::read_machine(store, id))
            .unwrap_or(MachineRecord::new(id, &self.fs.group));
        rec.rollout = Some(plan.id.clone());
        rec.phase = Phase::Installing;
        rec.error = None;
        rec.target_version = None;
        rec.updated_at = rollout::now();
        self.retry("write my record", || rollout::write_machine(store, &rec));
        match self.agent.install_for_fleet(&plan.source) {
            Ok(version) => {
                rec.phase = Phase::Rebooting;
                rec.target_version = Some(version.clone());
                rec.updated_at = rollout::now();
                self.retry("write my record", || rollout::write_machine(store, &rec));
                self.agent
                    .reboot(&format!("rollout {}: trial of {version}", plan.id));
                // Rebooting (or an offline agent without a way to): the
                // next start settles this step.
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                log::error!("fleet: install of {} failed: {e}", plan.source);
                rec.phase = Phase::Failed;
                rec.error = Some(e);
                rec.updated_at = rollout::now();
                self.retry("write my record", || rollout::write_machine(store, &rec));
                self.retry("advance the rollout", || rollout::advance(store));
                self.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_settings_resolve_or_are_refused_by_name() {
        let none = FleetConfig::default().resolve(false).unwrap();
        assert!(none.is_none());
        let c: crate::Config = toml::from_str(
            "[fleet]\netcd = [\"10.0.0.1:2379\"]\nfleetlock = [\"http://fl:8080\"]\n\
             group = \"web\"\nmachine_id = \"m1\"\nmax_backoff = \"30s\"",
        )
        .unwrap();
        let s = c.fleet.resolve(false).unwrap().unwrap();
        assert_eq!(s.etcd, ["http://10.0.0.1:2379"]);
        assert_eq!((s.group.as_str(), s.machine_id.as_str()), ("web", "m1"));
        assert_eq!(s.max_backoff, Duration::from_secs(30));
        let bad = |f: FleetConfig| f.resolve(false).unwrap_err().to_string();
        let base = FleetConfig {
            fleetlock: vec!["http://fl".into()],
            machine_id: Some("m1".into()),
            ..Default::default()
        };
        assert!(
            bad(FleetConfig {
                fleetlock: vec![],
                etcd: vec!["http://e:2379".into()],
                ..base.clone()
            })
            .contains("FleetLock")
        );
        assert!(
            bad(FleetConfig {
                machine_id: None,
                ..base.clone()
            })
            .contains("--machine-id")
        );
        assert!(
            bad(FleetConfig {
                group: Some("a b".into()),
                ..base.clone()
            })
            .contains("group")
        );
        assert!(
            bad(FleetConfig {
                fleetlock: vec!["fl:8080".into()],
                ..base.clone()
            })
            .contains("http")
        );
        assert!(toml::from_str::<crate::Config>("[fleet]\netc = []").is_err());
    }
}
