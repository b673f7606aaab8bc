//! The boot policy: the only code that changes `BootNext`, `BootOrder` or
//! the ACTIVE flag of a boot entry, and the removable-media fallback loader
//! (a copy of the committed slot's loader, stamped with its slot).
//!
//! Install, mark-good and rollback are short sequences of the named
//! operations here ([`make_unbootable`], [`arm_trial`], [`commit`],
//! [`factory_entries`]); each checks its own preconditions, so no caller
//! can arm a trial of a half-written slot or commit an empty one. Reading
//! is lenient ([`read_state`]): a malformed BootOrder or BootNext, an
//! undecodable or non-compliant entry is reported, never a reason to fail,
//! and [`commit`] repairs what is ours to repair.

use abkit_disk::{
    EspLocation, FALLBACK_LOADER_PATH, Slot, preloader_load_option, slot_load_option,
};
use abkit_efi::boot::{BootManager, entry_boots};
use abkit_efi::boot_vars::{BOOT_NEXT, BOOT_ORDER};
use abkit_efi::{LoadOption, VarName, VarStore};
use abkit_loader_core::loader_state::{DEFAULT_TRIES, LoaderState};

use crate::boot_control::{
    BootControl, ControlRecord, Mechanism, Probe, read_control, read_loader_state,
    remove_loader_state, slot_of, write_control, write_loader_state,
};
use crate::machine::{Machine, write_atomically};
use crate::record::{SlotState, now, read_record};
use crate::{Result, UpdateError};

/// What the boot variables say, read leniently: everything the policy's
/// decisions and `status` need.
#[derive(Debug, Clone, Default)]
pub struct BootState {
    /// Our entries of slot A and slot B (lowest number first; more than one
    /// means duplicates that [`commit`] deletes).
    pub entries: [Vec<u16>; 2],
    /// The readable numbers of BootOrder.
    pub boot_order: Vec<u16>,
    /// BootNext, when it holds one entry number.
    pub boot_next: Option<u16>,
    /// The slot of the first of our active entries in BootOrder whose
    /// loader exists (what the firmware boots by default).
    pub committed: Option<Slot>,
    /// Our entries that are active.
    pub active: Vec<u16>,
    /// Problems found while reading (malformed variables, entries that do
    /// not decode), one line each.
    pub problems: Vec<String>,
    /// BootOrder exists but is not an array of u16: [`commit`] rewrites it.
    pub boot_order_malformed: bool,
    /// BootNext exists but is not one u16: the next operation deletes it.
    pub boot_next_malformed: bool,
    /// The slot the removable-media fallback loader boots (its stamp, else
    /// its file name: A); `None` when there is no fallback loader.
    pub fallback: Option<Slot>,
    /// Our entries that start the pre-loader (`\EFI\BOOT\BOOTX64.EFI` on
    /// our ESP): state-file boot control keeps one, first in BootOrder.
    pub preloader: Vec<u16>,
    /// The boot control record (the default when there is none or it does
    /// not parse: see `problems`).
    pub control: ControlRecord,
    /// The loader-state file, if there is one that parses.
    pub loader_state: Option<LoaderState>,
}

impl BootState {
    /// Our entries of `slot`.
    pub fn slot_entries(&self, slot: Slot) -> &[u16] {
        &self.entries[slot_index(slot)]
    }

    /// The slot whose entry BootNext names, if any.
    pub fn boot_next_slot(&self) -> Option<Slot> {
        let n = self.boot_next?;
        [Slot::A, Slot::B]
            .into_iter()
            .find(|&s| self.slot_entries(s).contains(&n))
    }
}

