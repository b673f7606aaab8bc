//! Issue 13's proof on a stock distribution: a Debian root with systemd from
//! Debian's packages (`scripts/debian-root.sh`, mmdebstrap, cached next to
//! the test kernel) made into three abkit releases, booted from the slot
//! through dm-verity, where `abkit-agent.service` runs the health gate.
//!
//! | name | proves |
//! | --- | --- |
//! | `debian-systemd` | Debian X on A installs Y through the agent (the CLI's install becomes the agent's operation; the agent reboots through systemd); on Y's trial boot the agent is SIGKILLed in the middle of its gate, systemd restarts it, the restarted gate waits for Y's checked unit to become active and commits B; Y installs Z, whose checked unit fails: the failure is recorded in A's record, BootOrder still names B (the firmware's fallback had the agent not armed it), the agent reboots, Y comes back committed |
//!
//! How the root boots (docs/agent.md, "A stock Debian root"): the UKI
//! carries the test OS initrd, which maps the slot through dm-verity with
//! the appended hash tree and `roothash=` from the command line, mounts the
//! erofs root and DATA, and executes the root's `/sbin/init`: systemd.
//! Debian 12's own initrd tools cannot open an appended hash tree
//! (systemd 252 lacks `hash-offset=`; initramfs-tools has no verity).
//!
//! The guest reports over the serial console through
//! `abkit-vmtest-report.service` (a test helper baked into the releases):
//! it waits for the agent's verdict (its sd_notify `STATUS=`), prints
//! `debian-test: KEY VALUE` lines, then carries out the test's action
//! (`install BUNDLE` through the agent, or `poweroff`) from fw_cfg.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::fixtures::{make_bundle_disk, run};
use crate::qemu::{Boot, BootSpec};
use crate::scenarios::{Scenario, Suite, expect_status, offline_status};
use crate::vars::BootVars;

/// The tree builder, run from the work folder (its hash keys the cache).
const DEBIAN_ROOT_SCRIPT: &str = include_str!("../../../scripts/debian-root.sh");
/// The agent's unit as shipped (`@BINDIR@` is replaced).
const AGENT_UNIT: &str = include_str!("../../../dist/abkit-agent.service");
/// The product of the Debian releases (not the test OS's).
const COMPATIBLE: &str = "abkit-debian";
/// The unit the agent's gate checks.
const DEMO_UNIT: &str = "abkit-demo-health.service";
/// The slot size of the Debian disk (the lz4hc erofs root is about 90 MB).
const SYSTEM_SIZE: &str = "160M";
/// Guest memory: what the Debian root needs (notes/debian-root.md: 256 MiB
/// boots a UKI of this size; less fails in the loader).
const MEMORY_MIB: u32 = 256;
/// The prefix of the report unit's lines.
const REPORT: &str = "debian-test: ";

/// One Debian release: its version and how its demo unit behaves.
#[derive(Debug, Clone, Copy)]
struct Release {
    name: &'static str,
    version: &'static str,
    /// `good`: the demo unit becomes active (after a few seconds, so the
    /// gate has to wait for it); `bad`: it fails.
    health: &'static str,
}

const DX: Release = Release {
    name: "x",
    version: "1.0.0",
    health: "good",
};
const DY: Release = Release {
    name: "y",
    version: "1.1.0",
    health: "good",
};
const DZ: Release = Release {
    name: "z",
    version: "1.2.0",
    health: "bad",
};

impl Release {
    fn bundle(&self) -> String {
        format!("debian-{}.abb", self.name)
    }
}

/// Settings of the agent in the releases.
const AGENT_TOML: &str = r#"# /etc/abkit/agent.toml of the debian-systemd VM scenario
# systemctl reboot, once the test's report is on the console (see
# abkit-vmtest-reboot).
reboot_command = "/usr/local/libexec/abkit-vmtest-reboot"

[health]
units = ["abkit-demo-health.service"]
check_timeout = "60s"
deadline = "2m"
"#;

