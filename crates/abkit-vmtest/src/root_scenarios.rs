//! Scenarios of issue 12, "root from the slot": the test OS mounts its root
//! from the slot through dm-verity with the root hash from the UKI's command
//! line, keeps DATA on /data, and refuses a tampered slot.
//!
//! | name | proves |
//! | --- | --- |
//! | `verity-root` | / is erofs on /dev/mapper/root (a verity target over slot A with X's root hash), read-only, a write to / fails; the host's `veritysetup verify` accepts slot A with the root hash from X's UKI |
//! | `data-persists` | a file written to /data on X survives the update to Y, a rollback to X and a power cut during the next install |
//! | `root-tamper` | one flipped byte in Y's filesystem area, then one in its hash tree: the trial boot fails in the initrd, the next boot is X on A, committed, slot A byte for byte untouched |

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};

use crate::fixtures::{SystemPayload, X, Y, partition_extent, run, system_verity};
use crate::qemu::{Boot, BootSpec};
use crate::scenarios::{
    Scenario, Suite, cut_in_system_write, expect_healthy, expect_result, on_disk, status,
};
use crate::serial::Ending;
use crate::vars::BootVars;

/// Partition numbers in images `abkit image build` makes.
const SLOT_A: u32 = 2;
const SLOT_B: u32 = 3;

