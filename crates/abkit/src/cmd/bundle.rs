//! `abkit bundle`: create, verify, inspect and extract signed update bundles
//! (format in docs/bundle-format.md; the work is done by `abkit-bundle`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use abkit_bundle::{
    BundleHead, BundleReader, Compression, CreateOptions, Keyring, Manifest, PayloadSpec,
    SecretKey, SignatureStatus,
};
use abkit_update::Step;
use abkit_update::payloads::Payload;
use anyhow::Context as _;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum BundleCommand {
    /// Build and sign a bundle from an EFI payload and a system image.
    ///
    /// The system image gets a dm-verity hash tree and superblock appended
    /// (an image whose size is not a multiple of 4096 is padded with zeros),
    /// so the payload written to a slot passes `veritysetup verify`.
    // `--version` is the bundle's version here, not abkit's.
    #[command(disable_version_flag = true)]
    Create(Box<CreateArgs>),
    /// Check signature and every payload hash while streaming the bundle.
    ///
    /// Exits 0 only if a keyring key signed the bundle and every chunk and
    /// payload matches; otherwise prints the error with its code, e.g.
    /// `[chunk-hash-mismatch]`. Memory use does not grow with the bundle.
    Verify(VerifyArgs),
    /// Show manifest and signatures (reads only the head of the bundle).
    Inspect(InspectArgs),
    /// Verify the bundle and write each payload to DIR/<payload name>.
    ///
    /// Payloads are written into a hidden temporary folder and moved to DIR
    /// only after every payload and the end of the bundle verified: if
    /// anything fails, DIR gets nothing (and is not created).
    Extract(ExtractArgs),
    /// Store the bundle in an OCI registry: oci://HOST[:PORT]/REPO:TAG.
    ///
    /// The bundle becomes an OCI artifact (media types in docs/oci.md) that
    /// `abkit install oci://...` pulls by tag or by digest. Prints the
    /// manifest digest (sha256:...) on standard output: pin devices to it
    /// with oci://HOST/REPO@sha256:....
    Push(super::bundle_push::PushArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    /// The EFI payload: the loader with its kernel (a UKI). With --rootfs the
    /// UKI is built instead (--kernel, --initrd, --cmdline).
    #[arg(long, value_name = "FILE", required_unless_present = "rootfs")]
    efi: Option<PathBuf>,
    /// The system image (a read-only filesystem image).
    #[arg(long, value_name = "FILE", required_unless_present = "rootfs")]
    system: Option<PathBuf>,
    /// Build the release from a root filesystem folder: an erofs image of
    /// DIR (mkfs.erofs, reproducible: fixed timestamps and UUID) becomes the
    /// system payload, and the UKI is built with its dm-verity root hash on
    /// the command line (roothash=, systemd.verity_root_*; docs/release.md).
    #[arg(
        long,
        value_name = "DIR",
        requires = "kernel",
        conflicts_with_all = ["efi", "system"]
    )]
    rootfs: Option<PathBuf>,
    /// Version of the OS in this bundle (semver, e.g. 1.2.0).
    #[arg(long)]
    version: semver::Version,
    /// Oldest installed version this bundle may update (semver).
    #[arg(long, value_name = "VERSION")]
    min_version: Option<semver::Version>,
    /// Product identifier; devices accept only bundles for their own product.
    #[arg(long)]
    compatible: String,
    /// Secret key file (from `abkit keygen`); repeat to add signatures.
    #[arg(long = "key", value_name = "FILE.key", required = true)]
    keys: Vec<PathBuf>,
    /// Compress payloads with zstd (chunk hashes then cover compressed bytes).
    #[arg(long)]
    zstd: bool,
    /// zstd level, 1 (fast) to 19 (small).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Chunk size in KiB (4 to 4096, a multiple of 4): the unit of verification
    /// while streaming; readers hold a few chunks in memory.
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    chunk_kib: u32,
    /// Block size of the block index in KiB (a power of two, 4 to the chunk
    /// size): the unit of delta installs, which fetch only the blocks a
    /// machine lacks. 4 KiB suits scattered filesystem changes; larger
    /// blocks make a smaller index (32 bytes per block).
    #[arg(long, default_value_t = 4, value_name = "KIB")]
    block_kib: u32,
    /// dm-verity salt of the system payload, in hex (at most 256 bytes;
    /// default: 32 random bytes). Keep one salt across the releases of a
    /// product so that the hash tree changes only where the image does: a
    /// delta install then fetches only those tree blocks, not the whole
    /// tree (0.8% of the image). Not with --rootfs (its salt is derived
    /// from the image).
    #[arg(long, value_name = "HEX", conflicts_with = "rootfs")]
    verity_salt: Option<String>,
    /// Creation time in seconds since the epoch (default: now; set it for reproducible bundles).
    #[arg(long, value_name = "SECONDS")]
    created: Option<u64>,
    /// Output bundle file (mode 0644; written to a temporary file in the same
    /// folder and renamed at the end). Must not be one of the inputs.
    #[arg(short, long, value_name = "FILE.abb")]
    out: PathBuf,
    #[command(flatten)]
    uki: RootfsUkiArgs,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Bundle file, `-` to read it from standard input, an http(s) URL, or a
    /// registry reference oci://HOST[:PORT]/REPO:TAG or @sha256:DIGEST
    /// (docs/oci.md).
    bundle: PathBuf,
    /// Folder of trusted public keys (*.pub).
    #[arg(long, value_name = "DIR")]
    keyring: PathBuf,
    /// Print the result as JSON on standard output; a failure too, as
    /// `{"ok": false, "error": {"code": ..., "message": ...}}` (exit status 1).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: super::registry::RegistryArgs,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Bundle file, `-` to read it from standard input, an http(s) URL, or a
    /// registry reference oci://HOST[:PORT]/REPO:TAG or @sha256:DIGEST
    /// (docs/oci.md).
    bundle: PathBuf,
    /// Also check each signature against this folder of public keys.
    #[arg(long, value_name = "DIR")]
    keyring: Option<PathBuf>,
    /// Print manifest and signatures as JSON; a failure too, as
    /// `{"ok": false, "error": {"code": ..., "message": ...}}` (exit status 1).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    registry: super::registry::RegistryArgs,
}

