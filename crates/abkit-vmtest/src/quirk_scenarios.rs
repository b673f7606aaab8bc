//! Scenarios of issue 18 on real firmware: OVMF follows the spec, so the
//! harness plays the quirky firmware by editing the VARS file between boots
//! (deleting BootNext, or every boot entry), as such firmware would; and
//! kexec activation, which skips the firmware.

use anyhow::{Context, ensure};
use serde_json::Value;

use crate::fixtures::{X, Y, Y_BROKEN};
use crate::qemu::Boot;
use crate::scenarios::{
    Scenario, Suite, expect_healthy, expect_os, expect_result, on_disk, status,
};

/// What the VARS file holds, edited offline between boots.
fn edit_vars(
    s: &Scenario<'_>,
    edit: impl FnOnce(&mut abkit_efi::BootManager<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut store = abkit_efi::store::OvmfVarsFile::open(&s.machine.vars)
        .with_context(|| format!("open {}", s.machine.vars.display()))?;
    edit(&mut abkit_efi::BootManager::new(&mut store))
}

/// Firmware that ignores BootNext and deletes it.
fn drop_boot_next(s: &Scenario<'_>) -> anyhow::Result<bool> {
    let mut dropped = false;
    edit_vars(s, |bm| {
        dropped = bm.clear_boot_next()?;
        Ok(())
    })?;
    if dropped {
        eprintln!("    (harness: BootNext deleted, as firmware that ignores it would)");
    }
    Ok(dropped)
}

/// Firmware that forgets every boot entry: all Boot####, BootOrder, BootNext.
fn drop_all_entries(s: &Scenario<'_>) -> anyhow::Result<usize> {
    let mut n = 0;
    edit_vars(s, |bm| {
        for number in bm.entry_numbers()? {
            bm.delete_entry(number)?;
            n += 1;
        }
        bm.store()
            .delete(&abkit_efi::VarName::global("BootOrder"))?;
        bm.clear_boot_next()?;
        Ok(())
    })?;
    eprintln!("    (harness: {n} boot entries, BootOrder and BootNext deleted)");
    Ok(n)
}

/// The pre-loader's line in a boot's serial log, if it ran.
fn preloader_line(b: &Boot) -> anyhow::Result<Option<String>> {
    let log = std::fs::read(&b.log)?;
    Ok(String::from_utf8_lossy(&log)
        .lines()
        .find(|l| l.contains("abkit: pre-loader: state"))
        .map(|l| l.chars().filter(|c| !c.is_control()).collect()))
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

/// `ignores-bootnext`: an install with `--boot-control auto` arms the trial
/// by BootNext; the harness deletes BootNext before the reboot. The old
/// slot boots, mark-good sees the trial did not happen and switches the
/// machine to the state file (recording why); the next boot's pre-loader
/// starts the trial, which fails health (Y broken) and falls back by
/// itself; a healthy Y then goes through the same pre-loader and commits.
pub fn ignores_boot_next(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "ignores-bootnext")?;
    // 1. X on A installs broken Y with auto boot control.
    let (b, _) = s.boot(&format!(
        "install {} --boot-control auto; status; reboot",
        on_disk(&Y_BROKEN)
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_result(&b, "install", true)?;
    let st = status(&b)?;
    ensure!(
        text(&st["boot_control"]["mode"]) == "auto"
            && text(&st["boot_control"]["active"]) == "bootnext"
            && st["boot_control"]["probe"].is_object(),
        "after the install: {st}"
    );
    ensure!(drop_boot_next(&s)?, "the install set no BootNext");

    // 2. The firmware "ignored" BootNext: X on A again. Its mark-good
    // switches to the state file and says why.
    let (b, _) = s.boot("status; reboot")?;
    expect_healthy(&b, &X, 'A')?;
    let st = status(&b)?;
    let bc = &st["boot_control"];
    ensure!(
        text(&bc["active"]) == "state-file"
            && text(&bc["reason"]).contains("ignores BootNext")
            && text(&bc["loader_state"]["trial"]) == "B"
            && st["trial_pending"] == Value::Bool(true),
        "auto did not switch to the state file: {st}"
    );
    eprintln!("    reason: {}", text(&bc["reason"]));
    drop_boot_next(&s)?;

    // 3. The pre-loader starts the trial: broken Y on B, no mark-good.
    let (b, _) = s.boot("status; poweroff")?;
    expect_os(&b, &Y_BROKEN, 'B')?;
    ensure!(b.report.health_bad, "Ybroken passed its health check");
    let line = preloader_line(&b)?.context("no pre-loader line on the trial boot")?;
    ensure!(
        line.contains("starting slot B (trial)"),
        "pre-loader: {line}"
    );

    // 4. Its one attempt is used: the pre-loader returns to X on A, which
    // installs a healthy Y.
    let (b, _) = s.boot(&format!("install {}; status; reboot", on_disk(&Y)))?;
    expect_healthy(&b, &X, 'A')?;
    let line = preloader_line(&b)?.context("no pre-loader line after the failed trial")?;
    ensure!(
        line.contains("starting slot A (tries-exhausted)"),
        "pre-loader: {line}"
    );
    expect_result(&b, "install", true)?;
    let st = status(&b)?;
    ensure!(
        st["boot_next"].is_null() && text(&st["boot_control"]["loader_state"]["trial"]) == "B",
        "the install's trial is not in the state file: {st}"
    );
    drop_boot_next(&s)?;

    // 5. The pre-loader starts Y's trial; Y commits.
    let (b, _) = s.boot("status; poweroff")?;
    expect_healthy(&b, &Y, 'B')?;
    let st = status(&b)?;
    ensure!(
        text(&st["committed_slot"]) == "B"
            && text(&st["boot_control"]["loader_state"]["committed"]) == "B"
            && st["boot_control"]["loader_state"]["trial"].is_null()
            && text(&st["boot_control"]["booted_by_preloader"]) == "B trial",
        "after Y's trial: {st}"
    );
    Ok(s)
}

/// `entries-lost`: the firmware forgets every boot entry. The
/// removable-media path (the fallback loader, stamped with the committed
/// slot) boots the committed slot, and mark-good recreates our entries.
pub fn entries_lost(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "entries-lost")?;
    let (b, vars) = s.boot("poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None)?;
    ensure!(drop_all_entries(&s)? >= 2, "fewer than our two entries");
    let gone = s.vars()?;
    ensure!(
        gone.slot_a.is_none() && gone.slot_b.is_none(),
        "entries left: {}",
        gone.summary()
    );
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    ensure!(
        b.report
            .firmware_entry
            .is_none_or(|n| vars.slot_of(n).is_none()),
        "the firmware started an entry of ours, but they were all deleted"
    );
    vars.expect('A', None)
        .context("mark-good did not recreate the entries")?;
    let st = status(&b)?;
    ensure!(
        text(&st["committed_slot"]) == "A",
        "status after the fallback boot: {st}"
    );
    Ok(s)
}

/// The TESTOS lines of one QEMU run (one per kernel that reached init),
/// with the line number of each, and every firmware start (`BdsDxe:
/// starting`) and loader line (`abkit: booting slot`) by line number.
struct RunLog {
    testos: Vec<(usize, crate::serial::TestosLine)>,
    firmware: Vec<usize>,
    loader: Vec<usize>,
}

fn read_run(b: &Boot) -> anyhow::Result<RunLog> {
    let raw = std::fs::read(&b.log)?;
    let text = String::from_utf8_lossy(&raw);
    let mut run = RunLog {
        testos: Vec::new(),
        firmware: Vec::new(),
        loader: Vec::new(),
    };
    for (i, line) in text.split('\n').enumerate() {
        let line: String = line.chars().filter(|c| !c.is_control()).collect();
        let one = crate::serial::BootReport::parse(&line);
        if let Some(t) = one.testos.into_iter().next() {
            run.testos.push((i, t));
        }
        if line.contains("BdsDxe: starting Boot") {
            run.firmware.push(i);
        }
        if line.starts_with("abkit: booting slot ") {
            run.loader.push(i);
        }
    }
    Ok(run)
}

/// `kexec-update`: in one QEMU run, X on A installs Y with `--activate
/// kexec` and Y starts without the firmware (no firmware or loader line
/// between X and Y in the serial log), marks itself good, installs a
/// broken Z the same way; Z fails its health check and reboots, through
/// the firmware this time, which boots Y: BootOrder never named Z.
pub fn kexec_update(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "kexec-update")?;
    let keyring = format!("/{}", testos::initrd::KEYRING_DIR);
    let kexec_install = |v: &crate::fixtures::Variant| {
        format!(
            "abkit install {} --keyring {keyring} --json --activate kexec",
            on_disk(v)
        )
    };
    let action = format!(
        "@X {}; @Y status; @Y {}; reboot",
        kexec_install(&Y),
        kexec_install(&crate::fixtures::Z_BROKEN)
    );
    s.boots += 1;
    let log = s.dir.join(format!("boot-{}.log", s.boots));
    suite.set_last_log(&log);
    let b = s.machine.boot(
        &crate::qemu::BootSpec {
            action,
            timeout: Some(std::time::Duration::from_secs(420)),
            ..Default::default()
        },
        &log,
    )?;
    s.boot_time += b.took;
    let run = read_run(&b)?;
    let seen: Vec<String> = run
        .testos
        .iter()
        .map(|(_, t)| format!("{} on {}", t.variant, t.slot))
        .collect();
    eprintln!(
        "    kexec-update run 1 {:>6.1} s  kernels: {}  firmware starts at lines {:?}",
        b.took.as_secs_f64(),
        seen.join(" -> "),
        run.firmware
    );
    ensure!(
        seen == ["X on A", "Y on B", "Zbroken on A"],
        "expected X on A -> Y on B -> Zbroken on A in one run, saw {seen:?} (log {})",
        log.display()
    );
    let x_at = run.testos[0].0;
    let z_at = run.testos[2].0;
    ensure!(
        !run.firmware.iter().any(|&l| l > x_at) && !run.loader.iter().any(|&l| l > x_at),
        "the firmware or the loader ran after X (lines {:?} / {:?}): not a kexec (log {})",
        run.firmware,
        run.loader,
        log.display()
    );
    ensure!(
        b.report.results_of("mark-good") == ["0", "0"],
        "X and Y should both mark good: {:?} (log {})",
        b.report.results_of("mark-good"),
        log.display()
    );
    let st = status(&b)?;
    ensure!(
        text(&st["running_slot"]) == "B" && text(&st["committed_slot"]) == "B",
        "Y after its kexec'd trial: {st}"
    );
    ensure!(
        b.report.health_bad && z_at > x_at,
        "Zbroken did not fail its health check"
    );

    // The firmware, after Zbroken's reboot: Y on B, committed.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &Y, 'B')?;
    vars.expect('B', None)
        .context("after the failed kexec trial")?;
    let st = status(&b)?;
    ensure!(
        text(&st["slots"]["A"]["state"]) == "installed"
            && st["entries"]
                .as_array()
                .and_then(|es| es.iter().find(|e| text(&e["slot"]) == "A"))
                .is_some_and(|e| e["active"] == Value::Bool(false)),
        "Zbroken's slot should stay installed with an inactive entry: {st}"
    );
    Ok(s)
}
