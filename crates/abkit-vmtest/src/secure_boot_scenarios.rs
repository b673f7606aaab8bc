//! Scenarios of issue 17, Secure Boot and measured boot, on OVMF's Secure
//! Boot build (`OVMF_CODE_4M.secboot.fd`) with the test PKI of
//! `scripts/test-pki.sh` enrolled by `abkit image build --secure-boot`.
//!
//! | name | proves |
//! | --- | --- |
//! | `secure-boot` | Secure Boot on; X signed by db boots and installs signed Y; Y's trial commits; a Z whose UKI a stranger signed (the bundle itself validly signed): the firmware refuses the trial, the next boot is Y on B, committed, slot B untouched; an unsigned Z: the same |
//! | `measured-boot` | with swtpm as TPM, PCR 4, 7 and 11 are equal booting one signed release from slot A, slot B and the fallback path; PCR 11 is what `abkit uki inspect` predicts, PCR 4 the firmware's events plus the loader's Authenticode digest (no kernel); PCR 12 (the command line) differs only between the slots |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{Context, ensure};

use crate::fixtures::{
    BASE_SYSTEM_SIZE, Fixtures, Variant, X, Y, Z, make_bundle_disk, partition_extent, run,
};
use crate::qemu::{Boot, Firmware};
use crate::scenarios::{
    Scenario, Suite, expect_healthy, expect_result, expect_started, expect_status,
    offline_install_file, offline_status, status,
};

/// Slot B's partition number in images `abkit image build` makes.
const SLOT_B: u32 = 3;
/// The UKI of this bundle is signed by a key the firmware does not trust.
const Z_STRANGER: &str = "z-stranger.abb";

/// The Secure Boot releases and base machine, built once per run.
#[derive(Debug, Clone)]
struct SbFixtures {
    bundle_dir: PathBuf,
    bundle_disk: PathBuf,
    /// X (signed) on slot A, the test PKI enrolled, Secure Boot on.
    base_disk: PathBuf,
    base_vars: PathBuf,
}

static SB_FIXTURES: Mutex<Option<SbFixtures>> = Mutex::new(None);

fn sb_bundle(v: &Variant) -> String {
    format!("{}-signed.abb", v.stem())
}

/// Builds (once) X and Y with UKIs signed by the test db key, Z signed by a
/// stranger's, Z unsigned (the regular fixture), their bundle disk, and
/// the base machine with the keys enrolled.
fn sb_fixtures(fx: &Fixtures) -> anyhow::Result<SbFixtures> {
    let mut cached = SB_FIXTURES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(sb) = cached.as_ref() {
        return Ok(sb.clone());
    }
    let dir = fx.release.dir.join("secure-boot");
    let _ = std::fs::remove_dir_all(&dir);
    let bundle_dir = dir.join("bundles");
    std::fs::create_dir_all(&bundle_dir)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/test-pki.sh");
    // The test PKI (enrolled; signs X and Y) and a stranger's.
    let (pki, stranger) = (dir.join("pki"), dir.join("stranger"));
    run(Command::new("bash").arg(script).arg(&pki))?;
    run(Command::new("bash")
        .arg(script)
        .arg(&stranger)
        .arg("stranger"))?;
    let signed_by = |v: &Variant, keys: &Path, out: &str| -> anyhow::Result<()> {
        run(fx
            .release
            .bundle_create(v, &bundle_dir.join(out))
            .arg("--uki-key")
            .arg(keys.join("db.key"))
            .arg("--uki-cert")
            .arg(keys.join("db.crt")))
        .map(|_| ())
    };
    signed_by(&X, &pki, &sb_bundle(&X))?;
    signed_by(&Y, &pki, &sb_bundle(&Y))?;
    signed_by(&Z, &stranger, Z_STRANGER)?;
    std::fs::copy(fx.bundle(&Z.bundle()), bundle_dir.join(Z.bundle()))?;
    let bundle_disk = dir.join("bundles.img");
    make_bundle_disk(&bundle_dir, &bundle_disk)?;
    let (base_disk, base_vars) = (dir.join("base-disk.img"), dir.join("base-vars.fd"));
    fx.release.base_image(
        &bundle_dir.join(sb_bundle(&X)),
        &base_disk,
        &base_vars,
        BASE_SYSTEM_SIZE,
        &["--secure-boot".as_ref(), pki.as_os_str()],
    )?;
    let sb = SbFixtures {
        bundle_dir,
        bundle_disk,
        base_disk,
        base_vars,
    };
    *cached = Some(sb.clone());
    Ok(sb)
}

