//! `abkit install`: write a bundle into the inactive slot and boot it once.

use std::path::PathBuf;
use std::time::Duration;

use abkit_bundle::Keyring;
use abkit_update::InstallOptions;
use abkit_update::boot_control::{BootControl, Mechanism};
use anyhow::Context;
use clap::Args;

use super::machine::MachineArgs;
use super::progress::Output;

/// Default keyring of trusted bundle signers.
pub const DEFAULT_KEYRING: &str = "/etc/abkit/keyring";

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    machine: MachineArgs,

    /// The bundle: a file path, `-` for standard input (a pipe, installed
    /// whole), an http(s) URL, or a registry reference
    /// oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:DIGEST
    /// (the manifest must hash to that digest). A URL is installed as a
    /// delta: the blocks this machine already holds (running slot, running
    /// loader, the target slot's old contents) are copied and only the
    /// missing ones fetched with Range requests, each checked against the
    /// bundle's signed block index; a server that ignores Range gets a full
    /// download. Retried and resumed on network errors.
    source: String,

    /// Folder of trusted public keys (*.pub) [default: /etc/abkit/keyring].
    #[arg(long, value_name = "DIR")]
    keyring: Option<PathBuf>,

    /// Do not reboot into the new version at the end (live system only;
    /// an offline image never reboots).
    #[arg(long, conflicts_with = "activate")]
    no_reboot: bool,

    /// How the new version starts at the end (live system only): `reboot`
    /// (through the firmware, the default) or `kexec` (the new slot's
    /// kernel, initrd and command line are started with kexec_file_load,
    /// skipping the firmware: for machines that take minutes to reboot).
    /// Either way it is a trial: BootOrder still names the old slot until
    /// `mark-good`. If the kernel refuses the kexec (Secure Boot lockdown,
    /// kexec disabled) abkit says why and reboots through the firmware
    /// instead. Limits: docs/update.md.
    #[arg(long, value_name = "HOW", value_parser = ["reboot", "kexec"])]
    activate: Option<String>,

    /// Install even if the bundle's version is older than the committed one.
    #[arg(long)]
    allow_downgrade: bool,

    /// Install although the running slot's record does not say its product
    /// and version (a disk built from raw files, not from a bundle): the
    /// bundle cannot be checked against what the machine runs.
    #[arg(long)]
    allow_unrecorded: bool,

    /// Download the whole bundle even from a URL (no delta install).
    #[arg(long)]
    no_delta: bool,

    /// One JSON object per step and progress event on stdout (also the
    /// default when stdout is not a terminal).
    #[arg(long)]
    json: bool,

    /// How this machine asks its firmware for the trial boot, remembered
    /// for the machine (on its ESP) before the install: `bootnext` (the
    /// default: BootNext, no pre-loader), `state-file` (the removable-media
    /// loader runs as a pre-loader and follows \EFI\abkit\loader-state:
    /// for firmware that ignores BootNext or loses its entries), or `auto`
    /// (BootNext until a trial reboot shows the firmware ignores it, then
    /// the state file; `abkit status` says why). Without it the machine
    /// keeps what it had.
    #[arg(long, value_name = "MODE", value_parser = boot_control)]
    boot_control: Option<BootControl>,

    /// Minimum download speed: an attempt that brings fewer bytes per second
    /// than this, averaged over --speed-time seconds of waiting for the
    /// server, is given up as stalled and the download resumes where it
    /// stopped on a new connection (6 attempts in all), like curl's
    /// --speed-limit. Raise it to give up sooner on a crawling mirror;
    /// 0 turns the check off.
    #[arg(
        long,
        value_name = "BYTES_PER_SEC",
        default_value_t = 1024,
        help_heading = "Download (http/https source)"
    )]
    speed_limit: u64,

    /// How long, in seconds, a download may stay below --speed-limit before
    /// the attempt is given up (like curl's --speed-time). No single wait for
    /// the server lasts longer. 0 turns the check off.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        help_heading = "Download (http/https source)"
    )]
    speed_time: u64,

    #[command(flatten)]
    registry: super::registry::RegistryArgs,
}

/// Parses `--boot-control`.
pub fn boot_control(text: &str) -> Result<BootControl, String> {
    BootControl::parse(text)
        .ok_or_else(|| format!("{text:?} is not a boot control: bootnext, state-file or auto"))
}

pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    if let Some(socket) = super::agent::running_agent_socket(&args.machine) {
        return install_through_agent(&args, &socket);
    }
    let keyring_dir = args
        .keyring
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KEYRING));
    let keyring = Keyring::load_dir(&keyring_dir)
        .with_context(|| format!("cannot load the keyring {}", keyring_dir.display()))?;
    super::agent::refuse_if_agent_runs(&args.machine)?;
    let kexec = args.activate.as_deref() == Some("kexec");
    let mut m = args.machine.open()?;
    if kexec && !m.is_live() {
        return Err(abkit_update::UpdateError::Kexec(
            "--activate kexec needs the running system, not an offline disk image".into(),
        )
        .into());
    }
    let policy = abkit_fetch::RetryPolicy {
        speed_limit: args.speed_limit,
        speed_time: Duration::from_secs(args.speed_time),
        ..abkit_fetch::RetryPolicy::default()
    };
    let mut out = Output::choose(args.json);
    if let Some(mode) = args.boot_control {
        for change in abkit_update::boot_control::configure(m.as_mut(), mode)
            .context("cannot set the boot control")?
        {
            eprintln!("abkit: {change}");
        }
    }
    // Each retry or resume of a download is a warning in the same output.
    let opener = abkit_fetch::Opener::new(&policy).observe(out.retry_observer());
    let registry = args.registry.options(&policy)?;
    let result = abkit_update::source::install_from(
        m.as_mut(),
        &args.source,
        opener,
        &registry,
        &keyring,
        &InstallOptions {
            allow_downgrade: args.allow_downgrade,
            allow_unrecorded: args.allow_unrecorded,
        },
        !args.no_delta,
        &mut out,
    );
    out.finish();
    let report = result.with_context(|| format!("install of {} failed", args.source))?;
    if out.is_json() {
        Output::json_line(&serde_json::json!({"event": "done", "report": report}));
    } else {
        let transfer = if report.transfer.delta {
            "delta install"
        } else {
            "full install"
        };
        let how = match abkit_update::boot_control::read_control(m.esp()).map(|c| c.active) {
            Ok(Mechanism::StateFile) => {
                "through the pre-loader and \\EFI\\abkit\\loader-state".to_string()
            }
            _ => format!("BootNext = Boot{:04X}", report.boot_next),
        };
        println!(
            "Installed {} {} into slot {} ({transfer}: {} bytes fetched, {} bytes reused). \
             The next boot tries it once ({how}); \
             run `abkit mark-good` there once it is healthy.",
            report.compatible,
            report.version,
            report.target_slot.letter(),
            report.transfer.bytes_fetched,
            report.transfer.bytes_reused,
        );
    }
    if m.is_live() && !args.no_reboot {
        if kexec {
            activate_by_kexec(&args.machine, m, report.target_slot)?;
        } else {
            drop(m);
        }
        reboot()?;
    }
    Ok(())
}

/// Loads the new slot's kernel and jumps into it. Returns (for an ordinary
/// reboot) only when the kernel refused: the trial is then armed for the
/// firmware again.
fn activate_by_kexec(
    args: &MachineArgs,
    mut m: Box<dyn abkit_update::Machine>,
    slot: abkit_update::Slot,
) -> anyhow::Result<()> {
    let loaded = match abkit_update::kexec::load(m.as_mut(), slot) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("abkit: warning: {e}; rebooting through the firmware instead");
            return Ok(());
        }
    };
    eprintln!(
        "abkit: kexec into slot {} (kernel {} bytes, initrd {} bytes): {}",
        loaded.slot.letter(),
        loaded.kernel_bytes,
        loaded.initrd_bytes,
        loaded.cmdline
    );
    // Releases the lock and unmounts a private ESP mount before the jump.
    drop(m);
    let err = abkit_update::kexec::jump();
    eprintln!("abkit: warning: {err}; rebooting through the firmware instead");
    let mut m = args.open()?;
    abkit_update::boot_policy::arm_trial(
        m.as_mut(),
        slot,
        abkit_update::boot_policy::Trial::Install,
    )
    .context("cannot arm the trial again for the firmware")?;
    Ok(())
}

/// Syncs filesystems and restarts the machine.
fn reboot() -> anyhow::Result<()> {
    eprintln!("abkit: rebooting into the new version");
    // SAFETY: sync and reboot take no pointers; reboot only returns on error.
    unsafe { libc::sync() };
    let rc = unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    anyhow::ensure!(
        rc == 0,
        "reboot failed: {} (the update is installed; reboot by hand)",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// An agent owns this machine: the install is its operation (`POST
/// /v1/update`), followed here. Options the API does not carry are
/// refused rather than silently dropped.
fn install_through_agent(args: &InstallArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    let unsupported = [
        (
            args.keyring.is_some(),
            "--keyring (the agent uses its own keyring)",
        ),
        (args.allow_unrecorded, "--allow-unrecorded"),
        (args.no_delta, "--no-delta"),
        (
            args.boot_control.is_some(),
            "--boot-control (the agent's boot_control setting)",
        ),
        (
            args.source == abkit_update::source::STDIN,
            "a bundle on standard input (the agent opens the source itself: save it to a file \
             and install that path, or give a URL)",
        ),
    ];
    if let Some((_, flag)) = unsupported.iter().find(|(given, _)| *given) {
        return Err(abkit_agent::AgentError::Running {
            socket: socket.to_path_buf(),
            pid: abkit_agent::client::running_agent(socket).flatten(),
        })
        .with_context(|| format!("{flag} cannot be passed through the agent's API"));
    }
    // The agent resolves paths from its own working folder: send absolute ones.
    let source = if args.source.contains("://") {
        args.source.clone()
    } else {
        std::fs::canonicalize(&args.source)
            .with_context(|| format!("bundle {}", args.source))?
            .display()
            .to_string()
    };
    let request = serde_json::json!({
        "source": source,
        "reboot": !args.no_reboot,
        "allow_downgrade": args.allow_downgrade,
        "activate": args.activate.as_deref().unwrap_or("reboot"),
    });
    let json = args.json || !std::io::IsTerminal::is_terminal(&std::io::stdout());
    let report = super::agent::update_through_agent(socket, &request, json)?;
    if json {
        Output::json_line(&serde_json::json!({"event": "done", "report": report}));
    } else {
        println!(
            "Installed {} {} into slot {} through the agent on {}{}.",
            report["compatible"].as_str().unwrap_or("?"),
            report["version"].as_str().unwrap_or("?"),
            report["target_slot"].as_str().unwrap_or("?"),
            socket.display(),
            if args.no_reboot {
                ""
            } else {
                "; it reboots into the trial"
            }
        );
    }
    Ok(())
}
