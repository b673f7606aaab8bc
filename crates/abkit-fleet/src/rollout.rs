//! Rollouts in etcd: the plan an operator writes (`abkit rollout start`),
//! the record each machine keeps of itself, and the rules both follow.
//!
//! Keys: `abkit/rollout` holds the [`Plan`] (release, waves, which machine
//! is in which wave, state); `abkit/machines/<id>` holds each machine's
//! [`MachineRecord`], written only by that machine. Waves are assigned by
//! ranking machine ids by SHA-256 (stable: a rerun picks the same
//! canaries). Whoever changes a machine record calls [`advance`], which
//! opens the next wave when every machine of the open ones has finished,
//! or halts the rollout when `halt_after` machines of one wave failed. All
//! plan changes are compare-and-swap on its revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;
use sha2::{Digest, Sha256};

use crate::error::{FleetError, Result};
use crate::store::Store;

pub const PLAN_KEY: &str = "abkit/rollout";
pub const MACHINES_PREFIX: &str = "abkit/machines/";
const MAX_TRIES: u32 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Waves open one after the other.
    Running,
    /// Too many failures in a wave: no machine starts an install.
    Halted,
    /// Stopped by the operator: no machine starts an install.
    Aborted,
    /// Every wave is open and every machine finished.
    Completed,
}

impl std::fmt::Display for RolloutState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutState::Running => "running",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
            RolloutState::Completed => "completed",
        })
    }
}

/// The desired release and how it reaches the fleet.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Unique per `rollout start`: machine records name the rollout they
    /// acted on.
    pub id: String,
    /// What agents install: a bundle URL or an absolute path (whatever the
    /// agent's install accepts; `oci://` once the engine takes it).
    pub source: String,
    /// Cumulative percentages of the fleet, e.g. `[1, 10, 50, 100]`.
    pub waves: Vec<u32>,
    pub max_unavailable: u64,
    /// Failed trials in one wave that halt the rollout.
    pub halt_after: u32,
    pub state: RolloutState,
    /// The highest wave whose machines may install (index into `waves`).
    pub open_wave: usize,
    /// Machine id → wave, fixed at start. Machines registered later are in
    /// the last wave.
    pub assignment: BTreeMap<String, usize>,
    pub started_at: u64,
    pub reason: Option<String>,
    /// Failures an operator accepted with `rollout resume`: not counted
    /// towards `halt_after` again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_failures: Vec<String>,
}

impl Plan {
    /// The wave of `machine`.
    pub fn wave_of(&self, machine: &str) -> usize {
        self.assignment
            .get(machine)
            .copied()
            .unwrap_or(self.waves.len().saturating_sub(1))
    }

    /// Every machine the plan assigned, then those that registered since
    /// (they go to the last wave).
    pub fn machines<'a>(&'a self, records: &'a [MachineRecord]) -> Vec<&'a str> {
        let mut ids: Vec<&str> = self.assignment.keys().map(String::as_str).collect();
        ids.extend(
            records
                .iter()
                .map(|r| r.id.as_str())
                .filter(|id| !self.assignment.contains_key(*id)),
        );
        ids
    }

    /// Whether `machine` may start installing this release now. A
    /// completed rollout's release stays the desired one: a machine that
    /// registers later installs it too (through FleetLock, as any other).
    pub fn may_install(&self, machine: &str) -> bool {
        match self.state {
            RolloutState::Running => self.wave_of(machine) <= self.open_wave,
            RolloutState::Completed => true,
            RolloutState::Halted | RolloutState::Aborted => false,
        }
    }
}

/// Where a machine is in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Registered, not acting on any rollout.
    Idle,
    /// Holds a reboot slot, installing.
    Installing,
    /// Installed; rebooting into (or running) the trial.
    Rebooting,
    /// The trial passed: committed on the rollout's release.
    Committed,
    /// The trial failed: back on the old version by itself.
    RolledBack,
    /// The install failed (the machine never left its version).
    Failed,
}

impl Phase {
    pub fn finished(self) -> bool {
        matches!(self, Phase::Committed | Phase::RolledBack | Phase::Failed)
    }
    pub fn failed(self) -> bool {
        matches!(self, Phase::RolledBack | Phase::Failed)
    }
}

/// What a machine says about itself (written only by its own agent).
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub id: String,
    pub group: String,
    pub phase: Phase,
    /// The rollout the phase is about.
    pub rollout: Option<String>,
    /// The committed version the machine runs.
    pub version: Option<String>,
    /// The version being tried (phase `rebooting`).
    pub target_version: Option<String>,
    pub error: Option<String>,
    pub updated_at: u64,
}