fn slot_index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// Reads the boot variables of `vars` as the policy sees them.
pub fn read_vars(vars: &mut dyn VarStore, esp: &EspLocation) -> Result<BootState> {
    let mut state = BootState::default();
    let bm = BootManager::new(vars);
    let (order, problem) = bm.boot_order_repairable()?;
    state.boot_order = order;
    if let Some(problem) = problem {
        state.boot_order_malformed = true;
        state.problems.push(format!(
            "{problem}: keeping its {} readable entries",
            state.boot_order.len()
        ));
    }
    let (next, problem) = bm.boot_next_lenient()?;
    state.boot_next = next;
    if let Some(problem) = problem {
        state.boot_next_malformed = true;
        state.problems.push(format!("{problem}: ignoring it"));
    }
    let all = bm.entries()?;
    for odd in &all.noncompliant {
        state.problems.push(format!(
            "{} is not a valid boot entry name ({}): never used",
            odd.name, odd.reason
        ));
    }
    for skipped in &all.skipped {
        state.problems.push(format!(
            "Boot{:04X} does not decode ({}): skipped",
            skipped.number, skipped.reason
        ));
    }
    for slot in [Slot::A, Slot::B] {
        state.entries[slot_index(slot)] = all
            .entries
            .iter()
            .filter(|e| entry_boots(&e.option, esp.partition_guid, slot.loader_path()))
            .map(|e| e.number)
            .collect();
    }
    state.preloader = all
        .entries
        .iter()
        .filter(|e| entry_boots(&e.option, esp.partition_guid, FALLBACK_LOADER_PATH))
        .map(|e| e.number)
        .collect();
    state.active = all
        .entries
        .iter()
        .filter(|e| e.option.attributes.is_active())
        .map(|e| e.number)
        .filter(|n| state.entries.iter().any(|v| v.contains(n)))
        .collect();
    'order: for &n in &state.boot_order {
        let Some(entry) = all.entries.iter().find(|e| e.number == n) else {
            continue;
        };
        if !entry.option.attributes.is_active() {
            continue;
        }
        for slot in [Slot::A, Slot::B] {
            if state.slot_entries(slot).contains(&n) {
                state.committed = Some(slot);
                break 'order;
            }
        }
    }
    Ok(state)
}

/// Reads the machine's boot variables, and which slot its fallback loader
/// boots, as the policy sees them.
pub fn read_state(m: &mut dyn Machine) -> Result<BootState> {
    let loc = m.esp_location();
    let mut state = read_vars(m.vars(), &loc)?;
    // Firmware skips an entry whose loader file is missing: so does the
    // committed slot.
    if let Some(slot) = state.committed
        && !m.esp().exists(slot.loader_path())?
    {
        state.problems.push(format!(
            "BootOrder's first entry of ours boots slot {} but its loader {} is missing",
            slot.letter(),
            slot.loader_path()
        ));
        let other = slot.other();
        let other_listed = state
            .boot_order
            .iter()
            .any(|n| state.slot_entries(other).contains(n) && state.active.contains(n));
        state.committed = (other_listed && m.esp().exists(other.loader_path())?).then_some(other);
    }
    state.fallback = m
        .esp()
        .read(FALLBACK_LOADER_PATH)?
        .map(|bytes| loader_slot(&bytes, FALLBACK_LOADER_PATH));
    match read_control(m.esp()) {
        Ok(control) => state.control = control,
        Err(e) => state.problems.push(e.to_string()),
    }
    match read_loader_state(m.esp()) {
        Ok(loader_state) => state.loader_state = loader_state,
        Err(e) => state.problems.push(e.to_string()),
    }
    Ok(state)
}

/// The slot a loader file boots, by the loader's own rule: its stamp, else
/// its file name (anything but `boot-b.efi` means A).
pub fn loader_slot(bytes: &[u8], path: &str) -> Slot {
    abkit_uki::read_stamp(bytes)
        .ok()
        .flatten()
        .unwrap_or_else(|| Slot::from_loader_path(path))
}

/// The slot the firmware boots by default: the first of our active entries
/// in BootOrder, else the slot of the removable-media fallback loader.
pub fn default_boot_slot(state: &BootState) -> Slot {
    state.committed.or(state.fallback).unwrap_or(Slot::A)
}

/// Makes the removable-media fallback `\EFI\BOOT\BOOTX64.EFI` boot `slot`:
/// a copy of `slot`'s loader stamped with `slot` (firmware that lost its
/// entries then still boots that slot, never a half-written one). Returns
/// whether it was written.
pub fn point_fallback_at(m: &mut dyn Machine, slot: Slot) -> Result<bool> {
    let Some(loader) = m.esp().read(slot.loader_path())? else {
        return Err(UpdateError::Policy(format!(
            "cannot point the fallback loader at slot {}: its loader {} is missing",
            slot.letter(),
            slot.loader_path()
        )));
    };
    let wanted = match abkit_uki::stamp(&loader, slot) {
        Ok(stamped) => stamped,
        // Without a stamp only the file-name rule is left, which says A.
        Err(e) if slot == Slot::A => {
            log::warn!(
                "cannot stamp {}: {e}; copying it unstamped",
                slot.loader_path()
            );
            loader
        }
        Err(e) => {
            return Err(UpdateError::Policy(format!(
                "cannot stamp slot B's loader for the fallback path: {e}"
            )));
        }
    };
    if m.esp().read(FALLBACK_LOADER_PATH)?.as_deref() == Some(wanted.as_slice()) {
        return Ok(false);
    }
    write_atomically(m.esp(), FALLBACK_LOADER_PATH, &wanted)?;
    Ok(true)
}