/// A fresh Secure Boot machine (signed X on A) in `<work>/<name>`.
fn sb_machine<'a>(
    suite: &'a Suite,
    name: &str,
    tpm: bool,
) -> anyhow::Result<(Scenario<'a>, SbFixtures)> {
    let sb = sb_fixtures(&suite.fx)?;
    let mut s = Scenario::new(suite, name)?;
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&sb.base_disk)
        .arg(&s.machine.disk))?;
    std::fs::copy(&sb.base_vars, &s.machine.vars)?;
    s.machine.bundles = Some(sb.bundle_disk.clone());
    s.machine.firmware = Firmware {
        secure_boot: true,
        tpm: tpm.then(|| s.dir.join("tpm")),
    };
    Ok((s, sb))
}

/// The serial log's lines, carriage returns removed.
fn log_lines(boot: &Boot) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(&boot.log).with_context(|| format!("{}", boot.log.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

/// The firmware's refusals in a boot (`... Access Denied`, `Security Violation`).
fn refusals(boot: &Boot) -> anyhow::Result<Vec<String>> {
    Ok(log_lines(boot)?
        .into_iter()
        .filter(|l| l.contains("Access Denied") || l.contains("Security Violation"))
        .collect())
}

fn expect_secure_boot_on(boot: &Boot) -> anyhow::Result<()> {
    let lines = log_lines(boot)?;
    ensure!(
        lines.iter().any(|l| l == "testos: secureboot=1"),
        "the guest does not see Secure Boot on (log {})",
        boot.log.display()
    );
    Ok(())
}

/// SHA-256 of a partition of the machine's disk.
fn partition_hash(disk: &Path, number: u32) -> anyhow::Result<String> {
    let (start, len) = partition_extent(disk, number)?;
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "dd if='{}' bs=1M iflag=skip_bytes,count_bytes skip={start} count={len} status=none | sha256sum",
        disk.display()
    )))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// A trial of an image the firmware must refuse: BootNext names slot A, the
/// firmware denies its loader, and BootOrder boots Y on B, committed, slot B
/// byte for byte as before. `action` runs on that Y.
fn refused_trial(s: &mut Scenario<'_>, action: &str, what: &str) -> anyhow::Result<Boot> {
    let before = s.vars()?;
    ensure!(
        before.boot_next.is_some() && before.boot_next == before.slot_a,
        "{what}: BootNext does not name slot A before the trial"
    );
    let slot_b = partition_hash(&s.machine.disk, SLOT_B)?;
    let (b, vars) = s.boot(action)?;
    let refused = refusals(&b)?;
    ensure!(
        !refused.is_empty(),
        "{what}: the firmware refused nothing (log {})",
        b.log.display()
    );
    eprintln!("      firmware: {}", refused[0].trim());
    expect_healthy(&b, &Y, 'B').with_context(|| format!("{what}: after the refused trial"))?;
    expect_started(&b, &vars, 'B').context(what.to_string())?;
    let lines = log_lines(&b)?;
    ensure!(
        !lines.iter().any(|l| l.starts_with("abkit: booting slot A")),
        "{what}: slot A's loader ran"
    );
    ensure!(
        partition_hash(&s.machine.disk, SLOT_B)? == slot_b,
        "{what}: slot B changed"
    );
    expect_status(status(&b)?, 'B', 'B', &[('B', Y.version)])?;
    Ok(b)
}

