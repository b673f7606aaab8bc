//! One boot of the test machine under QEMU with OVMF: a boot disk, its own
//! copy of the VARS file, the bundle disk, user networking, and the test's
//! action in fw_cfg. `-no-reboot` makes every guest reboot end QEMU, so each
//! call is exactly one boot; the next boot reads the same VARS file, as a
//! real reboot would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::serial::{BootReport, Ending, system_bytes_written};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// OVMF built with Secure Boot (needs SMM and a secure pflash).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";

/// Which firmware and platform devices the machine has.
#[derive(Debug, Clone, Default)]
pub struct Firmware {
    /// `OVMF_CODE_4M.secboot.fd` on `q35,smm=on` with a secure pflash;
    /// enforcement follows the keys in the VARS file.
    pub secure_boot: bool,
    /// A TPM 2.0 (swtpm, its state in this folder; a fresh swtpm per boot,
    /// as a power cycle resets the PCRs) on QEMU's tpm-tis.
    pub tpm: Option<PathBuf>,
}

/// TCG (always works) or KVM (where a probe boot succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

/// The machine's disks and firmware store.
#[derive(Debug, Clone)]
pub struct Machine {
    pub disk: PathBuf,
    pub vars: PathBuf,
    /// A whole-disk FAT image with bundles, attached read-only (always, so
    /// the firmware sees the same devices on every boot).
    pub bundles: Option<PathBuf>,
    pub accel: Accel,
    pub firmware: Firmware,
}