/// Makes sure `slot` has exactly one entry, right in every byte, with the
/// ACTIVE attribute as asked; deletes duplicates (and drops them from
/// BootOrder). Returns the entry number and whether anything was written.
fn ensure_entry(
    vars: &mut dyn VarStore,
    esp: &EspLocation,
    state: &BootState,
    slot: Slot,
    active: bool,
) -> Result<(u16, bool)> {
    let wanted = slot_load_option(esp, slot, active);
    let what = format!("slot {}", slot.letter());
    ensure_option(vars, state, state.slot_entries(slot), &wanted, &what)
}

/// One entry among `found` that is exactly `wanted` (created when there
/// is none), the others deleted and dropped from BootOrder.
fn ensure_option(
    vars: &mut dyn VarStore,
    state: &BootState,
    found: &[u16],
    wanted: &LoadOption,
    what: &str,
) -> Result<(u16, bool)> {
    let mut bm = BootManager::new(vars);
    let mut changed = false;
    let number = match found.first() {
        Some(&n) => {
            changed |= bm.set_entry(n, wanted)?;
            n
        }
        None => {
            changed = true;
            bm.add_entry(wanted)?
        }
    };
    let mut order = state.boot_order.clone();
    for &dup in found.iter().skip(1) {
        log::info!("deleting duplicate boot entry Boot{dup:04X} of {what}");
        if order.contains(&dup) {
            order.retain(|&n| n != dup);
            changed |= bm.set_boot_order(&order)?;
        }
        changed |= bm.delete_entry(dup)?;
    }
    Ok((number, changed))
}

/// State-file boot control: one pre-loader entry (returned). BootNext
/// control: none (every one deleted and dropped from BootOrder).
fn ensure_preloader_entry(m: &mut dyn Machine, wanted: bool) -> Result<(Option<u16>, bool)> {
    let loc = m.esp_location();
    let state = read_state(m)?;
    if wanted {
        let option = preloader_load_option(&loc);
        let (n, changed) = ensure_option(
            m.vars(),
            &state,
            &state.preloader,
            &option,
            "the pre-loader",
        )?;
        return Ok((Some(n), changed));
    }
    let mut bm = BootManager::new(m.vars());
    let mut changed = false;
    for &n in &state.preloader {
        changed |= bm.remove_from_boot_order(n)?;
        changed |= bm.delete_entry(n)?;
    }
    Ok((None, changed))
}

/// Deletes BootNext (whatever it holds).
fn clear_boot_next(vars: &mut dyn VarStore) -> Result<bool> {
    Ok(vars.delete(&VarName::global(BOOT_NEXT))?)
}