#[derive(Args)]
pub struct ExtractArgs {
    /// Bundle file, `-` to read it from standard input, an http(s) URL, or a
    /// registry reference oci://HOST[:PORT]/REPO:TAG or @sha256:DIGEST
    /// (docs/oci.md).
    bundle: PathBuf,
    /// Folder of trusted public keys (*.pub).
    #[arg(long, value_name = "DIR")]
    keyring: PathBuf,
    /// Folder to write the payloads into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    registry: super::registry::RegistryArgs,
}

pub fn run(cmd: BundleCommand) -> anyhow::Result<()> {
    let json = match &cmd {
        BundleCommand::Verify(a) => a.json,
        BundleCommand::Inspect(a) => a.json,
        BundleCommand::Push(a) => a.json,
        BundleCommand::Create(_) | BundleCommand::Extract(_) => false,
    };
    let result = match cmd {
        BundleCommand::Create(a) => create(*a),
        BundleCommand::Verify(a) => verify(a),
        BundleCommand::Inspect(a) => inspect(a),
        BundleCommand::Extract(a) => extract(a),
        BundleCommand::Push(a) => super::bundle_push::push(a),
    };
    if json && let Err(err) = &result {
        // Scripts asked for JSON: they get the failure as JSON on stdout too
        // (the message still goes to stderr and the exit status is 1).
        println!(
            "{}",
            serde_json::to_string_pretty(&super::errors::json_error(err))?
        );
    }
    result
}

/// A bundle library error with its stable code in front, e.g.
/// `[chunk-hash-mismatch] payload ...`; kept typed so `--json` can report
/// the code.
#[derive(Debug)]
pub struct Coded(pub abkit_bundle::Error);

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.0.code(), self.0)
    }
}