/// When the harness cuts the power.
#[derive(Debug, Clone, Copy)]
pub enum Cut {
    /// Once an install reports at least this many bytes of the system image
    /// written, or, if the install prints no progress the harness reads,
    /// `fallback` after the install started.
    SystemBytes { min: u64, fallback: Duration },
    /// Once abkit reports it halted at this checkpoint (`abkit: halted at
    /// NAME`; the action must carry `halt-at NAME`, see
    /// `abkit_update::halt`): abkit has synced and stopped exactly there.
    Checkpoint(&'static str),
    /// Once the serial log has a line starting with this text (for boots
    /// that never reach the test OS, e.g. a loader handing control back to
    /// the firmware, which would go on to network boot).
    SerialLine(&'static str),
}

/// What this boot is asked to do.
#[derive(Debug, Clone, Default)]
pub struct BootSpec {
    /// The testos action (see `testos::guest`).
    pub action: String,
    /// Limit the boot disk's write rate (bytes/s), to make a power cut land
    /// during the write.
    pub write_limit: Option<u64>,
    pub cut: Option<Cut>,
    pub timeout: Option<Duration>,
    /// `(host port, guest port)`: TCP on the host's 127.0.0.1 forwarded to
    /// the guest (QEMU user networking's `hostfwd`).
    pub forwards: Vec<(u16, u16)>,
    /// `(name, file)`: files the guest reads at
    /// `/sys/firmware/qemu_fw_cfg/by_name/<name>/raw` (names start `opt/`).
    pub fw_cfg_files: Vec<(String, PathBuf)>,
    /// Guest memory in MiB instead of the default 1024.
    pub memory_mib: Option<u32>,
}

/// The outcome of one boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub report: BootReport,
    pub log: PathBuf,
    pub took: Duration,
    /// For a power cut: the progress seen when QEMU was killed.
    pub cut_at: Option<String>,
}

impl Machine {
    /// The QEMU arguments for this machine (without the serial log and action).
    pub fn qemu_args(&self, write_limit: Option<u64>, forwards: &[(u16, u16)]) -> Vec<String> {
        let mut disk = format!("if=virtio,format=raw,file={}", escape(&self.disk));
        if let Some(limit) = write_limit {
            disk.push_str(&format!(",throttling.bps-write={limit}"));
        }
        let machine = if self.firmware.secure_boot {
            "q35,smm=on"
        } else {
            "q35"
        };
        let mut args: Vec<String> = [
            "-machine",
            machine,
            "-accel",
            self.accel.name(),
            "-smp",
            "1",
            "-m",
            "1024",
            "-nodefaults",
            "-no-reboot",
        ]
        .map(String::from)
        .to_vec();
        let code = if self.firmware.secure_boot {
            args.extend(
                ["-global", "driver=cfi.pflash01,property=secure,value=on"].map(String::from),
            );
            OVMF_CODE_SECBOOT
        } else {
            OVMF_CODE
        };
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={code}"
        ));
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,unit=1,file={}",
            escape(&self.vars)
        ));
        args.push("-drive".into());
        args.push(disk);
        if let Some(bundles) = &self.bundles {
            args.push("-drive".into());
            args.push(format!(
                "if=virtio,format=raw,readonly=on,file={}",
                escape(bundles)
            ));
        }
        if let Some(dir) = &self.firmware.tpm {
            args.push("-chardev".into());
            args.push(format!(
                "socket,id=chrtpm,path={}",
                escape(&dir.join(SWTPM_SOCKET))
            ));
            args.extend(
                [
                    "-tpmdev",
                    "emulator,id=tpm0,chardev=chrtpm",
                    "-device",
                    "tpm-tis,tpmdev=tpm0",
                ]
                .map(String::from),
            );
        }
        let mut netdev = "user,id=n0".to_string();
        for (host, guest) in forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        args.extend([
            "-netdev".into(),
            netdev,
            "-device".into(),
            "virtio-net-pci,netdev=n0,romfile=".into(),
        ]);
        args
    }

    /// Boots once and waits until the guest powers off or reboots (or the
    /// harness cuts the power, or the timeout hits).
    pub fn boot(&self, spec: &BootSpec, log: &Path) -> anyhow::Result<Boot> {
        let timeout = spec.timeout.unwrap_or_else(default_timeout);
        let _ = std::fs::remove_file(log);
        let mut args = self.qemu_args(spec.write_limit, &spec.forwards);
        if let (Some(mib), Some(at)) = (spec.memory_mib, args.iter().position(|a| a == "-m")) {
            args[at + 1] = mib.to_string();
        }
        args.extend([
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
        ]);
        args.push("-serial".into());
        args.push(format!("file:{}", log.display()));
        args.push("-fw_cfg".into());
        args.push(format!(
            "name=opt/abkit/action,string={}",
            spec.action.replace(',', ",,")
        ));
        for (name, file) in &spec.fw_cfg_files {
            args.push("-fw_cfg".into());
            args.push(format!("name={name},file={}", escape(file)));
        }
        // QEMU's messages go to a file next to the serial log: read while it
        // runs (a KVM failure leaves QEMU hanging with only a message there).
        let stderr_path = log.with_extension("qemu-stderr");
        let stderr_file = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let started = Instant::now();
        let _tpm = match &self.firmware.tpm {
            Some(dir) => Some(Swtpm::start(dir)?),
            None => None,
        };
        let mut child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let mut cut_at = None;
        let mut install_started: Option<Instant> = None;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if self.accel == Accel::Kvm {
                let stderr = std::fs::read(&stderr_path).unwrap_or_default();
                if String::from_utf8_lossy(&stderr).contains("KVM internal error") {
                    // QEMU stops the guest and waits: no point in waiting too.
                    kill(&mut child);
                    bail!(
                        "KVM internal error after {:.1} s (QEMU messages: {})",
                        started.elapsed().as_secs_f64(),
                        stderr_path.display()
                    );
                }
            }
            if started.elapsed() > timeout {
                kill(&mut child);
                bail!(
                    "the boot did not end within {} s (serial log: {})",
                    timeout.as_secs(),
                    log.display()
                );
            }
            if let Some(Cut::Checkpoint(name)) = spec.cut {
                let text =
                    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
                if BootReport::parse(&text).halted_at.as_deref() == Some(name) {
                    kill(&mut child);
                    cut_at = Some(format!("checkpoint {name}"));
                    break None;
                }
            }
            if let Some(Cut::SerialLine(start)) = spec.cut {
                let text =
                    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
                if text.lines().any(|l| l.starts_with(start)) {
                    kill(&mut child);
                    cut_at = Some(format!("serial line {start:?}"));
                    break None;
                }
            }
            if let Some(Cut::SystemBytes { min, fallback }) = spec.cut {
                let text =
                    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
                if install_started.is_none() && text.contains("testos: run: abkit install") {
                    install_started = Some(Instant::now());
                }
                let report = BootReport::parse(&text);
                let written = report.json.iter().filter_map(system_bytes_written).max();
                if let Some(n) = written.filter(|&n| n >= min) {
                    kill(&mut child);
                    cut_at = Some(format!("{n} bytes of the system image written"));
                    break None;
                }
                if let Some(t) = install_started
                    && written.is_none()
                    && t.elapsed() >= fallback
                {
                    kill(&mut child);
                    cut_at = Some(format!(
                        "{:.1} s into the install (no progress lines seen)",
                        t.elapsed().as_secs_f64()
                    ));
                    break None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = started.elapsed();
        if let Some(status) = status
            && !status.success()
        {
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("qemu exited with {status}: {}", stderr.trim());
        }
        let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        let mut report = BootReport::parse(&text);
        if cut_at.is_some() {
            report.ending = Ending::Killed;
        }
        Ok(Boot {
            report,
            log: log.to_path_buf(),
            took,
            cut_at,
        })
    }

    /// The command a person runs to boot this machine by hand.
    pub fn manual_command(&self) -> String {
        let mut words = vec!["qemu-system-x86_64".to_string()];
        words.extend(self.qemu_args(None, &[]));
        words.retain(|w| w != "-no-reboot");
        words.extend(["-nographic".into(), "-serial".into(), "mon:stdio".into()]);
        words
            .iter()
            .map(|w| {
                if w.contains([' ', '\\', '"', '\'']) {
                    format!("'{w}'")
                } else {
                    w.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// swtpm's control socket in the TPM state folder.
const SWTPM_SOCKET: &str = "swtpm.sock";

/// A running `swtpm socket --tpm2` for one boot; killed when dropped (it
/// also ends by itself when QEMU closes the socket).
struct Swtpm(Child);

impl Swtpm {
    fn start(dir: &Path) -> anyhow::Result<Swtpm> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join(SWTPM_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::File::create(dir.join("swtpm.log"))?;
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
            .arg(format!("dir={}", dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting swtpm (package swtpm; make deps)")?;
        let mut tpm = Swtpm(child);
        let t = Instant::now();
        while !socket.exists() {
            if let Some(status) = tpm.0.try_wait()? {
                bail!(
                    "swtpm exited with {status} (log {})",
                    dir.join("swtpm.log").display()
                );
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("swtpm made no socket within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

/// Per-boot limit: `ABKIT_VM_TIMEOUT` seconds, default 300.
pub fn default_timeout() -> Duration {
    let secs = std::env::var("ABKIT_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// QEMU option values double their commas.
fn escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// True if /dev/kvm can be opened for reading and writing.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}
