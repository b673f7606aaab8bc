//! `abkit image`: build an A/B disk image (from a loader and a system image,
//! or from a verified bundle) and inspect one.

use std::fmt::Display;
use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgGroup, Args, Subcommand};

use abkit_bundle::Keyring;
use abkit_disk::{BuildOptions, DiskImage, LayoutOptions};
use abkit_update::factory::{BundleBuildOptions, build_from_bundle};
use abkit_update::image_report;
use serde::Serialize;

use super::progress::Output;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a bootable A/B disk: GPT with ESP, two system slots and a data
    /// partition; the loader goes into the ESP (as slot A's loader and as the
    /// removable-media fallback \EFI\BOOT\BOOTX64.EFI), the system image into
    /// slot A. The output is sparse: only written data takes space.
    ///
    /// Give either --loader and --system (raw files), or --bundle and
    /// --keyring: the bundle is verified completely first (nothing is
    /// written if it is not), then its efi and system payloads are used and
    /// slot A is recorded as `installed` with the bundle's product, version
    /// and hashes, exactly as `abkit install` would record it.
    Build(Box<BuildArgs>),
    /// Show a disk's partitions, the ESP's files, and what each slot holds
    /// (size and SHA-256 of its used part: up to its last non-zero 4 KiB
    /// block; and the bundle that wrote it, from the slot's record on the ESP).
    Inspect(InspectArgs),
}

#[derive(Args)]
#[command(group(
    ArgGroup::new("source")
        .required(true)
        .args(["loader", "bundle"]),
))]
pub struct BuildArgs {
    /// The disk image to write (replaced if it is a file), or a block device (needs --force).
    #[arg(short, long, value_name = "PATH")]
    output: PathBuf,
    /// Size of the ESP (FAT32, at least 33M). Sizes take K, M, G, T suffixes (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "128M", value_parser = parse_size)]
    esp_size: u64,
    /// Size of each system slot; the system image must fit.
    #[arg(long, value_name = "SIZE", default_value = "1G", value_parser = parse_size)]
    system_size: u64,
    /// Size of the data partition (left unformatted).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size, conflicts_with = "disk_size")]
    data_size: u64,
    /// Total disk size: the data partition then fills what the others leave.
    /// On a block device the device's size is used.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    disk_size: Option<u64>,
    /// Prefix of the partition names: <PREFIX>-SYSTEM-A, <PREFIX>-SYSTEM-B, <PREFIX>-DATA.
    #[arg(long, value_name = "PREFIX", default_value = "ABKIT")]
    label_prefix: String,
    /// Make GUIDs, the FAT volume ID and file times derive from N: the same
    /// inputs and seed give a byte-identical image.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Allow overwriting an existing block device (all its data is lost).
    /// A device in use (a mounted filesystem on it or its partitions,
    /// device-mapper, RAID, swap) is refused even so.
    #[arg(long)]
    force: bool,
    /// Also write the boot entries "abkit slot A" and "abkit slot B" (HD(...)/\EFI\abkit\boot-a.efi
    /// and boot-b.efi on this disk's ESP) into this OVMF VARS file, slot A first in BootOrder;
    /// slot B's entry stays inactive until slot B holds a system. Use a copy of
    /// /usr/share/OVMF/OVMF_VARS_4M.fd, then boot QEMU with it.
    #[arg(long, value_name = "FILE")]
    ovmf_vars: Option<PathBuf>,
    /// Enrol the Secure Boot keys in DIR (PK.crt, KEK.crt, db.crt, PEM or
    /// DER; owner.guid for the signature owner, as scripts/test-pki.sh DIR
    /// writes them) into --ovmf-vars as PK, KEK and db, and turn Secure Boot
    /// on. Boot with OVMF_CODE_4M.secboot.fd (-machine q35,smm=on); the
    /// loader must then be signed by the db key (`abkit uki sign`).
    #[arg(long, value_name = "DIR", requires = "ovmf_vars")]
    secure_boot: Option<PathBuf>,
    /// Print what was built as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    raw: RawSource,
    #[command(flatten)]
    signed: BundleSource,
}

/// Slot A from raw files.
#[derive(Args)]
#[command(next_help_heading = "From raw files")]
struct RawSource {
    /// The EFI loader (a PE/COFF EFI application) to install for slot A. Needs --system.
    #[arg(long, value_name = "FILE", requires = "system")]
    loader: Option<PathBuf>,
    /// The system image (read-only file system, maybe with its verity tree) for slot A.
    /// Needs --loader.
    #[arg(long, value_name = "FILE", requires = "loader")]
    system: Option<PathBuf>,
}

