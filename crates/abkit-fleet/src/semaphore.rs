//! The FleetLock reboot semaphore, kept in etcd: one key per group holding
//! `{"total_slots": N, "holders": [machine ids]}`.
//!
//! Every change is read → modify → compare-and-swap on the key's
//! `mod_revision`, retried on conflict, so any number of FleetLock servers
//! (and operators releasing a stuck holder) can act on one group at once
//! and a restarted server loses nothing: the server itself keeps no state.
//! Locking is recursive (a holder asking again keeps its one slot) and
//! unlocking a slot one does not hold succeeds, as the protocol says.

use serde::{Deserialize, Serialize};

use crate::error::{FleetError, Result};
use crate::store::Store;

/// Where the groups' semaphores live.
pub const PREFIX: &str = "abkit/fleetlock/";
/// How often a compare-and-swap is retried before giving up.
const MAX_TRIES: u32 = 200;

/// The semaphore of one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    pub total_slots: u64,
    pub holders: Vec<String>,
}

/// What a lock request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The machine holds a slot (now, or already did).
    Granted,
    /// Every slot is held by others.
    Full(Semaphore),
}

/// The etcd key of `group`'s semaphore.
pub fn key(group: &str) -> String {
    format!("{PREFIX}{group}")
}

/// A group name as Zincati accepts it: `[a-zA-Z0-9.-]+`.
pub fn check_group(group: &str) -> Result<()> {
    if group.is_empty()
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(FleetError::BadInput(format!(
            "group {group:?}: must be letters, digits, '.' and '-'"
        )));
    }
    Ok(())
}

/// A machine id: printable, no spaces, at most 128 bytes.
pub fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FleetError::BadInput(format!(
            "machine id {id:?}: must be 1 to 128 printable characters without spaces"
        )));
    }
    Ok(())
}

/// Reads `group`'s semaphore and its revision (`None`: never used).
pub fn read(store: &Store, group: &str) -> Result<Option<(Semaphore, i64)>> {
    let key = key(group);
    match store.get(&key)? {
        None => Ok(None),
        Some(v) => {
            let s: Semaphore =
                serde_json::from_slice(&v.value).map_err(|e| FleetError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })?;
            Ok(Some((s, v.mod_revision)))
        }
    }
}

/// Every group's semaphore, by group name.
pub fn list(store: &Store) -> Result<Vec<(String, Semaphore)>> {
    let (_, items) = store.list(PREFIX)?;
    items
        .into_iter()
        .map(|(k, v)| {
            let s = serde_json::from_slice(&v.value).map_err(|e| FleetError::Corrupt {
                key: k.clone(),
                message: e.to_string(),
            })?;
            Ok((k[PREFIX.len()..].to_string(), s))
        })
        .collect()
}

/// Applies `change` to `group`'s semaphore (a fresh one with
/// `default_slots` if none exists) with compare-and-swap until it sticks.
/// `change` returns `None` to leave the semaphore as it is.
fn update<T>(
    store: &Store,
    group: &str,
    default_slots: u64,
    what: &str,
    mut change: impl FnMut(&mut Semaphore) -> (Option<()>, T),
) -> Result<T> {
    check_group(group)?;
    let key = key(group);
    for _ in 0..MAX_TRIES {
        let (mut sem, rev) = read(store, group)?.unwrap_or((
            Semaphore {
                total_slots: default_slots,
                holders: Vec::new(),
            },
            0,
        ));
        let (write, out) = change(&mut sem);
        if write.is_none() {
            return Ok(out);
        }
        let bytes = serde_json::to_vec(&sem).expect("a semaphore serializes");
        if store.cas(&key, rev, &bytes)? {
            return Ok(out);
        }
        log::debug!("fleetlock {group}: {what} lost a race; reading again");
    }
    Err(FleetError::Contended {
        what: format!("{what} in group {group}"),
        tries: MAX_TRIES,
    })
}

/// FleetLock's `RecursiveLock`: a slot for `id` in `group`, if one is free.
pub fn lock(store: &Store, group: &str, id: &str, default_slots: u64) -> Result<LockOutcome> {
    check_id(id)?;
    update(store, group, default_slots, "lock", |sem| {
        if sem.holders.iter().any(|h| h == id) {
            return (None, LockOutcome::Granted);
        }
        if (sem.holders.len() as u64) < sem.total_slots {
            sem.holders.push(id.to_string());
            return (Some(()), LockOutcome::Granted);
        }
        (None, LockOutcome::Full(sem.clone()))
    })
}

/// FleetLock's `UnlockIfHeld`; also the operator's release of a stuck
/// holder. Returns whether `id` held a slot.
pub fn unlock(store: &Store, group: &str, id: &str) -> Result<bool> {
    check_id(id)?;
    check_group(group)?;
    if read(store, group)?.is_none() {
        return Ok(false);
    }
    update(store, group, 0, "unlock", |sem| {
        let before = sem.holders.len();
        sem.holders.retain(|h| h != id);
        if sem.holders.len() == before {
            (None, false)
        } else {
            (Some(()), true)
        }
    })
}

/// Sets how many machines of `group` may hold a slot at once (holders
/// beyond a lowered count keep theirs until they unlock).
pub fn set_slots(store: &Store, group: &str, slots: u64) -> Result<Semaphore> {
    update(store, group, slots, "set slots", |sem| {
        let write = (sem.total_slots != slots).then_some(());
        sem.total_slots = slots;
        if write.is_none() && sem.holders.is_empty() {
            // A group never used before: write it so status shows it.
            return (Some(()), sem.clone());
        }
        (write, sem.clone())
    })
}