impl MachineRecord {
    /// A machine that has not said anything yet: idle, in `group`.
    pub fn new(id: &str, group: &str) -> MachineRecord {
        MachineRecord {
            id: id.to_string(),
            group: group.to_string(),
            phase: Phase::Idle,
            rollout: None,
            version: None,
            target_version: None,
            error: None,
            updated_at: 0,
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `1%,10%,50%,100%` (or without `%`): strictly increasing, ending at 100.
pub fn parse_waves(text: &str) -> Result<Vec<u32>> {
    let mut waves = Vec::new();
    for part in text.split(',') {
        let p = part.trim().trim_end_matches('%');
        let v: u32 = p.parse().map_err(|_| {
            FleetError::BadInput(format!("wave {part:?} is not a percentage (like 10%)"))
        })?;
        if v == 0 || v > 100 || waves.last().is_some_and(|&l| v <= l) {
            return Err(FleetError::BadInput(format!(
                "waves {text:?}: each must be 1..100% and larger than the one before"
            )));
        }
        waves.push(v);
    }
    if waves.last() != Some(&100) {
        return Err(FleetError::BadInput(format!(
            "waves {text:?}: the last wave must be 100% (every machine)"
        )));
    }
    Ok(waves)
}

/// The machine's place in the stable order: SHA-256 of its id.
fn rank(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

/// Assigns machines to waves: ranked by the hash of their id, the first
/// `ceil(p × n / 100)` are in the waves up to the one of percentage `p`.
pub fn assign(machines: &[String], waves: &[u32]) -> BTreeMap<String, usize> {
    let mut ranked: Vec<&String> = machines.iter().collect();
    ranked.sort_by_key(|id| (rank(id), (*id).clone()));
    let n = ranked.len() as u64;
    let mut out = BTreeMap::new();
    let mut wave = 0;
    for (i, id) in ranked.into_iter().enumerate() {
        while wave + 1 < waves.len() && (i as u64) >= (u64::from(waves[wave]) * n).div_ceil(100) {
            wave += 1;
        }
        out.insert(id.clone(), wave);
    }
    out
}

pub fn machine_key(id: &str) -> String {
    format!("{MACHINES_PREFIX}{id}")
}

/// The plan and its revision, if a rollout was ever started.
pub fn read_plan(store: &Store) -> Result<Option<(Plan, i64)>> {
    match store.get(PLAN_KEY)? {
        None => Ok(None),
        Some(v) => {
            let plan = serde_json::from_slice(&v.value).map_err(|e| FleetError::Corrupt {
                key: PLAN_KEY.into(),
                message: e.to_string(),
            })?;
            Ok(Some((plan, v.mod_revision)))
        }
    }
}

/// Every machine's record (unreadable ones are skipped with a warning).
pub fn machines(store: &Store) -> Result<Vec<MachineRecord>> {
    let (_, items) = store.list(MACHINES_PREFIX)?;
    Ok(items
        .into_iter()
        .filter_map(|(k, v)| match serde_json::from_slice(&v.value) {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!("skipping {k}: {e}");
                None
            }
        })
        .collect())
}

pub fn read_machine(store: &Store, id: &str) -> Result<Option<MachineRecord>> {
    let key = machine_key(id);
    match store.get(&key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v.value)
            .map(Some)
            .map_err(|e| FleetError::Corrupt {
                key,
                message: e.to_string(),
            }),
    }
}

pub fn write_machine(store: &Store, rec: &MachineRecord) -> Result<()> {
    store.put(
        &machine_key(&rec.id),
        &serde_json::to_vec(rec).expect("a record serializes"),
    )
}

/// Changes the plan with compare-and-swap until it sticks; `change`
/// returns `false` to leave it as it is.
pub fn update_plan(
    store: &Store,
    what: &str,
    mut change: impl FnMut(&mut Plan) -> Result<bool>,
) -> Result<Plan> {
    for _ in 0..MAX_TRIES {
        let (mut plan, rev) = read_plan(store)?.ok_or(FleetError::NoRollout)?;
        if !change(&mut plan)? {
            return Ok(plan);
        }
        if store.cas(
            PLAN_KEY,
            rev,
            &serde_json::to_vec(&plan).expect("a plan serializes"),
        )? {
            return Ok(plan);
        }
    }
    Err(FleetError::Contended {
        what: what.into(),
        tries: MAX_TRIES,
    })
}

/// What `rollout start` asks for.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub source: String,
    pub waves: Vec<u32>,
    pub max_unavailable: u64,
    pub halt_after: u32,
}

/// Writes a new plan over the registered machines. Refuses while another
/// rollout is running or halted (abort it first), and when no machine has
/// registered (there would be no waves). Sets every group's
/// FleetLock semaphore to `max_unavailable` slots.
pub fn start(store: &Store, opts: &StartOptions) -> Result<Plan> {
    if opts.max_unavailable == 0 || opts.halt_after == 0 {
        return Err(FleetError::BadInput(
            "--max-unavailable and --halt-after must be at least 1".into(),
        ));
    }
    let src = &opts.source;
    if !(src.starts_with("https://")
        || src.starts_with("http://")
        || src.starts_with("oci://")
        || src.starts_with('/'))
    {
        return Err(FleetError::BadInput(format!(
            "source {src:?}: give a bundle URL or an absolute path as the machines see it"
        )));
    }
    let current = read_plan(store)?;
    if let Some((p, _)) = &current
        && matches!(p.state, RolloutState::Running | RolloutState::Halted)
    {
        return Err(FleetError::RolloutState {
            id: p.id.clone(),
            state: p.state.to_string(),
            message: "abort it first (`abkit rollout abort`)".into(),
        });
    }
    let records = machines(store)?;
    if records.is_empty() {
        return Err(FleetError::NoMachines);
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let plan = Plan {
        id: uuid::Uuid::new_v4().to_string(),
        source: opts.source.clone(),
        waves: opts.waves.clone(),
        max_unavailable: opts.max_unavailable,
        halt_after: opts.halt_after,
        state: RolloutState::Running,
        open_wave: 0,
        assignment: assign(&ids, &opts.waves),
        started_at: now(),
        reason: None,
        accepted_failures: Vec::new(),
    };
    let mut groups: Vec<&str> = records.iter().map(|r| r.group.as_str()).collect();
    groups.sort();
    groups.dedup();
    for g in groups {
        crate::semaphore::set_slots(store, g, opts.max_unavailable)?;
    }
    let rev = current.map(|(_, r)| r).unwrap_or(0);
    if !store.cas(
        PLAN_KEY,
        rev,
        &serde_json::to_vec(&plan).expect("serializes"),
    )? {
        return Err(FleetError::Contended {
            what: "rollout start (another start or a machine changed the plan)".into(),
            tries: 1,
        });
    }
    advance(store)?;
    Ok(read_plan(store)?.map(|(p, _)| p).unwrap_or(plan))
}

/// Counts per wave, as `rollout status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaveCounts {
    pub percent: u32,
    pub machines: u64,
    pub pending: u64,
    pub installing: u64,
    pub rebooting: u64,
    pub committed: u64,
    pub rolled_back: u64,
    pub failed: u64,
}

/// A rollout's progress.
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub id: String,
    pub source: String,
    pub state: RolloutState,
    pub open_wave: usize,
    pub max_unavailable: u64,
    pub halt_after: u32,
    pub reason: Option<String>,
    pub waves: Vec<WaveCounts>,
    pub machines: u64,
    pub committed: u64,
    pub rolled_back: u64,
    pub failed: u64,
}

