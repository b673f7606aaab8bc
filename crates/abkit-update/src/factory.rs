//! Factory images: a fresh A/B disk built from a signed bundle, so that slot
//! A holds exactly what an install of that bundle would have written and
//! records it the same way (`installed`, with the bundle's identity).
//!
//! Nothing is created or changed until the whole bundle has been verified:
//! its payloads are streamed through the verifying reader into temporary
//! files beside the output, and only then is the disk built (into a
//! temporary file renamed over the output when the output is a file).

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use abkit_bundle::{BundleReader, Keyring, Manifest, PayloadReader};
use abkit_disk::{BuildOptions, BuildReport, DiskError, DiskImage, EspFile, Layout, LayoutOptions};
use serde::Serialize;

use crate::copy::{self, SparseFile};
use crate::machine::{EspFiles, SlotDevice};
use crate::offline::{FileRange, ImageEsp};
use crate::payloads::{self, Payload};
use crate::progress::{Reporter, Step, step};
use crate::record::{SlotRecord, SlotState, WrittenCheck, record_path, write_record};
use crate::{Result, Slot, UpdateError};

/// What to build, and from which bundle.
#[derive(Debug, Clone)]
pub struct BundleBuildOptions {
    /// The signed bundle whose `efi` and `system` payloads go into slot A.
    pub bundle: PathBuf,
    /// The disk image file or block device to write.
    pub output: PathBuf,
    pub layout: LayoutOptions,
    /// Makes GUIDs, FAT times and the record's `installed_at` (then the
    /// bundle's creation time) reproducible: the same bundle and seed give
    /// a byte-identical image.
    pub seed: Option<u64>,
    /// Allows overwriting an existing block device.
    pub force: bool,
    /// An OVMF VARS file to receive the two slot boot entries.
    pub ovmf_vars: Option<PathBuf>,
}

/// What [`build_from_bundle`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BundleBuildReport {
    #[serde(flatten)]
    pub disk: BuildReport,
    /// Key id of the trusted signature that was accepted.
    pub signer: String,
    /// The record written for slot A (`\EFI\abkit\slot-a.json`).
    pub slot_a: SlotRecord,
}

/// Whether `path` exists and is a block device.
fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