// No source(): the message already carries the library error's text.
impl std::error::Error for Coded {}

/// Adds the error's stable code, e.g. `[chunk-hash-mismatch] payload ...`.
pub fn coded(err: abkit_bundle::Error) -> anyhow::Error {
    anyhow::Error::new(Coded(err))
}

/// The bundle named by `path`, buffered: what `abkit install` opens (a file,
/// `-` for standard input, an http(s) URL or an `oci://` reference); a path
/// that is not UTF-8 can only be a file.
fn open_source(
    path: &Path,
    registry: &super::registry::RegistryArgs,
) -> anyhow::Result<Box<dyn Read>> {
    let source: Box<dyn Read> = match path.to_str() {
        Some(text) => {
            let policy = abkit_fetch::RetryPolicy::default();
            abkit_update::source::open_source_from(
                text,
                abkit_fetch::Opener::new(&policy),
                &registry.options(&policy)?,
            )?
        }
        None => Box::new(
            File::open(path).with_context(|| format!("cannot open bundle {}", path.display()))?,
        ),
    };
    Ok(Box::new(io::BufReader::with_capacity(1 << 16, source)))
}

fn load_keyring(dir: &Path) -> anyhow::Result<Keyring> {
    Keyring::load_dir(dir)
        .map_err(coded)
        .context("cannot load keyring")
}

/// A release built from a root filesystem folder: the erofs image, the UKI
/// with the root hash, in a temporary folder beside the bundle.
struct BuiltRelease {
    _dir: abkit_atomic::ScratchDir,
    efi: PathBuf,
    system: PathBuf,
    root_hash: [u8; 32],
    salt: Vec<u8>,
    uuid: [u8; 16],
}

/// What `--rootfs` builds the UKI from: each only with --rootfs, shown
/// under their own heading in `--help`.
#[derive(Args)]
#[command(next_help_heading = "With --rootfs: the UKI")]
pub struct RootfsUkiArgs {
    /// The kernel for the UKI (an EFI-stub bzImage).
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    kernel: Option<PathBuf>,
    /// The initrd for the UKI; it must set up the verity root.
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    initrd: Option<PathBuf>,
    /// The kernel command line; abkit appends root=/dev/mapper/root (unless
    /// given) and the verity parameters.
    #[arg(long, value_name = "TEXT", default_value = "", requires = "rootfs")]
    cmdline: String,
    /// An os-release file for the UKI's .osrel section.
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    osrel: Option<PathBuf>,
    /// The loader stub (default: $ABKIT_STUB, else abkit-stub.efi next to
    /// abkit).
    #[arg(long, value_name = "FILE", requires = "rootfs")]
    stub: Option<PathBuf>,
    /// The partition label prefix of the slots (PARTLABEL=<PREFIX>-SYSTEM-X
    /// on the command line).
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "ABKIT",
        requires = "rootfs"
    )]
    label_prefix: String,
    /// Authenticode-sign the UKI for Secure Boot with this RSA key (named
    /// --uki-key because --key is the bundle's release key). Needs
    /// --uki-cert.
    #[arg(long, value_name = "FILE", requires_all = ["rootfs", "uki_cert"])]
    uki_key: Option<PathBuf>,
    /// The UKI signing key's X.509 certificate (the one in db).
    #[arg(long, value_name = "FILE", requires_all = ["rootfs", "uki_key"])]
    uki_cert: Option<PathBuf>,
    /// Compress the erofs image (lz4 or lz4hc).
    #[arg(long, value_name = "ALGORITHM", requires = "rootfs")]
    erofs_compress: Option<String>,
}

