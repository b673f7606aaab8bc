//! The end-to-end scenarios of issue 7, each on its own copy of the base
//! machine (X on slot A): every boot is checked through what the guest
//! printed and through the VARS file read offline afterwards.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::fixtures::{BAD_CHUNK, BAD_SIGNATURE, Fixtures, Variant, X, Y, Y_BROKEN, Z, run};
use crate::http::FileServer;
use crate::qemu::{Accel, Boot, BootSpec, Cut, Machine};
use crate::serial::Ending;
use crate::vars::BootVars;

/// Where a bundle is, as the guest sees it on its bundle disk.
pub fn on_disk(v: &Variant) -> String {
    format!("/mnt/bundles/{}", v.bundle())
}

/// Shared by all scenarios of a run.
pub struct Suite {
    pub fx: Fixtures,
    pub accel: Accel,
    pub http: FileServer,
    pub work: PathBuf,
    /// The seed sequence's final disk and VARS (Z committed on A), for the
    /// manual rollback test.
    pub after_seed: Mutex<Option<(PathBuf, PathBuf)>>,
}

thread_local! {
    /// The serial log of this thread's latest boot (scenarios run on
    /// worker threads, one at a time each).
    static LAST_LOG: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

impl Suite {
    /// Remembers `log` as the latest boot of the calling scenario: its tail
    /// is shown if the scenario fails.
    pub fn set_last_log(&self, log: &Path) {
        LAST_LOG.with(|l| *l.borrow_mut() = Some(log.to_path_buf()));
    }
}

/// Scenarios started before the others (they take the longest: about 5
/// minutes, part of it building their own releases).
const START_FIRST: &[&str] = &["debian-systemd"];

/// Scenarios that continue from another's machine, and which one: they are
/// started only after it ended (when both run).
const NEEDS: &[(&str, &str)] = &[("manual-rollback", "seed-sequence")];

/// One scenario's machine and its boot counter.
pub struct Scenario<'a> {
    pub suite: &'a Suite,
    pub dir: PathBuf,
    pub machine: Machine,
    pub boots: usize,
    pub boot_time: Duration,
}

impl<'a> Scenario<'a> {
    /// A fresh machine (X on A) in `<work>/<name>`.
    pub fn new(suite: &'a Suite, name: &str) -> anyhow::Result<Scenario<'a>> {
        let dir = suite.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let (disk, vars) = suite.fx.fresh_machine(&dir)?;
        Ok(Scenario {
            suite,
            dir,
            machine: Machine {
                disk,
                vars,
                bundles: Some(suite.fx.bundle_disk.clone()),
                accel: suite.accel,
                firmware: Default::default(),
            },
            boots: 0,
            boot_time: Duration::ZERO,
        })
    }

    /// Continues from another machine's disk and VARS file.
    pub fn from_files(
        suite: &'a Suite,
        name: &str,
        disk: &Path,
        vars: &Path,
    ) -> anyhow::Result<Scenario<'a>> {
        let mut s = Scenario::new(suite, name)?;
        run(std::process::Command::new("cp")
            .arg("--sparse=always")
            .arg(disk)
            .arg(&s.machine.disk))?;
        std::fs::copy(vars, &s.machine.vars)?;
        s.boots = 0;
        Ok(s)
    }

    pub fn vars(&self) -> anyhow::Result<BootVars> {
        BootVars::read(&self.suite.fx.release.abkit, &self.machine.vars)
    }

    /// Boots once with `action`; checks there is exactly one TESTOS line.
    pub fn boot(&mut self, action: &str) -> anyhow::Result<(Boot, BootVars)> {
        self.boot_with(BootSpec {
            action: action.to_string(),
            ..BootSpec::default()
        })
    }

    /// Boots once to power off and expects `v` healthy on `slot`, committed
    /// there: BootOrder starts with it and BootNext is unset.
    pub fn boot_expect_committed(&mut self, v: &Variant, slot: char) -> anyhow::Result<Boot> {
        let (b, vars) = self.boot("poweroff")?;
        expect_healthy(&b, v, slot)?;
        vars.expect(slot, None)?;
        Ok(b)
    }

