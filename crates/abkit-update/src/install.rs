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
use abkit_fetch::ByteRanges;

use crate::boot_policy::{self, Trial};
use crate::copy;
use crate::delta;
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
    /// BLAKE3 of the system payload (the manifest's `blake3`), hex.
    pub system_blake3: String,
    /// Bytes fetched and reused, and whether it was a delta install.
    #[serde(flatten)]
    pub transfer: Transfer,
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
    let (running, running_record) = before_open(m)?;
    let mut source = CountingRead {
        inner: source,
        count: 0,
    };
    let mut bundle = BundleReader::open(&mut source, keyring)?;
    let manifest = bundle.manifest().clone();
    let prep = check_and_prepare(
        m,
        running,
        &running_record,
        &manifest,
        &bundle.signer().to_string(),
        opts,
        rep,
    )?;

    // 3. and 4. Stream the payloads in bundle order; only verified chunks
    // come out of the reader.
    payloads::stream_payloads(&mut bundle, |kind, p| match kind {
        Payload::System => {
            let mut dev = m.slot_device(prep.target)?;
            write_system(&mut *dev, p, prep.target, rep)
        }
        Payload::Efi => write_loader(m, &prep, p, rep),
    })?;
    let signed_sha256 = bundle.signed_sha256();
    drop(bundle);
    let transfer = Transfer {
        delta: false,
        bytes_fetched: source.count,
        bytes_reused: 0,
    };
    finish_install(m, prep, &manifest, signed_sha256, transfer, rep)
}

/// Installs the bundle that `bundle` reads by byte ranges (a URL, later an
/// OCI blob), as a delta: every block the machine already holds (the
/// running slot, the running loader, the target slot's old contents at the
/// same offset) is copied, only the rest is fetched, each block checked
/// against the signed block index before it is written (`crate::delta`).
/// The checks, the order of changes and the report are those of
/// [`install`]. A compressed payload is fetched by whole zstd frames,
/// each checked by its stored chunks' BLAKE3 before it is decompressed.
pub fn install_delta(
    m: &mut dyn Machine,
    bundle: &mut dyn ByteRanges,
    keyring: &Keyring,
    opts: &InstallOptions,
    rep: &mut dyn Reporter,
) -> Result<InstallReport> {
    let (running, running_record) = before_open(m)?;
    let head = delta::open_ranged(bundle, keyring)?;
    let manifest = head.manifest.clone();
    // A delta pays only when the running slot holds a fair share of the
    // new system; else the bundle is installed in full, from byte 0.
    if let Some((entry, index)) = manifest
        .payloads
        .iter()
        .zip(&head.indexes)
        .find(|(e, _)| e.name == Payload::System.name())
    {
        let mut running_dev = m.slot_reader(running)?;
        let scan = running_record.system_size.unwrap_or(entry.size);
        let share = delta::reusable_share(index, &mut *running_dev, scan);
        if share < delta::DELTA_PAYS {
            step(
                rep,
                Step::Delta,
                format!(
                    "slot {} holds about {:.0}% of the blocks of {}: a delta would fetch \
                     nearly everything, installing the whole bundle instead",
                    running.letter(),
                    share * 100.0,
                    manifest.version
                ),
            );
            let read_before = bundle.bytes_read();
            let total = head.layout.total_len;
            let whole =
                std::io::BufReader::with_capacity(1 << 20, delta::RangeRead::new(bundle, total));
            let mut report = install(m, whole, keyring, opts, rep)?;
            // The head and indexes read to decide count too.
            report.transfer.bytes_fetched += read_before;
            return Ok(report);
        }
    }
    let prep = check_and_prepare(
        m,
        running,
        &running_record,
        &manifest,
        &head.signer.to_string(),
        opts,
        rep,
    )?;
    let mut stats = delta::DeltaStats {
        bytes_fetched: bundle.bytes_read(),
        ..Default::default()
    };
    for ((entry, index), &offset) in manifest
        .payloads
        .iter()
        .zip(&head.indexes)
        .zip(&head.layout.payload_offsets)
    {
        let Some(kind) = Payload::from_name(&entry.name) else {
            log::info!(
                "skipping payload {:?} that this version does not use",
                entry.name
            );
            continue;
        };
        let got = match kind {
            Payload::System => {
                step(
                    rep,
                    Step::Delta,
                    format!(
                        "looking for the blocks of {} in slot {} and slot {}",
                        manifest.version,
                        running.letter(),
                        prep.target.letter()
                    ),
                );
                let mut running_dev = m.slot_reader(running)?;
                let mut target_old = m.slot_reader(prep.target)?;
                // Only single blocks that must be fetched otherwise are
                // looked for there.
                target_old.expect_scattered_reads();
                let scan = running_record.system_size.unwrap_or(entry.size);
                let mut seeds = [
                    delta::Seed {
                        name: format!("slot {}", running.letter()),
                        dev: &mut *running_dev,
                        scan,
                    },
                    delta::Seed {
                        name: format!("slot {}", prep.target.letter()),
                        dev: &mut *target_old,
                        scan: 0,
                    },
                ];
                let mut dev = m.slot_device(prep.target)?;
                let got = delta::write_payload(
                    index,
                    entry,
                    offset,
                    bundle,
                    &mut seeds,
                    &mut *dev,
                    prep.target,
                    rep,
                )?;
                step(
                    rep,
                    Step::CheckSystem,
                    checked_message(copy::ReadBack::for_payload(entry), prep.target),
                );
                got
            }
            Payload::Efi => {
                let old = m.esp().read(running.loader_path())?.unwrap_or_default();
                let mut old = delta::MemSeed(old);
                let mut seeds = [delta::Seed {
                    name: format!("loader {}", running.loader_path()),
                    scan: old.0.len() as u64,
                    dev: &mut old,
                }];
                let (bytes, got) =
                    delta::assemble_in_memory(index, entry, offset, bundle, &mut seeds, rep)?;
                write_loader(m, &prep, &mut &bytes[..], rep)?;
                got
            }
        };
        stats.bytes_fetched += got.bytes_fetched;
        stats.bytes_reused += got.bytes_reused;
        stats.requests += got.requests;
    }
    for kind in Payload::ALL {
        kind.entry(&manifest)?;
    }
    step(
        rep,
        Step::Delta,
        format!(
            "fetched {} bytes in {} range requests, reused {} bytes this machine held",
            stats.bytes_fetched, stats.requests, stats.bytes_reused
        ),
    );
    let transfer = Transfer {
        delta: true,
        bytes_fetched: stats.bytes_fetched,
        bytes_reused: stats.bytes_reused,
    };
    finish_install(m, prep, &manifest, head.signed_sha256, transfer, rep)
}