fn build_release(a: &CreateArgs, rootfs: &Path, out_dir: &Path) -> anyhow::Result<BuiltRelease> {
    use abkit_bundle::rootfs;
    let kernel_path = a.uki.kernel.as_deref().context("--rootfs needs --kernel")?;
    // A bad signing key fails before the filesystem is made.
    let signing_key = match (&a.uki.uki_key, &a.uki.uki_cert) {
        (Some(key), Some(cert)) => Some(super::uki::sign::load_signing_key(key, cert)?),
        _ => None,
    };
    let dir = abkit_atomic::ScratchDir::new_in(out_dir, ".abkit-rootfs-")
        .with_context(|| format!("cannot create a folder in {}", out_dir.display()))?;
    let system = dir.path().join("system.erofs");
    let fs = rootfs::ErofsOptions {
        timestamp: a.created.unwrap_or(0),
        uuid: rootfs::fs_uuid_for(&a.compatible, &a.version.to_string()),
        compressor: a.uki.erofs_compress.clone(),
    };
    rootfs::mkfs_erofs(rootfs, &system, &fs).map_err(coded)?;
    let salt = rootfs::verity_salt_for(&system).map_err(coded)?;
    let uuid = rootfs::verity_uuid_for(&salt);
    let tree = rootfs::verity_tree(&system, &salt, uuid).map_err(coded)?;
    let cmdline = abkit_uki::root::with_verity_root(
        &a.uki.cmdline,
        &a.uki.label_prefix,
        &hex::encode(tree.root_hash),
        tree.data_size(),
    )?;
    let stub_path = super::uki::find_stub(a.uki.stub.clone())?;
    let read = |p: &Path, what: &str| {
        std::fs::read(p).with_context(|| format!("cannot read the {what} {}", p.display()))
    };
    let stub = read(&stub_path, "stub")?;
    let kernel = read(kernel_path, "kernel")?;
    let initrd = a
        .uki
        .initrd
        .as_deref()
        .map(|p| read(p, "initrd"))
        .transpose()?;
    let osrel = a
        .uki
        .osrel
        .as_deref()
        .map(|p| read(p, "os-release"))
        .transpose()?;
    let uki = abkit_uki::build(
        &stub,
        &abkit_uki::UkiParts {
            linux: &kernel,
            initrd: initrd.as_deref(),
            cmdline: Some(cmdline.as_bytes()),
            osrel: osrel.as_deref(),
        },
    )
    .with_context(|| format!("cannot build a UKI on {}", stub_path.display()))?;
    let uki = match &signing_key {
        Some(k) => abkit_uki::sign(&uki, k).context("cannot sign the UKI")?,
        None => uki,
    };
    let efi = dir.path().join("boot.efi");
    std::fs::write(&efi, uki)?;
    Ok(BuiltRelease {
        _dir: dir,
        efi,
        system,
        root_hash: tree.root_hash,
        salt,
        uuid,
    })
}