    pub fn boot_with(&mut self, spec: BootSpec) -> anyhow::Result<(Boot, BootVars)> {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.log", self.boots));
        self.suite.set_last_log(&log);
        let boot = self.machine.boot(&spec, &log)?;
        self.boot_time += boot.took;
        let vars = self.vars()?;
        let r = &boot.report;
        let os = match r.testos.as_slice() {
            [t] => format!("slot {} {} {}", t.slot, t.variant, t.version),
            [] => "no TESTOS line".to_string(),
            _ => format!("{} TESTOS lines", r.testos.len()),
        };
        let results: Vec<String> = r.results.iter().map(|(n, c)| format!("{n}={c}")).collect();
        let ending = match (r.ending, &boot.cut_at) {
            (_, Some(at)) => format!("power cut at {at}"),
            (Ending::PowerOff, _) => "poweroff".into(),
            (Ending::Reboot, _) => "reboot".into(),
            (Ending::Killed, _) => "killed".into(),
            (Ending::Unknown, _) => "no ending line".into(),
        };
        eprintln!(
            "    {} boot {} {:>6.1} s  {os}{}  {}  [{ending}]  -> {}",
            self.dir.file_name().unwrap_or_default().to_string_lossy(),
            self.boots,
            boot.took.as_secs_f64(),
            if r.health_bad { " (health FAILED)" } else { "" },
            results.join(" "),
            vars.summary()
        );
        for e in &r.errors {
            eprintln!("      testos error: {e}");
        }
        if r.testos.len() != 1 && boot.cut_at.is_none() {
            bail!(
                "expected one TESTOS line, saw {} (log {})",
                r.testos.len(),
                log.display()
            );
        }
        Ok((boot, vars))
    }
}

/// Checks that the firmware started `slot`'s own boot entry.
pub fn expect_started(boot: &Boot, vars: &BootVars, slot: char) -> anyhow::Result<()> {
    let entry = if slot == 'A' {
        vars.slot_a
    } else {
        vars.slot_b
    };
    ensure!(
        boot.report.firmware_entry == entry,
        "firmware started {:?}, not slot {slot}'s entry {entry:?}",
        boot.report.firmware_entry
    );
    Ok(())
}

/// Checks the booted OS: TESTOS line, loader slot and the system partition's
/// first line all name `v` on `slot`.
pub fn expect_os(boot: &Boot, v: &Variant, slot: char) -> anyhow::Result<()> {
    let r = &boot.report;
    let log = boot.log.display();
    let t = r
        .testos
        .first()
        .with_context(|| format!("no TESTOS line (log {log})"))?;
    ensure!(
        t.variant == v.name && t.version == v.version && t.slot == slot.to_string(),
        "expected {} {} on slot {slot}, the guest says {} {} on slot {} (log {log})",
        v.name,
        v.version,
        t.variant,
        t.version,
        t.slot
    );
    ensure!(
        r.loader_slot == Some(slot),
        "the loader said slot {:?} (log {log})",
        r.loader_slot
    );
    ensure!(
        r.system.as_deref() == Some(v.system_line().as_str()),
        "slot {slot}'s system partition starts with {:?}, expected {:?} (log {log})",
        r.system,
        v.system_line()
    );
    Ok(())
}

/// Checks a step's exit code: `ok` means 0, otherwise any failure.
pub fn expect_result(boot: &Boot, name: &str, ok: bool) -> anyhow::Result<()> {
    let log = boot.log.display();
    let codes = boot.report.results_of(name);
    ensure!(!codes.is_empty(), "no result of `abkit {name}` (log {log})");
    for code in codes {
        if ok {
            ensure!(code == "0", "`abkit {name}` exited {code} (log {log})");
        } else {
            ensure!(
                code != "0",
                "`abkit {name}` succeeded but should have failed (log {log})"
            );
        }
    }
    Ok(())
}

/// A healthy boot of `v` on `slot` that marked itself good.
pub fn expect_healthy(boot: &Boot, v: &Variant, slot: char) -> anyhow::Result<()> {
    expect_os(boot, v, slot)?;
    expect_result(boot, "mark-good", true)
}