/// The unit the gate checks: active for a healthy release, failed for a
/// bad one, six seconds after the agent is up either way, so the gate
/// always finds it still starting and has to wait for it.
const DEMO_UNIT_FILE: &str = "[Unit]
Description=abkit demo: the service whose health the agent checks
After=abkit-agent.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/libexec/abkit-demo-health
[Install]
WantedBy=multi-user.target
";

const DEMO_HEALTH: &str = "#!/bin/sh
# The demo service of the debian-systemd VM scenario: it starts for a few
# seconds, then succeeds in a healthy release and fails in a bad one
# (/etc/abkit-demo/health says which).
sleep 6
case $(cat /etc/abkit-demo/health) in
  good) echo 'abkit-demo: up'; exit 0 ;;
  *) echo 'abkit-demo: built to fail'; exit 1 ;;
esac
";

/// A health.d check that crashes the agent once per boot when the test
/// asks (fw_cfg `opt/abkit/crash-agent-once`): its parent is the agent.
const CRASH_ONCE: &str = "#!/bin/sh
# VM test helper (debian-systemd): with fw_cfg opt/abkit/crash-agent-once,
# SIGKILLs the agent (this check's parent) in the middle of its health gate,
# once per boot; systemd restarts it (Restart=on-failure) and the gate runs
# again. Without that file it passes.
[ -e /sys/firmware/qemu_fw_cfg/by_name/opt/abkit/crash-agent-once ] || exit 0
[ -e /run/abkit-vmtest-crashed ] && exit 0
: >/run/abkit-vmtest-crashed
echo \"debian-test: crash killing the agent (pid $PPID) in its gate\" >/dev/ttyS0
kill -KILL \"$PPID\"
sleep 5
";

/// The agent's reboot command in the test releases: tells the report
/// script the gate asked for a reboot, gives it up to 30 s to print its
/// report (a report printed from a SIGTERM trap during the shutdown was
/// lost now and then), then `systemctl reboot` as a real node would.
const REBOOT_SCRIPT: &str = "#!/bin/sh
: >/run/abkit-vmtest-reboot-asked
i=0
while [ ! -e /run/abkit-vmtest-reported ] && [ $i -lt 60 ]; do
  sleep 0.5
  i=$((i + 1))
done
exec systemctl reboot
";

const REPORT_UNIT_FILE: &str = "[Unit]
Description=abkit VM test: report the health gate on the serial console, then act
After=abkit-agent.service
[Service]
Type=simple
ExecStart=/usr/local/libexec/abkit-vmtest-report
[Install]
WantedBy=multi-user.target
";

