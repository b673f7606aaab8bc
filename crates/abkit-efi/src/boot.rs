//! Boot manager operations over any variable store.
//!
//! Lists, adds and finds `Boot####` entries, reads and writes `BootOrder`,
//! `BootNext` and `BootCurrent`, and rearranges abkit's entries within
//! BootOrder while every foreign entry keeps its place (invariant I6).
//!
//! Only compliant names (`Boot` + four upper-case hex digits) are entries.
//! A look-alike such as `Boot001a` is reported in
//! [`BootEntries::noncompliant`] and otherwise left alone: it is never
//! returned as an entry, never changed or deleted, and its number is never
//! given to a new entry.
//!
//! Nothing here logs: callers report [`BootEntries::skipped`] and
//! [`BootEntries::noncompliant`] once, however often they list entries.

use thiserror::Error;
use uuid::Uuid;

use crate::boot_vars::{self, BOOT_CURRENT, BOOT_NEXT, BOOT_ORDER, BootVarError};
use crate::device_path::same_file_path;
use crate::load_option::{LoadOption, LoadOptionError};
use crate::store::{StoreError, VarName, VarStore, Variable, attributes};

/// A boot manager operation that failed.
#[derive(Debug, Error)]
pub enum BootError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Var(#[from] BootVarError),
    #[error("Boot{number:04X}: {source}")]
    Entry {
        number: u16,
        #[source]
        source: LoadOptionError,
    },
    #[error("all 65536 Boot#### numbers are in use")]
    NoFreeNumber,
    /// Creating `Boot{number:04X}` would clash with a non-compliant variable
    /// of the same name in another case, which is left untouched.
    #[error(
        "not creating Boot{number:04X}: the store has {existing}, which a case-insensitive store would overwrite"
    )]
    NameClash { number: u16, existing: String },
}

/// A decoded `Boot####` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    pub number: u16,
    pub option: LoadOption,
}

/// A `Boot####` variable that could not be decoded (skipped, never fatal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub number: u16,
    pub reason: String,
}

/// A variable that looks like a boot entry but whose name firmware does not
/// boot, e.g. `Boot001a` (lower-case hex). Never used, changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonCompliantEntry {
    /// The variable name as stored.
    pub name: String,
    /// Why it is not an entry.
    pub reason: String,
}

/// All boot entries of a store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootEntries {
    /// Decoded entries, by number.
    pub entries: Vec<BootEntry>,
    /// Entries that failed to decode, with the reason.
    pub skipped: Vec<SkippedEntry>,
    /// Look-alike names that are not entries (see [`NonCompliantEntry`]), by name.
    pub noncompliant: Vec<NonCompliantEntry>,
}

/// The boot manager's variables in one store.
pub struct BootManager<'a> {
    store: &'a mut dyn VarStore,
}