/// The phase of `rec` in rollout `plan` (`Idle`: not acted on it yet).
fn phase_in(plan: &Plan, rec: Option<&MachineRecord>) -> Phase {
    match rec {
        Some(r) if r.rollout.as_deref() == Some(plan.id.as_str()) => r.phase,
        _ => Phase::Idle,
    }
}

pub fn summarize(plan: &Plan, records: &[MachineRecord]) -> Status {
    let by_id: BTreeMap<&str, &MachineRecord> =
        records.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut waves: Vec<WaveCounts> = plan
        .waves
        .iter()
        .map(|&p| WaveCounts {
            percent: p,
            ..Default::default()
        })
        .collect();
    for id in plan.machines(records) {
        let w = &mut waves[plan.wave_of(id)];
        w.machines += 1;
        match phase_in(plan, by_id.get(id).copied()) {
            Phase::Idle => w.pending += 1,
            Phase::Installing => w.installing += 1,
            Phase::Rebooting => w.rebooting += 1,
            Phase::Committed => w.committed += 1,
            Phase::RolledBack => w.rolled_back += 1,
            Phase::Failed => w.failed += 1,
        }
    }
    Status {
        id: plan.id.clone(),
        source: plan.source.clone(),
        state: plan.state,
        open_wave: plan.open_wave,
        max_unavailable: plan.max_unavailable,
        halt_after: plan.halt_after,
        reason: plan.reason.clone(),
        machines: waves.iter().map(|w| w.machines).sum(),
        committed: waves.iter().map(|w| w.committed).sum(),
        rolled_back: waves.iter().map(|w| w.rolled_back).sum(),
        failed: waves.iter().map(|w| w.failed).sum(),
        waves,
    }
}

pub fn status(store: &Store) -> Result<Status> {
    let (plan, _) = read_plan(store)?.ok_or(FleetError::NoRollout)?;
    Ok(summarize(&plan, &machines(store)?))
}