const REPORT_SCRIPT: &str = r#"#!/bin/sh
# VM test helper (debian-systemd): waits for the agent's health gate
# verdict (its sd_notify STATUS=), prints what the host checks as
# `debian-test: KEY VALUE` lines on the serial console, then carries out
# the test's action from fw_cfg: `install BUNDLE` (from the bundle disk,
# through the running agent) or `poweroff`. When the agent's reboot stops
# it first (a failed trial), it prints on its way out: the unit is ordered
# after the agent, so it stops before the agent does.
exec >/dev/ttyS0 2>&1
# printf, not dash's echo: status JSON has backslashes (\EFI\abkit).
say() { printf 'debian-test: %s\n' "$*"; }
fw=/sys/firmware/qemu_fw_cfg/by_name/opt/abkit
report() {
  st=$(systemctl show -p StatusText --value abkit-agent.service)
  say "gate $st"
  say "agent-active $(systemctl is-active abkit-agent.service)"
  say "agent-restarts $(systemctl show -p NRestarts --value abkit-agent.service)"
  say "demo-unit $(systemctl is-active abkit-demo-health.service)"
  . /etc/os-release
  say "os $ID $VERSION_CODENAME image=$IMAGE_ID version=$IMAGE_VERSION"
  say "pid1 $(readlink /proc/1/exe) $(systemctl --version | head -n 1)"
  say "root $(findmnt -no SOURCE,FSTYPE,OPTIONS /)"
  say "failed-units $(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')"
  say "status-json $(abkit status --json | tr -d '\n')"
  say "uptime $(cut -d' ' -f1 /proc/uptime)"
  t=$(systemctl show -p ExecMainStartTimestampMonotonic --value abkit-agent.service)
  say "agent-started-at $((t / 1000000)).$((t / 100000 % 10))"
  # Where the guest's boot time went (for the log; not checked).
  say "kernel-done $(systemd-analyze 2>/dev/null | head -n 1)"
  systemd-analyze blame --no-pager 2>/dev/null | head -n 6 | while read -r l; do say "blame $l"; done
}
trap 'report; say "end stopped by the shutdown"; exit 0' TERM
i=0
while :; do
  st=$(systemctl show -p StatusText --value abkit-agent.service)
  # The gate's last STATUS= (crates/abkit-agent/src/agent.rs).
  case $st in
    *" healthy and committed"|*" committed, healthy"|*" committed, unhealthy at "*) break ;;
    *": rebooting"|"rebooting into"*|*"cannot read the machine"*) break ;;
  esac
  # The agent's reboot command (abkit-vmtest-reboot) waits for this report.
  [ -e /run/abkit-vmtest-reboot-asked ] && break
  i=$((i + 1))
  [ $i -gt 480 ] && { say "gate-timeout $st"; break; }
  sleep 0.5
done
trap - TERM
report
: >/run/abkit-vmtest-reported
if [ -e /run/abkit-vmtest-reboot-asked ]; then say "end waiting for the agent's reboot"; exit 0; fi
case $st in *rebooting*) say "end waiting for the agent's reboot"; exit 0 ;; esac
action=$(cat $fw/action/raw 2>/dev/null)
say "action $action"
case $action in
  install\ *)
    mkdir -p /run/bundles
    mount -o ro -t vfat /dev/vdb /run/bundles
    abkit install "/run/bundles/${action#install }"
    say "install-exit $?"
    ;;
  *)
    say "end poweroff"
    systemctl --no-block poweroff
    ;;
esac
"#;

/// Where the cached Debian tarballs live: next to the test kernel
/// (`build/kernel` → `build/debian-root`).
fn cache_dir(suite: &Suite) -> PathBuf {
    suite.fx.release.kernel_dir.with_file_name("debian-root")
}

/// The Debian tarball: built by `scripts/debian-root.sh` or found in its
/// cache. Returns its path and how long that took.
fn debian_tarball(suite: &Suite, work: &Path) -> anyhow::Result<PathBuf> {
    let script = work.join("debian-root.sh");
    std::fs::write(&script, DEBIAN_ROOT_SCRIPT)?;
    let out = run(Command::new("bash")
        .arg(&script)
        .arg(cache_dir(suite))
        .stderr(std::process::Stdio::inherit()))
    .context("building the Debian root (scripts/debian-root.sh)")?;
    let path = out.lines().last().unwrap_or_default().trim();
    ensure!(!path.is_empty(), "scripts/debian-root.sh printed no path");
    Ok(PathBuf::from(path))
}

fn write(root: &Path, path: &str, mode: u32, text: &str) -> anyhow::Result<()> {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().context("no parent")?)?;
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `ln -sf target root/path`.
fn link(root: &Path, path: &str, target: &str) -> anyhow::Result<()> {
    let p = root.join(path);
    std::fs::create_dir_all(p.parent().context("no parent")?)?;
    let _ = std::fs::remove_file(&p);
    symlink(target, &p).with_context(|| format!("linking {}", p.display()))
}