pub fn secure_boot(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let (mut s, _sb) = sb_machine(suite, "secure-boot", false)?;
    let on_disk = |name: &str| format!("/mnt/bundles/{name}");

    // Signed X boots with Secure Boot on and installs signed Y.
    let (b, vars) = s.boot(&format!(
        "secureboot; install {}; status; reboot",
        on_disk(&sb_bundle(&Y))
    ))?;
    expect_healthy(&b, &X, 'A')?;
    expect_secure_boot_on(&b)?;
    ensure!(refusals(&b)?.is_empty(), "the firmware refused something");
    expect_result(&b, "install", true)?;
    vars.expect('A', Some('B')).context("after installing Y")?;

    // Y's trial on B commits; it installs Z whose UKI a stranger signed.
    let (b, vars) = s.boot(&format!(
        "secureboot; install {}; status; reboot",
        on_disk(Z_STRANGER)
    ))?;
    expect_healthy(&b, &Y, 'B')?;
    expect_secure_boot_on(&b)?;
    expect_result(&b, "install", true)?;
    vars.expect('B', Some('A'))
        .context("after Y committed and installed Z (stranger)")?;

    // The stranger-signed trial is refused: Y again, which installs an unsigned Z.
    let b = refused_trial(
        &mut s,
        &format!("install {}; status; reboot", on_disk(&Z.bundle())),
        "Z signed by a stranger",
    )?;
    expect_result(&b, "install", true)?;
    s.vars()?
        .expect('B', Some('A'))
        .context("after installing unsigned Z")?;

    // The unsigned trial is refused too.
    refused_trial(&mut s, "status; poweroff", "unsigned Z")?;
    s.vars()?.expect('B', None).context("at the end")?;
    let offline = offline_status(suite, &s.machine, 'B')?;
    expect_status(&offline, 'B', 'B', &[('B', Y.version)]).context("offline status")?;
    Ok(s)
}

/// `testos: pcr N=HEX` lines of a boot.
fn pcrs(boot: &Boot) -> anyhow::Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for line in log_lines(boot)? {
        if let Some(rest) = line.strip_prefix("testos: pcr ")
            && let Some((n, v)) = rest.split_once('=')
            && let Ok(n) = n.parse()
        {
            out.insert(n, v.to_string());
        }
    }
    for n in [4, 7, 11, 12] {
        ensure!(
            out.contains_key(&n),
            "PCR {n} not read in the guest (log {}): is the TPM there?",
            boot.log.display()
        );
    }
    Ok(out)
}

/// PCR 4 after OVMF started a loader whose Authenticode digest is
/// `digest` (hex) from a boot option: `EV_EFI_ACTION` "Calling EFI
/// Application from Boot Option", the separator (four zero bytes), the
/// loader. Nothing else: the kernel the loader starts is not in it.
fn predicted_pcr4(digest: &str) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let loader = hex_bytes(digest)?;
    let mut pcr = [0u8; 32];
    for event in [
        Sha256::digest(b"Calling EFI Application from Boot Option").to_vec(),
        Sha256::digest([0u8; 4]).to_vec(),
        loader,
    ] {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(&event);
        pcr = h.finalize().into();
    }
    Ok(pcr.iter().map(|b| format!("{b:02x}")).collect())
}

fn hex_bytes(text: &str) -> anyhow::Result<Vec<u8>> {
    ensure!(text.len() == 64, "not a SHA-256 in hex: {text:?}");
    (0..32)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).context("not hex"))
        .collect()
}

