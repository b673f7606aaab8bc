//! `abkit`: A/B operating-system updates for UEFI machines.
//!
//! This binary is thin glue: it parses the command line with clap and hands
//! each subcommand to its module in `cmd/`, which calls the library crates
//! and adds context to their typed errors.

mod cmd;

use clap::{Parser, Subcommand};

/// A/B operating-system updates for UEFI machines.
///
/// abkit writes a new OS version into the inactive slot, boots it once with
/// the firmware's BootNext, and makes it permanent only when it is healthy.
/// Every machine command works on the running system by default, or offline
/// on a disk image with --disk IMAGE --ovmf-vars FILE --booted-slot A.
#[derive(Parser)]
#[command(name = "abkit", version, about, long_about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install a bundle into the inactive slot and boot it once (trial boot).
    Install(cmd::install::InstallArgs),
    /// Mark the running slot good: check its written data (after an install),
    /// repair boot entries and commit it in BootOrder.
    MarkGood(cmd::mark_good::MarkGoodArgs),
    /// Boot the other slot once (it must have been good before).
    Rollback(cmd::rollback::RollbackArgs),
    /// Show the running and committed slot, a pending trial, and what each slot holds.
    Status(cmd::status::StatusArgs),
    /// Read and change the firmware's boot variables (Boot####, BootOrder, BootNext).
    #[command(subcommand)]
    Efi(cmd::efi::EfiCommand),
    /// Build the EFI loader (stub + kernel + initrd + command line) and inspect built ones.
    #[command(subcommand)]
    Uki(cmd::uki::UkiCommand),
    /// Create, verify, inspect and extract signed update bundles.
    #[command(subcommand)]
    Bundle(cmd::bundle::BundleCommand),
    /// Make an Ed25519 key pair for signing bundles (NAME.key and NAME.pub).
    Keygen(cmd::keygen::KeygenArgs),
    /// Build an A/B disk image, or inspect one.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Run the agent: the health gate (commit or reboot) and the node API.
    Agent(Box<cmd::agent::AgentArgs>),
    /// Reboot coordination: a FleetLock server on etcd, and its semaphores.
    #[command(subcommand)]
    Fleetlock(cmd::fleetlock::FleetlockCommand),
    /// Fleet rollouts in waves, kept in etcd: start, status, resume, abort.
    #[command(subcommand)]
    Rollout(cmd::rollout::RolloutCommand),
}

/// Dies quietly on a closed pipe (`abkit ... | head`), like other Unix
/// tools, instead of panicking in `println!`.
fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL runs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> std::process::ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    // The agent is a daemon: what it does belongs in its log (the journal).
    let level = if matches!(
        cli.command,
        Command::Agent(_) | Command::Fleetlock(cmd::fleetlock::FleetlockCommand::Serve(_))
    ) {
        "info"
    } else {
        "warn"
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    // Machine commands asked for JSON report a failure as JSON on stdout too
    // (bundle commands do it themselves).
    let json_failure =
        !matches!(cli.command, Command::Bundle(_)) && std::env::args().any(|a| a == "--json");
    let result = match cli.command {
        Command::Install(a) => cmd::install::run(a),
        Command::MarkGood(a) => cmd::mark_good::run(a),
        Command::Rollback(a) => cmd::rollback::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Efi(c) => cmd::efi::run(c),
        Command::Uki(c) => cmd::uki::run(c),
        Command::Bundle(c) => cmd::bundle::run(c),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Image(c) => cmd::image::run(c),
        Command::Agent(a) => cmd::agent::run(*a),
        Command::Fleetlock(c) => cmd::fleetlock::run(c),
        Command::Rollout(c) => cmd::rollout::run(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            if json_failure {
                println!("{}", cmd::errors::json_error(&err));
            }
            let code = cmd::errors::error_code(&err);
            let text = cmd::errors::error_chain(&err);
            if code == "error" || text.contains(&format!("[{code}]")) {
                eprintln!("abkit: error: {text}");
            } else {
                eprintln!("abkit: error: {text} [{code}]");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