/// The last `status --json` the guest printed.
pub fn status(boot: &Boot) -> anyhow::Result<&Value> {
    let s = boot
        .report
        .status
        .last()
        .with_context(|| format!("no status-json line (log {})", boot.log.display()))?;
    ensure!(
        !s.is_null(),
        "status-json did not parse (log {})",
        boot.log.display()
    );
    Ok(s)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Checks `running_slot`, `committed_slot` and slot versions in a status JSON.
pub fn expect_status(
    s: &Value,
    running: char,
    committed: char,
    versions: &[(char, &str)],
) -> anyhow::Result<()> {
    ensure!(
        text(&s["running_slot"]) == running.to_string(),
        "status running_slot: {s}"
    );
    ensure!(
        text(&s["committed_slot"]) == committed.to_string(),
        "status committed_slot: {s}"
    );
    for (slot, version) in versions {
        let got = text(&s["slots"][slot.to_string()]["version"]);
        ensure!(
            got == *version,
            "status slot {slot} version {got}, expected {version}: {s}"
        );
    }
    Ok(())
}

/// `abkit status --json --disk D --ovmf-vars V --booted-slot S`, offline.
pub fn offline_status(suite: &Suite, m: &Machine, booted: char) -> anyhow::Result<Value> {
    let out = run(std::process::Command::new(&suite.fx.release.abkit)
        .args(["status", "--json", "--disk"])
        .arg(&m.disk)
        .arg("--ovmf-vars")
        .arg(&m.vars)
        .args(["--booted-slot", &booted.to_ascii_lowercase().to_string()]))?;
    serde_json::from_str(&out).context("offline status printed no JSON")
}

/// `abkit install BUNDLE --disk --ovmf-vars --booted-slot a`: a variant
/// installed into slot B offline, as a factory or provisioning host would.
pub fn offline_install(s: &Scenario<'_>, v: &Variant) -> anyhow::Result<()> {
    offline_install_file(s, &s.suite.fx.bundle(&v.bundle()), v.name)
}

/// [`offline_install`] of a bundle file (`what` names it in errors).
pub fn offline_install_file(s: &Scenario<'_>, bundle: &Path, what: &str) -> anyhow::Result<()> {
    let fx = &s.suite.fx;
    run(std::process::Command::new(&fx.release.abkit)
        .arg("install")
        .arg(bundle)
        .arg("--keyring")
        .arg(fx.release.dir.join("keyring"))
        .arg("--no-reboot")
        .arg("--disk")
        .arg(&s.machine.disk)
        .arg("--ovmf-vars")
        .arg(&s.machine.vars)
        .args(["--booted-slot", "a"]))
    .with_context(|| format!("offline install of {what}"))?;
    s.vars()?
        .expect('A', Some('B'))
        .with_context(|| format!("after installing {what} offline"))
}

pub type ScenarioFn = fn(&Suite) -> anyhow::Result<Scenario<'_>>;

/// Name, what it proves, and the test.
pub const SCENARIOS: &[(&str, &str, ScenarioFn)] = &[
    (
        "loader-paths",
        "one UKI as boot-a.efi, boot-b.efi, BOOTX64.EFI and stamped: file name or stamp picks the slot",
        crate::loader_scenarios::loader_paths,
    ),
    (
        "loader-bare-stub",
        "a stub without a kernel says why and hands control back to the firmware",
        crate::loader_scenarios::loader_bare_stub,
    ),
    (
        "boot",
        "the base image boots X on slot A and marks it good",
        boot_base,
    ),
    (
        "seed-sequence",
        "X on A installs Y; Y on B installs Z; Z on A",
        seed_sequence,
    ),
    (
        "auto-rollback",
        "a Y that fails health falls back to X by itself",
        auto_rollback,
    ),
    (
        "power-cut",
        "QEMU killed during the slot write; X still boots; reinstall works",
        power_cut,
    ),
    (
        "power-cut-loader",
        "power cut with the new loader written, not renamed; X boots; reinstall works",
        power_cut_loader,
    ),
    (
        "power-cut-mark-good",
        "power cuts inside Y's mark-good; a good slot boots; mark-good completes",
        power_cut_mark_good,
    ),
    (
        "manual-rollback",
        "after Z is committed, rollback boots Y once, then Z again",
        manual_rollback,
    ),
    (
        "http-download",
        "X installs Y from an HTTP server on the host",
        http_download,
    ),
    (
        "tampered-bundle",
        "bad signature and bad chunk are refused; nothing changes",
        tampered_bundle,
    ),
    (
        "verity-root",
        "/ is the slot's erofs through dm-verity, read-only; veritysetup agrees",
        crate::root_scenarios::verity_root,
    ),
    (
        "data-persists",
        "/data survives an update, a rollback and a power cut",
        crate::root_scenarios::data_persists,
    ),
    (
        "root-tamper",
        "a flipped byte in Y's filesystem or tree fails its trial; X boots, untouched",
        crate::root_scenarios::root_tamper,
    ),
    (
        "oci-install",
        "X installs Y pulled by digest from a registry on the host",
        crate::oci_scenarios::oci_install,
    ),
    (
        "agent-update",
        "POST /v1/update over mutual TLS installs Y; the node reboots; its agent commits Y",
        crate::agent_scenarios::agent_update,
    ),
    (
        "agent-health-fail",
        "Ybroken's agent health check fails: recorded, reboot, X comes back committed",
        crate::agent_scenarios::agent_health_fail,
    ),
    (
        "agent-unauthorized",
        "no client certificate, or another CA's: refused at the handshake; nothing changes",
        crate::agent_scenarios::agent_unauthorized,
    ),
    (
        "secure-boot",
        "Secure Boot on: signed X, Y boot; a stranger-signed or unsigned UKI is refused, Y stays",
        crate::secure_boot_scenarios::secure_boot,
    ),
    (
        "measured-boot",
        "swtpm: PCR 4, 7, 11 equal from slot A, slot B and the fallback; PCR 11 as predicted",
        crate::secure_boot_scenarios::measured_boot,
    ),
    (
        "delta-update",
        "X installs Y as a delta over HTTP (Range), then commits it",
        crate::delta_scenarios::delta_update,
    ),
    (
        "ignores-bootnext",
        "firmware drops BootNext: auto switches to the state file; the pre-loader runs the trials",
        crate::quirk_scenarios::ignores_boot_next,
    ),
    (
        "entries-lost",
        "every boot entry deleted: the fallback path boots the committed slot; mark-good recreates them",
        crate::quirk_scenarios::entries_lost,
    ),
    (
        "kexec-update",
        "Y activated by kexec without the firmware, committed; a broken Z by kexec falls back to Y",
        crate::quirk_scenarios::kexec_update,
    ),
    (
        "debian-systemd",
        "stock Debian (mmdebstrap) with systemd: abkit-agent.service commits a healthy Y after a crash, rolls back a Z whose unit fails",
        crate::debian_scenarios::debian_systemd,
    ),
    (
        "written-data-check",
        "a byte of Y's verity superblock changes after the install: Y's trial boots, mark-good refuses (written-data-mismatch), X stays committed",
        crate::verify_scenarios::written_data_check,
    ),
];

fn boot_base(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "boot")?;
    let before = s.vars()?;
    before.expect('A', None).context("the built VARS file")?;
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    expect_started(&b, &vars, 'A')?;
    vars.expect('A', None)?;
    let st = status(&b)?;
    expect_status(st, 'A', 'A', &[('A', X.version)])?;
    expect_slot(st, 'A', "good", None, "after mark-good")?;
    ensure!(b.report.ending == Ending::PowerOff, "no clean poweroff");
    Ok(s)
}

