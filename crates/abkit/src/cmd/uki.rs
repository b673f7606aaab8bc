//! `abkit uki`: build a loader (the abkit stub plus kernel, initrd and command
//! line), stamp a copy with its slot, and show what a built one holds.

use std::path::{Path, PathBuf};

use super::machine::SlotArg;
use anyhow::{Context, bail};
use clap::Subcommand;

#[path = "uki_sign.rs"]
pub(crate) mod sign;

/// File name of the stub next to the `abkit` executable.
const STUB_FILE_NAME: &str = "abkit-stub.efi";
/// Environment variable naming the stub.
const STUB_ENV: &str = "ABKIT_STUB";

#[derive(Subcommand)]
pub enum UkiCommand {
    /// Build a loader: the abkit stub with kernel, initrd, command line and
    /// os-release appended as the UKI sections .osrel, .cmdline, .initrd and
    /// .linux. The same file serves as boot-a.efi, boot-b.efi and
    /// BOOTX64.EFI: at boot it replaces SYSTEM-X in the command line with the
    /// slot its own file name names.
    Build {
        /// The kernel: an EFI-stub bzImage such as /boot/vmlinuz-*.
        #[arg(long, value_name = "FILE")]
        kernel: PathBuf,
        /// The initrd, handed to the kernel through the LoadFile2 protocol.
        #[arg(long, value_name = "FILE")]
        initrd: Option<PathBuf>,
        /// The kernel command line; write SYSTEM-X where the slot belongs,
        /// e.g. "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X ro".
        #[arg(long, value_name = "TEXT")]
        cmdline: Option<String>,
        /// An os-release file to embed (shown by `abkit uki inspect`).
        #[arg(long, value_name = "FILE")]
        osrel: Option<PathBuf>,
        /// The loader stub (built by `make stub`). Default: $ABKIT_STUB, else
        /// abkit-stub.efi next to the abkit executable.
        #[arg(long, value_name = "FILE")]
        stub: Option<PathBuf>,
        /// Authenticode-sign the built loader with this RSA key (as `abkit
        /// uki sign` does; the kernel travels inside, covered by the same
        /// signature). Needs --cert.
        #[arg(long, value_name = "FILE", requires = "cert")]
        key: Option<PathBuf>,
        /// The signing key's X.509 certificate (the one in db). Needs --key.
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// Where to write the loader.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Stamp a loader with the slot it boots: an entry in its PE certificate
    /// table, outside the Authenticode hash, so a signature stays valid. The
    /// loader trusts the stamp before its file name; the fallback
    /// \EFI\BOOT\BOOTX64.EFI carries the committed slot's stamp. Stamping
    /// again replaces the stamp.
    Stamp {
        /// The slot the loader shall boot.
        #[arg(long, value_enum)]
        slot: SlotArg,
        /// The loader (.efi) to read.
        input: PathBuf,
        /// Where to write the stamped loader (may be INPUT: it is replaced
        /// atomically).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Authenticode-sign a loader for Secure Boot (PKCS#7 in its certificate
    /// table, as sbsign does). Signatures already there are kept; a slot
    /// stamp stays and moves behind the new signature.
    Sign {
        /// The RSA private key (PEM or DER, PKCS#8 or PKCS#1).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The key's X.509 certificate (PEM or DER), e.g. the one in db.
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// The loader (.efi) to sign.
        input: PathBuf,
        /// Where to write the signed loader (may be INPUT).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a loader's signatures against trusted certificates (as
    /// Secure Boot's db would); fails unless one is valid and trusted.
    Verify {
        /// A trusted certificate (PEM or DER); repeat for more.
        #[arg(long, value_name = "FILE", required = true)]
        cert: Vec<PathBuf>,
        /// The loader (.efi) to check.
        file: PathBuf,
    },
    /// Show the sections of a loader (or of a bare stub), its command line
    /// and what it carries.
    Inspect {
        /// The loader (.efi) to read.
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: UkiCommand) -> anyhow::Result<()> {
    match cmd {
        UkiCommand::Build {
            kernel,
            initrd,
            cmdline,
            osrel,
            stub,
            key,
            cert,
            output,
        } => {
            // A bad key fails before anything is built.
            let signing_key = match (&key, &cert) {
                (Some(key), Some(cert)) => Some(sign::load_signing_key(key, cert)?),
                _ => None,
            };
            let stub_path = find_stub(stub)?;
            let stub = read(&stub_path, "stub")?;
            let kernel = read(&kernel, "kernel")?;
            let initrd = initrd.map(|p| read(&p, "initrd")).transpose()?;
            let osrel = osrel.map(|p| read(&p, "os-release")).transpose()?;
            let parts = abkit_uki::UkiParts {
                linux: &kernel,
                initrd: initrd.as_deref(),
                cmdline: cmdline.as_deref().map(str::as_bytes),
                osrel: osrel.as_deref(),
            };
            let uki = abkit_uki::build(&stub, &parts).with_context(|| {
                format!(
                    "cannot build a loader from the stub {}",
                    stub_path.display()
                )
            })?;
            let uki = match &signing_key {
                Some(k) => abkit_uki::sign(&uki, k).context("cannot sign the built loader")?,
                None => uki,
            };
            write_new_file(&output, &uki)?;
            eprintln!(
                "abkit: wrote {} ({} bytes{})",
                output.display(),
                uki.len(),
                signing_key
                    .as_ref()
                    .map(|k| format!(", signed as {}", k.subject()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        UkiCommand::Stamp {
            slot,
            input,
            output,
        } => {
            let bytes = read(&input, "loader")?;
            let slot = abkit_uki::Slot::from(slot);
            let stamped = abkit_uki::stamp(&bytes, slot)
                .with_context(|| format!("cannot stamp {}", input.display()))?;
            write_new_file(&output, &stamped)?;
            eprintln!("abkit: stamped {} with slot {slot}", output.display());
            Ok(())
        }
        UkiCommand::Sign {
            key,
            cert,
            input,
            output,
        } => sign::sign(&key, &cert, &input, &output),
        UkiCommand::Verify { cert, file } => sign::verify(&cert, &file),
        UkiCommand::Inspect { file, json } => {
            let bytes = read(&file, "loader")?;
            let info = abkit_uki::inspect(&bytes)
                .with_context(|| format!("cannot read {}", file.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
            Ok(())
        }
    }
}

/// The stub to build on: `--stub`, else `$ABKIT_STUB`, else next to `abkit`.
pub(crate) fn find_stub(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    if let Some(path) = std::env::var_os(STUB_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot tell where the abkit executable is")?;
    let beside = exe.with_file_name(STUB_FILE_NAME);
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no loader stub: pass --stub FILE or set ${STUB_ENV}, or put {STUB_FILE_NAME} next to {} \
         (`make stub` builds it into build/abkit-stub.efi)",
        exe.display()
    )
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// Writes `bytes` to a temporary file beside `path`, flushes it and renames it
/// over `path`, so a reader never sees half a loader.
fn write_new_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    abkit_atomic::replace(path, bytes, Some(0o644))
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_info(info: &abkit_uki::UkiInfo) {
    let kind = match (&info.stub, info.is_uki()) {
        (Some(stub), true) => format!("loader built on {stub}"),
        (Some(stub), false) => format!("bare stub ({stub}), no kernel"),
        (None, true) => "UKI on a foreign stub".to_string(),
        (None, false) => "PE image without UKI sections".to_string(),
    };
    println!("kind:      {kind}");
    if let Some(cmdline) = &info.cmdline {
        println!("cmdline:   {cmdline}");
    }
    match &info.root_hash {
        Some(hash) => println!("root hash: {hash} (dm-verity, from roothash=)"),
        None => println!("root hash: none (no roothash= on the command line)"),
    }
    if let Some(name) = &info.os_pretty_name {
        println!("os:        {name}");
    }
    if let Some(size) = info.linux_size {
        println!("kernel:    {size} bytes");
    }
    if let Some(size) = info.initrd_size {
        println!("initrd:    {size} bytes");
    }
    let verdict = if info.checksum_stored == info.checksum_computed {
        "ok"
    } else {
        "differs"
    };
    println!(
        "checksum:  {:#010x} (computed {:#010x}: {verdict})",
        info.checksum_stored, info.checksum_computed
    );
    match (&info.slot_stamp, &info.stamp_problem) {
        (_, Some(problem)) => println!("stamp:     unreadable: {problem}"),
        (Some(slot), None) => println!("stamp:     slot {slot}"),
        (None, None) => println!("stamp:     none (the file name decides)"),
    }
    println!("certificates: {}", info.certificates);
    if let Some(digest) = &info.authenticode_sha256 {
        println!("authenticode sha256: {digest}");
    }
    if let Some(pcr) = &info.pcr11_sha256 {
        println!("pcr 11 sha256: {pcr} (after the loader's measurements)");
    }
    println!("sections:");
    println!(
        "  {:<9} {:>10} {:>10} {:>10} {:>10}",
        "name", "address", "size", "offset", "raw size"
    );
    for s in &info.sections {
        println!(
            "  {:<9} {:#10x} {:#10x} {:#10x} {:#10x}",
            s.name, s.virtual_address, s.virtual_size, s.file_offset, s.raw_size
        );
    }
}