/// The guest's lines, carriage returns removed.
fn lines(boot: &Boot) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(&boot.log).with_context(|| format!("{}", boot.log.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .split('\n')
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

/// The rest of the first line starting with `prefix`.
fn line_after(boot: &Boot, prefix: &str) -> anyhow::Result<String> {
    lines(boot)?
        .iter()
        .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
        .with_context(|| format!("no `{prefix}` line (log {})", boot.log.display()))
}

fn read_range(disk: &Path, offset: u64, len: u64) -> anyhow::Result<Vec<u8>> {
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Flips the low bit of one byte of the disk image, between boots.
pub(crate) fn flip_byte(disk: &Path, at: u64) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0x01;
    f.seek(SeekFrom::Start(at))?;
    f.write_all(&b)?;
    f.sync_all()?;
    Ok(())
}

/// A boot that may never reach the slot's init (no TESTOS line).
fn boot_may_fail(s: &mut Scenario<'_>, action: &str) -> anyhow::Result<(Boot, BootVars)> {
    s.boots += 1;
    let log = s.dir.join(format!("boot-{}.log", s.boots));
    s.suite.set_last_log(&log);
    let spec = BootSpec {
        action: action.to_string(),
        ..BootSpec::default()
    };
    let boot = s.machine.boot(&spec, &log)?;
    s.boot_time += boot.took;
    let vars = s.vars()?;
    eprintln!(
        "    boot {} {:>6.1} s  loader slot {:?}, {} TESTOS lines, errors {:?}  -> {}",
        s.boots,
        boot.took.as_secs_f64(),
        boot.report.loader_slot,
        boot.report.testos.len(),
        boot.report.errors,
        vars.summary()
    );
    Ok((boot, vars))
}

/// X's root hash, from the `roothash=` of the UKI in X's bundle (`abkit
/// bundle extract`, `abkit uki inspect --json`).
fn uki_root_hash(suite: &Suite, bundle: &Path, dir: &Path) -> anyhow::Result<String> {
    let info = suite.fx.release.uki_info(bundle, dir)?;
    let cmdline = info["cmdline"].as_str().unwrap_or_default();
    let word = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("roothash="))
        .with_context(|| format!("no roothash= in the UKI's command line {cmdline:?}"))?;
    ensure!(
        info["root_hash"].as_str() == Some(word),
        "uki inspect's root_hash differs from the command line"
    );
    Ok(word.to_string())
}

pub fn verity_root(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "verity-root")?;
    let (b, _) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    let log = b.log.display().to_string();
    let root_hash = uki_root_hash(suite, &suite.fx.bundle(&X.bundle()), &s.dir)?;

    // / is erofs, read-only, on /dev/mapper/root ...
    let mount = line_after(&b, "testos: root-mount ")?;
    let f: Vec<&str> = mount.split_whitespace().collect();
    ensure!(
        f.len() >= 4 && f[0] == "/dev/mapper/root" && f[1] == "/" && f[2] == "erofs",
        "/ is not erofs on /dev/mapper/root: {mount} (log {log})"
    );
    ensure!(
        f[3].split(',').next() == Some("ro"),
        "/ is not mounted read-only: {mount}"
    );
    // ... which is a verity target with X's root hash, verified so far ...
    let dm = line_after(&b, "testos: root-dm ")?;
    ensure!(
        dm.starts_with("target=verity status=V "),
        "the root's device-mapper target is not a verified verity target: {dm} (log {log})"
    );
    ensure!(
        dm.contains(&format!(" sha256 {root_hash} ")),
        "the verity table does not carry the UKI's root hash {root_hash}: {dm}"
    );
    // ... the very device / lives on ...
    let dev = line_after(&b, "testos: root-dev ")?;
    ensure!(
        dev.ends_with(" same=yes"),
        "/ is not on the dm device: {dev}"
    );
    // ... over slot A's partition, every block read once in the initrd.
    let initrd = line_after(&b, "testos: initrd: /dev/mapper/root = dm-verity over ")?;
    ensure!(
        initrd.starts_with(&format!("/dev/vda{SLOT_A}:")),
        "the root was not mapped from slot A's partition: {initrd}"
    );
    // A write to / fails (EROFS).
    let write = line_after(&b, "testos: root-write ")?;
    ensure!(
        write.starts_with("refused") && write.contains("os error 30"),
        "a write to / was not refused as read-only: {write} (log {log})"
    );
    let data = line_after(&b, "testos: data-mount ")?;
    ensure!(
        data.split_whitespace().nth(2) == Some("ext4"),
        "/data is not ext4: {data}"
    );
    let st = status(&b)?;
    ensure!(st["running_slot"] == "A", "status: {st}");

    // On the host: veritysetup accepts slot A, as the machine left it, with
    // the root hash from X's UKI.
    let sys: SystemPayload = system_verity(&suite.fx.release.abkit, &suite.fx.bundle(&X.bundle()))?;
    let (start, _) = partition_extent(&s.machine.disk, SLOT_A)?;
    let slot = s.dir.join("slot-a.img");
    std::fs::write(&slot, read_range(&s.machine.disk, start, sys.size)?)?;
    run(Command::new("veritysetup")
        .arg("verify")
        .arg(&slot)
        .arg(&slot)
        .arg(&root_hash)
        .arg(format!("--hash-offset={}", sys.hash_offset)))
    .context("veritysetup verify of slot A with the UKI's root hash")?;
    let _ = std::fs::remove_file(&slot);
    Ok(s)
}

fn expect_data(b: &Boot, name: &str, text: &str) -> anyhow::Result<()> {
    let got = line_after(b, &format!("testos: data {name}"))?;
    ensure!(
        got == format!("={text}"),
        "/data/{name}: expected {text:?}, the guest says {got:?} (log {})",
        b.log.display()
    );
    Ok(())
}