/// Re-evaluates a running rollout after machines changed: halts it when a
/// wave has `halt_after` failures (not counting accepted ones), opens the
/// next wave once every machine of the open ones has finished (a wave
/// opens when its predecessors are committed; failures below the halt
/// threshold are tolerated and reported), completes it after the last.
pub fn advance(store: &Store) -> Result<Plan> {
    update_plan(store, "advance the rollout", |plan| {
        if plan.state != RolloutState::Running {
            return Ok(false);
        }
        let records = machines(store)?;
        let by_id: BTreeMap<&str, &MachineRecord> =
            records.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut per_wave_failures = vec![0u32; plan.waves.len()];
        let mut per_wave_unfinished = vec![0u32; plan.waves.len()];
        for id in plan.machines(&records) {
            let w = plan.wave_of(id);
            let phase = phase_in(plan, by_id.get(id).copied());
            if phase.failed() && !plan.accepted_failures.iter().any(|a| a == id) {
                per_wave_failures[w] += 1;
            }
            if !phase.finished() {
                per_wave_unfinished[w] += 1;
            }
        }
        if let Some(w) = per_wave_failures.iter().position(|&f| f >= plan.halt_after) {
            plan.state = RolloutState::Halted;
            plan.reason = Some(format!(
                "{} machines of wave {} failed (halt after {})",
                per_wave_failures[w],
                w + 1,
                plan.halt_after
            ));
            log::warn!(
                "rollout {} halted: {}",
                plan.id,
                plan.reason.as_deref().unwrap_or("")
            );
            return Ok(true);
        }
        let before = (plan.open_wave, plan.state);
        while per_wave_unfinished[..=plan.open_wave]
            .iter()
            .all(|&n| n == 0)
        {
            if plan.open_wave + 1 < plan.waves.len() {
                plan.open_wave += 1;
            } else {
                plan.state = RolloutState::Completed;
                break;
            }
        }
        Ok((plan.open_wave, plan.state) != before)
    })
}

/// `rollout resume`: a halted rollout runs again; the failures so far are
/// accepted (they do not count towards `halt_after` again).
pub fn resume(store: &Store) -> Result<Plan> {
    let records = machines(store)?;
    update_plan(store, "resume the rollout", |plan| {
        if plan.state != RolloutState::Halted {
            return Err(FleetError::RolloutState {
                id: plan.id.clone(),
                state: plan.state.to_string(),
                message: "only a halted rollout can be resumed".into(),
            });
        }
        for r in &records {
            if phase_in(plan, Some(r)).failed() && !plan.accepted_failures.contains(&r.id) {
                plan.accepted_failures.push(r.id.clone());
            }
        }
        plan.state = RolloutState::Running;
        plan.reason = None;
        Ok(true)
    })?;
    advance(store)
}

/// `rollout abort`: no machine starts an install any more (machines
/// already on the new release stay there; ones mid-trial finish it).
pub fn abort(store: &Store) -> Result<Plan> {
    update_plan(store, "abort the rollout", |plan| {
        if matches!(plan.state, RolloutState::Aborted | RolloutState::Completed) {
            return Err(FleetError::RolloutState {
                id: plan.id.clone(),
                state: plan.state.to_string(),
                message: "it is over already".into(),
            });
        }
        plan.state = RolloutState::Aborted;
        plan.reason = Some("aborted by the operator".into());
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_waves("1%,10%,50%,100%").unwrap(), [1, 10, 50, 100]);
        assert_eq!(parse_waves("100").unwrap(), [100]);
        for bad in ["", "10%,5%,100%", "0%,100%", "10%,50%", "abc", "50%,150%"] {
            assert!(parse_waves(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn assignment_is_stable_sized_and_ignores_input_order() {
        let ids: Vec<String> = (0..100).map(|i| format!("m-{i:03}")).collect();
        let a = assign(&ids, &[1, 10, 50, 100]);
        let mut rev = ids.clone();
        rev.reverse();
        assert_eq!(a, assign(&rev, &[1, 10, 50, 100]));
        let count = |w| a.values().filter(|&&x| x == w).count();
        assert_eq!((count(0), count(1), count(2), count(3)), (1, 9, 40, 50));
        // Tiny fleets still get a first wave of one machine.
        let few = assign(&ids[..3], &[1, 100]);
        assert_eq!(few.values().filter(|&&x| x == 0).count(), 1);
        // With one machine more, the first wave has two: the old canary
        // is still one of them.
        let more: Vec<String> = (0..101).map(|i| format!("m-{i:03}")).collect();
        let b = assign(&more, &[1, 10, 50, 100]);
        let canary = a.iter().find(|(_, w)| **w == 0).unwrap().0;
        assert_eq!(b[canary], 0);
    }
}