/// Where temporary files go: beside the output (same file system, so the
/// built disk can be renamed into place), or the system's temporary folder
/// for a block device.
fn scratch_parent(output: &Path, block_device: bool) -> PathBuf {
    if block_device {
        return std::env::temp_dir();
    }
    match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Streams a payload's verified bytes into a new file at `path` through
/// the copy pipeline (all-zero 4 KiB blocks left as holes, every block read
/// back as written), and checks its size and BLAKE3.
fn extract<R: Read>(
    p: &mut PayloadReader<'_, R>,
    path: &Path,
    rep: &mut dyn Reporter,
    progress_step: Step,
) -> Result<()> {
    let context = format!("write the {} payload to {}", p.entry().name, path.display());
    // Read and write: the pipeline reads what it wrote back.
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(UpdateError::io(context))?;
    let mut sink = SparseFile::new(file);
    copy::copy_payload(
        p,
        &mut sink,
        Slot::A,
        progress_step,
        copy::ReadBack::Now,
        rep,
    )?;
    Ok(())
}

/// Checks the first `size` bytes of slot A against the expected BLAKE3,
/// with the read-back hash an install's callers share (`crate::copy`).
fn check_slot_a(disk: &DiskImage, size: u64, expected: &str, rep: &mut dyn Reporter) -> Result<()> {
    let range = disk.slot_range(Slot::A);
    let mut dev = FileRange {
        file: disk
            .file()
            .try_clone()
            .map_err(UpdateError::io("open slot A for its read-back"))?,
        start: range.start,
        size: range.end - range.start,
    };
    dev.drop_cache();
    copy::check_blake3(&mut dev, size, expected, Slot::A, rep)
}

/// Refuses an output that is the bundle itself, before anything is written.
fn check_output_is_not_bundle(bundle: &File, output: &Path) -> Result<()> {
    if let (Ok(b), Ok(o)) = (bundle.metadata(), std::fs::metadata(output))
        && b.dev() == o.dev()
        && b.ino() == o.ino()
    {
        return Err(DiskError::OutputIsInput(output.to_path_buf()).into());
    }
    Ok(())
}

/// Checks what the manifest alone allows: the payloads install would
/// accept ([`crate::payloads::check_manifest`]), and a system payload that
/// fits into a slot of the planned layout.
fn check_manifest(manifest: &Manifest, layout: Option<&Layout>) -> Result<()> {
    let (system, _) = crate::payloads::check_manifest(manifest)?;
    if let Some(layout) = layout
        && system.size > layout.slot_a.size()
    {
        return Err(UpdateError::SlotTooSmall {
            payload: system.name.clone(),
            slot: Slot::A,
            size: system.size,
            capacity: layout.slot_a.size(),
        });
    }
    Ok(())
}

/// Builds a disk from raw files (a loader and a system image) with
/// abkit-disk, then — given an OVMF VARS file — writes its boot entries
/// through the boot policy, as an installer writes NVRAM after the disk.
/// The VARS file is opened (and so checked) before the disk is written.
pub fn build_raw(options: &BuildOptions, ovmf_vars: Option<&Path>) -> Result<BuildReport> {
    let mut vars = match ovmf_vars {
        Some(path) => Some(abkit_efi::OvmfVarsFile::open(path)?),
        None => None,
    };
    let mut report = abkit_disk::build(options)?;
    if let Some(store) = vars.as_mut() {
        report.boot_entries = Some(crate::boot_policy::factory_entries(
            store,
            &report.esp_location(),
        )?);
    }
    Ok(report)
}

/// Builds the disk of `options` from a bundle verified against `keyring`:
/// slot A gets the `system` payload, the ESP gets the `efi` payload as
/// `\EFI\abkit\boot-a.efi` and as the removable-media fallback, and slot A's
/// record says `installed` with the bundle's compatible, version and hashes.
///
/// A bad bundle (untrusted or bad signature, a tampered or truncated
/// payload, a missing payload, a system payload larger than the slot) fails
/// before the output is created or touched, and leaves no temporary file.
pub fn build_from_bundle(
    options: &BundleBuildOptions,
    keyring: &Keyring,
    rep: &mut dyn Reporter,
) -> Result<BundleBuildReport> {
    // 1. Verify: signature, manifest, and what can be checked without data.
    let bundle_file = File::open(&options.bundle).map_err(UpdateError::io(format!(
        "open the bundle {}",
        options.bundle.display()
    )))?;
    check_output_is_not_bundle(&bundle_file, &options.output)?;
    let block_device = is_block_device(&options.output);
    if block_device {
        if !options.force {
            return Err(DiskError::BlockDeviceWithoutForce(options.output.clone()).into());
        }
        // Refused now, not after the payloads were verified; the build
        // holds its own exclusive handle while it writes.
        drop(abkit_disk::open_block_device_exclusive(&options.output)?);
    }
    // On a block device the disk size is the device's: plan only the slots.
    let layout = if block_device {
        Layout::plan(&LayoutOptions {
            disk_size: None,
            ..options.layout.clone()
        })
        .ok()
    } else {
        Some(Layout::plan(&options.layout)?)
    };
    let mut bundle = BundleReader::open(BufReader::new(bundle_file), keyring)?;
    let manifest = bundle.manifest().clone();
    let signed_sha256 = bundle.signed_sha256();
    let signer = bundle.signer().to_string();
    check_manifest(&manifest, layout.as_ref())?;
    let mut vars = match &options.ovmf_vars {
        Some(path) => Some(abkit_efi::OvmfVarsFile::open(path)?),
        None => None,
    };
    step(
        rep,
        Step::Verify,
        format!(
            "bundle {} {} signed by {signer}",
            manifest.compatible, manifest.version
        ),
    );

    // 2. Stream every payload through the verifying reader into scratch files.
    let scratch = abkit_atomic::ScratchDir::new_in(
        &scratch_parent(&options.output, block_device),
        ".abkit-build-",
    )
    .map_err(UpdateError::io(
        "create a temporary folder for the payloads",
    ))?;
    let efi_path = scratch.path().join(Payload::Efi.name());
    let system_path = scratch.path().join(Payload::System.name());
    payloads::stream_payloads(&mut bundle, |kind, p| match kind {
        Payload::System => {
            step(rep, Step::WriteSystem, "verifying the system payload");
            extract(p, &system_path, rep, Step::WriteSystem)
        }
        Payload::Efi => {
            step(rep, Step::WriteLoader, "verifying the efi payload");
            extract(p, &efi_path, rep, Step::WriteLoader)
        }
    })?;

    // 3. Build the disk: into a scratch file renamed over the output at the
    //    end, or (a block device) in place.
    let built = if block_device {
        options.output.clone()
    } else {
        scratch.path().join("disk.img")
    };
    step(
        rep,
        Step::WriteSystem,
        format!("writing the disk image {}", built.display()),
    );
    let mut disk_report = abkit_disk::build(&BuildOptions {
        loader: efi_path,
        system: system_path,
        output: built.clone(),
        layout: options.layout.clone(),
        seed: options.seed,
        force: options.force,
    })?;
    disk_report.output = options.output.clone();

    // 4. Read slot A back, then record what it holds, as an install does.
    let system = Payload::System.entry(&manifest)?;
    let disk = DiskImage::open(&built)?;
    step(rep, Step::CheckSystem, "reading slot A back");
    check_slot_a(&disk, system.size, &system.blake3.to_string(), rep)?;
    let mut record = SlotRecord::for_bundle(&manifest, signed_sha256, SlotState::Installed);
    // The factory keeps its read-back (above): nothing is left for a
    // commit to check.
    record.written_check = record.written_check.map(|_| WrittenCheck::Passed);
    let esp = if options.seed.is_some() {
        record.installed_at = Some(manifest.created);
        disk.esp_fixed_time()?
    } else {
        disk.esp()?
    };
    let mut esp = ImageEsp(esp);
    write_record(&mut esp, Slot::A, &record)?;
    if let Some(bytes) = esp.read(record_path(Slot::A))? {
        disk_report.esp_files.push(EspFile {
            path: record_path(Slot::A).to_string(),
            size: bytes.len() as u64,
        });
    }
    esp.0.close()?;
    let location = disk.esp_location();
    drop(disk);
    step(
        rep,
        Step::Record,
        format!("slot A holds {} {}", manifest.compatible, manifest.version),
    );
    if !block_device {
        std::fs::rename(&built, &options.output).map_err(UpdateError::io(format!(
            "move the built disk to {}",
            options.output.display()
        )))?;
    }

    // 5. Boot entries last, as an installer writes NVRAM after the disk.
    if let Some(store) = vars.as_mut() {
        let entries = crate::boot_policy::factory_entries(store, &location)?;
        step(
            rep,
            Step::BootEntry,
            format!(
                "Boot{:04X} boots slot A, Boot{:04X} (inactive) slot B",
                entries.slot_a, entries.slot_b
            ),
        );
        disk_report.boot_entries = Some(entries);
    }
    Ok(BundleBuildReport {
        disk: disk_report,
        signer,
        slot_a: record,
    })
}