/// Step 2 of an install: the firmware can no longer start `slot`, neither
/// through its entry (ACTIVE cleared), nor through BootNext, nor through the
/// removable-media fallback (which then boots the running slot). Refuses
/// the running slot, and a slot that holds a version that booted (recorded
/// `good`, or unrecorded with its loader) while the running slot was never
/// marked good (recorded `installed` or `empty`): firmware that reorders
/// BootOrder can make an untried slot the default, and `slot` then holds
/// the last good version. (A factory's slot A, recorded `installed`, may
/// still install into an empty slot B.)
pub fn make_unbootable(m: &mut dyn Machine, slot: Slot) -> Result<()> {
    let running = m.running_slot();
    if slot == running {
        return Err(UpdateError::Policy(format!(
            "refusing to make the running slot {} unbootable",
            slot.letter()
        )));
    }
    let recorded = read_record(m.esp(), running)?.state;
    let holds_a_booted_version = match read_record(m.esp(), slot)?.state {
        SlotState::Good => true,
        SlotState::Unknown => m.esp().exists(slot.loader_path())?,
        SlotState::Empty | SlotState::Installed => false,
    };
    if !matches!(recorded, SlotState::Good | SlotState::Unknown) && holds_a_booted_version {
        return Err(UpdateError::RunningSlotNotCommitted {
            running,
            committed: format!(
                "{} by its record; the running slot is recorded {recorded}",
                slot.letter()
            ),
        });
    }
    let state = read_state(m)?;
    let mut bm = BootManager::new(m.vars());
    for &n in state.slot_entries(slot) {
        bm.set_entry_active(n, false)?;
    }
    if state.boot_next_malformed || state.boot_next_slot() == Some(slot) {
        clear_boot_next(m.vars())?;
    }
    let state = read_state(m)?;
    if state.fallback == Some(slot) {
        let running = m.running_slot();
        point_fallback_at(m, running)?;
    }
    forget_trial_in_state_file(m, slot)?;
    Ok(())
}

/// The pre-loader must not start `slot` either: a trial of it in the
/// loader state is dropped (a state naming it committed, or one that does
/// not parse, is rewritten to the running slot), and an `auto` probe of it
/// is forgotten.
fn forget_trial_in_state_file(m: &mut dyn Machine, slot: Slot) -> Result<()> {
    let running = m.running_slot();
    let new = match read_loader_state(m.esp()) {
        Ok(None) => None,
        Ok(Some(st)) if st.committed == slot => Some(LoaderState::committed(running)),
        Ok(Some(st)) if st.trial == Some(slot) => Some(LoaderState::committed(st.committed)),
        Ok(Some(_)) => None,
        Err(UpdateError::BootControl { message }) => {
            log::warn!("{message}: rewriting it");
            Some(LoaderState::committed(running))
        }
        Err(e) => return Err(e),
    };
    if let Some(new) = new {
        write_loader_state(m.esp(), &new)?;
    }
    let mut control = read_control(m.esp())?;
    if control
        .probe
        .as_ref()
        .is_some_and(|p| slot_of(p.slot) == Some(slot))
    {
        control.probe = None;
        write_control(m.esp(), &control)?;
    }
    Ok(())
}

/// Why a trial boot is armed: the slot's record must say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// A freshly installed slot (record `installed`).
    Install,
    /// A slot that was good before (record `good`): a manual rollback.
    Rollback,
}

/// The one place BootNext is set: the next boot, and only that one, starts
/// `slot`. Preconditions: `slot` is not the running slot; its record is
/// `installed` (for [`Trial::Install`]) or `good` (for
/// [`Trial::Rollback`]); its loader is on the ESP. The slot's entry is
/// created or repaired and made active first. Returns the entry number.
pub fn arm_trial(m: &mut dyn Machine, slot: Slot, why: Trial) -> Result<u16> {
    let refuse = |reason: String| {
        Err(UpdateError::Policy(format!(
            "refusing to boot slot {} next: {reason}",
            slot.letter()
        )))
    };
    if slot == m.running_slot() {
        return refuse("it is the running slot".into());
    }
    let record = read_record(m.esp(), slot)?;
    let wanted = match why {
        Trial::Install => SlotState::Installed,
        Trial::Rollback => SlotState::Good,
    };
    if record.state != wanted {
        return refuse(format!("its record says {}, not {wanted}", record.state));
    }
    if !m.esp().exists(slot.loader_path())? {
        return refuse(format!("its loader {} is missing", slot.loader_path()));
    }
    let loc = m.esp_location();
    let control = read_control(m.esp())?;
    let state = read_state(m)?;
    let (entry, _) = ensure_entry(m.vars(), &loc, &state, slot, true)?;
    // The slot that boots when the trial is over: the state file's, else
    // the running one (a trial is armed from the committed slot). Arming
    // the committed slot itself (a rollback from a failing trial) just
    // makes it the default again: no trial, nothing else pending.
    let existing = read_loader_state(m.esp()).ok().flatten();
    let base = existing.map_or(slot.other(), |st| st.committed);
    let trial_state = if base == slot {
        LoaderState::committed(slot)
    } else {
        LoaderState::with_trial(base, slot, DEFAULT_TRIES)
    };
    if control.active == Mechanism::StateFile {
        // The pre-loader starts the trial: its entry first, then the state
        // file (the last change, as BootNext is otherwise). A BootNext of
        // ours is not used in this mode.
        arrange_preloader_first(m)?;
        let state = read_state(m)?;
        if state.boot_next_malformed || state.boot_next_slot().is_some() {
            clear_boot_next(m.vars())?;
        }
        write_loader_state(m.esp(), &trial_state)?;
        return Ok(entry);
    }
    let probe_id = m
        .boot_id()
        .filter(|_| control.configured == BootControl::Auto && why == Trial::Install);
    if let Some(boot_id) = probe_id {
        // The probe: the next boot's BootCurrent and the state file (which
        // the trial slot's loader counts down when it runs) tell whether
        // the firmware honoured BootNext.
        write_loader_state(m.esp(), &trial_state)?;
        let probe = Probe {
            slot: slot.letter(),
            entry,
            boot_id,
            tries: DEFAULT_TRIES,
        };
        write_control(
            m.esp(),
            &ControlRecord {
                probe: Some(probe),
                ..control
            },
        )?;
    } else if existing.is_some() {
        // Keep an existing loader state in step (the fallback path reads it).
        write_loader_state(m.esp(), &trial_state)?;
    }
    if let Some(n) = state.boot_next
        && n != entry
        && !state.slot_entries(slot.other()).contains(&n)
    {
        log::warn!(
            "BootNext pointed at Boot{n:04X}, which is not abkit's: replacing it with Boot{entry:04X}"
        );
    }
    BootManager::new(m.vars()).set_boot_next(entry)?;
    Ok(entry)
}

