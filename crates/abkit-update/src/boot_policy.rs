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

use abkit_disk::{EspLocation, FALLBACK_LOADER_PATH, Slot, slot_load_option};
use abkit_efi::boot::{BootManager, entry_boots};
use abkit_efi::boot_vars::{BOOT_NEXT, BOOT_ORDER};
use abkit_efi::{VarName, VarStore};

use crate::machine::{Machine, write_atomically};
use crate::record::{SlotState, read_record};
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
    let found = state.slot_entries(slot).to_vec();
    let mut bm = BootManager::new(vars);
    let mut changed = false;
    let number = match found.first() {
        Some(&n) => {
            changed |= bm.set_entry(n, &wanted)?;
            n
        }
        None => {
            changed = true;
            bm.add_entry(&wanted)?
        }
    };
    for &dup in found.iter().skip(1) {
        log::info!(
            "deleting duplicate boot entry Boot{dup:04X} of slot {}",
            slot.letter()
        );
        if state.boot_order.contains(&dup) {
            let order: Vec<u16> = state
                .boot_order
                .iter()
                .copied()
                .filter(|&n| n != dup)
                .collect();
            changed |= bm.set_boot_order(&order)?;
        }
        changed |= bm.delete_entry(dup)?;
    }
    Ok((number, changed))
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
    let state = read_state(m)?;
    let (entry, _) = ensure_entry(m.vars(), &loc, &state, slot, true)?;
    if let Some(n) = state.boot_next {
        if n != entry && !state.slot_entries(slot.other()).contains(&n) {
            log::warn!(
                "BootNext pointed at Boot{n:04X}, which is not abkit's: replacing it with Boot{entry:04X}"
            );
        }
    }
    BootManager::new(m.vars()).set_boot_next(entry)?;
    Ok(entry)
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
    let order = abkit_efi::boot::arrange_ours(&state.boot_order, &[mine, theirs]);
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