impl<'a> BootManager<'a> {
    pub fn new(store: &'a mut dyn VarStore) -> BootManager<'a> {
        BootManager { store }
    }

    /// The underlying store.
    pub fn store(&mut self) -> &mut dyn VarStore {
        self.store
    }

    /// The underlying store, read-only.
    pub fn store_ref(&self) -> &dyn VarStore {
        self.store
    }

    fn get_global(&self, name: &str) -> Result<Option<Vec<u8>>, BootError> {
        Ok(self.store.get(&VarName::global(name))?.map(|v| v.data))
    }

    fn set_global(&mut self, name: &str, data: Vec<u8>) -> Result<bool, BootError> {
        let value = Variable {
            attributes: attributes::BOOT_VARIABLE,
            data,
        };
        Ok(self.store.set(&VarName::global(name), &value)?)
    }

    /// `BootOrder`; an absent variable is an empty order, an odd length is
    /// an error (see [`Self::boot_order_repairable`]).
    pub fn boot_order(&self) -> Result<Vec<u16>, BootError> {
        match self.get_global(BOOT_ORDER)? {
            Some(data) => Ok(boot_vars::decode_boot_order(&data)?),
            None => Ok(Vec::new()),
        }
    }

    /// `BootOrder` as far as it is readable, for self-repair: every whole
    /// entry number (an odd-length value's trailing byte is dropped, as
    /// firmware does) and the problem, if any. An absent variable is an
    /// empty order. Only store errors fail; [`Self::boot_order`] is strict.
    pub fn boot_order_repairable(&self) -> Result<(Vec<u16>, Option<BootVarError>), BootError> {
        Ok(match self.get_global(BOOT_ORDER)? {
            Some(data) => boot_vars::decode_boot_order_lenient(&data),
            None => (Vec::new(), None),
        })
    }

    /// Writes `BootOrder` (nothing is written when it is unchanged).
    pub fn set_boot_order(&mut self, order: &[u16]) -> Result<bool, BootError> {
        self.set_global(BOOT_ORDER, boot_vars::encode_boot_order(order))
    }

    /// `BootNext`; a value that is not exactly 2 bytes is an error (see
    /// [`Self::boot_next_lenient`]).
    pub fn boot_next(&self) -> Result<Option<u16>, BootError> {
        self.get_global(BOOT_NEXT)?
            .map(|d| boot_vars::decode_u16(BOOT_NEXT, &d))
            .transpose()
            .map_err(Into::into)
    }

    /// `BootNext` for self-repair: a malformed value (not 2 bytes) is `None`
    /// with the problem, to be cleared. Only store errors fail;
    /// [`Self::boot_next`] is strict.
    pub fn boot_next_lenient(&self) -> Result<(Option<u16>, Option<BootVarError>), BootError> {
        Ok(match self.get_global(BOOT_NEXT)? {
            None => (None, None),
            Some(data) => match boot_vars::decode_u16(BOOT_NEXT, &data) {
                Ok(n) => (Some(n), None),
                Err(e) => (None, Some(e)),
            },
        })
    }

    /// Asks the firmware to boot entry `number` once, on the next boot.
    pub fn set_boot_next(&mut self, number: u16) -> Result<bool, BootError> {
        self.set_global(BOOT_NEXT, number.to_le_bytes().to_vec())
    }

    pub fn clear_boot_next(&mut self) -> Result<bool, BootError> {
        Ok(self.store.delete(&VarName::global(BOOT_NEXT))?)
    }

    /// The entry the firmware booted this time (volatile; absent offline).
    pub fn boot_current(&self) -> Result<Option<u16>, BootError> {
        self.get_global(BOOT_CURRENT)?
            .map(|d| boot_vars::decode_u16(BOOT_CURRENT, &d))
            .transpose()
            .map_err(Into::into)
    }

    /// The store's name of entry `number` (`Boot####`, upper-case hex),
    /// if it exists.
    fn name_of(&self, number: u16) -> Result<Option<VarName>, BootError> {
        let wanted = VarName::global(boot_vars::boot_entry_name(number));
        Ok(self.store.list()?.into_iter().find(|n| *n == wanted))
    }

    /// Non-compliant look-alike names (`Boot001a`), by name.
    fn noncompliant(&self) -> Result<Vec<NonCompliantEntry>, BootError> {
        let mut found: Vec<NonCompliantEntry> = self
            .store
            .list()?
            .into_iter()
            .filter(|n| {
                n.vendor == boot_vars::EFI_GLOBAL_VARIABLE
                    && boot_vars::is_noncompliant_boot_entry_name(&n.name)
            })
            .map(|n| NonCompliantEntry {
                name: n.name,
                reason: "lower-case hex digits: firmware only boots Boot#### with upper-case hex"
                    .to_string(),
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup();
        Ok(found)
    }

    /// Numbers of every compliant `Boot####` variable, decodable or not,
    /// ascending. Non-compliant names such as `Boot001a` are not included.
    pub fn entry_numbers(&self) -> Result<Vec<u16>, BootError> {
        self.global_numbers(boot_vars::parse_boot_entry_name)
    }

    /// The numbers `parse` finds in the names of global variables, ascending
    /// and without repeats.
    fn global_numbers(&self, parse: fn(&str) -> Option<u16>) -> Result<Vec<u16>, BootError> {
        let mut numbers: Vec<u16> = self
            .store
            .list()?
            .iter()
            .filter(|n| n.vendor == boot_vars::EFI_GLOBAL_VARIABLE)
            .filter_map(|n| parse(&n.name))
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        Ok(numbers)
    }

    /// Entry `number`, or `None` if it does not exist.
    pub fn entry(&self, number: u16) -> Result<Option<LoadOption>, BootError> {
        let Some(name) = self.name_of(number)? else {
            return Ok(None);
        };
        let Some(var) = self.store.get(&name)? else {
            return Ok(None);
        };
        LoadOption::decode(&var.data)
            .map(Some)
            .map_err(|source| BootError::Entry { number, source })
    }

    /// Every entry. Those that fail to decode are listed in `skipped`, and
    /// look-alike names in `noncompliant`; neither is logged here (this is
    /// called many times per command), so callers report them once.
    pub fn entries(&self) -> Result<BootEntries, BootError> {
        let mut all = BootEntries {
            noncompliant: self.noncompliant()?,
            ..BootEntries::default()
        };
        for number in self.entry_numbers()? {
            match self.entry(number) {
                Ok(Some(option)) => all.entries.push(BootEntry { number, option }),
                Ok(None) => {}
                Err(BootError::Entry { number, source }) => {
                    all.skipped.push(SkippedEntry {
                        number,
                        reason: source.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }

    /// Writes `option` as entry `number` (creating or replacing it).
    ///
    /// Refuses ([`BootError::NameClash`]) to create `Boot####` when a
    /// non-compliant variable of that name in another case exists.
    pub fn set_entry(&mut self, number: u16, option: &LoadOption) -> Result<bool, BootError> {
        let data = option
            .encode()
            .map_err(|source| BootError::Entry { number, source })?;
        let name = match self.name_of(number)? {
            Some(name) => name,
            None => {
                if let Some(existing) = self.clashing_name(number)? {
                    return Err(BootError::NameClash { number, existing });
                }
                VarName::global(boot_vars::boot_entry_name(number))
            }
        };
        let value = Variable {
            attributes: attributes::BOOT_VARIABLE,
            data,
        };
        Ok(self.store.set(&name, &value)?)
    }

    /// A non-compliant name that `Boot{number:04X}` would clash with.
    fn clashing_name(&self, number: u16) -> Result<Option<String>, BootError> {
        Ok(self.store.list()?.into_iter().find_map(|n| {
            (n.vendor == boot_vars::EFI_GLOBAL_VARIABLE
                && boot_vars::is_noncompliant_boot_entry_name(&n.name)
                && boot_vars::boot_entry_number_any_case(&n.name) == Some(number))
            .then_some(n.name)
        }))
    }

    /// Adds `option` under the lowest `Boot####` number not used by any
    /// entry, even an undecodable one, nor by a non-compliant name in
    /// another case (`Boot001a` keeps 0x1A taken). BootOrder is not changed.
    pub fn add_entry(&mut self, option: &LoadOption) -> Result<u16, BootError> {
        let used = self.global_numbers(boot_vars::boot_entry_number_any_case)?;
        let number = (0..=u16::MAX)
            .find(|n| used.binary_search(n).is_err())
            .ok_or(BootError::NoFreeNumber)?;
        self.set_entry(number, option)?;
        Ok(number)
    }

    /// Deletes entry `number` (`Boot####` exactly; a non-compliant name in
    /// another case is never deleted). BootOrder is not changed.
    pub fn delete_entry(&mut self, number: u16) -> Result<bool, BootError> {
        match self.name_of(number)? {
            Some(name) => Ok(self.store.delete(&name)?),
            None => Ok(false),
        }
    }

    /// Sets or clears the ACTIVE attribute of entry `number`, keeping
    /// everything else byte for byte. Returns `Ok(false)` when the entry is
    /// missing or already in that state.
    pub fn set_entry_active(&mut self, number: u16, active: bool) -> Result<bool, BootError> {
        let Some(mut option) = self.entry(number)? else {
            return Ok(false);
        };
        option.attributes = option.attributes.with_active(active);
        self.set_entry(number, &option)
    }

    /// Entries that boot `file_path` on the GPT partition `esp_guid`
    /// (path compared case-insensitively, either slash), by number.
    pub fn find_entries(&self, esp_guid: Uuid, file_path: &str) -> Result<Vec<u16>, BootError> {
        Ok(self
            .entries()?
            .entries
            .into_iter()
            .filter(|e| entry_boots(&e.option, esp_guid, file_path))
            .map(|e| e.number)
            .collect())
    }

    /// Rearranges BootOrder so that `ours` appear in this order in the places
    /// our entries held, every other entry staying where it was (see
    /// [`arrange_ours`]).
    pub fn arrange_boot_order(&mut self, ours: &[u16]) -> Result<bool, BootError> {
        let order = self.boot_order()?;
        self.set_boot_order(&arrange_ours(&order, ours))
    }

    /// Removes `number` from BootOrder (all occurrences).
    pub fn remove_from_boot_order(&mut self, number: u16) -> Result<bool, BootError> {
        let order = self.boot_order()?;
        let kept: Vec<u16> = order.iter().copied().filter(|&n| n != number).collect();
        if kept.len() == order.len() {
            return Ok(false);
        }
        self.set_boot_order(&kept)
    }
}

/// Whether `option` boots `file_path` on the GPT partition `esp_guid`.
pub fn entry_boots(option: &LoadOption, esp_guid: Uuid, file_path: &str) -> bool {
    let Some(path) = option.boot_path() else {
        return false;
    };
    path.hard_drive().and_then(|hd| hd.gpt_guid()) == Some(esp_guid)
        && path
            .file_path()
            .is_some_and(|p| same_file_path(&p, file_path))
}

/// A new BootOrder in which the entries of `ours` appear in exactly that
/// order, filling the positions that any of them held before; foreign
/// entries keep their positions and relative order. Entries of `ours` that
/// were not in the order go right after the last of our positions, or to
/// the front when none of ours was there.
pub fn arrange_ours(order: &[u16], ours: &[u16]) -> Vec<u16> {
    let mut wanted: Vec<u16> = Vec::with_capacity(ours.len());
    for &n in ours {
        if !wanted.contains(&n) {
            wanted.push(n);
        }
    }
    let positions = order.iter().filter(|n| wanted.contains(n)).count();
    if positions == 0 {
        return wanted.iter().chain(order).copied().collect();
    }
    let mut out = Vec::with_capacity(order.len() + wanted.len());
    let mut next = wanted.iter();
    let mut seen = 0;
    for &n in order {
        if !wanted.contains(&n) {
            out.push(n);
            continue;
        }
        seen += 1;
        if seen < positions {
            out.extend(next.next());
        } else {
            out.extend(next.by_ref());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_path::{DevicePath, HardDrive, PartitionSignature};
    use crate::store::MemoryStore;
    use proptest::prelude::*;

    const ESP: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);

    fn abkit_option(slot: char) -> LoadOption {
        LoadOption::new(
            format!("abkit slot {slot}"),
            DevicePath::hard_drive_file(
                HardDrive {
                    partition_number: 1,
                    partition_start: 2048,
                    partition_size: 262144,
                    signature: PartitionSignature::Gpt(ESP),
                },
                &format!("\\EFI\\abkit\\boot-{}.efi", slot.to_ascii_lowercase()),
            ),
        )
    }

    #[test]
    fn add_uses_the_lowest_free_number_and_find_matches_guid_and_path() {
        let mut store = MemoryStore::new();
        let mut bm = BootManager::new(&mut store);
        assert_eq!(bm.add_entry(&abkit_option('A')).unwrap(), 0);
        assert_eq!(bm.add_entry(&abkit_option('B')).unwrap(), 1);
        assert_eq!(bm.add_entry(&abkit_option('A')).unwrap(), 2);
        bm.delete_entry(1).unwrap();
        assert_eq!(bm.add_entry(&abkit_option('B')).unwrap(), 1);
        assert_eq!(
            bm.find_entries(ESP, "/efi/ABKIT/boot-a.efi").unwrap(),
            vec![0, 2]
        );
        assert_eq!(
            bm.find_entries(ESP, "\\EFI\\abkit\\boot-b.efi").unwrap(),
            vec![1]
        );
        assert!(
            bm.find_entries(Uuid::nil(), "\\EFI\\abkit\\boot-b.efi")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn lower_case_entry_names_are_not_entries_and_numbers_not_reused() {
        let mut store = MemoryStore::new();
        let data = abkit_option('B').encode().unwrap();
        let foreign = Variable {
            attributes: 7,
            data,
        };
        store.set(&VarName::global("Boot000a"), &foreign).unwrap();
        let mut bm = BootManager::new(&mut store);
        // Firmware never boots Boot000a: it is not entry 10, nor any entry.
        assert_eq!(bm.entry(10).unwrap(), None);
        assert!(bm.entries().unwrap().entries.is_empty());
        assert!(bm.entries().unwrap().skipped.is_empty());
        let noncompliant = bm.entries().unwrap().noncompliant;
        assert_eq!(noncompliant.len(), 1);
        assert_eq!(noncompliant[0].name, "Boot000a");
        assert!(
            noncompliant[0].reason.contains("upper-case"),
            "{noncompliant:?}"
        );
        assert!(
            bm.find_entries(ESP, "\\EFI\\abkit\\boot-b.efi")
                .unwrap()
                .is_empty()
        );
        assert_eq!(bm.entry_numbers().unwrap(), Vec::<u16>::new());
        // Never changed or deleted through its number.
        assert!(!bm.set_entry_active(10, false).unwrap());
        assert!(!bm.delete_entry(10).unwrap());
        assert!(matches!(
            bm.set_entry(10, &abkit_option('A')),
            Err(BootError::NameClash { number: 10, existing }) if existing == "Boot000a"
        ));
        // New entries skip 10: Boot000A would clash on a case-insensitive store.
        let added: Vec<u16> = (0..11)
            .map(|_| bm.add_entry(&abkit_option('A')).unwrap())
            .collect();
        assert_eq!(added, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
        assert_eq!(
            bm.find_entries(ESP, "\\EFI\\abkit\\boot-a.efi").unwrap(),
            added
        );
        let names: Vec<String> = store.list().unwrap().into_iter().map(|n| n.name).collect();
        assert!(!names.iter().any(|n| n == "Boot000A"), "{names:?}");
        assert_eq!(
            store.get(&VarName::global("Boot000a")).unwrap(),
            Some(foreign)
        );
    }

    #[test]
    fn broken_entries_are_skipped_with_a_reason() {
        let mut store = MemoryStore::new();
        store
            .set(
                &VarName::global("Boot0005"),
                &Variable {
                    attributes: 7,
                    data: vec![1, 0, 0],
                },
            )
            .unwrap();
        let mut bm = BootManager::new(&mut store);
        bm.add_entry(&abkit_option('A')).unwrap();
        let all = bm.entries().unwrap();
        assert_eq!(all.entries.len(), 1);
        assert_eq!(all.skipped.len(), 1);
        assert_eq!(all.skipped[0].number, 5);
        assert!(
            all.skipped[0].reason.contains("shorter than"),
            "{:?}",
            all.skipped
        );
        // A broken entry's number is still taken.
        assert_eq!(bm.entry_numbers().unwrap(), vec![0, 5]);
    }

    /// Records log messages with the thread that logged them, so that a
    /// test sees only its own (tests run in parallel in one process).
    struct Recorder;
    static RECORDER: Recorder = Recorder;
    static RECORDS: std::sync::Mutex<Vec<(std::thread::ThreadId, String)>> =
        std::sync::Mutex::new(Vec::new());

    impl log::Log for Recorder {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let line = format!("{} {}", record.level(), record.args());
            if let Ok(mut records) = RECORDS.lock() {
                records.push((std::thread::current().id(), line));
            }
        }
        fn flush(&self) {}
    }

    /// Starts recording (once per process).
    fn record_logs() {
        if log::set_logger(&RECORDER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
    }

    /// What this thread logged.
    fn logged_here() -> Vec<String> {
        let me = std::thread::current().id();
        RECORDS
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == me)
            .map(|(_, l)| l.clone())
            .collect()
    }

    #[test]
    fn listing_entries_does_not_log_callers_report_once() {
        record_logs();
        let mut store = MemoryStore::new();
        for name in ["Boot0005", "Boot000a"] {
            let value = Variable {
                attributes: 7,
                data: vec![1, 0, 0],
            };
            store.set(&VarName::global(name), &value).unwrap();
        }
        let mut bm = BootManager::new(&mut store);
        bm.add_entry(&abkit_option('A')).unwrap();
        // What one engine command does: list several times.
        for _ in 0..4 {
            let all = bm.entries().unwrap();
            assert_eq!(all.skipped.len(), 1);
            assert_eq!(all.noncompliant.len(), 1);
            bm.find_entries(ESP, "\\EFI\\abkit\\boot-a.efi").unwrap();
        }
        assert_eq!(logged_here(), Vec::<String>::new());
    }

    #[test]
    fn boot_next_and_order_variables() {
        let mut store = MemoryStore::new();
        let mut bm = BootManager::new(&mut store);
        assert_eq!(bm.boot_next().unwrap(), None);
        assert_eq!(bm.boot_order().unwrap(), Vec::<u16>::new());
        assert!(bm.set_boot_next(0x10).unwrap());
        assert!(
            !bm.set_boot_next(0x10).unwrap(),
            "unchanged BootNext is not rewritten"
        );
        assert_eq!(bm.boot_next().unwrap(), Some(0x10));
        assert!(bm.clear_boot_next().unwrap());
        assert!(!bm.clear_boot_next().unwrap());
        bm.set_boot_order(&[3, 1, 2]).unwrap();
        assert_eq!(bm.boot_order().unwrap(), vec![3, 1, 2]);
        assert!(bm.remove_from_boot_order(1).unwrap());
        assert_eq!(bm.boot_order().unwrap(), vec![3, 2]);
        let writes = store.write_count();
        let mut bm = BootManager::new(&mut store);
        bm.set_boot_order(&[3, 2]).unwrap();
        assert_eq!(store.write_count(), writes);
        store
            .set(
                &VarName::global("BootNext"),
                &Variable {
                    attributes: 7,
                    data: vec![1, 2, 3],
                },
            )
            .unwrap();
        let bm = BootManager::new(&mut store);
        assert!(matches!(
            bm.boot_next(),
            Err(BootError::Var(BootVarError::NotU16 { len: 3, .. }))
        ));
    }

    #[test]
    fn malformed_boot_order_and_boot_next_are_readable_for_repair() {
        let mut store = MemoryStore::new();
        let bm = BootManager::new(&mut store);
        assert_eq!(bm.boot_order_repairable().unwrap(), (vec![], None));
        assert_eq!(bm.boot_next_lenient().unwrap(), (None, None));
        for (name, data) in [
            ("BootOrder", vec![3, 0, 1, 0, 4]),
            ("BootNext", vec![1, 2, 3]),
        ] {
            let value = Variable {
                attributes: 7,
                data,
            };
            store.set(&VarName::global(name), &value).unwrap();
        }
        let mut bm = BootManager::new(&mut store);
        // The strict readers still refuse.
        assert!(matches!(
            bm.boot_order(),
            Err(BootError::Var(BootVarError::OddArray { len: 5, .. }))
        ));
        assert!(matches!(
            bm.boot_next(),
            Err(BootError::Var(BootVarError::NotU16 { len: 3, .. }))
        ));
        // The lenient ones give what is readable and the problem.
        assert_eq!(
            bm.boot_order_repairable().unwrap(),
            (
                vec![3, 1],
                Some(BootVarError::OddArray {
                    name: BOOT_ORDER,
                    len: 5
                })
            )
        );
        assert_eq!(
            bm.boot_next_lenient().unwrap(),
            (
                None,
                Some(BootVarError::NotU16 {
                    name: BOOT_NEXT,
                    len: 3
                })
            )
        );
        // Repair as self-repair does: rewrite the order, drop BootNext.
        let (order, _) = bm.boot_order_repairable().unwrap();
        assert!(bm.set_boot_order(&order).unwrap());
        assert!(bm.clear_boot_next().unwrap());
        assert_eq!(bm.boot_order().unwrap(), vec![3, 1]);
        assert_eq!(bm.boot_order_repairable().unwrap(), (vec![3, 1], None));
        assert_eq!(bm.boot_next().unwrap(), None);
        bm.set_boot_next(7).unwrap();
        assert_eq!(bm.boot_next_lenient().unwrap(), (Some(7), None));
        assert_eq!(
            store
                .get(&VarName::global("BootOrder"))
                .unwrap()
                .unwrap()
                .data,
            [3, 0, 1, 0]
        );
    }

    #[test]
    fn arranging_keeps_foreign_entries_in_place() {
        // Foreign 7 and 8 stay at positions 0 and 2.
        assert_eq!(arrange_ours(&[7, 1, 8, 2], &[2, 1]), vec![7, 2, 8, 1]);
        // A missing entry of ours goes right after the last of our positions.
        assert_eq!(arrange_ours(&[7, 1, 8], &[2, 1]), vec![7, 2, 1, 8]);
        // None of ours in the order: ours go first.
        assert_eq!(arrange_ours(&[7, 8], &[1, 2]), vec![1, 2, 7, 8]);
        assert_eq!(arrange_ours(&[], &[1]), vec![1]);
        // Duplicates of ours in the order collapse.
        assert_eq!(arrange_ours(&[1, 7, 1, 2], &[2, 1]), vec![2, 7, 1]);
    }

    proptest! {
        #[test]
        fn arrange_ours_properties(
            order in proptest::collection::vec(0u16..12, 0..12),
            ours in proptest::collection::vec(0u16..12, 0..5),
        ) {
            let out = arrange_ours(&order, &ours);
            let mut wanted = ours.clone();
            wanted.dedup();
            let mut dedup = Vec::new();
            for n in &ours { if !dedup.contains(n) { dedup.push(*n); } }
            let foreign = |v: &[u16]| v.iter().copied().filter(|n| !dedup.contains(n)).collect::<Vec<_>>();
            prop_assert_eq!(foreign(&out), foreign(&order));
            let mine: Vec<u16> = out.iter().copied().filter(|n| dedup.contains(n)).collect();
            prop_assert_eq!(mine, dedup.clone());
            // Foreign entries before the first of ours keep their exact index.
            if let Some(first) = order.iter().position(|n| dedup.contains(n)) {
                prop_assert_eq!(&out[..first], &order[..first]);
            }
        }
    }
}