/// State-file boot control: the pre-loader's entry exists and is first
/// among ours in BootOrder (the slots' entries follow, committed first).
fn arrange_preloader_first(m: &mut dyn Machine) -> Result<bool> {
    let (pre, mut changed) = ensure_preloader_entry(m, true)?;
    let state = read_state(m)?;
    // The slots' entries keep their order (BootOrder's, else committed first).
    let committed = default_boot_slot(&state);
    let mut slots: Vec<u16> = state
        .boot_order
        .iter()
        .copied()
        .filter(|n| state.entries.iter().any(|e| e.first() == Some(n)))
        .collect();
    for slot in [committed, committed.other()] {
        if let Some(&n) = state.slot_entries(slot).first()
            && !slots.contains(&n)
        {
            slots.push(n);
        }
    }
    let ours: Vec<u16> = pre.into_iter().chain(slots).collect();
    let order = abkit_efi::boot::arrange_ours(&state.boot_order, &ours);
    if order != state.boot_order {
        changed |= BootManager::new(m.vars()).set_boot_order(&order)?;
    }
    Ok(changed)
}

/// Makes the running slot the committed one and repairs what is ours:
/// one right entry per slot (duplicates deleted, missing ones created,
/// the other slot's entry active only if `other_bootable`), a stale or
/// malformed BootNext deleted, the running slot's entry first among ours in
/// BootOrder (foreign entries keep their places, I6; a malformed BootOrder
/// is rewritten keeping every readable number), and the fallback loader
/// refreshed when slot A is committed.
///
/// Preconditions: the running slot's record is `good` — or it has no record
/// at all (a factory image from raw files) and it already is the slot the
/// firmware boots by default — and its loader is on the ESP. Returns one
/// line per change.
pub fn commit(m: &mut dyn Machine, other_bootable: bool) -> Result<Vec<String>> {
    let running = m.running_slot();
    let other = running.other();
    let loc = m.esp_location();
    let record = read_record(m.esp(), running)?;
    check_committable(m, record.state)?;
    let state = read_state(m)?;
    let mut changes = Vec::new();
    for problem in &state.problems {
        log::warn!("{problem}");
    }
    let (mine, changed) = ensure_entry(m.vars(), &loc, &state, running, true)?;
    if changed {
        changes.push(format!(
            "boot entry Boot{mine:04X} of slot {} repaired",
            running.letter()
        ));
    }
    let state = read_state(m)?;
    let (theirs, changed) = ensure_entry(m.vars(), &loc, &state, other, other_bootable)?;
    if changed {
        changes.push(format!(
            "boot entry Boot{theirs:04X} of slot {} repaired ({})",
            other.letter(),
            if other_bootable { "active" } else { "inactive" }
        ));
    }
    let state = read_state(m)?;
    // A BootNext at our own entry is stale; one at the other slot's entry
    // stays only while that slot is bootable (firmware would start even an
    // inactive BootNext entry). A foreign one is not ours to touch.
    let next = state.boot_next;
    if state.boot_next_malformed || next == Some(mine) || (next == Some(theirs) && !other_bootable)
    {
        clear_boot_next(m.vars())?;
        changes.push("stale BootNext cleared".into());
    }
    let control = read_control(m.esp())?;
    let state_file = control.active == Mechanism::StateFile;
    let (pre, changed) = ensure_preloader_entry(m, state_file)?;
    if changed {
        changes.push(if state_file {
            "pre-loader boot entry repaired".into()
        } else {
            "pre-loader boot entry removed (BootNext boot control)".into()
        });
    }
    let state = read_state(m)?;
    let ours: Vec<u16> = pre.into_iter().chain([mine, theirs]).collect();
    let order = abkit_efi::boot::arrange_ours(&state.boot_order, &ours);
    if state.boot_order_malformed || order != state.boot_order {
        let mut bm = BootManager::new(m.vars());
        if state.boot_order_malformed {
            // Rewrite even when the readable part is already right.
            bm.store()
                .delete(&VarName::global(BOOT_ORDER))
                .map_err(UpdateError::from)?;
        }
        bm.set_boot_order(&order)?;
        changes.push(format!(
            "BootOrder: slot {} committed (Boot{mine:04X} first of ours)",
            running.letter()
        ));
    }
    // The loader state (state-file control, or an `auto` probe) names the
    // running slot committed; a pending trial of the other slot stays only
    // while that slot is bootable.
    let loader_state = match read_loader_state(m.esp()) {
        Ok(st) => st,
        Err(UpdateError::BootControl { message }) => {
            log::warn!("{message}: rewriting it");
            Some(LoaderState::committed(running))
        }
        Err(e) => return Err(e),
    };
    if state_file || loader_state.is_some() {
        let wanted = match loader_state.and_then(|st| st.pending_trial().map(|t| (t, st))) {
            Some((t, st)) if t == other && other_bootable => {
                LoaderState::with_trial(running, t, st.tries_left)
            }
            _ => LoaderState::committed(running),
        };
        if write_loader_state(m.esp(), &wanted)? {
            changes.push(format!(
                "loader state: slot {} committed{}",
                running.letter(),
                wanted
                    .trial
                    .map(|t| format!(", trial of slot {} pending", t.letter()))
                    .unwrap_or_default()
            ));
        }
    }
    crate::halt::checkpoint("mark-good:boot-order-written");
    if point_fallback_at(m, running)? {
        changes.push(format!(
            "fallback loader {FALLBACK_LOADER_PATH} boots slot {}",
            running.letter()
        ));
    }
    Ok(changes)
}