/// The kernel's module folders the root keeps (what systemd and udev load
/// after switch_root on this machine: filesystems such as autofs4 and
/// efivarfs, device-mapper, virtio, firmware interfaces, crypto and
/// library helpers); the rest (sound, most network and GPU drivers) is
/// left out to keep the image small.
const MODULE_DIRS: [&str; 12] = [
    "kernel/fs",
    "kernel/lib",
    "kernel/crypto",
    "kernel/arch",
    "kernel/block",
    "kernel/net/core",
    "kernel/drivers/virtio",
    "kernel/drivers/md",
    "kernel/drivers/block",
    "kernel/drivers/firmware",
    "kernel/drivers/char",
    "kernel/drivers/net",
];

/// Copies the test kernel's modules (the subset above) into the root and
/// runs depmod there.
fn add_modules(suite: &Suite, root: &Path) -> anyhow::Result<String> {
    let modules = suite.fx.release.kernel_dir.join("lib/modules");
    let version = std::fs::read_dir(&modules)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("no kernel version under {}", modules.display()))?;
    let from = modules.join(&version);
    let to = root.join("usr/lib/modules").join(&version);
    std::fs::create_dir_all(&to)?;
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        std::fs::copy(from.join(f), to.join(f))?;
    }
    for dir in MODULE_DIRS {
        if dir == "kernel/drivers/net" {
            // Only the virtio NIC and what it needs.
            let d = to.join(dir);
            std::fs::create_dir_all(&d)?;
            for m in ["virtio_net.ko", "net_failover.ko"] {
                std::fs::copy(from.join(dir).join(m), d.join(m))?;
            }
            continue;
        }
        std::fs::create_dir_all(to.join(dir).parent().context("parent")?)?;
        run(Command::new("cp")
            .arg("-a")
            .arg(from.join(dir))
            .arg(to.join(dir)))?;
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(&version))
        .context("depmod (package kmod)")?;
    Ok(version)
}

