//! `install`: write a verified bundle into the slot that is not running and
//! ask the firmware to boot it once.
//!
//! The steps follow DESIGN.md's update flow exactly. Nothing on the machine
//! changes before the bundle's signature, product, version and sizes have
//! been checked (I5); from then on the target slot is recorded `empty` and
//! its boot entry inactive until everything of it is written, flushed and
//! verified; BootNext is set last (I3). The running slot's partition and
//! loader are never opened for writing (I1), and BootOrder is never touched
//! (I4).

use std::io::Read;

use abkit_bundle::{BundleReader, Keyring, Manifest, PayloadReader};

use crate::boot_policy::{self, Trial};
use crate::copy;
use crate::machine::{Machine, SlotDevice, temp_path};
use crate::payloads::{self, Payload};
use crate::progress::{Reporter, Step, step};
use crate::record::{SlotRecord, SlotState, read_record, write_record};
use crate::{Result, Slot, UpdateError};

#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Install a version older than the committed one.
    pub allow_downgrade: bool,
    /// Install although the running slot's record does not say its product
    /// and version (a factory image built from raw files): the bundle's
    /// product and version cannot be checked against the machine.
    pub allow_unrecorded: bool,
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstallReport {
    pub target_slot: Slot,
    pub version: String,
    pub compatible: String,
    /// The entry BootNext now points at.
    pub boot_next: u16,
    pub system_sha256: String,
}

/// The slot the firmware boots by default: the first of our active entries
/// in BootOrder, or the removable-media fallback's slot when BootOrder has
/// none of ours.
pub fn committed_or_fallback(m: &mut dyn Machine) -> Result<Slot> {
    Ok(boot_policy::default_boot_slot(&boot_policy::read_state(m)?))
}

/// Checks everything that can be checked before the machine is touched.
fn check_bundle(manifest: &Manifest, running: &SlotRecord, opts: &InstallOptions) -> Result<()> {
    let unrecorded = |missing: &'static str| -> Result<()> {
        if opts.allow_unrecorded {
            log::warn!(
                "the running slot's record does not say its {missing}: installing {} {} anyway (--allow-unrecorded)",
                manifest.compatible,
                manifest.version
            );
            Ok(())
        } else {
            Err(UpdateError::UnrecordedBase {
                missing,
                bundle: manifest.compatible.clone(),
            })
        }
    };
    match &running.compatible {
        Some(mine) if *mine != manifest.compatible => {
            return Err(UpdateError::Incompatible {
                bundle: manifest.compatible.clone(),
                machine: mine.clone(),
            });
        }
        Some(_) => {}
        None => unrecorded("product")?,
    }
    match &running.version {
        Some(current) => {
            if manifest.version < *current && !opts.allow_downgrade {
                return Err(UpdateError::Downgrade {
                    bundle: manifest.version.to_string(),
                    committed: current.to_string(),
                });
            }
            if let Some(min) = &manifest.min_version
                && current < min
            {
                return Err(UpdateError::BelowMinVersion {
                    bundle: manifest.version.to_string(),
                    min: min.to_string(),
                    current: current.to_string(),
                });
            }
        }
        None => unrecorded("version")?,
    }
    Ok(())
}

/// Room the ESP needs for a new loader of `size` bytes written beside the
/// old one (plus directory entries and cluster rounding).
fn esp_room_for(size: u64) -> Result<u64> {
    size.checked_add(64 * 1024).ok_or_else(|| {
        UpdateError::SizeOverflow(format!("an efi payload of {size} bytes cannot fit any ESP"))
    })
}

