//! What each slot holds, recorded on the ESP as `\EFI\abkit\slot-a.json`
//! and `slot-b.json`, so the engine can read it back offline and after
//! every boot.
//!
//! A record is replaced atomically (temporary file + rename), then copied
//! the same way to a second file (`slot-a.copy.json`), so that a damaged
//! record never loses the slot's product and version: [`read_record`]
//! falls back to the copy. States:
//! `empty` (being written, or a write failed: never boot or roll back to
//! it), `installed` (written and verified, waiting for its trial boot),
//! `good` (passed its health checks at least once). A slot without a record
//! (an image built from raw files) is `unknown`.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::machine::{EspFiles, write_atomically};
use crate::payloads::Payload;
use crate::{Result, Slot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    Unknown,
    Empty,
    Installed,
    Good,
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotState::Unknown => "unknown",
            SlotState::Empty => "empty",
            SlotState::Installed => "installed",
            SlotState::Good => "good",
        })
    }
}

/// The identity of what a slot holds and how far it got.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub state: SlotState,
    pub compatible: Option<String>,
    pub version: Option<semver::Version>,
    /// SHA-256 of the bundle's signed bytes (header and manifest, exactly
    /// as the signatures cover them): names the bundle exactly.
    pub bundle_sha256: Option<String>,
    pub system_size: Option<u64>,
    /// BLAKE3 of the system payload (the manifest's `blake3`, bundle
    /// format 3).
    pub system_blake3: Option<String>,
    /// SHA-256 of the system payload, as abkit wrote it before bundle
    /// format 3 (issue 14): read and kept, so a record written by an older
    /// version loses nothing when it is rewritten; never set for a new
    /// install.
    pub system_sha256: Option<String>,
    pub verity_root_hash: Option<String>,
    /// The signed verity salt (hex) and data size of the system payload:
    /// with `verity_root_hash`, what mark-good checks the slot against.
    pub verity_salt: Option<String>,
    pub verity_data_size: Option<u64>,
    /// Whether the system payload's bytes on the slot were checked after
    /// they were written (issue 14). `pending`: install wrote them without
    /// reading them back; mark-good checks them against the signed verity
    /// root hash before it commits. Absent in records written before this
    /// field (their install read the slot back).
    pub written_check: Option<WrittenCheck>,
    /// BLAKE3 of the efi payload (bundle format 3).
    pub efi_blake3: Option<String>,
    /// SHA-256 of the efi payload, from before format 3 (see `system_sha256`).
    pub efi_sha256: Option<String>,
    /// Seconds since the Unix epoch.
    pub installed_at: Option<u64>,
    pub good_at: Option<u64>,
    /// The last health-gate result on this slot (written by `abkit agent`):
    /// why a trial boot was not committed survives the reboot that follows.
    pub health: Option<HealthRecord>,
}

/// How far the check of a slot's written system data got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WrittenCheck {
    /// Written and flushed, not yet read back: mark-good checks it.
    Pending,
    /// Read from the media and matched the signed verity root hash.
    Passed,
    /// Read from the media and did not match (the slot is recorded
    /// `empty`; the reason is in `health`).
    Failed,
}

impl std::fmt::Display for WrittenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WrittenCheck::Pending => "pending",
            WrittenCheck::Passed => "passed",
            WrittenCheck::Failed => "failed",
        })
    }
}

/// The outcome of the health checks of one boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthResult {
    Passed,
    Failed,
}

/// The last health-gate result of a slot, as recorded in its record.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    pub result: HealthResult,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The name of the first check that failed (or `deadline`).
    pub failed_check: Option<String>,
    /// The last bytes of that check's output (stdout and stderr).
    pub output_tail: Option<String>,
}

impl SlotRecord {
    /// A record that says only the state.
    pub fn bare(state: SlotState) -> SlotRecord {
        SlotRecord {
            state,
            compatible: None,
            version: None,
            bundle_sha256: None,
            system_size: None,
            system_blake3: None,
            system_sha256: None,
            verity_root_hash: None,
            efi_blake3: None,
            verity_salt: None,
            verity_data_size: None,
            written_check: None,
            efi_sha256: None,
            installed_at: None,
            good_at: None,
            health: None,
        }
    }

    /// The record of a slot that now holds the payloads of `manifest`;
    /// `signed_sha256` is [`abkit_bundle::BundleReader::signed_sha256`]:
    /// the hash of the bytes the signatures covered, as read.
    pub fn for_bundle(
        manifest: &abkit_bundle::Manifest,
        signed_sha256: [u8; 32],
        state: SlotState,
    ) -> SlotRecord {
        let system = manifest.payload(Payload::System.name());
        SlotRecord {
            state,
            compatible: Some(manifest.compatible.clone()),
            version: Some(manifest.version.clone()),
            bundle_sha256: Some(hex::encode(signed_sha256)),
            system_size: system.map(|p| p.size),
            system_blake3: system.map(|p| p.blake3.to_string()),
            system_sha256: None,
            verity_root_hash: system
                .and_then(|p| p.verity.as_ref())
                .map(|v| v.root_hash.to_string()),
            verity_salt: system
                .and_then(|p| p.verity.as_ref())
                .map(|v| hex::encode(&v.salt.0)),
            verity_data_size: system.and_then(|p| p.verity.as_ref()).map(|v| v.data_size),
            // The system payload is checked at commit when it has a verity
            // tree (`copy::ReadBack::for_payload`); else it was read back.
            written_check: system
                .and_then(|p| p.verity.as_ref())
                .map(|_| WrittenCheck::Pending),
            efi_blake3: manifest
                .payload(Payload::Efi.name())
                .map(|p| p.blake3.to_string()),
            efi_sha256: None,
            installed_at: Some(now()),
            good_at: None,
            health: None,
        }
    }