fn seed_steps(s: &mut Scenario<'_>) -> anyhow::Result<()> {
    // X on A installs Y into B: trial boot requested, BootOrder untouched.
    let (b, vars) = s.boot(&format!("install {}; status; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B')).context("after installing Y")?;
    let order_before = vars.boot_order.clone();
    // Y's trial boot on B: marks good (B first), installs Z into A.
    let (b, vars) = s.boot(&format!("install {}; status; reboot", on_disk(&Z)))?;
    expect_healthy(&b, &Y, 'B')?;
    expect_started(&b, &vars, 'B')?;
    expect_result(&b, "install", true)?;
    vars.expect('B', Some('A'))
        .context("after Y marked good and installed Z")?;
    ensure!(
        vars.boot_order.len() == order_before.len(),
        "BootOrder lost or gained entries"
    );
    // Z's trial boot on A: marks good.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &Z, 'A')?;
    vars.expect('A', None).context("after Z marked good")?;
    expect_status(status(&b)?, 'A', 'A', &[('A', Z.version), ('B', Y.version)])?;
    Ok(())
}

fn seed_sequence(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "seed-sequence")?;
    seed_steps(&mut s)?;
    let offline = offline_status(suite, &s.machine, 'A')?;
    expect_status(&offline, 'A', 'A', &[('A', Z.version), ('B', Y.version)])
        .context("offline status")?;
    *suite.after_seed.lock().unwrap() = Some((s.machine.disk.clone(), s.machine.vars.clone()));
    Ok(s)
}

fn auto_rollback(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "auto-rollback")?;
    let (b, vars) = s.boot(&format!("install {}; reboot", on_disk(&Y_BROKEN)))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B'))?;
    let order = vars.boot_order.clone();
    // The trial boot fails its health check: no mark-good, reboot.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_os(&b, &Y_BROKEN, 'B')?;
    ensure!(
        b.report.health_bad,
        "Ybroken did not report its failed health check"
    );
    ensure!(
        b.report.result("mark-good").is_none(),
        "Ybroken ran mark-good"
    );
    ensure!(b.report.ending == Ending::Reboot, "Ybroken did not reboot");
    vars.expect('A', None).context("after the failed trial")?;
    vars.expect_order(&order)?;
    // The firmware follows BootOrder back to X.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None)?;
    vars.expect_order(&order)?;
    expect_status(status(&b)?, 'A', 'A', &[('A', X.version)])?;
    Ok(s)
}