/// `abkit uki inspect --json` of the UKI in `bundle`: its predicted PCR 11
/// and its Authenticode digest.
fn uki_measures(suite: &Suite, bundle: &Path, dir: &Path) -> anyhow::Result<(String, String)> {
    let info = suite.fx.release.uki_info(bundle, dir)?;
    let field = |name: &str| {
        info[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("abkit uki inspect printed no {name}"))
    };
    Ok((field("pcr11_sha256")?, field("authenticode_sha256")?))
}

pub fn measured_boot(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let (mut s, sb) = sb_machine(suite, "measured-boot", true)?;
    let x = sb.bundle_dir.join(sb_bundle(&X));

    // 1: signed X from slot A.
    let (b, _) = s.boot("secureboot; pcrs; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    expect_secure_boot_on(&b)?;
    let from_a = pcrs(&b)?;

    // 2: the same release installed into slot B (offline), its trial.
    offline_install_file(&s, &x, "signed X")?;
    let (b, vars) = s.boot("pcrs; poweroff")?;
    expect_healthy(&b, &X, 'B')?;
    vars.expect('B', None)?;
    let from_b = pcrs(&b)?;

    // 3: the fallback \EFI\BOOT\BOOTX64.EFI (stamped B): our entries and
    // BootOrder deleted, the firmware boots the disk's removable path.
    let (slot_a, slot_b) = (
        vars.slot_a.context("no slot A entry")?,
        vars.slot_b.context("no slot B entry")?,
    );
    let vars_file = s.machine.vars.clone();
    run(Command::new("virt-fw-vars")
        .arg("-i")
        .arg(&vars_file)
        .arg("-o")
        .arg(&vars_file)
        .args(["--delete", &format!("Boot{slot_a:04X}")])
        .args(["--delete", &format!("Boot{slot_b:04X}")])
        .args(["--delete", "BootOrder"]))?;
    let (b, vars) = s.boot("skip-mark-good; pcrs; poweroff")?;
    let started = log_lines(&b)?
        .into_iter()
        .rfind(|l| l.contains("BdsDxe: starting Boot"))
        .unwrap_or_default();
    ensure!(
        !started.is_empty() && !started.contains("\\EFI\\abkit\\"),
        "the firmware did not start the removable-media path: {started:?} (log {})",
        b.log.display()
    );
    ensure!(
        log_lines(&b)?
            .iter()
            .any(|l| l.starts_with("abkit: booting slot B (stamp)")),
        "the fallback loader did not boot slot B by its stamp (log {})",
        b.log.display()
    );
    crate::scenarios::expect_os(&b, &X, 'B')?;
    let _ = vars;
    let from_fallback = pcrs(&b)?;

    let (predicted, digest) = uki_measures(suite, &x, &s.dir)?;
    let predicted4 = predicted_pcr4(&digest)?;
    eprintln!(
        "      PCR 4 {}... (predicted {}...), 7 {}..., 11 {}... (predicted {}...)",
        &from_a[&4][..16],
        &predicted4[..16],
        &from_a[&7][..16],
        &from_a[&11][..16],
        &predicted[..16]
    );
    for n in [4, 7, 11] {
        ensure!(
            from_a[&n] == from_b[&n] && from_b[&n] == from_fallback[&n],
            "PCR {n} differs: slot A {}, slot B {}, fallback {}",
            from_a[&n],
            from_b[&n],
            from_fallback[&n]
        );
    }
    ensure!(
        from_a[&11] == predicted,
        "PCR 11 {} is not abkit uki inspect's prediction {predicted}",
        from_a[&11]
    );
    // The command line carries the slot letter: PCR 12 tells A from B.
    ensure!(
        from_a[&12] != from_b[&12] && from_b[&12] == from_fallback[&12],
        "PCR 12: slot A {}, slot B {}, fallback {}",
        from_a[&12],
        from_b[&12],
        from_fallback[&12]
    );
    ensure!(
        from_a[&4] == predicted4,
        "PCR 4 {} is not the firmware's action, separator and the loader's Authenticode digest {digest} ({predicted4})",
        from_a[&4]
    );
    Ok(s)
}