/// Whether the running slot, whose record says (or is about to say)
/// `recorded`, may be committed: `good`, or no record at all (a factory
/// image from raw files) while it already is the slot the firmware boots by
/// default; and its loader is on the ESP.
pub fn check_committable(m: &mut dyn Machine, recorded: SlotState) -> Result<()> {
    let running = m.running_slot();
    let refuse = |reason: String| {
        Err(UpdateError::NotCommittable {
            slot: running,
            reason,
        })
    };
    match recorded {
        SlotState::Good => {}
        SlotState::Unknown => {
            let state = read_state(m)?;
            if default_boot_slot(&state) != running {
                return refuse(format!(
                    "it has no slot record (nothing was ever installed into it) and the firmware boots slot {} by default",
                    default_boot_slot(&state).letter()
                ));
            }
        }
        s => return refuse(format!("its record says {s}, not good")),
    }
    if !m.esp().exists(running.loader_path())? {
        return refuse(format!("its loader {} is missing", running.loader_path()));
    }
    Ok(())
}

/// The entries of a freshly built disk: slot A's active and first in
/// BootOrder, slot B's inactive (it holds nothing yet) right after it,
/// every other entry after them in its old order. Existing entries of ours
/// are reused and their duplicates deleted.
pub fn factory_entries(
    vars: &mut dyn VarStore,
    esp: &EspLocation,
) -> Result<abkit_disk::InstalledEntries> {
    let state = read_vars(vars, esp)?;
    let (a, _) = ensure_entry(vars, esp, &state, Slot::A, true)?;
    let state = read_vars(vars, esp)?;
    let (b, _) = ensure_entry(vars, esp, &state, Slot::B, false)?;
    let state = read_vars(vars, esp)?;
    let mut order = vec![a, b];
    order.extend(state.boot_order.iter().filter(|n| **n != a && **n != b));
    BootManager::new(vars).set_boot_order(&order)?;
    Ok(abkit_disk::InstalledEntries {
        slot_a: a,
        slot_b: b,
        boot_order: order,
    })
}