fn create(a: CreateArgs) -> anyhow::Result<()> {
    // The output must not be an input: not the release key, not an image.
    let mut inputs: Vec<&Path> = [
        &a.efi,
        &a.system,
        &a.uki.kernel,
        &a.uki.initrd,
        &a.uki.osrel,
        &a.uki.uki_key,
        &a.uki.uki_cert,
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect();
    inputs.extend(a.keys.iter().map(PathBuf::as_path));
    abkit_bundle::writer::check_output_not_input(&a.out, &inputs).map_err(coded)?;
    let keys = a
        .keys
        .iter()
        .map(|p| SecretKey::load(p).map_err(coded))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let out_dir = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let release = match &a.rootfs {
        Some(rootfs) => Some(build_release(&a, rootfs, &out_dir)?),
        None => None,
    };
    let (efi, system) = match &release {
        Some(r) => (r.efi.clone(), r.system.clone()),
        None => (
            a.efi.clone().context("--efi is required")?,
            a.system.clone().context("--system is required")?,
        ),
    };
    let mut opts = CreateOptions::new(&a.compatible, a.version.clone());
    opts.min_version = a.min_version.clone();
    if let Some(t) = a.created {
        opts.created = t;
    }
    if let Some(r) = &release {
        // The tree the UKI's root hash was computed from, byte for byte.
        opts.verity_salt = Some(r.salt.clone());
        opts.verity_uuid = Some(r.uuid);
    }
    if let Some(salt) = &a.verity_salt {
        let salt = hex::decode(salt).context("--verity-salt must be hex")?;
        anyhow::ensure!(
            !salt.is_empty() && salt.len() <= 256,
            "--verity-salt must be 1 to 256 bytes"
        );
        opts.verity_uuid = Some(abkit_bundle::rootfs::verity_uuid_for(&salt));
        opts.verity_salt = Some(salt);
    }
    opts.block_size = a
        .block_kib
        .checked_mul(1024)
        .with_context(|| format!("--block-kib {} is too large", a.block_kib))?;
    opts.compression = if a.zstd {
        Compression::Zstd
    } else {
        Compression::None
    };
    opts.zstd_level = a.zstd_level;
    opts.chunk_size = a
        .chunk_kib
        .checked_mul(1024)
        .with_context(|| format!("--chunk-kib {} is too large", a.chunk_kib))?;
    let specs = [
        PayloadSpec {
            name: Payload::Efi.name().into(),
            path: efi,
            verity: false,
        },
        PayloadSpec {
            name: Payload::System.name().into(),
            path: system,
            verity: true,
        },
    ];
    let mut total = 0;
    for s in &specs {
        total += std::fs::metadata(&s.path)
            .with_context(|| format!("cannot read {}", s.path.display()))?
            .len();
    }
    // Each input is read twice (hash, then copy): the byte counts add up
    // to twice their size.
    let mut progress = super::progress::Output::on_stderr();
    let result = abkit_bundle::create_bundle(
        &a.out,
        &specs,
        &opts,
        &keys,
        &mut abkit_update::progress::bytes(&mut progress, Step::CreateBundle, 2 * total),
    );
    progress.finish();
    let manifest = result
        .map_err(coded)
        .with_context(|| format!("cannot create bundle {}", a.out.display()))?;
    if let Some(r) = &release {
        let system_root = manifest
            .payloads
            .iter()
            .find_map(|p| p.verity.as_ref())
            .map(|v| v.root_hash.0);
        if system_root != Some(r.root_hash) {
            let _ = std::fs::remove_file(&a.out);
            anyhow::bail!("internal error: the bundle's verity root differs from the UKI's");
        }
    }
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({size} bytes): {} {}",
        a.out.display(),
        manifest.compatible,
        manifest.version
    );
    print_payloads(&manifest);
    if let Some(r) = &release {
        println!(
            "root hash: {} (on the UKI's command line)",
            hex::encode(r.root_hash)
        );
    }
    Ok(())
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let keyring = load_keyring(&a.keyring)?;
    let source = open_source(&a.bundle, &a.registry)?;
    let result = BundleReader::open(source, &keyring).and_then(verify_payloads);
    let (manifest, signer, digests, uki_root) = result
        .map_err(coded)
        .with_context(|| format!("bundle {} failed verification", a.bundle.display()))?;
    if a.json {
        let payloads: Vec<_> = digests
            .iter()
            .map(|(name, d)| serde_json::json!({"name": name, "blake3": hex::encode(d)}))
            .collect();
        let doc = serde_json::json!({
            "ok": true,
            "compatible": manifest.compatible,
            "version": manifest.version.to_string(),
            "signer": signer.to_string(),
            "payloads": payloads,
            "root_hash": uki_root,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "ok: {} {} signed by key {signer}",
            manifest.compatible, manifest.version
        );
        for (name, d) in &digests {
            println!("  {name}: blake3 {}", hex::encode(d));
        }
        if let Some(root) = &uki_root {
            println!("  root hash: {root} (UKI command line = system payload's verity root)");
        }
    }
    Ok(())
}

type Verified = (
    Manifest,
    abkit_bundle::KeyId,
    Vec<(String, [u8; 32])>,
    Option<String>,
);

/// Every payload to its verified end; the `efi` payload streams through a
/// [`abkit_uki::root::CmdlineCatcher`], and a `roothash=` on its command line
/// must equal the verity root of the `system` payload
/// ([`abkit_bundle::Error::RootHashMismatch`]).
fn verify_payloads<R: Read>(mut reader: BundleReader<R>) -> abkit_bundle::Result<Verified> {
    let manifest = reader.manifest().clone();
    let signer = reader.signer();
    let mut digests = Vec::new();
    let mut cmdline = None;
    while let Some(payload) = reader.next_payload()? {
        let name = payload.entry().name.clone();
        let digest = if Payload::from_name(&name) == Some(Payload::Efi) {
            let mut catcher = abkit_uki::root::CmdlineCatcher::new();
            let digest = payload.write_to(&mut catcher)?;
            cmdline = catcher.finish();
            digest
        } else {
            payload.finish()?
        };
        digests.push((name, digest));
    }
    let uki_root = cmdline
        .as_deref()
        .and_then(abkit_uki::root::root_verity)
        .map(|v| v.root_hash);
    if let Some(uki) = &uki_root {
        let system = manifest
            .payloads
            .iter()
            .find(|p| p.name == Payload::System.name())
            .and_then(|p| p.verity.as_ref())
            .map(|v| hex::encode(v.root_hash.0))
            .unwrap_or_else(|| "none".into());
        if !uki.eq_ignore_ascii_case(&system) {
            return Err(abkit_bundle::Error::RootHashMismatch {
                uki: uki.clone(),
                system,
            });
        }
    }
    Ok((manifest, signer, digests, uki_root))
}

fn status_name(s: SignatureStatus) -> &'static str {
    match s {
        SignatureStatus::Valid => "valid",
        SignatureStatus::Invalid => "INVALID",
        SignatureStatus::UntrustedKey => "untrusted key",
        SignatureStatus::Unchecked => "not checked (no keyring)",
    }
}