pub fn data_persists(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "data-persists")?;
    // X writes, then installs Y.
    let (b, vars) = s.boot(&format!(
        "data-write note written-by-X-1.0.0; data-read note; install {}; reboot",
        on_disk(&Y)
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_data(&b, "note", "written-by-X-1.0.0")?;
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B'))?;
    // Y (trial boot, marks good) sees it; writes its own; asks for a rollback.
    let (b, vars) = s.boot("data-read note; data-write from-y hello-from-Y; rollback; reboot")?;
    expect_healthy(&b, &Y, 'B')?;
    expect_data(&b, "note", "written-by-X-1.0.0")?;
    expect_result(&b, "rollback", true)?;
    vars.expect('B', Some('A'))?;
    // X after the rollback sees both; installs Y again and loses power.
    let (b, _) = cut_in_system_write(
        &mut s,
        2 << 20,
        &format!(
            "data-read note; data-read from-y; install {}; reboot",
            on_disk(&Y)
        ),
    )?;
    expect_healthy(&b, &X, 'A')?;
    expect_data(&b, "note", "written-by-X-1.0.0")?;
    expect_data(&b, "from-y", "hello-from-Y")?;
    // After the power cut: X again, /data intact.
    let (b, vars) = s.boot("data-read note; data-read from-y; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    expect_data(&b, "note", "written-by-X-1.0.0")?;
    expect_data(&b, "from-y", "hello-from-Y")?;
    vars.expect('A', None)?;
    Ok(s)
}

/// Y installed into slot B by X on A (the install boot, checked): what a
/// scenario that then changes B's bytes on the disk needs.
pub(crate) struct YOnB {
    /// BootOrder after the install.
    pub order: Vec<u16>,
    /// Y's signed verity parameters.
    pub sys: SystemPayload,
    /// Slot B's first byte on the disk.
    pub b_start: u64,
}

/// X on A installs Y into slot B and reboots; the trial is still to come.
pub(crate) fn install_y_on_b(s: &mut Scenario<'_>) -> anyhow::Result<YOnB> {
    let (b, vars) = s.boot(&format!("install {}; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B'))?;
    let sys = system_verity(&s.suite.fx.release.abkit, &s.suite.fx.bundle(&Y.bundle()))?;
    let (b_start, _) = partition_extent(&s.machine.disk, SLOT_B)?;
    Ok(YOnB {
        order: vars.boot_order,
        sys,
        b_start,
    })
}

/// Installs Y from X, flips one byte of slot B at `offset` (from the start
/// of the partition), and checks: the trial boot fails in the initrd with a
/// verity error and reboots; the next boot is X on A, committed, and slot
/// A's bytes are what they were.
fn tampered_trial(
    s: &mut Scenario<'_>,
    what: &str,
    offset_of: fn(&SystemPayload) -> u64,
) -> anyhow::Result<()> {
    let YOnB {
        order,
        sys,
        b_start,
    } = install_y_on_b(s)?;
    let disk = s.machine.disk.clone();
    let (a_start, a_len) = partition_extent(&disk, SLOT_A)?;
    let slot_a = read_range(&disk, a_start, a_len)?;
    flip_byte(&disk, b_start + offset_of(&sys))?;

    // The trial boot of B never reaches Y's init.
    let (b, vars) = boot_may_fail(s, "status; poweroff")?;
    let log = b.log.display().to_string();
    ensure!(
        b.report.loader_slot == Some('B'),
        "the trial boot was not slot B (log {log})"
    );
    ensure!(
        b.report.testos.is_empty(),
        "Y's init ran from a slot with a flipped byte in its {what} (log {log})"
    );
    ensure!(
        b.report
            .errors
            .iter()
            .any(|e| e.starts_with("root: dm-verity:") || e.starts_with("root: ")),
        "no root error from the initrd: {:?} (log {log})",
        b.report.errors
    );
    ensure!(
        b.report.ending == Ending::Reboot,
        "the failed trial boot did not reboot (log {log})"
    );
    vars.expect('A', None)
        .context("after the failed trial boot")?;
    vars.expect_order(&order)?;

    // The next boot is X on A, healthy, committed; slot A untouched.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None)?;
    let st = status(&b)?;
    ensure!(
        st["committed_slot"] == "A" && st["running_slot"] == "A",
        "status after the fallback: {st}"
    );
    ensure!(
        read_range(&disk, a_start, a_len)? == slot_a,
        "slot A's bytes changed"
    );
    Ok(())
}

pub fn root_tamper(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "root-tamper")?;
    // A byte in the middle of Y's filesystem.
    tampered_trial(&mut s, "filesystem", |sys| sys.hash_offset / 2)
        .context("a flipped byte in the filesystem area")?;
    // A byte in the first block of the tree (after the verity superblock).
    tampered_trial(&mut s, "hash tree", |sys| sys.hash_offset + 4096 + 10)
        .context("a flipped byte in the hash tree")?;
    Ok(s)
}