/// What [`observe_boot`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// Nothing to check (not `auto`, no probe, or the same boot).
    Nothing,
    /// The trial reboot happened as asked: the probe is done.
    Honoured,
    /// The firmware ignored BootNext: `auto` switched to the state file
    /// (the reason, as recorded). The trial is pending there: it runs on
    /// the next boot.
    SwitchedToStateFile(String),
}

/// `auto` boot control, on the first run after a reboot (mark-good and the
/// agent call it): if a trial was armed by BootNext in an earlier boot and
/// this boot is not it (BootCurrent is not the trial entry) and the trial
/// slot's loader never ran (the loader state still holds every attempt),
/// the firmware ignored BootNext: switch to the state file, record why,
/// delete a BootNext the firmware kept, put the pre-loader first. The
/// trial stays pending in the state file, for the next boot.
pub fn observe_boot(m: &mut dyn Machine) -> Result<Observation> {
    let mut control = read_control(m.esp())?;
    if control.configured != BootControl::Auto || control.active != Mechanism::BootNext {
        return Ok(Observation::Nothing);
    }
    let (Some(probe), Some(boot_id)) = (control.probe.clone(), m.boot_id()) else {
        return Ok(Observation::Nothing);
    };
    if probe.boot_id == boot_id {
        return Ok(Observation::Nothing);
    }
    let bm = BootManager::new(m.vars());
    let current = bm.boot_current().ok().flatten();
    let (next, _) = bm.boot_next_lenient()?;
    let trial = slot_of(probe.slot);
    let loader_state = read_loader_state(m.esp()).ok().flatten();
    let uncounted = loader_state
        .is_some_and(|st| st.trial.is_some() && st.trial == trial && st.tries_left >= probe.tries);
    if current == Some(probe.entry) || !uncounted {
        control.probe = None;
        write_control(m.esp(), &control)?;
        return Ok(Observation::Honoured);
    }
    let reason = format!(
        "after the trial reboot into slot {} (BootNext = Boot{:04X}), the firmware started {} and {}, and slot {}'s loader never ran: the firmware ignores BootNext",
        probe.slot,
        probe.entry,
        current.map_or("no Boot#### entry (BootCurrent unset)".into(), |c| format!(
            "Boot{c:04X} (BootCurrent)"
        )),
        match next {
            Some(n) if n == probe.entry => "kept BootNext set".to_string(),
            Some(n) => format!("BootNext is Boot{n:04X}"),
            None => "BootNext is gone".to_string(),
        },
        probe.slot,
    );
    log::warn!("boot control auto: {reason}; switching to the state file");
    control.active = Mechanism::StateFile;
    control.reason = Some(reason.clone());
    control.changed_at = Some(now());
    control.probe = None;
    write_control(m.esp(), &control)?;
    if next == Some(probe.entry) {
        clear_boot_next(m.vars())?;
    }
    arrange_preloader_first(m)?;
    Ok(Observation::SwitchedToStateFile(reason))
}