/// Installs the bundle read from `source` into the slot that is not running.
pub fn install(
    m: &mut dyn Machine,
    source: impl Read,
    keyring: &Keyring,
    opts: &InstallOptions,
    rep: &mut dyn Reporter,
) -> Result<InstallReport> {
    m.lock()?;
    let running = m.running_slot();
    let target = running.other();

    // 1. Verify: nothing on the machine changes before all of this passed.
    let committed = committed_or_fallback(m)?;
    if committed != running {
        return Err(UpdateError::RunningSlotNotCommitted {
            running,
            committed: committed.letter().to_string(),
        });
    }
    let running_record = read_record(m.esp(), running)?;
    let mut bundle = BundleReader::open(source, keyring)?;
    let manifest = bundle.manifest().clone();
    let signed_sha256 = bundle.signed_sha256();
    check_bundle(&manifest, &running_record, opts)?;
    let (system, efi) = payloads::check_manifest(&manifest)?;
    let capacity = m.slot_device(target)?.size();
    if system.size > capacity {
        return Err(UpdateError::SlotTooSmall {
            payload: system.name.clone(),
            slot: target,
            size: system.size,
            capacity,
        });
    }
    let loader_temp = temp_path(target.loader_path());
    // Temporary loaders left by an interrupted install (also under the name
    // abkit before 0.2 used) are removed in step 2: their space counts as
    // free.
    let stale_names = [loader_temp.clone(), format!("{}.new", target.loader_path())];
    let mut stale = 0u64;
    for name in &stale_names {
        stale = stale.saturating_add(m.esp().size(name)?.unwrap_or(0));
    }
    let free = m.esp().free_bytes()?.saturating_add(stale);
    let needed = esp_room_for(efi.size)?;
    if free < needed {
        return Err(UpdateError::EspFull { free, needed });
    }
    step(
        rep,
        Step::Verify,
        format!(
            "bundle {} {} signed by {}; installing into slot {}",
            manifest.compatible,
            manifest.version,
            bundle.signer(),
            target.letter()
        ),
    );

    // 2. Prepare: the target can no longer be booted, by entry or BootNext.
    boot_policy::make_unbootable(m, target)?;
    write_record(m.esp(), target, &SlotRecord::bare(SlotState::Empty))?;
    for name in &stale_names {
        m.esp().remove(name)?;
    }
    step(
        rep,
        Step::Prepare,
        format!("slot {} marked empty and unbootable", target.letter()),
    );

    // 3. and 4. Stream the payloads in bundle order; only verified chunks
    // come out of the reader.
    let mut system_written = false;
    let mut efi_written = false;
    while let Some(mut p) = bundle.next_payload()? {
        match Payload::from_name(&p.entry().name) {
            Some(Payload::System) => {
                let mut dev = m.slot_device(target)?;
                write_system(&mut *dev, &mut p, target, rep)?;
                p.finish()?;
                system_written = true;
            }
            Some(Payload::Efi) => {
                step(rep, Step::WriteLoader, format!("writing {loader_temp}"));
                let mut capture = payloads::LoaderCapture::new(&mut p);
                let written = m
                    .esp()
                    .write(&loader_temp, &mut capture)
                    .and_then(|_| capture.check(&system));
                let written = written.and_then(|()| Ok(p.finish()?));
                if let Err(e) = written {
                    // Leave no half-written loader taking the ESP's space.
                    if let Err(cleanup) = m.esp().remove(&loader_temp) {
                        log::warn!("cannot remove {loader_temp}: {cleanup}");
                    }
                    return Err(e);
                }
                efi_written = true;
            }
            None => {
                log::info!(
                    "skipping payload {:?} that this version does not use",
                    p.entry().name
                );
                p.finish()?;
            }
        }
    }
    if !system_written {
        return Err(UpdateError::MissingPayload(Payload::System.name()));
    }
    if !efi_written {
        return Err(UpdateError::MissingPayload(Payload::Efi.name()));
    }
    crate::halt::checkpoint("install:loader-temp-written");
    m.esp().rename(&loader_temp, target.loader_path())?;
    step(
        rep,
        Step::WriteLoader,
        format!("loader {} in place", target.loader_path()),
    );

    // 5. Record what the slot holds; only then can it be armed.
    let record = SlotRecord::for_bundle(&manifest, signed_sha256, SlotState::Installed);
    write_record(m.esp(), target, &record)?;
    step(
        rep,
        Step::Record,
        format!("slot {} holds {}", target.letter(), manifest.version),
    );

    // 6. The target's entry is repaired and made active, and BootNext set:
    // the next boot, and only the next, is the trial boot.
    let entry = boot_policy::arm_trial(m, target, Trial::Install)?;
    step(
        rep,
        Step::BootNext,
        format!(
            "BootNext = Boot{entry:04X}: the next boot tries {} on slot {}",
            manifest.version,
            target.letter()
        ),
    );
    Ok(InstallReport {
        target_slot: target,
        version: manifest.version.to_string(),
        compatible: manifest.compatible,
        boot_next: entry,
        system_sha256: system.sha256.to_string(),
    })
}

/// Streams the verified system payload into the slot through the copy
/// pipeline (`crate::copy`): each range is read back from the media and
/// compared with the verified blocks while later ones are written; the
/// slot is flushed at the end.
fn write_system<R: Read>(
    dev: &mut dyn SlotDevice,
    p: &mut PayloadReader<'_, R>,
    target: Slot,
    rep: &mut dyn Reporter,
) -> Result<()> {
    let total = p.entry().size;
    step(
        rep,
        Step::WriteSystem,
        format!("writing {total} bytes into slot {}", target.letter()),
    );
    copy::copy_payload(p, dev, target, Step::WriteSystem, rep)?;
    step(
        rep,
        Step::CheckSystem,
        format!("slot {} read back as written and flushed", target.letter()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_room_for_a_huge_efi_payload_does_not_wrap() {
        // Found by the never-brick review: a signed manifest declaring an
        // efi size near 2^64 wrapped `size + 64 KiB` and passed the check.
        assert!(matches!(
            esp_room_for(u64::MAX - 100),
            Err(UpdateError::SizeOverflow(_))
        ));
        assert_eq!(esp_room_for(1000).unwrap(), 1000 + 64 * 1024);
    }
}
