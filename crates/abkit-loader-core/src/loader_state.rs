//! The loader-state file: abkit's A/B state on the ESP for firmware that
//! ignores `BootNext` (issue 18's state-file boot control).
//!
//! 16 bytes at `\EFI\abkit\loader-state` (layout in docs/loader.md): the
//! committed slot, an optional trial slot and the trial's attempts left.
//! The loader, started as the pre-loader, decides with [`LoaderState::next_boot`]
//! and writes the decremented state back *before* it starts the trial
//! ([`store`]: a new file, then a rename, so a power cut leaves the old or
//! the new state, never a torn one). The host writes it the same way. The
//! same code runs in the loader, the host and the tests' firmware model.

use crate::Slot;

/// Where the state lives on the ESP.
pub const STATE_PATH: &str = "\\EFI\\abkit\\loader-state";
/// The name a new state is written under before it is renamed over
/// [`STATE_PATH`] ([`crate::TEMP_SUFFIX`], as for every file abkit writes
/// on the ESP).
pub const STATE_TEMP_PATH: &str = "\\EFI\\abkit\\loader-state.abkit-new";
/// The file's length: every version-1 state is exactly this long.
pub const STATE_LEN: usize = 16;
/// The first four bytes.
pub const STATE_MAGIC: [u8; 4] = *b"abkL";
/// The only layout version readers accept.
pub const STATE_VERSION: u8 = 1;
/// Attempts a trial gets unless the host asks for more.
pub const DEFAULT_TRIES: u8 = 1;

/// What the state file says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoaderState {
    /// The slot that passed its health checks: booted when no trial is left.
    pub committed: Slot,
    /// A slot waiting for its trial boot (none: boot `committed`).
    pub trial: Option<Slot>,
    /// How many more times the trial slot may be started. 0 with a trial
    /// set: every attempt was used up (the trial failed); boot `committed`.
    pub tries_left: u8,
}

/// Why a state file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the loader state is {0} bytes, not {STATE_LEN}")]
    Length(usize),
    #[error("the loader state does not start with the magic `abkL`")]
    Magic,
    #[error("the loader state has version {0}; this loader reads version {STATE_VERSION}")]
    Version(u8),
    #[error("the loader state names slot byte {0:#04x}, not A or B")]
    Slot(u8),
    #[error("the loader state's reserved bytes are not zero")]
    Reserved,
    #[error("the loader state's checksum does not match (damaged)")]
    Checksum,
    #[error("the loader state's trial slot is the committed slot")]
    TrialIsCommitted,
}

/// Which slot to boot now, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootChoice {
    pub slot: Slot,
    pub reason: ChoiceReason,
    /// The state to store before booting `slot` (`None`: unchanged).
    pub store: Option<LoaderState>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChoiceReason {
    /// No trial pending: the committed slot.
    Committed,
    /// A trial attempt; `tries_left` after this one.
    Trial { tries_left: u8 },
    /// The trial used up its attempts: back to the committed slot.
    TriesExhausted,
}

impl LoaderState {
    /// No trial: boot `committed`.
    pub const fn committed(committed: Slot) -> LoaderState {
        LoaderState {
            committed,
            trial: None,
            tries_left: 0,
        }
    }

    /// A trial of `trial` with `tries` attempts, falling back to `committed`.
    pub const fn with_trial(committed: Slot, trial: Slot, tries: u8) -> LoaderState {
        LoaderState {
            committed,
            trial: Some(trial),
            tries_left: tries,
        }
    }

