//! `abkit image`: build an A/B disk image and inspect one.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use abkit_disk::{BuildOptions, DiskImage, LayoutOptions};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a bootable A/B disk: GPT with ESP, two system slots and a data
    /// partition; the loader goes into the ESP (as slot A's loader and as the
    /// removable-media fallback \EFI\BOOT\BOOTX64.EFI), the system image into
    /// slot A. The output is sparse: only written data takes space.
    Build(BuildArgs),
    /// Show a disk's partitions, the ESP's files, and what each slot holds
    /// (size and SHA-256 of its used part: up to its last non-zero 4 KiB block).
    Inspect(InspectArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The EFI loader (a PE/COFF EFI application) to install for slot A.
    #[arg(long, value_name = "FILE")]
    loader: PathBuf,
    /// The system image (read-only file system, maybe with its verity tree) for slot A.
    #[arg(long, value_name = "FILE")]
    system: PathBuf,
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
    #[arg(long)]
    force: bool,
    /// Also write the boot entries "abkit slot A" and "abkit slot B" (HD(...)/\EFI\abkit\boot-a.efi
    /// and boot-b.efi on this disk's ESP) into this OVMF VARS file, slot A first in BootOrder;
    /// slot B's entry stays inactive until slot B holds a system. Use a copy of
    /// /usr/share/OVMF/OVMF_VARS_4M.fd, then boot QEMU with it.
    #[arg(long, value_name = "FILE")]
    ovmf_vars: Option<PathBuf>,
    /// Print what was built as JSON.
    #[arg(long)]
    json: bool,
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

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_partitions(partitions: &[abkit_disk::Partition]) {
    println!(
        "{:>2}  {:<20} {:<16} {:<36}  {:>10}  {:>10}",
        "#", "name", "type", "partition GUID", "start LBA", "size"
    );
    for p in partitions {
        println!(
            "{:>2}  {:<20} {:<16} {:<36}  {:>10}  {:>10}",
            p.number,
            p.name,
            p.role.type_name(),
            p.guid,
            p.first_lba,
            human(p.size())
        );
    }
}

fn build(args: BuildArgs) -> anyhow::Result<()> {
    let options = BuildOptions {
        loader: args.loader,
        system: args.system,
        output: args.output,
        layout: LayoutOptions {
            esp_size: args.esp_size,
            system_size: args.system_size,
            data_size: args.data_size,
            disk_size: args.disk_size,
            label_prefix: args.label_prefix,
        },
        seed: args.seed,
        force: args.force,
        ovmf_vars: args.ovmf_vars,
    };
    eprintln!("abkit: building {}", options.output.display());
    let report = abkit_disk::build(&options)
        .with_context(|| format!("building {}", options.output.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} disk, GUID {}, {} written",
        report.output.display(),
        human(report.disk_size),
        report.disk_guid,
        human(report.bytes_written)
    );
    print_partitions(&report.partitions);
    for file in &report.esp_files {
        println!("ESP {}  {} bytes", file.path, file.size);
    }
    println!("slot A: system image of {} bytes", report.system_image_size);
    if let Some(entries) = &report.boot_entries {
        let order: Vec<String> = entries
            .boot_order
            .iter()
            .map(|n| format!("{n:04X}"))
            .collect();
        println!(
            "boot entries: Boot{:04X} \"abkit slot A\", Boot{:04X} \"abkit slot B\" (inactive); BootOrder {}",
            entries.slot_a,
            entries.slot_b,
            order.join(",")
        );
    }
    Ok(())
}

fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    let disk = DiskImage::open_read_only(&args.disk)
        .with_context(|| format!("opening {}", args.disk.display()))?;
    let report = abkit_disk::inspect(&disk)
        .with_context(|| format!("inspecting {}", args.disk.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {}, GPT disk GUID {}",
        report.path.display(),
        human(report.size),
        report.disk_guid
    );
    print_partitions(&report.partitions);
    println!("ESP files:");
    for entry in report.esp_files.iter().filter(|e| !e.is_dir) {
        println!("  {:<40} {:>10} bytes", entry.path, entry.size);
    }
    for slot in &report.slots {
        match &slot.sha256 {
            Some(sha) if slot.holds_data => println!(
                "slot {} (partition {}): {} bytes used, sha256 {sha}",
                slot.slot.letter(),
                slot.partition_number,
                slot.used_bytes
            ),
            _ => println!(
                "slot {} (partition {}): empty",
                slot.slot.letter(),
                slot.partition_number
            ),
        }
    }
    Ok(())
}

pub fn run(cmd: ImageCommand) -> anyhow::Result<()> {
    match cmd {
        ImageCommand::Build(args) => build(args),
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