/// Slot A from a verified bundle (never together with raw files).
#[derive(Args)]
#[command(next_help_heading = "From a bundle")]
#[group(conflicts_with = "RawSource")]
struct BundleSource {
    /// A signed bundle (`abkit bundle create`): its efi payload becomes the loader, its
    /// system payload (with verity tree) goes into slot A, and slot A's record names the
    /// bundle. Needs --keyring; replaces --loader and --system.
    #[arg(long, value_name = "FILE", requires = "keyring")]
    bundle: Option<PathBuf>,
    /// Folder of trusted public keys (*.pub) to verify --bundle against; the bundle
    /// needs a valid signature by one of them.
    #[arg(long, value_name = "DIR", requires = "bundle")]
    keyring: Option<PathBuf>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The disk image file or block device.
    disk: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Parses `4096`, `64K`, `128M`, `1G`, `1.5G`, `2GiB`, `1T` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("unknown size unit in {text:?} (use K, M, G or T)")),
    };
    let bad = || format!("invalid size {text:?} (e.g. 4096, 64M, 1.5G)");
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = value * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 || bytes.fract() != 0.0 {
            return Err(bad());
        }
        Ok(bytes as u64)
    } else {
        let value: u64 = number.parse().map_err(|_| bad())?;
        value.checked_mul(1 << shift).ok_or_else(bad)
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let layout = LayoutOptions {
        esp_size: args.esp_size,
        system_size: args.system_size,
        data_size: args.data_size,
        disk_size: args.disk_size,
        label_prefix: args.label_prefix,
    };
    // The keys are read before anything is written: a bad folder builds nothing.
    let sb_keys = args
        .secure_boot
        .as_deref()
        .map(super::secure_boot::load_keys)
        .transpose()?;
    if let (Some(_), Some(vars)) = (&sb_keys, &args.ovmf_vars) {
        super::secure_boot::check_vars(vars)?;
    }
    let enroll = |vars: Option<&std::path::Path>| -> anyhow::Result<()> {
        if let (Some(keys), Some(vars)) = (&sb_keys, vars) {
            super::secure_boot::enroll(vars, keys)?;
        }
        Ok(())
    };
    if let (Some(bundle), Some(keyring_dir)) = (args.signed.bundle, args.signed.keyring) {
        let keyring = Keyring::load_dir(&keyring_dir)
            .with_context(|| format!("cannot load the keyring {}", keyring_dir.display()))?;
        let options = BundleBuildOptions {
            bundle,
            output: args.output,
            layout,
            seed: args.seed,
            force: args.force,
            ovmf_vars: args.ovmf_vars,
        };
        eprintln!(
            "abkit: building {} from {}",
            options.output.display(),
            options.bundle.display()
        );
        // Steps on stderr (a progress bar on a terminal): stdout carries
        // only the report.
        let mut progress = Output::on_stderr();
        let result = build_from_bundle(&options, &keyring, &mut progress);
        progress.finish();
        let report = result.with_context(|| {
            format!(
                "building {} from {}",
                options.output.display(),
                options.bundle.display()
            )
        })?;
        enroll(options.ovmf_vars.as_deref())?;
        return print(&report, args.json);
    }
    let (Some(loader), Some(system)) = (args.raw.loader, args.raw.system) else {
        anyhow::bail!("give --loader and --system, or --bundle and --keyring");
    };
    let options = BuildOptions {
        loader,
        system,
        output: args.output,
        layout,
        seed: args.seed,
        force: args.force,
    };
    eprintln!("abkit: building {}", options.output.display());
    let report = abkit_update::factory::build_raw(&options, args.ovmf_vars.as_deref())
        .with_context(|| format!("building {}", options.output.display()))?;
    enroll(args.ovmf_vars.as_deref())?;
    print(&report, args.json)
}

/// A report as JSON or as text.
fn print(report: &(impl Serialize + Display), json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let disk = DiskImage::open_read_only(&args.disk)
        .with_context(|| format!("opening {}", args.disk.display()))?;
    let report = abkit_disk::inspect(&disk)
        .with_context(|| format!("inspecting {}", args.disk.display()))?;
    let records = image_report::slot_records(&disk)
        .with_context(|| format!("reading the slot records of {}", args.disk.display()))?;
    print(&image_report::with_records(report, records), args.json)
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build(args) => build(*args),
        ImageCommand::Inspect(args) => inspect(args),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("128M"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        for bad in ["", "M", "12X", "1.2.3G", "99999999999T", "0.3"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