fn power_cut(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "power-cut")?;
    let (b, vars) =
        cut_in_system_write(&mut s, 4 << 20, &format!("install {}; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None).context("after the power cut")?;
    // (OVMF adds its own entries on a machine's first boot: compare from here.)
    let order = vars.boot_order.clone();
    // Keep the machine as the power cut left it, for a look afterwards.
    run(std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&s.machine.disk)
        .arg(s.dir.join("after-cut-disk.img")))?;
    std::fs::copy(&s.machine.vars, s.dir.join("after-cut-vars.fd"))?;
    // X boots, healthy, sees slot B recorded empty; installing again completes.
    let (b, vars) = s.boot(&format!("status; install {}; status; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    let st = status(&b)?;
    let first = b.report.status.first().unwrap_or(st);
    let state = text(&first["slots"]["B"]["state"]);
    ensure!(
        state == "empty",
        "slot B is {state:?} after the power cut, expected empty: {first}"
    );
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B'))?;
    vars.expect_order(&order)?;
    s.boot_expect_committed(&Y, 'B')?;
    Ok(s)
}

/// Boots with `action` (an install), the disk's writes throttled to 4 MiB/s,
/// and cuts the power once the install reports `min` bytes of the system
/// payload written (8 s after it started if it reports none); fails if the
/// install finished first.
pub fn cut_in_system_write(
    s: &mut Scenario<'_>,
    min: u64,
    action: &str,
) -> anyhow::Result<(Boot, BootVars)> {
    let (b, vars) = s.boot_with(BootSpec {
        action: action.to_string(),
        write_limit: Some(4 << 20),
        cut: Some(Cut::SystemBytes {
            min,
            fallback: Duration::from_secs(8),
        }),
        ..BootSpec::default()
    })?;
    ensure!(
        b.cut_at.is_some(),
        "the install ended before the power cut (log {})",
        b.log.display()
    );
    Ok((b, vars))
}

/// Boots with `action` and `halt-at CHECKPOINT`, and cuts the power as soon
/// as abkit says it halted there (synced, `abkit_update::halt`); fails if the
/// boot ended without reaching the checkpoint.
pub fn cut_at_checkpoint(
    s: &mut Scenario<'_>,
    checkpoint: &'static str,
    action: &str,
) -> anyhow::Result<(Boot, BootVars)> {
    let (b, vars) = s.boot_with(BootSpec {
        action: format!("halt-at {checkpoint}; {action}"),
        cut: Some(Cut::Checkpoint(checkpoint)),
        ..BootSpec::default()
    })?;
    ensure!(
        b.cut_at.is_some() && b.report.halted_at.as_deref() == Some(checkpoint),
        "abkit never halted at {checkpoint} (log {})",
        b.log.display()
    );
    Ok((b, vars))
}

/// Checks a slot's recorded `state` and whether its boot entry is
/// `active` (`None`: not checked) in a status JSON; `when` names the moment.
fn expect_slot(
    st: &Value,
    slot: char,
    state: &str,
    active: Option<bool>,
    when: &str,
) -> anyhow::Result<()> {
    let got = text(&st["slots"][slot.to_string()]["state"]);
    let got_active = st["entries"].as_array().and_then(|es| {
        es.iter()
            .find(|e| text(&e["slot"]) == slot.to_string())
            .and_then(|e| e["active"].as_bool())
    });
    ensure!(
        got == state && (active.is_none() || got_active == active),
        "slot {slot} is {got:?}, entry active {got_active:?} {when}; expected {state}, active {active:?}: {st}"
    );
    Ok(())
}

/// The files in the ESP's `\EFI\abkit`, read offline with mtools' `mdir`
/// (lower case); the ESP's first sector comes from the `HD(1,GPT,guid,START,
/// SIZE)` node of a slot entry in `st` (a status JSON of that machine).
fn abkit_dir_files(m: &Machine, st: &Value) -> anyhow::Result<Vec<String>> {
    let path = st["entries"][0]["device_path"].as_str().unwrap_or_default();
    let start = path
        .strip_prefix("HD(")
        .and_then(|p| p.split(')').next())
        .and_then(|p| p.split(',').nth(3))
        .and_then(|n| u64::from_str_radix(n.trim_start_matches("0x"), 16).ok())
        .with_context(|| format!("no ESP start in the entry's device path {path:?}"))?;
    let out = run(std::process::Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", m.disk.display(), start * 512))
        .arg("::/EFI/abkit"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_ascii_lowercase)
        .collect())
}

/// Whether `file` is the temporary name abkit writes `name` under before
/// renaming it (`name` plus a suffix: the suffix itself is the engine's).
fn is_temp_of(file: &str, name: &str) -> bool {
    file.strip_prefix(name)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The power goes while the new loader sits in its temporary file on the
/// ESP (the system written and verified, the rename not done): slot B must
/// stay recorded `empty` and unbootable, and a rerun cleans up and completes.
fn power_cut_loader(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "power-cut-loader")?;
    let (b, vars) = cut_at_checkpoint(
        &mut s,
        "install:loader-temp-written",
        &format!("install {}; reboot", on_disk(&Y)),
    )?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None).context("after the power cut")?;
    let order = vars.boot_order.clone();
    // What the cut left, read offline: B empty, its entry inactive, no trial.
    let st = offline_status(suite, &s.machine, 'A')?;
    expect_status(&st, 'A', 'A', &[('A', X.version)]).context("offline status")?;
    expect_slot(&st, 'B', "empty", Some(false), "after the cut")?;
    ensure!(
        st["trial_pending"] == Value::Bool(false),
        "trial pending: {st}"
    );
    // The cut landed between writing the loader and renaming it.
    let files = abkit_dir_files(&s.machine, &st)?;
    ensure!(
        files.iter().any(|f| is_temp_of(f, "boot-b.efi"))
            && !files.iter().any(|f| f == "boot-b.efi"),
        "expected a temporary boot-b.efi.* and no boot-b.efi on the ESP after the cut: {files:?}"
    );
    // X boots healthy and committed; installing again completes.
    let (b, vars) = s.boot(&format!("status; install {}; status; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    let first = b
        .report
        .status
        .first()
        .with_context(|| format!("no status-json line (log {})", b.log.display()))?;
    expect_status(first, 'A', 'A', &[('A', X.version)])?;
    expect_slot(first, 'B', "empty", None, "on the next boot")?;
    expect_result(&b, "install", true)?;
    let st = status(&b)?;
    expect_slot(st, 'B', "installed", Some(true), "after the rerun")?;
    ensure!(
        st["trial_pending"] == Value::Bool(true),
        "no trial pending after the rerun: {st}"
    );
    let files = abkit_dir_files(&s.machine, st)?;
    ensure!(
        files.iter().any(|f| f == "boot-b.efi")
            && !files.iter().any(|f| is_temp_of(f, "boot-b.efi")),
        "expected boot-b.efi in place and the temporary loader gone: {files:?}"
    );
    vars.expect('A', Some('B'))?;
    vars.expect_order(&order)?;
    // The trial boot goes to B.
    s.boot_expect_committed(&Y, 'B')?;
    Ok(s)
}

/// The power goes inside Y's mark-good on its trial boot: first with B
/// recorded good but BootOrder unchanged (the firmware's next boot is X on A,
/// committed, by the trial rule), then, on a second trial of Y, after BootOrder
/// points at B (the next boot is Y on B). Each time the slot that boots is
/// recorded good and its mark-good completes.
fn power_cut_mark_good(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "power-cut-mark-good")?;
    // Y is installed into B offline, as a factory or a provisioning host
    // would: one boot less, the same engine.
    offline_install(&s, &Y)?;

    // 1. Y's trial boot; the power goes right after B is recorded good.
    let (b, vars) = cut_at_checkpoint(&mut s, "mark-good:recorded-good", "poweroff")?;
    expect_os(&b, &Y, 'B')?;
    vars.expect('A', None)
        .context("after the cut with B recorded good")?;
    let order = vars.boot_order.clone();
    let st = offline_status(suite, &s.machine, 'A')?;
    expect_status(&st, 'A', 'A', &[('A', X.version), ('B', Y.version)])
        .context("offline status")?;
    expect_slot(&st, 'B', "good", Some(true), "after the cut")?;

    // 2. The firmware boots the committed slot, X on A, which is healthy;
    // it asks for Y once more (B is good, so a rollback trial may).
    let (b, vars) = s.boot("status; rollback; reboot")?;
    expect_healthy(&b, &X, 'A')?;
    expect_started(&b, &vars, 'A')?;
    expect_status(status(&b)?, 'A', 'A', &[('A', X.version), ('B', Y.version)])?;
    expect_result(&b, "rollback", true)?;
    vars.expect('A', Some('B')).context("after rollback")?;
    vars.expect_order(&order)?;

    // 3. Y's second trial: the power goes after mark-good committed B.
    let (b, vars) = cut_at_checkpoint(&mut s, "mark-good:boot-order-written", "poweroff")?;
    expect_os(&b, &Y, 'B')?;
    vars.expect('B', None)
        .context("after the cut with B committed")?;
    let st = offline_status(suite, &s.machine, 'B')?;
    expect_status(&st, 'B', 'B', &[('A', X.version), ('B', Y.version)])
        .context("offline status after the second cut")?;
    for slot in ['A', 'B'] {
        expect_slot(&st, slot, "good", Some(true), "after the second cut")?;
    }

    // 4. BootOrder points at B: Y boots, healthy; mark-good completes again.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &Y, 'B')?;
    expect_started(&b, &vars, 'B')?;
    vars.expect('B', None)?;
    expect_status(status(&b)?, 'B', 'B', &[('A', X.version), ('B', Y.version)])?;
    let offline = offline_status(suite, &s.machine, 'B')?;
    expect_status(&offline, 'B', 'B', &[('A', X.version), ('B', Y.version)])
        .context("offline status")?;
    Ok(s)
}

fn manual_rollback(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let seeded = suite.after_seed.lock().unwrap().clone();
    let mut s = match seeded {
        Some((disk, vars)) => Scenario::from_files(suite, "manual-rollback", &disk, &vars)?,
        None => {
            eprintln!("    (seed-sequence did not run here: running it first)");
            let mut s = Scenario::new(suite, "manual-rollback")?;
            seed_steps(&mut s)?;
            s
        }
    };
    let order = s.vars()?.boot_order;
    // Z (committed on A) asks for a one-shot boot of Y.
    let (b, vars) = s.boot("rollback; status; reboot")?;
    expect_healthy(&b, &Z, 'A')?;
    expect_result(&b, "rollback", true)?;
    vars.expect('A', Some('B')).context("after rollback")?;
    ensure!(vars.boot_order == order, "rollback changed BootOrder");
    // Y boots once and does not mark good.
    let (b, vars) = s.boot("skip-mark-good; status; reboot")?;
    expect_os(&b, &Y, 'B')?;
    ensure!(b.report.mark_good_skipped, "mark-good was not skipped");
    vars.expect('A', None)?;
    expect_status(status(&b)?, 'B', 'A', &[('A', Z.version), ('B', Y.version)])?;
    // Back to Z.
    let (b, vars) = s.boot("poweroff")?;
    expect_healthy(&b, &Z, 'A')?;
    vars.expect('A', None)?;
    vars.expect_order(&order)?;
    Ok(s)
}

fn http_download(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "http-download")?;
    let served_before = suite.http.served();
    let size = std::fs::metadata(suite.fx.bundle(&Y.bundle()))?.len();
    let (b, vars) = s.boot(&format!(
        "install {}; reboot",
        suite.http.guest_url(&Y.bundle())
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    let served = suite.http.served() - served_before;
    ensure!(
        served >= size,
        "the server sent {served} bytes of a {size}-byte bundle"
    );
    vars.expect('A', Some('B'))?;
    s.boot_expect_committed(&Y, 'B')?;
    Ok(s)
}

fn tampered_bundle(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "tampered-bundle")?;
    let before = s.vars()?;
    let (b, vars) = s.boot(&format!(
        "install /mnt/bundles/{BAD_SIGNATURE}; status; install /mnt/bundles/{BAD_CHUNK}; status; reboot"
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", false)?;
    ensure!(
        b.report.results_of("install").len() == 2,
        "expected two install attempts"
    );
    vars.expect('A', None)
        .context("after the refused bundles")?;
    ensure!(
        vars.our_order() == before.our_order(),
        "our BootOrder changed"
    );
    ensure!(
        b.report.status.len() == 2,
        "expected two status-json lines (log {})",
        b.log.display()
    );
    // A bad signature changes nothing: slot B is as the image builder left it.
    let st = &b.report.status[0];
    expect_status(st, 'A', 'A', &[('A', X.version)])?;
    expect_slot(
        st,
        'B',
        "unknown",
        None,
        "after a bad signature (untouched)",
    )?;
    // A payload failing mid-stream leaves slot B recorded empty.
    let st = &b.report.status[1];
    expect_status(st, 'A', 'A', &[('A', X.version)])?;
    expect_slot(st, 'B', "empty", None, "after a bad chunk")?;
    ensure!(
        st["trial_pending"] == Value::Bool(false),
        "trial pending after a refused bundle: {st}"
    );
    // And the machine still boots X.
    s.boot_expect_committed(&X, 'A')?;
    Ok(s)
}

/// The last `lines` lines of a serial log, without escapes and CRs.
fn print_tail(log: &Path, lines: usize) {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    let all: Vec<&str> = text.lines().collect();
    eprintln!("    --- last lines of {} ---", log.display());
    for line in &all[all.len().saturating_sub(lines)..] {
        let clean: String = line.chars().filter(|c| !c.is_control()).collect();
        eprintln!("    | {clean}");
    }
}

/// Runs the named scenarios (all if empty) on `jobs` worker threads (one
/// QEMU each), printing per-test timings and a summary; returns how many
/// failed.
pub fn run_all(suite: &Suite, only: &[String], jobs: usize) -> anyhow::Result<usize> {
    for name in only {
        ensure!(
            SCENARIOS.iter().any(|(n, _, _)| n == name),
            "unknown scenario {name:?}; known: {}",
            SCENARIOS
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|(n, _, _)| only.is_empty() || only.iter().any(|o| o == n))
        .collect();
    struct Queue {
        waiting: Vec<usize>,
        done: Vec<&'static str>,
        started: usize,
        rows: Vec<Option<(bool, String, Duration)>>,
    }
    // The longest scenarios first, the rest in list order: a long one
    // started last would run alone at the end while the other workers idle.
    let mut waiting: Vec<usize> = (0..chosen.len()).collect();
    waiting.sort_by_key(|&i| !START_FIRST.contains(&chosen[i].0));
    let queue = Mutex::new(Queue {
        waiting,
        done: Vec::new(),
        started: 0,
        rows: vec![None; chosen.len()],
    });
    let changed = Condvar::new();
    // Ready: nothing it needs is among the chosen and not yet done.
    let ready = |i: usize, done: &[&str]| {
        NEEDS.iter().all(|(who, needs)| {
            *who != chosen[i].0
                || done.contains(needs)
                || !chosen.iter().any(|(n, _, _)| n == needs)
        })
    };
    let worker = || {
        loop {
            let (i, n) = {
                let mut q = queue.lock().unwrap();
                loop {
                    if q.waiting.is_empty() {
                        return;
                    }
                    if let Some(pos) = q.waiting.iter().position(|&i| ready(i, &q.done)) {
                        q.started += 1;
                        break (q.waiting.remove(pos), q.started);
                    }
                    q = changed.wait(q).unwrap();
                }
            };
            let (name, what, test) = chosen[i];
            eprintln!("vm-e2e: [{n}/{}] {name}: {what}", chosen.len());
            LAST_LOG.with(|l| l.borrow_mut().take());
            let t = Instant::now();
            let outcome = test(suite);
            let took = t.elapsed();
            match &outcome {
                Ok(s) => eprintln!(
                    "vm-e2e: ok   {name} ({} boots, {:.1} s)",
                    s.boots,
                    took.as_secs_f64()
                ),
                Err(e) => {
                    if let Some(log) = LAST_LOG.with(|l| l.borrow().clone()) {
                        print_tail(&log, 25);
                    }
                    eprintln!("vm-e2e: FAIL {name} ({:.1} s): {e:#}", took.as_secs_f64())
                }
            }
            let boots = outcome
                .as_ref()
                .map(|s| s.boots.to_string())
                .unwrap_or("-".into());
            let ok = outcome.is_ok();
            drop(outcome);
            let mut q = queue.lock().unwrap();
            q.done.push(name);
            q.rows[i] = Some((ok, boots, took));
            changed.notify_all();
        }
    };
    let wall = Instant::now();
    let workers = jobs.clamp(1, chosen.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(worker);
        }
    });
    let q = queue.into_inner().unwrap();
    let rows: Vec<_> = chosen
        .iter()
        .zip(q.rows)
        .map(|((name, _, _), row)| {
            let (ok, boots, took) = row.unwrap_or((false, "-".into(), Duration::ZERO));
            (name.to_string(), ok, boots, took)
        })
        .collect();
    eprintln!("\nvm-e2e: summary ({})", suite.accel.name());
    eprintln!(
        "  {:<20} {:<6} {:>5} {:>9}",
        "scenario", "result", "boots", "time"
    );
    let mut failed = 0;
    let mut total = Duration::ZERO;
    for (name, ok, boots, took) in &rows {
        total += *took;
        if !ok {
            failed += 1;
        }
        eprintln!(
            "  {:<20} {:<6} {:>5} {:>7.1} s",
            name,
            if *ok { "ok" } else { "FAIL" },
            boots,
            took.as_secs_f64()
        );
    }
    eprintln!(
        "  {:<20} {:<6} {:>5} {:>7.1} s  ({:.1} s wall on {} worker{})",
        "total",
        if failed == 0 { "ok" } else { "FAIL" },
        "",
        total.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        workers,
        if workers == 1 { "" } else { "s" }
    );
    Ok(failed)
}
