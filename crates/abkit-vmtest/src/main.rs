//! `abkit-vmtest`: runs the VM end-to-end scenarios (`run`) or tells the
//! A/B story on a kept disk image (`demo`). Built and started by
//! `make vm-e2e` and `make demo`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use abkit_vmtest::fixtures::{self, Fixtures, Inputs, Y, Z_BROKEN};
use abkit_vmtest::http::FileServer;
use abkit_vmtest::qemu::{Accel, BootSpec, Machine, kvm_available};
use abkit_vmtest::scenarios::{self, SCENARIOS, Suite, on_disk};
use abkit_vmtest::serial::Ending;
use abkit_vmtest::vars::BootVars;

/// End-to-end tests of abkit on real UEFI firmware (OVMF under QEMU).
#[derive(Parser)]
struct Cli {
    /// A static abkit binary: used on the host and shipped in the test OS.
    #[arg(long, value_name = "FILE")]
    abkit: PathBuf,
    /// The static test OS init (testos-init).
    #[arg(long, value_name = "FILE")]
    init: PathBuf,
    /// The EFI loader stub (`make stub`).
    #[arg(long, value_name = "FILE", default_value = "build/abkit-stub.efi")]
    stub: PathBuf,
    /// Debian's kernel package, unpacked (`make deps`).
    #[arg(long, value_name = "DIR", default_value = "build/kernel")]
    kernel_dir: PathBuf,
    /// QEMU accelerator: auto probes KVM with one boot and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto", global = true)]
    accel: AccelChoice,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelChoice {
    Auto,
    Tcg,
    Kvm,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all by default) and print per-test timings.
    Run {
        /// Scenario names to run (see `list`).
        scenario: Vec<String>,
        /// Work folder (emptied first); logs stay there.
        #[arg(long, value_name = "DIR", default_value = "build/vm-e2e")]
        work: PathBuf,
        /// Machines booted at once (one QEMU, one vCPU each). Default: the
        /// host's CPU count, at most 4, or $ABKIT_VM_JOBS.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// List the scenarios.
    List,
    /// Build an image with X on slot A and show an update, a trial boot, a
    /// broken update and the automatic rollback, boot by boot.
    Demo {
        /// Where the image, VARS file and logs are kept.
        #[arg(long, value_name = "DIR", default_value = "build/demo")]
        work: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("abkit-vmtest: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<i32> {
    let inputs = Inputs {
        abkit: absolute(&cli.abkit)?,
        init: absolute(&cli.init)?,
        stub: absolute(&cli.stub)?,
        kernel_dir: absolute(&cli.kernel_dir)?,
    };
    match cli.command {
        Cmd::List => {
            for (name, what, _) in SCENARIOS {
                println!("{name:<20} {what}");
            }
            Ok(0)
        }
        Cmd::Run {
            scenario,
            work,
            jobs,
        } => {
            let jobs = jobs.unwrap_or_else(default_jobs);
            let started = Instant::now();
            let work = absolute(&work)?;
            let _lock = lock_work(&work)?;
            eprintln!("vm-e2e: building fixtures in {}", work.display());
            let fx = fixtures::build(&inputs, &work.join("fixtures"), &mut |m| {
                eprintln!("vm-e2e:   {m}")
            })?;
            let accel = choose_accel(cli.accel, &fx, &work)?;
            let http = FileServer::start(&fx.bundle_dir).context("starting the HTTP server")?;
            let suite = Suite {
                fx,
                accel,
                http,
                work,
                after_seed: Default::default(),
            };
            eprintln!(
                "vm-e2e: fixtures and accelerator ready in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            let failed = scenarios::run_all(&suite, &scenario, jobs)?;
            eprintln!(
                "vm-e2e: {} in {:.1} s",
                if failed == 0 { "all passed" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            Ok(if failed == 0 { 0 } else { 1 })
        }
        Cmd::Demo { work } => {
            let work = absolute(&work)?;
            let _lock = lock_work(&work)?;
            demo(&inputs, &work, cli.accel)
        }
    }
}

/// $ABKIT_VM_JOBS, else the CPU count capped at 4 (each TCG machine keeps
/// one core busy; more would only slow every boot down).
fn default_jobs() -> usize {
    std::env::var("ABKIT_VM_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        })
}

/// Holds an exclusive lock on `<work>.lock` so two runs never share a work
/// folder (they would overwrite each other's disks and logs).
fn lock_work(work: &Path) -> anyhow::Result<std::fs::File> {
    let path = work.with_extension("lock");
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "another run is using {} (lock {})",
                work.display(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// TCG unless asked for KVM, or `auto` and one probe boot under KVM works
/// (on many hosts /dev/kvm exists but guests die in emulation; under KVM
/// the test OS is up in a few seconds, so the probe gives up after 20 s).
fn choose_accel(choice: AccelChoice, fx: &Fixtures, work: &Path) -> anyhow::Result<Accel> {
    match choice {
        AccelChoice::Tcg => Ok(Accel::Tcg),
        AccelChoice::Kvm => Ok(Accel::Kvm),
        AccelChoice::Auto if !kvm_available() => {
            eprintln!("vm-e2e: accelerator tcg (/dev/kvm not usable)");
            Ok(Accel::Tcg)
        }
        AccelChoice::Auto => {
            let dir = work.join("kvm-probe");
            let (disk, vars) = fx.fresh_machine(&dir)?;
            let m = Machine {
                disk,
                vars,
                bundles: None,
                accel: Accel::Kvm,
                firmware: Default::default(),
            };
            let t = Instant::now();
            let spec = BootSpec {
                action: "skip-mark-good; poweroff".into(),
                timeout: Some(Duration::from_secs(20)),
                ..BootSpec::default()
            };
            let works =
                matches!(m.boot(&spec, &dir.join("boot.log")), Ok(b) if b.report.testos.len() == 1);
            let accel = if works { Accel::Kvm } else { Accel::Tcg };
            eprintln!(
                "vm-e2e: accelerator {} (KVM probe {} in {:.1} s)",
                accel.name(),
                if works { "booted" } else { "failed" },
                t.elapsed().as_secs_f64()
            );
            Ok(accel)
        }
    }
}

/// Where the booted root came from and what /data held, from the guest's
/// lines: `root: erofs, read-only, dm-verity over /dev/vda2 (root hash
/// 1a2b3c4d...); /data: demo-note=...`.
fn root_story(log: &Path) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .unwrap_or("")
            .to_string()
    };
    let over = after("testos: initrd: /dev/mapper/root = dm-verity over ");
    let device = over.split(':').next().unwrap_or("?");
    let hash = after("testos: initrd: root hash ");
    let hash = hash.get(..16).unwrap_or("?");
    let fs = after("testos: root-mount ");
    let fs: Vec<&str> = fs.split_whitespace().collect();
    let write = after("testos: root-write ");
    let note = after("testos: data demo-note");
    format!(
        "root: {} on {} ({}), dm-verity over {device}, root hash {hash}... from the UKI; write to / {}; /data: demo-note{}",
        fs.get(2).unwrap_or(&"?"),
        fs.first().unwrap_or(&"?"),
        fs.get(3).and_then(|o| o.split(',').next()).unwrap_or("?"),
        write.split(':').next().unwrap_or("?"),
        if note.is_empty() {
            " not read (the boot stopped before its steps)".into()
        } else {
            note
        }
    )
}

fn demo(inputs: &Inputs, work: &Path, accel: AccelChoice) -> anyhow::Result<i32> {
    let started = Instant::now();
    let at = || format!("[{:>5.1} s]", started.elapsed().as_secs_f64());
    println!("abkit demo: A/B updates of a small test OS on real UEFI firmware (OVMF under QEMU).");
    println!(
        "Without KVM (TCG) every boot takes 10-20 s; the story about a minute after the build.\n"
    );
    println!(
        "{} building the test OS variants X 1.0.0, Y 1.1.0 and a broken Z 1.2.0, their signed bundles and a disk image",
        at()
    );
    let fx = fixtures::build(inputs, &work.join("fixtures"), &mut |_| {})?;
    let accel = choose_accel(accel, &fx, work)?;
    let disk = work.join("disk.img");
    let vars = work.join("vars.fd");
    let (d, v) = fx.fresh_machine(&work.join("fixtures/machine"))?;
    std::fs::rename(d, &disk)?;
    std::fs::rename(v, &vars)?;
    let m = Machine {
        disk: disk.clone(),
        vars: vars.clone(),
        bundles: Some(fx.bundle_disk.clone()),
        accel,
        firmware: Default::default(),
    };
    println!(
        "{} disk image ready: X 1.0.0 on slot A, boot entries \"abkit slot A\" (first) and \"abkit slot B\"\n",
        at()
    );

    let steps: [(&str, String); 4] = [
        (
            "install Y 1.1.0 into the other slot",
            format!(
                "data-write demo-note written-by-X-1.0.0; data-read demo-note; install {}; reboot",
                on_disk(&Y)
            ),
        ),
        (
            "install Z 1.2.0 (broken: fails its health check)",
            format!(
                "data-read demo-note; install {}; reboot",
                on_disk(&Z_BROKEN)
            ),
        ),
        ("", "data-read demo-note; poweroff".into()),
        ("", "data-read demo-note; poweroff".into()),
    ];
    let mut before = BootVars::read(&fx.release.abkit, &vars)?;
    for (i, (what, action)) in steps.iter().enumerate() {
        let log = work.join(format!("boot-{}.log", i + 1));
        let how = match before.next_slot() {
            Some(s) => format!("BootNext -> slot {s} (trial)"),
            None => format!("BootOrder -> slot {}", before.first_slot()),
        };
        let b = m.boot(
            &BootSpec {
                action: action.clone(),
                ..BootSpec::default()
            },
            &log,
        )?;
        let after = BootVars::read(&fx.release.abkit, &vars)?;
        let r = &b.report;
        let Some(t) = r.testos.first() else {
            bail!(
                "boot {} printed no TESTOS line (log {})",
                i + 1,
                log.display()
            );
        };
        let os = match t.variant.strip_suffix("broken") {
            Some(name) => format!("{name} {} (broken)", t.version),
            None => format!("{} {}", t.variant, t.version),
        };
        let health = if r.health_bad {
            "health check FAILED: not committed; reboots".to_string()
        } else {
            match r.result("mark-good") {
                Some("0") => format!(
                    "healthy: committed (BootOrder starts with slot {})",
                    after.first_slot()
                ),
                Some(code) => format!("healthy, but mark-good failed (exit {code})"),
                None => "no health result".into(),
            }
        };
        println!(
            "{} boot {}  {how:<28}  slot {}  {os:<18}  {health}",
            at(),
            i + 1,
            t.slot
        );
        println!("{}         {}", at(), root_story(&log));
        if !what.is_empty() {
            match r.result("install") {
                Some("0") => println!(
                    "{}         {what}: written and verified; BootNext -> slot {}",
                    at(),
                    after.next_slot().map_or("-".into(), |s| s.to_string())
                ),
                other => bail!("install failed ({other:?}); see {}", log.display()),
            }
        }
        if r.ending == Ending::Unknown {
            bail!("boot {} did not end cleanly (log {})", i + 1, log.display());
        }
        before = after;
    }
    println!(
        "{} back on Y 1.1.0 by itself: the broken Z never became permanent; the note X wrote to /data is still there.\n",
        at()
    );

    println!(
        "$ abkit status --disk {} --ovmf-vars {} --booted-slot b",
        disk.display(),
        vars.display()
    );
    let out = std::process::Command::new(&fx.release.abkit)
        .args(["status", "--disk"])
        .arg(&disk)
        .arg("--ovmf-vars")
        .arg(&vars)
        .args(["--booted-slot", "b"])
        .output()?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("\n$ abkit efi list --ovmf-vars {}", vars.display());
    let out = std::process::Command::new(&fx.release.abkit)
        .args(["efi", "list", "--ovmf-vars"])
        .arg(&vars)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "\nKept: disk image {}, firmware variables {}, serial logs {}/boot-N.log",
        disk.display(),
        vars.display(),
        work.display()
    );
    println!("Boot it by hand (the test OS marks itself good and powers off; Ctrl-A X quits):");
    println!("  {}", m.manual_command());
    Ok(0)
}
