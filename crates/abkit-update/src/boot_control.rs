//! How a machine asks its firmware for a trial boot (issue 18), and the
//! files that say so on its ESP: the operator's choice and what is in use
//! (`\EFI\abkit\boot-control.json`), and the loader-state file the
//! pre-loader reads (`\EFI\abkit\loader-state`, layout in
//! `abkit_loader_core::loader_state`).
//!
//! Only [`crate::boot_policy`] writes either on the host (and the tests'
//! firmware model, playing the loader); this module holds their types, reads
//! them, and offers the locked entry points `configure` and `observe`.

use abkit_loader_core::loader_state::{self, LoaderState, StateFiles};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::boot_policy::{self, Observation};
use crate::machine::{EspFiles, Machine, write_atomically};
use crate::{Result, Slot, UpdateError};

/// The record of the machine's boot control.
pub const CONTROL_PATH: &str = "\\EFI\\abkit\\boot-control.json";

/// What the operator chose (`--boot-control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum BootControl {
    /// The seed's way: `BootNext` for a trial, no pre-loader.
    #[default]
    #[serde(rename = "bootnext")]
    BootNext,
    /// The pre-loader and the loader-state file, for firmware that ignores
    /// `BootNext`.
    #[serde(rename = "state-file")]
    StateFile,
    /// `BootNext` until a trial reboot shows the firmware ignores it, then
    /// the state file.
    #[serde(rename = "auto")]
    Auto,
}

impl BootControl {
    pub fn name(self) -> &'static str {
        match self {
            BootControl::BootNext => "bootnext",
            BootControl::StateFile => "state-file",
            BootControl::Auto => "auto",
        }
    }

    /// Parses `bootnext`, `state-file` or `auto`.
    pub fn parse(text: &str) -> Option<BootControl> {
        [
            BootControl::BootNext,
            BootControl::StateFile,
            BootControl::Auto,
        ]
        .into_iter()
        .find(|m| m.name() == text)
    }
}

impl std::fmt::Display for BootControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The mechanism in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Mechanism {
    #[default]
    #[serde(rename = "bootnext")]
    BootNext,
    #[serde(rename = "state-file")]
    StateFile,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::BootNext => "bootnext",
            Mechanism::StateFile => "state-file",
        }
    }
}

/// A trial armed by `BootNext` under `auto`: what the next boot must show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The trial slot, `A` or `B`.
    pub slot: char,
    /// Its entry, which BootNext named.
    pub entry: u16,
    /// The Linux boot id of the boot that armed it (the check waits for
    /// another boot).
    pub boot_id: String,
    /// The trial attempts the state file held when it was armed.
    pub tries: u8,
}

/// `\EFI\abkit\boot-control.json`. No file: `bootnext`, as the seed.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    /// What the operator chose.
    pub configured: BootControl,
    /// What is in use.
    pub active: Mechanism,
    /// Why `active` is what it is (the auto switch's evidence, or the
    /// operator's choice).
    pub reason: Option<String>,
    /// When `active` last changed (Unix seconds).
    pub changed_at: Option<u64>,
    /// `auto`: the `BootNext` trial whose reboot is still to be checked.
    pub probe: Option<Probe>,
}

/// Reads the record; a missing file is the default (`bootnext`), a damaged
/// one an error naming the file.
pub fn read_control(esp: &mut dyn EspFiles) -> Result<ControlRecord> {
    let Some(bytes) = esp.read(CONTROL_PATH)? else {
        return Ok(ControlRecord::default());
    };
    serde_json::from_slice(&bytes).map_err(|e| UpdateError::BootControl {
        message: format!("{CONTROL_PATH} does not parse ({e}): fix or delete it"),
    })
}

/// Writes the record atomically; `false` when it already said that.
pub(crate) fn write_control(esp: &mut dyn EspFiles, record: &ControlRecord) -> Result<bool> {
    let mut bytes = serde_json::to_vec_pretty(record).expect("a control record serializes");
    bytes.push(b'\n');
    if esp.read(CONTROL_PATH)?.as_deref() == Some(bytes.as_slice()) {
        return Ok(false);
    }
    write_atomically(esp, CONTROL_PATH, &bytes)?;
    Ok(true)
}

/// The ESP through abkit's file code, as the loader-state functions need it.
struct Files<'a>(&'a mut dyn EspFiles);

impl StateFiles for Files<'_> {
    type Error = UpdateError;
    fn read(&mut self, path: &str, buf: &mut [u8]) -> Result<Option<usize>> {
        Ok(self.0.read(path)?.map(|bytes| {
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            n
        }))
    }
    fn write(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.0.write(path, &mut &bytes[..]).map(|_| ())
    }
    fn remove(&mut self, path: &str) -> Result<bool> {
        self.0.remove(path)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        self.0.rename(from, to)
    }
}

/// The loader state on the ESP (the pre-loader's rule: the file, else a
/// complete new one waiting for its rename); `None` without one.
pub fn read_loader_state(esp: &mut dyn EspFiles) -> Result<Option<LoaderState>> {
    loader_state::load(&mut Files(esp)).map_err(|e| match e {
        loader_state::StoreError::Io(e) => e,
        loader_state::StoreError::Bad(e) => UpdateError::BootControl {
            message: format!("{}: {e}", loader_state::STATE_PATH),
        },
    })
}

/// Stores `state` (new file, flushed, old one removed, renamed); `false`
/// when the file already says that.
pub(crate) fn write_loader_state(esp: &mut dyn EspFiles, state: &LoaderState) -> Result<bool> {
    if esp.read(loader_state::STATE_PATH)?.as_deref() == Some(&state.to_bytes()[..]) {
        return Ok(false);
    }
    loader_state::store(&mut Files(esp), state)?;
    Ok(true)
}

/// Removes the loader state; `false` if there was none.
pub(crate) fn remove_loader_state(esp: &mut dyn EspFiles) -> Result<bool> {
    loader_state::remove(&mut Files(esp))
}

/// The slot of a letter stored in a record.
pub(crate) fn slot_of(letter: char) -> Option<Slot> {
    u8::try_from(letter).ok().and_then(Slot::from_letter)
}

/// `--boot-control MODE`: the operator's choice, persisted on the ESP
/// (under the machine's lock). Returns one line per change.
pub fn configure(m: &mut dyn Machine, mode: BootControl) -> Result<Vec<String>> {
    m.lock()?;
    boot_policy::set_boot_control(m, mode)
}

/// `auto` boot control's check after a reboot (the agent runs it at start;
/// mark-good runs it too), under the machine's lock.
pub fn observe(m: &mut dyn Machine) -> Result<Observation> {
    m.lock()?;
    boot_policy::observe_boot(m)
}