/// Unpacks the tarball and turns it into an abkit Debian root: the static
/// `abkit`, the test keyring, abkit-agent.service enabled with agent.toml,
/// the demo unit and the test helpers, masks for what only costs boot time
/// here, the kernel's modules, tmpfs on /tmp and /var (the root is
/// read-only erofs), and mount points.
fn compose_root(suite: &Suite, tarball: &Path, root: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)?;
    run(Command::new("tar")
        .args(["--numeric-owner", "-xf"])
        .arg(tarball)
        .arg("-C")
        .arg(root))
    .context("unpacking the Debian tarball")?;
    let abkit = std::fs::read(&suite.fx.release.abkit)?;
    std::fs::write(root.join("usr/bin/abkit"), abkit)?;
    std::fs::set_permissions(
        root.join("usr/bin/abkit"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    let key = std::fs::read_to_string(suite.fx.release.dir.join("keyring/testkey.pub"))?;
    write(root, "etc/abkit/keyring/testkey.pub", 0o644, &key)?;
    write(root, "etc/abkit/agent.toml", 0o644, AGENT_TOML)?;
    write(
        root,
        "etc/systemd/system/abkit-agent.service",
        0o644,
        &AGENT_UNIT.replace("@BINDIR@", "/usr/bin"),
    )?;
    write(
        root,
        &format!("etc/systemd/system/{DEMO_UNIT}"),
        0o644,
        DEMO_UNIT_FILE,
    )?;
    write(
        root,
        "usr/local/libexec/abkit-demo-health",
        0o755,
        DEMO_HEALTH,
    )?;
    write(
        root,
        "etc/systemd/system/abkit-vmtest-report.service",
        0o644,
        REPORT_UNIT_FILE,
    )?;
    write(
        root,
        "usr/local/libexec/abkit-vmtest-report",
        0o755,
        REPORT_SCRIPT,
    )?;
    write(
        root,
        "usr/local/libexec/abkit-vmtest-reboot",
        0o755,
        REBOOT_SCRIPT,
    )?;
    write(
        root,
        "etc/abkit/health.d/10-vmtest-crash-once",
        0o755,
        CRASH_ONCE,
    )?;
    for unit in [
        "abkit-agent.service",
        DEMO_UNIT,
        "abkit-vmtest-report.service",
    ] {
        link(
            root,
            &format!("etc/systemd/system/multi-user.target.wants/{unit}"),
            &format!("/etc/systemd/system/{unit}"),
        )?;
    }
    // Boot time only, on a test machine: e2scrub_reap costs 5-11 s
    // (notes/debian-root.md); periodic jobs; the serial getty (the report
    // unit owns the console).
    for unit in [
        "e2scrub_reap.service",
        "e2scrub_all.timer",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "dpkg-db-backup.timer",
        "fstrim.timer",
        "serial-getty@ttyS0.service",
    ] {
        link(root, &format!("etc/systemd/system/{unit}"), "/dev/null")?;
    }
    // The initrd already mapped and mounted the verified root: systemd's
    // veritysetup generator would act on roothash= again (and fail on
    // hash-offset=, which 252 does not know); gpt-auto would mount the ESP,
    // which abkit mounts itself when it needs it.
    for generator in [
        "systemd-veritysetup-generator",
        "systemd-gpt-auto-generator",
    ] {
        link(
            root,
            &format!("etc/systemd/system-generators/{generator}"),
            "/dev/null",
        )?;
    }
    write(
        root,
        "etc/fstab",
        0o644,
        "# / is the slot's erofs (read-only, dm-verity), mounted by the initrd;\n\
         # /data is DATA. Writable scratch space:\n\
         tmpfs /tmp tmpfs mode=1777,nosuid,nodev 0 0\n\
         tmpfs /var tmpfs mode=0755,nosuid,nodev 0 0\n",
    )?;
    for dir in ["data", "run/bundles", "mnt"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    add_modules(suite, root)?;
    Ok(())
}

/// Writes `r`'s own files into the composed root and builds its bundle.
fn release_bundle(suite: &Suite, root: &Path, r: &Release, out: &Path) -> anyhow::Result<()> {
    write(
        root,
        "etc/abkit-demo/health",
        0o644,
        &format!("{}\n", r.health),
    )?;
    let osrel = root.join("usr/lib/os-release");
    let base: String = std::fs::read_to_string(&osrel)?
        .lines()
        .filter(|l| !l.starts_with("IMAGE_"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &osrel,
        format!("{base}IMAGE_ID={COMPATIBLE}\nIMAGE_VERSION={}\n", r.version),
    )?;
    let cmdline = "console=ttyS0 ro panic=-1 quiet no_timer_check";
    run(suite
        .fx
        .release
        .rootfs_bundle(root, &osrel, cmdline, r.version, COMPATIBLE, out)
        .args(["--erofs-compress", "lz4hc"]))
    .with_context(|| format!("bundle create for Debian {}", r.version))?;
    Ok(())
}

/// The guest's `debian-test:` lines as (key, rest), in order.
type Lines = Vec<(String, String)>;

/// The guest's `debian-test:` lines of a boot.
fn report(boot: &Boot) -> anyhow::Result<Lines> {
    let text = std::fs::read(&boot.log).with_context(|| format!("{}", boot.log.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let at = l.find(REPORT)?;
            let rest = &l[at + REPORT.len()..];
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// One boot of the Debian machine: what it printed and the boot variables
/// after it.
struct DebianBoot {
    boot: Boot,
    vars: BootVars,
    lines: Lines,
}

impl DebianBoot {
    /// The last `debian-test: KEY ...` line's text after the key.
    fn value(&self, key: &str) -> anyhow::Result<String> {
        self.lines
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .with_context(|| {
                format!(
                    "the guest printed no `{REPORT}{key}` line (log {})",
                    self.boot.log.display()
                )
            })
    }

    /// The guest's `KEY` line says `expected`.
    fn expect_value(&self, key: &str, expected: &str) -> anyhow::Result<()> {
        let found = self.value(key)?;
        ensure!(
            found == expected,
            "{key}: {found:?}, expected {expected:?} (log {})",
            self.boot.log.display()
        );
        Ok(())
    }

    /// Checks the agent's health-gate verdict of this boot (its `gate`
    /// line); `which` names the boot in the error.
    fn expect_gate(&self, expected: &str, which: &str) -> anyhow::Result<()> {
        let gate = self.value("gate")?;
        ensure!(
            gate == expected,
            "the gate of {which}: {gate:?}, expected {expected:?} (log {})",
            self.boot.log.display()
        );
        Ok(())
    }

    /// The guest's `abkit status --json` shows this boot from `running`,
    /// `committed` in BootOrder, and these slots' versions.
    fn expect_status(
        &self,
        running: char,
        committed: char,
        versions: &[(char, &str)],
    ) -> anyhow::Result<()> {
        let status: Value = serde_json::from_str(&self.value("status-json")?)
            .with_context(|| format!("status-json (log {})", self.boot.log.display()))?;
        expect_status(&status, running, committed, versions)
    }

    /// The checks every boot of a release shares: systemd from Debian is
    /// PID 1, / is the read-only erofs on the verity device, the release is
    /// `r`, and no unit failed except the expected ones.
    fn expect_release(&self, r: &Release, failed_units: &str) -> anyhow::Result<()> {
        let log = self.boot.log.display();
        let os = self.value("os")?;
        ensure!(
            os == format!("debian bookworm image={COMPATIBLE} version={}", r.version),
            "the guest runs {os:?}, expected Debian {} (log {log})",
            r.version
        );
        let pid1 = self.value("pid1")?;
        ensure!(
            pid1.starts_with("/usr/lib/systemd/systemd systemd 252"),
            "PID 1 is not Debian's systemd: {pid1} (log {log})"
        );
        let root = self.value("root")?;
        let f: Vec<&str> = root.split_whitespace().collect();
        ensure!(
            f.len() == 3
                && f[0] == "/dev/mapper/root"
                && f[1] == "erofs"
                && f[2].split(',').next() == Some("ro"),
            "/ is not the read-only erofs on /dev/mapper/root: {root} (log {log})"
        );
        let failed = self.value("failed-units")?;
        ensure!(
            failed.trim() == failed_units,
            "failed units: {failed:?}, expected {failed_units:?} (log {log})"
        );
        Ok(())
    }

    /// The boot ended in a reboot (systemd's shutdown said so), not a
    /// poweroff.
    fn expect_reboot(&self) -> anyhow::Result<()> {
        let text = std::fs::read(&self.boot.log)?;
        ensure!(
            String::from_utf8_lossy(&text).contains("reboot: Restarting system"),
            "the boot did not end in a reboot (log {})",
            self.boot.log.display()
        );
        Ok(())
    }
}

/// What one boot of the Debian machine is asked to do, and the release it
/// must come up in.
struct Step<'r> {
    /// Names the boot in the timing line.
    what: &'static str,
    action: String,
    runs: &'r Release,
    /// Kill the agent once in its gate (systemd must restart it).
    crash_agent: bool,
    /// The units expected to have failed (space-separated).
    failed_units: &'static str,
}

impl<'r> Step<'r> {
    /// A boot that runs `action` in release `runs`, with no failed unit.
    fn new(what: &'static str, action: impl Into<String>, runs: &'r Release) -> Self {
        Step {
            what,
            action: action.into(),
            runs,
            crash_agent: false,
            failed_units: "",
        }
    }
    fn killing_the_agent_once(self) -> Self {
        Step {
            crash_agent: true,
            ..self
        }
    }
    fn with_failed_units(self, failed_units: &'static str) -> Self {
        Step {
            failed_units,
            ..self
        }
    }
}

/// One boot of the Debian machine; prints where the time went and checks
/// [`DebianBoot::expect_release`].
fn debian_boot(s: &mut Scenario<'_>, step: Step<'_>) -> anyhow::Result<DebianBoot> {
    s.boots += 1;
    let log = s.dir.join(format!("boot-{}.log", s.boots));
    s.suite.set_last_log(&log);
    let mut spec = BootSpec {
        action: step.action,
        memory_mib: Some(MEMORY_MIB),
        ..BootSpec::default()
    };
    if step.crash_agent {
        let flag = s.dir.join("crash-agent-once");
        std::fs::write(&flag, "1\n")?;
        spec.fw_cfg_files
            .push(("opt/abkit/crash-agent-once".into(), flag));
    }
    let boot = s.machine.boot(&spec, &log)?;
    s.boot_time += boot.took;
    let lines = report(&boot)?;
    let b = DebianBoot {
        vars: s.vars()?,
        lines,
        boot,
    };
    let or_unknown = |key, none: &str| b.value(key).unwrap_or_else(|_| none.into());
    eprintln!(
        "    debian-systemd boot {} ({}) {:>6.1} s: agent started at {} s, gate verdict at {} s of guest uptime: {}  -> {}",
        s.boots,
        step.what,
        b.boot.took.as_secs_f64(),
        or_unknown("agent-started-at", "?"),
        or_unknown("uptime", "?"),
        or_unknown("gate", "no verdict"),
        b.vars.summary()
    );
    b.expect_release(step.runs, step.failed_units)?;
    Ok(b)
}

pub fn debian_systemd(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let started = Instant::now();
    let mut s = Scenario::new(suite, "debian-systemd")?;
    let dir = s.dir.clone();

    // The tree (cached), the root, three releases, their bundle disk.
    let t = Instant::now();
    let tarball = debian_tarball(suite, &dir)?;
    let t_tree = t.elapsed();
    let t = Instant::now();
    let root = dir.join("root");
    compose_root(suite, &tarball, &root)?;
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles)?;
    for r in [DX, DY, DZ] {
        release_bundle(suite, &root, &r, &bundles.join(r.bundle()))?;
    }
    std::fs::remove_dir_all(&root)?;
    let disk_img = dir.join("bundles.img");
    make_bundle_disk(&bundles, &disk_img)?;
    let t_releases = t.elapsed();
    let sizes: Vec<String> = [DX, DY, DZ]
        .iter()
        .map(|r| {
            let n = std::fs::metadata(bundles.join(r.bundle()))
                .map(|m| m.len())
                .unwrap_or(0);
            format!("{} {} MB", r.bundle(), n >> 20)
        })
        .collect();
    eprintln!(
        "    debian-systemd: tree {:.1} s ({}), 3 releases {:.1} s ({})",
        t_tree.as_secs_f64(),
        tarball.display(),
        t_releases.as_secs_f64(),
        sizes.join(", ")
    );

    // The machine: X on slot A (factory path), DATA formatted.
    let _ = std::fs::remove_file(&s.machine.disk);
    suite.fx.release.base_image(
        &bundles.join(DX.bundle()),
        &s.machine.disk,
        &s.machine.vars,
        SYSTEM_SIZE,
        &[],
    )?;
    s.machine.bundles = Some(disk_img);
    let ours = s.vars()?.our_order();

    // 1. X (committed from the factory): the gate reports; the CLI's
    // install becomes the agent's operation; the agent reboots.
    let b = debian_boot(
        &mut s,
        Step::new(
            "X committed, installs Y",
            format!("install {}", DY.bundle()),
            &DX,
        ),
    )?;
    b.expect_gate("slot A committed, healthy", "X")?;
    b.expect_value("agent-active", "active")?;
    b.expect_status('A', 'A', &[('A', DX.version)])?;
    b.expect_value("install-exit", "0")
        .context("the install through the agent")?;
    b.expect_reboot()?;
    b.vars
        .expect('A', Some('B'))
        .context("after X installed Y")?;
    ensure!(b.vars.our_order() == ours, "our BootOrder changed");

    // 2. Y's trial boot: the agent is killed in its gate, systemd restarts
    // it, the new gate waits for the demo unit and commits B.
    let b = debian_boot(
        &mut s,
        Step::new(
            "Y trial, agent killed once",
            format!("install {}", DZ.bundle()),
            &DY,
        )
        .killing_the_agent_once(),
    )?;
    ensure!(
        b.lines
            .iter()
            .any(|(k, v)| k == "crash" && v.contains("killing the agent")),
        "the agent was not killed in its gate (log {})",
        b.boot.log.display()
    );
    b.expect_value("agent-restarts", "1")
        .context("systemd restarts the agent once")?;
    b.expect_gate("slot B healthy and committed", "Y after the restart")?;
    b.expect_value("agent-active", "active")?;
    b.expect_value("demo-unit", "active")?;
    b.expect_status('B', 'B', &[('A', DX.version), ('B', DY.version)])?;
    b.expect_reboot()?;
    // Y committed, then Z installed into A: BootOrder names B, BootNext A.
    b.vars
        .expect('B', Some('A'))
        .context("after Y installed Z")?;

    // 3. Z's trial boot: the demo unit fails; the agent records it, arms
    // B and reboots.
    let b = debian_boot(
        &mut s,
        Step::new("Z trial, unit fails", "poweroff", &DZ).with_failed_units(DEMO_UNIT),
    )?;
    b.expect_gate(
        &format!("health failed at unit:{DEMO_UNIT}: rebooting"),
        "Z",
    )?;
    ensure!(
        !b.lines.iter().any(|(k, v)| k == "end" && v == "poweroff"),
        "Z's boot went on to the test's poweroff (log {})",
        b.boot.log.display()
    );
    b.expect_reboot()?;
    // BootOrder still starts with B: without the agent's BootNext (or had
    // the agent never run) the firmware would come back to Y all the same.
    b.vars
        .expect('B', Some('B'))
        .context("after Z's failed trial")?;
    let st = offline_status(suite, &s.machine, 'B')?;
    let rec = &st["slots"]["A"];
    ensure!(
        rec["state"] == "installed"
            && rec["version"] == DZ.version
            && rec["health"]["result"] == "failed"
            && rec["health"]["failed_check"] == format!("unit:{DEMO_UNIT}")
            && rec["health"]["output_tail"]
                .as_str()
                .is_some_and(|t| t.contains(&format!("{DEMO_UNIT}: failed"))),
        "slot A's record after Z's failed trial: {rec}"
    );
    // The check saw the unit starting first and waited for its outcome.
    let tail = rec["health"]["output_tail"].as_str().unwrap_or_default();
    let first = tail.lines().next().unwrap_or_default();
    ensure!(
        first == format!("{DEMO_UNIT}: activating") || first == format!("{DEMO_UNIT}: inactive"),
        "the unit check did not wait for the starting unit: {tail:?}"
    );

    // 4. Y again, committed; the gate reports and the machine powers off.
    let b = debian_boot(&mut s, Step::new("Y back", "poweroff", &DY))?;
    b.expect_gate("slot B committed, healthy", "Y after the rollback")?;
    b.expect_status('B', 'B', &[('A', DZ.version), ('B', DY.version)])?;
    b.vars.expect('B', None)?;
    let st = offline_status(suite, &s.machine, 'B')?;
    let rec = &st["slots"]["B"];
    ensure!(
        rec["state"] == "good" && rec["health"]["result"] == "passed",
        "slot B's record: {rec}"
    );
    eprintln!(
        "    debian-systemd: {} boots {:.1} s of VM time; tree {:.1} s, releases {:.1} s; {:.1} s in all",
        s.boots,
        s.boot_time.as_secs_f64(),
        t_tree.as_secs_f64(),
        t_releases.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    if s.boot_time > Duration::from_secs(300) {
        eprintln!("    debian-systemd: warning: more than 5 min of VM time");
    }
    Ok(s)
}