    /// The trial slot if it still has attempts left.
    pub fn pending_trial(&self) -> Option<Slot> {
        self.trial.filter(|_| self.tries_left > 0)
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> [u8; STATE_LEN] {
        let mut b = [0u8; STATE_LEN];
        b[..4].copy_from_slice(&STATE_MAGIC);
        b[4] = STATE_VERSION;
        b[5] = self.committed.letter_byte();
        b[6] = self.trial.map_or(0, Slot::letter_byte);
        b[7] = self.tries_left;
        let crc = crc32(&b[..12]);
        b[12..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses the file's bytes; refuses anything but an exact version-1 state.
    pub fn parse(bytes: &[u8]) -> Result<LoaderState, StateError> {
        if bytes.len() != STATE_LEN {
            return Err(StateError::Length(bytes.len()));
        }
        if bytes[..4] != STATE_MAGIC {
            return Err(StateError::Magic);
        }
        if bytes[4] != STATE_VERSION {
            return Err(StateError::Version(bytes[4]));
        }
        let stored = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        if crc32(&bytes[..12]) != stored {
            return Err(StateError::Checksum);
        }
        if bytes[8..12] != [0; 4] {
            return Err(StateError::Reserved);
        }
        let committed = Slot::from_letter(bytes[5]).ok_or(StateError::Slot(bytes[5]))?;
        let trial = match bytes[6] {
            0 => None,
            b => Some(Slot::from_letter(b).ok_or(StateError::Slot(b))?),
        };
        if trial == Some(committed) {
            return Err(StateError::TrialIsCommitted);
        }
        Ok(LoaderState {
            committed,
            trial,
            tries_left: if trial.is_some() { bytes[7] } else { 0 },
        })
    }

    /// What the pre-loader boots now: the trial slot while it has attempts
    /// left (storing one attempt fewer first), else the committed slot.
    pub fn next_boot(&self) -> BootChoice {
        match self.pending_trial() {
            Some(trial) => {
                let left = self.tries_left - 1;
                BootChoice {
                    slot: trial,
                    reason: ChoiceReason::Trial { tries_left: left },
                    store: Some(LoaderState {
                        tries_left: left,
                        ..*self
                    }),
                }
            }
            None => BootChoice {
                slot: self.committed,
                reason: if self.trial.is_some() {
                    ChoiceReason::TriesExhausted
                } else {
                    ChoiceReason::Committed
                },
                store: None,
            },
        }
    }

    /// What a slot loader started directly (by `BootNext` or the boot menu)
    /// stores: one attempt fewer when it is the trial slot (boot counting,
    /// so the host can tell the trial loader ran), `None` otherwise.
    pub fn counted_by(&self, slot: Slot) -> Option<LoaderState> {
        (self.pending_trial() == Some(slot)).then(|| LoaderState {
            tries_left: self.tries_left - 1,
            ..*self
        })
    }
}

/// The files a state is read from and written to: the ESP through the
/// firmware's file protocol (loader), abkit's FAT code (host), or a test's.
pub trait StateFiles {
    type Error;
    /// Reads up to `buf.len()` bytes of `path`; `None` if it does not exist.
    fn read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, Self::Error>;
    /// Creates or truncates `path`, writes `bytes` and flushes it.
    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Deletes `path`; `false` if it did not exist.
    fn remove(&mut self, path: &str) -> Result<bool, Self::Error>;
    /// Renames `from` to `to` (which does not exist: FAT drivers refuse to
    /// rename over a file).
    fn rename(&mut self, from: &str, to: &str) -> Result<(), Self::Error>;
}

/// Reading or writing the state failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The file system said no.
    Io(E),
    /// A file is there but does not parse.
    Bad(StateError),
}

impl<E: core::fmt::Display> core::fmt::Display for StoreError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "{e}"),
            StoreError::Bad(e) => write!(f, "{e}"),
        }
    }
}

/// Reads the state: [`STATE_PATH`], or, when it is missing, the new file a
/// writer was about to rename into place ([`STATE_TEMP_PATH`]: it was
/// complete and flushed before the old file was removed). `None`: no state
/// file (the machine does not use the state-file mode).
pub fn load<F: StateFiles>(fs: &mut F) -> Result<Option<LoaderState>, StoreError<F::Error>> {
    let mut buf = [0u8; STATE_LEN + 1];
    for path in [STATE_PATH, STATE_TEMP_PATH] {
        if let Some(n) = fs.read(path, &mut buf).map_err(StoreError::Io)? {
            return LoaderState::parse(&buf[..n])
                .map(Some)
                .map_err(StoreError::Bad);
        }
    }
    Ok(None)
}