    /// Whether this slot holds a version that passed health at least once.
    pub fn was_good(&self) -> bool {
        self.state == SlotState::Good
    }
}

/// Path of a slot's record on the ESP.
pub fn record_path(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "\\EFI\\abkit\\slot-a.json",
        Slot::B => "\\EFI\\abkit\\slot-b.json",
    }
}

/// Path of the second copy of a slot's record.
pub fn record_copy_path(slot: Slot) -> &'static str {
    match slot {
        Slot::A => "\\EFI\\abkit\\slot-a.copy.json",
        Slot::B => "\\EFI\\abkit\\slot-b.copy.json",
    }
}

/// Reads a slot's record. A missing record (and no copy) is `unknown` (a
/// factory slot); an unreadable one (cut short by a power loss, edited by
/// hand, a version that is not semver) is replaced by its copy, with a
/// warning; when neither reads, the slot is taken as `empty`: never booted
/// or rolled back to, and never a reason for a repair to fail.
pub fn read_record(esp: &mut dyn EspFiles, slot: Slot) -> Result<SlotRecord> {
    let primary = esp.read(record_path(slot))?;
    let parse = |bytes: &[u8]| serde_json::from_slice::<SlotRecord>(bytes);
    let problem = match &primary {
        Some(bytes) => match parse(bytes) {
            Ok(record) => return Ok(record),
            Err(e) => format!("is unreadable ({e})"),
        },
        None => "is missing".to_string(),
    };
    match esp.read(record_copy_path(slot))? {
        Some(bytes) => match parse(&bytes) {
            Ok(record) => {
                log::warn!(
                    "slot {} record {} {problem}; using its copy {}",
                    slot.letter(),
                    record_path(slot),
                    record_copy_path(slot)
                );
                Ok(record)
            }
            Err(e) => {
                log::warn!(
                    "slot {} record {} {problem} and its copy is unreadable ({e}); treating the slot as empty",
                    slot.letter(),
                    record_path(slot)
                );
                Ok(SlotRecord::bare(SlotState::Empty))
            }
        },
        None if primary.is_none() => Ok(SlotRecord::bare(SlotState::Unknown)),
        None => {
            log::warn!(
                "slot {} record {} {problem}; treating the slot as empty",
                slot.letter(),
                record_path(slot)
            );
            Ok(SlotRecord::bare(SlotState::Empty))
        }
    }
}

/// Replaces a slot's record and then its copy, each atomically, unless they
/// already say exactly this. Returns whether anything was written.
pub fn write_record(esp: &mut dyn EspFiles, slot: Slot, record: &SlotRecord) -> Result<bool> {
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| crate::UpdateError::Io {
        context: "encode slot record".into(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    let mut written = false;
    for path in [record_path(slot), record_copy_path(slot)] {
        if esp.read(path)?.as_deref() != Some(bytes.as_slice()) {
            write_atomically(esp, path, &bytes)?;
            written = true;
        }
    }
    Ok(written)
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as abkit wrote it before bundle format 3 (SHA-256 payload
    /// hashes) still reads, and keeps those hashes when written again.
    #[test]
    fn a_record_from_before_format_3_reads_and_keeps_its_sha256() {
        let old = r#"{"state":"good","compatible":"demo-os","version":"1.1.0","bundle_sha256":"aa","system_size":4096,"system_sha256":"bb","verity_root_hash":"cc","efi_sha256":"dd","installed_at":1,"good_at":2}"#;
        let record: SlotRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.state, SlotState::Good);
        assert_eq!(record.version, Some("1.1.0".parse().unwrap()));
        assert_eq!(record.system_sha256.as_deref(), Some("bb"));
        assert_eq!(record.efi_sha256.as_deref(), Some("dd"));
        assert_eq!((&record.system_blake3, &record.efi_blake3), (&None, &None));
        let again: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(
            again,
            serde_json::from_str::<serde_json::Value>(old).unwrap()
        );
    }

    /// A new record names its payloads by BLAKE3 only.
    #[test]
    fn a_new_record_has_blake3_and_no_sha256() {
        let mut record = SlotRecord::bare(SlotState::Installed);
        record.system_blake3 = Some("ee".into());
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(json, r#"{"state":"installed","system_blake3":"ee"}"#);
    }
}