/// How the bundle's bytes got here, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    /// Installed as a delta (blocks reused, the rest fetched by ranges).
    pub delta: bool,
    /// Bytes read from the bundle (file or network).
    pub bytes_fetched: u64,
    /// Payload bytes copied from what the machine already held.
    pub bytes_reused: u64,
}

/// A `Read` that counts the bytes it handed out.
struct CountingRead<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Step 1 before the bundle is opened: the lock, and the running slot
/// must be the committed one.
fn before_open(m: &mut dyn Machine) -> Result<(Slot, SlotRecord)> {
    m.lock()?;
    let running = m.running_slot();
    let committed = committed_or_fallback(m)?;
    if committed != running {
        return Err(UpdateError::RunningSlotNotCommitted {
            running,
            committed: committed.letter().to_string(),
        });
    }
    let running_record = read_record(m.esp(), running)?;
    Ok((running, running_record))
}

/// What the checks found out, for the writing steps.
struct Prepared {
    target: Slot,
    system: abkit_bundle::PayloadEntry,
    loader_temp: String,
}

/// Steps 1 and 2 once the bundle's head is verified: product, version,
/// payloads, sizes, room on the ESP; then the target is made unbootable
/// and recorded empty.
fn check_and_prepare(
    m: &mut dyn Machine,
    running: Slot,
    running_record: &SlotRecord,
    manifest: &Manifest,
    signer: &str,
    opts: &InstallOptions,
    rep: &mut dyn Reporter,
) -> Result<Prepared> {
    let target = running.other();
    check_bundle(manifest, running_record, opts)?;
    let (system, efi) = payloads::check_manifest(manifest)?;
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
            "bundle {} {} signed by {signer}; installing into slot {}",
            manifest.compatible,
            manifest.version,
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
    Ok(Prepared {
        target,
        system,
        loader_temp,
    })
}

/// Writes the verified loader bytes of `source` to the temporary loader
/// name (checking its head and its `roothash=` against the system payload);
/// a failure leaves no half-written loader taking the ESP's space.
fn write_loader(
    m: &mut dyn Machine,
    prep: &Prepared,
    source: &mut dyn Read,
    rep: &mut dyn Reporter,
) -> Result<()> {
    let loader_temp = &prep.loader_temp;
    step(rep, Step::WriteLoader, format!("writing {loader_temp}"));
    let mut capture = payloads::LoaderCapture::new(source);
    let written = m
        .esp()
        .write(loader_temp, &mut capture)
        .and_then(|_| capture.check(&prep.system));
    if let Err(e) = written {
        if let Err(cleanup) = m.esp().remove(loader_temp) {
            log::warn!("cannot remove {loader_temp}: {cleanup}");
        }
        return Err(e);
    }
    Ok(())
}

/// Steps 4 (loader into place) to 6: record, arm the trial boot.
fn finish_install(
    m: &mut dyn Machine,
    prep: Prepared,
    manifest: &Manifest,
    signed_sha256: [u8; 32],
    transfer: Transfer,
    rep: &mut dyn Reporter,
) -> Result<InstallReport> {
    let target = prep.target;
    crate::halt::checkpoint("install:loader-temp-written");
    m.esp().rename(&prep.loader_temp, target.loader_path())?;
    step(
        rep,
        Step::WriteLoader,
        format!("loader {} in place", target.loader_path()),
    );

    // 5. Record what the slot holds; only then can it be armed.
    let record = SlotRecord::for_bundle(manifest, signed_sha256, SlotState::Installed);
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
        compatible: manifest.compatible.clone(),
        boot_next: entry,
        system_blake3: prep.system.blake3.to_string(),
        transfer,
    })
}

/// Streams the verified system payload into the slot through the copy
/// pipeline (`crate::copy`) and flushes the slot. A payload with a verity
/// tree is checked on the media by mark-good (the record says
/// `written_check: pending`); any other is read back while it is written.
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
    let read_back = copy::ReadBack::for_payload(p.entry());
    copy::copy_payload(p, dev, target, Step::WriteSystem, read_back, rep)?;
    step(rep, Step::CheckSystem, checked_message(read_back, target));
    Ok(())
}

/// What the install says about the check of the slot it wrote.
fn checked_message(read_back: copy::ReadBack, target: Slot) -> String {
    match read_back {
        copy::ReadBack::Now => format!("slot {} read back as written and flushed", target.letter()),
        copy::ReadBack::AtCommit => format!(
            "slot {} written and flushed; mark-good reads it back and checks it against \
             the signed verity root hash before it commits",
            target.letter()
        ),
    }
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