/// Stores `state` atomically on FAT: writes [`STATE_TEMP_PATH`] (flushed),
/// removes [`STATE_PATH`], renames the new file into place. A power cut at
/// any step leaves a state [`load`] reads as the old or the new one.
pub fn store<F: StateFiles>(fs: &mut F, state: &LoaderState) -> Result<(), F::Error> {
    fs.write(STATE_TEMP_PATH, &state.to_bytes())?;
    fs.remove(STATE_PATH)?;
    fs.rename(STATE_TEMP_PATH, STATE_PATH)
}

/// Removes the state file (and a leftover new one): the machine goes back
/// to `BootNext` boot control.
pub fn remove<F: StateFiles>(fs: &mut F) -> Result<bool, F::Error> {
    let a = fs.remove(STATE_PATH)?;
    let b = fs.remove(STATE_TEMP_PATH)?;
    Ok(a || b)
}

/// CRC-32 (IEEE 802.3, the zlib/PNG one), bit by bit: 12 bytes need no table.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn layout_is_pinned() {
        let s = LoaderState::with_trial(Slot::A, Slot::B, 3);
        let b = s.to_bytes();
        assert_eq!(&b[..12], b"abkL\x01AB\x03\0\0\0\0");
        assert_eq!(
            u32::from_le_bytes(b[12..].try_into().unwrap()),
            crc32(&b[..12])
        );
        assert_eq!(LoaderState::parse(&b), Ok(s));
        let c = LoaderState::committed(Slot::B);
        assert_eq!(&c.to_bytes()[..8], b"abkL\x01B\0\0");
        assert_eq!(LoaderState::parse(&c.to_bytes()), Ok(c));
    }

    #[test]
    fn every_damage_is_named() {
        let good = LoaderState::with_trial(Slot::A, Slot::B, 1).to_bytes();
        assert_eq!(LoaderState::parse(&good[..15]), Err(StateError::Length(15)));
        assert_eq!(LoaderState::parse(&[0; 17]), Err(StateError::Length(17)));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(LoaderState::parse(&b), Err(StateError::Magic));
        let fix = |mut b: [u8; 16]| {
            let crc = crc32(&b[..12]);
            b[12..].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let mut b = good;
        b[4] = 2;
        assert_eq!(LoaderState::parse(&fix(b)), Err(StateError::Version(2)));
        let mut b = good;
        b[5] = b'C';
        assert_eq!(LoaderState::parse(&fix(b)), Err(StateError::Slot(b'C')));
        let mut b = good;
        b[9] = 1;
        assert_eq!(LoaderState::parse(&fix(b)), Err(StateError::Reserved));
        let mut b = good;
        b[6] = b'A';
        assert_eq!(
            LoaderState::parse(&fix(b)),
            Err(StateError::TrialIsCommitted)
        );
        // Any single flipped bit is caught.
        for i in 0..16 * 8 {
            let mut b = good;
            b[i / 8] ^= 1 << (i % 8);
            assert!(LoaderState::parse(&b).is_err(), "bit {i}");
        }
    }

    #[test]
    fn trials_count_down_then_fall_back() {
        let mut s = LoaderState::with_trial(Slot::A, Slot::B, 2);
        let c = s.next_boot();
        assert_eq!(
            (c.slot, c.reason),
            (Slot::B, ChoiceReason::Trial { tries_left: 1 })
        );
        s = c.store.unwrap();
        let c = s.next_boot();
        assert_eq!(c.slot, Slot::B);
        s = c.store.unwrap();
        let c = s.next_boot();
        assert_eq!(
            (c.slot, c.reason, c.store),
            (Slot::A, ChoiceReason::TriesExhausted, None)
        );
        let c = LoaderState::committed(Slot::B).next_boot();
        assert_eq!(
            (c.slot, c.reason, c.store),
            (Slot::B, ChoiceReason::Committed, None)
        );
        // A slot loader counts only its own pending trial.
        let s = LoaderState::with_trial(Slot::A, Slot::B, 1);
        assert_eq!(s.counted_by(Slot::A), None);
        assert_eq!(s.counted_by(Slot::B).unwrap().tries_left, 0);
        assert_eq!(s.counted_by(Slot::B).unwrap().counted_by(Slot::B), None);
    }

    /// A FAT-like directory that loses power at mutation `cut`.
    #[derive(Default, Clone)]
    struct Files {
        files: BTreeMap<String, Vec<u8>>,
        mutations: usize,
        cut: Option<usize>,
    }

    impl Files {
        fn tick(&mut self) -> Result<(), &'static str> {
            self.mutations += 1;
            match self.cut {
                Some(k) if self.mutations >= k => Err("power cut"),
                _ => Ok(()),
            }
        }
    }

    impl StateFiles for Files {
        type Error = &'static str;
        fn read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>, &'static str> {
            Ok(self.files.get(path).map(|f| {
                let n = f.len().min(buf.len());
                buf[..n].copy_from_slice(&f[..n]);
                n
            }))
        }
        fn write(&mut self, path: &str, bytes: &[u8]) -> Result<(), &'static str> {
            self.tick()?;
            self.files.insert(path.into(), bytes.to_vec());
            Ok(())
        }
        fn remove(&mut self, path: &str) -> Result<bool, &'static str> {
            self.tick()?;
            Ok(self.files.remove(path).is_some())
        }
        fn rename(&mut self, from: &str, to: &str) -> Result<(), &'static str> {
            self.tick()?;
            if self.files.contains_key(to) {
                return Err("FAT refuses to rename over a file");
            }
            let f = self.files.remove(from).ok_or("no such file")?;
            self.files.insert(to.into(), f);
            Ok(())
        }
    }

    #[test]
    fn a_power_cut_at_every_step_leaves_the_old_or_the_new_state() {
        let old = LoaderState::with_trial(Slot::A, Slot::B, 1);
        let new = old.next_boot().store.unwrap();
        let mut base = Files::default();
        store(&mut base, &old).unwrap();
        // A stale, torn new file from an earlier cut must not matter.
        base.files.insert(STATE_TEMP_PATH.into(), vec![0xAA; 5]);
        let steps = {
            let mut f = base.clone();
            store(&mut f, &new).unwrap();
            assert_eq!(load(&mut f), Ok(Some(new)));
            assert!(!f.files.contains_key(STATE_TEMP_PATH));
            f.mutations - base.mutations
        };
        assert_eq!(steps, 3);
        for k in 1..=steps {
            let mut f = base.clone();
            f.cut = Some(base.mutations + k);
            assert!(store(&mut f, &new).is_err());
            let seen = load(&mut f).unwrap().unwrap();
            assert!(seen == old || seen == new, "cut at step {k}: {seen:?}");
            // The next writer (the host or the next boot) completes.
            f.cut = None;
            store(&mut f, &new).unwrap();
            assert_eq!(load(&mut f), Ok(Some(new)));
        }
    }

    #[test]
    fn no_file_is_no_state_and_garbage_is_named() {
        let mut f = Files::default();
        assert_eq!(load(&mut f), Ok(None));
        f.files.insert(STATE_PATH.into(), b"garbage".to_vec());
        assert_eq!(load(&mut f), Err(StoreError::Bad(StateError::Length(7))));
        assert!(remove(&mut f).unwrap());
        assert_eq!(load(&mut f), Ok(None));
    }
}