fn created_text(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let keyring = a.keyring.as_deref().map(load_keyring).transpose()?;
    let mut source = open_source(&a.bundle, &a.registry)?;
    let head = BundleHead::read(&mut source)
        .map_err(coded)
        .with_context(|| format!("cannot read bundle {}", a.bundle.display()))?;
    let statuses = head.signature_status(keyring.as_ref());
    if a.json {
        let sigs: Vec<_> = statuses
            .iter()
            .zip(&head.raw.signatures)
            .map(|((id, st), s)| {
                serde_json::json!({
                    "key_id": id.to_string(),
                    "public_key": hex::encode(s.public_key),
                    "status": match st {
                        SignatureStatus::Valid => "valid",
                        SignatureStatus::Invalid => "invalid",
                        SignatureStatus::UntrustedKey => "untrusted-key",
                        SignatureStatus::Unchecked => "unchecked",
                    },
                })
            })
            .collect();
        let doc = serde_json::json!({
            "ok": true,
            "format_version": head.raw.header.format_version,
            "manifest_len": head.raw.header.manifest_len,
            "signed_sha256": hex::encode(head.raw.signed_sha256()),
            "created_rfc3339": created_text(head.manifest.created),
            "manifest": head.manifest,
            "signatures": sigs,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let m = &head.manifest;
    println!("format version: {}", head.raw.header.format_version);
    println!("compatible:     {}", m.compatible);
    println!("version:        {}", m.version);
    if let Some(min) = &m.min_version {
        println!("min version:    {min}");
    }
    println!("created:        {}", created_text(m.created));
    println!("chunk size:     {} bytes", m.chunk_size);
    print_payloads(m);
    println!("signatures:");
    if statuses.is_empty() {
        println!("  (none)");
    }
    for (id, st) in &statuses {
        println!("  key {id}: {}", status_name(*st));
    }
    Ok(())
}

fn print_payloads(m: &Manifest) {
    println!("payloads:");
    for p in &m.payloads {
        let compression = match p.compression {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        };
        println!(
            "  {}: {} bytes ({} stored, {compression}, {} chunks) blake3 {}",
            p.name,
            p.size,
            p.stored_size,
            p.chunks.len(),
            p.blake3
        );
        if let Some(v) = &p.verity {
            println!(
                "    dm-verity: root {} salt {} data {} bytes, hash offset {}",
                v.root_hash,
                hex::encode(&v.salt.0),
                v.data_size,
                v.hash_offset
            );
        }
    }
}

fn extract(a: ExtractArgs) -> anyhow::Result<()> {
    let keyring = load_keyring(&a.keyring)?;
    let source = open_source(&a.bundle, &a.registry)?;
    let mut reader = BundleReader::open(source, &keyring)
        .map_err(coded)
        .with_context(|| format!("bundle {} failed verification", a.bundle.display()))?;
    let staging = Staging::new(&a.out)?;
    let mut names = Vec::new();
    while let Some(payload) = reader
        .next_payload()
        .map_err(coded)
        .with_context(|| format!("bundle {} failed verification", a.bundle.display()))?
    {
        // Names are [a-z0-9_-]{1,64} (checked by the manifest parser): safe as file names.
        let name = payload.entry().name.clone();
        let path = staging.dir.path().join(&name);
        // Payloads are not secret: the usual file mode.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        // write_to hands over whole verified chunks: one write per chunk.
        payload
            .write_to(&mut file)
            .map_err(coded)
            .with_context(|| format!("payload `{name}` failed verification; nothing written"))?;
        file.sync_all()?;
        names.push(name);
    }
    // next_payload returned None: every payload and the end of the bundle
    // checked out. Only now does anything appear under --out.
    for path in staging.publish(&names)? {
        println!("{}", path.display());
    }
    Ok(())
}

/// A hidden folder that payloads are extracted into, on the same file
/// system as the output folder; removed with its contents when dropped, so
/// a bundle that fails verification leaves nothing behind.
struct Staging {
    dir: abkit_atomic::ScratchDir,
    out: PathBuf,
    /// `out` exists: the staging folder is inside it and its files are
    /// renamed into it; otherwise the staging folder is renamed to `out`.
    out_exists: bool,
}

impl Staging {
    fn new(out: &Path) -> anyhow::Result<Staging> {
        let out_exists = match std::fs::metadata(out) {
            Ok(meta) if meta.is_dir() => true,
            Ok(_) => anyhow::bail!("--out {} exists and is not a folder", out.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(e).with_context(|| format!("cannot inspect {}", out.display()));
            }
        };
        let parent = if out_exists {
            out.to_owned()
        } else {
            let parent = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            std::fs::create_dir_all(&parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            parent
        };
        let dir = abkit_atomic::ScratchDir::new_in(&parent, ".abkit-extract-")
            .with_context(|| format!("cannot create a folder in {}", parent.display()))?;
        Ok(Staging {
            dir,
            out: out.to_owned(),
            out_exists,
        })
    }

    /// Moves the verified payloads to `out`; returns their final paths.
    fn publish(self, names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
        let finals: Vec<PathBuf> = names.iter().map(|n| self.out.join(n)).collect();
        if self.out_exists {
            for (name, target) in names.iter().zip(&finals) {
                std::fs::rename(self.dir.path().join(name), target)
                    .with_context(|| format!("cannot write {}", target.display()))?;
            }
            // self.dir (now empty) is removed on drop.
        } else {
            std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
            self.dir
                .persist_as(&self.out)
                .with_context(|| format!("cannot create {}", self.out.display()))?;
        }
        if let Ok(dir) = File::open(&self.out) {
            // Make the renames durable; a failure here changes nothing verified.
            let _ = dir.sync_all();
        }
        Ok(finals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_time_prints_as_rfc3339() {
        assert_eq!(created_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(created_text(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(created_text(u64::MAX), "9999-12-31T23:59:59Z");
    }
}