/// The operator's choice of boot control (`--boot-control`), persisted on
/// the ESP. `bootnext`: the seed's way (the loader state and the
/// pre-loader's entry are removed; a trial pending there is dropped, with
/// a line saying so). `state-file`: the pre-loader's entry first, the
/// loader state naming the committed slot (a pending BootNext trial moves
/// into it). `auto`: BootNext until a trial shows the firmware ignores it
/// (an earlier `auto` keeps what it found). Returns one line per change.
pub fn set_boot_control(m: &mut dyn Machine, mode: BootControl) -> Result<Vec<String>> {
    let mut control = read_control(m.esp())?;
    let mut changes = Vec::new();
    let active = match mode {
        BootControl::BootNext => Mechanism::BootNext,
        BootControl::StateFile => Mechanism::StateFile,
        BootControl::Auto if control.configured == BootControl::Auto => control.active,
        BootControl::Auto => Mechanism::BootNext,
    };
    let state = read_state(m)?;
    match active {
        Mechanism::BootNext => {
            if let Some(t) = state.loader_state.and_then(|st| st.pending_trial()) {
                changes.push(format!(
                    "the pending trial of slot {} in the loader state was dropped: rerun the install or rollback to arm it by BootNext",
                    t.letter()
                ));
            }
            if mode != BootControl::Auto && remove_loader_state(m.esp())? {
                changes.push("loader state removed".into());
            }
            if ensure_preloader_entry(m, false)?.1 {
                changes.push("pre-loader boot entry removed".into());
            }
        }
        Mechanism::StateFile => {
            let committed = default_boot_slot(&state);
            let pending = state
                .boot_next_slot()
                .filter(|&t| t != committed)
                .or(state.loader_state.and_then(|st| st.pending_trial()));
            let wanted = match pending {
                Some(t) => LoaderState::with_trial(committed, t, DEFAULT_TRIES),
                None => LoaderState::committed(committed),
            };
            if !m.esp().exists(committed.loader_path())? {
                return Err(UpdateError::BootControl {
                    message: format!(
                        "cannot use the state file: the committed slot {}'s loader is missing",
                        committed.letter()
                    ),
                });
            }
            point_fallback_at(m, committed)?;
            if arrange_preloader_first(m)? {
                changes.push("pre-loader boot entry first in BootOrder".into());
            }
            if state.boot_next_slot().is_some() || state.boot_next_malformed {
                clear_boot_next(m.vars())?;
            }
            if write_loader_state(m.esp(), &wanted)? {
                changes.push(format!(
                    "loader state: slot {} committed{}",
                    committed.letter(),
                    pending
                        .map(|t| format!(", trial of slot {} pending", t.letter()))
                        .unwrap_or_default()
                ));
            }
        }
    }
    let reason = match (mode, active) {
        (BootControl::Auto, Mechanism::StateFile) => control.reason.clone(),
        (BootControl::Auto, Mechanism::BootNext) => {
            Some("auto: BootNext until a trial reboot shows the firmware ignores it".into())
        }
        _ => Some(format!("chosen by the operator (--boot-control {mode})")),
    };
    let new = ControlRecord {
        configured: mode,
        active,
        changed_at: if active != control.active || mode != control.configured {
            Some(now())
        } else {
            control.changed_at
        },
        reason,
        probe: if active == Mechanism::BootNext && mode == BootControl::Auto {
            control.probe.take()
        } else {
            None
        },
    };
    if write_control(m.esp(), &new)? {
        changes.push(format!("boot control: {mode} (in use: {})", active.name()));
    }
    Ok(changes)
}

/// kexec activation: the jump into `slot`'s kernel (already loaded) is its
/// trial's one attempt. BootNext at it is deleted and the loader state's
/// attempt is counted, so a trial that fails and reboots through the
/// firmware comes back to the committed slot (BootOrder was never
/// changed); an `auto` probe of it is dropped (the firmware is not asked).
/// Preconditions: `slot` is not running and is recorded `installed`.
pub fn start_kexec_trial(m: &mut dyn Machine, slot: Slot) -> Result<()> {
    if slot == m.running_slot() {
        return Err(UpdateError::Policy(format!(
            "refusing to kexec into the running slot {}",
            slot.letter()
        )));
    }
    let record = read_record(m.esp(), slot)?;
    if record.state != SlotState::Installed {
        return Err(UpdateError::Policy(format!(
            "refusing to kexec into slot {}: its record says {}, not installed",
            slot.letter(),
            record.state
        )));
    }
    let state = read_state(m)?;
    if state.boot_next_slot() == Some(slot) {
        clear_boot_next(m.vars())?;
    }
    if let Some(next) = state.loader_state.and_then(|st| st.counted_by(slot)) {
        write_loader_state(m.esp(), &next)?;
    }
    let mut control = read_control(m.esp())?;
    if control.probe.take().is_some() {
        write_control(m.esp(), &control)?;
    }
    Ok(())
}
