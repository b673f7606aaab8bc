//! `abkit keygen` and `abkit bundle create|verify|inspect|extract`, run as
//! the built binary on small generated images, with `veritysetup` checking
//! the extracted system payload.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn abkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(args)
        .output()
        .expect("run abkit")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

use abkit_disk::fixtures::noise;

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// Keys `rel` (in `ring/`) and `other` (in `other-ring/`), inputs boot.efi and system.img.
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup { dir };
        for (name, ring) in [("rel", "ring"), ("other", "other-ring")] {
            let o = abkit(&["keygen", "--out", s.p(name).to_str().unwrap()]);
            assert!(o.status.success(), "{:?}", text(&o));
            std::fs::create_dir(s.p(ring)).unwrap();
            std::fs::copy(
                s.p(&format!("{name}.pub")),
                s.p(&format!("{ring}/{name}.pub")),
            )
            .unwrap();
        }
        std::fs::write(s.p("boot.efi"), noise(200_000, 1)).unwrap();
        let mut system = noise(1_500_000, 2);
        system.resize(3 * 1024 * 1024 + 100, 0);
        std::fs::write(s.p("system.img"), system).unwrap();
        s
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_owned()
    }

    fn create(&self, out: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "bundle".to_owned(),
            "create".into(),
            "--efi".into(),
            self.s("boot.efi"),
            "--system".into(),
            self.s("system.img"),
            "--version".into(),
            "1.2.0".into(),
            "--compatible".into(),
            "demo-os".into(),
            "--key".into(),
            self.s("rel.key"),
            "-o".into(),
            self.s(out),
        ];
        if !extra.contains(&"--chunk-kib") {
            args.extend(["--chunk-kib".into(), "256".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        abkit(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::new();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&s.p("rel.key")), 0o600);
    let public = std::fs::read_to_string(s.p("rel.pub")).unwrap();
    assert!(public.starts_with("abkit-ed25519-public-key\n"), "{public}");
    let secret = std::fs::read_to_string(s.p("rel.key")).unwrap();
    assert!(secret.starts_with("abkit-ed25519-secret-key\n"));
    let o = abkit(&["keygen", "--out", &s.s("rel")]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("already exists"), "{:?}", text(&o));
    assert_eq!(
        std::fs::read_to_string(s.p("rel.key")).unwrap(),
        secret,
        "the old key survived"
    );
    let o = abkit(&[
        "keygen",
        "--out",
        &s.s("rel"),
        "--force",
        "--comment",
        "ci key",
    ]);
    assert!(o.status.success());
    assert!(
        std::fs::read_to_string(s.p("rel.pub"))
            .unwrap()
            .ends_with("# ci key\n")
    );
}

#[test]
fn create_verify_inspect_extract_round_trip() {
    let s = Setup::new();
    for (out, extra) in [
        ("plain.abb", &[][..]),
        ("zstd.abb", &["--zstd", "--min-version", "1.0.0"][..]),
    ] {
        let o = s.create(out, extra);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stdout}{stderr}");
        assert!(stdout.contains("demo-os 1.2.0"), "{stdout}");

        let o = abkit(&["bundle", "verify", &s.s(out), "--keyring", &s.s("ring")]);
        let (stdout, stderr) = text(&o);
        assert!(o.status.success(), "{stdout}{stderr}");
        assert!(
            stdout.starts_with("ok: demo-os 1.2.0 signed by key "),
            "{stdout}"
        );

        let o = abkit(&[
            "bundle",
            "verify",
            &s.s(out),
            "--keyring",
            &s.s("ring"),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["payloads"][1]["name"], "system");

        let o = abkit(&[
            "bundle",
            "inspect",
            &s.s(out),
            "--json",
            "--keyring",
            &s.s("ring"),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["format_version"], 3);
        let payload = &v["manifest"]["payloads"][0];
        assert_eq!(payload["blake3"].as_str().map(str::len), Some(64), "{v}");
        assert!(payload.get("sha256").is_none(), "{v}");
        assert_eq!(v["manifest"]["compatible"], "demo-os");
        assert_eq!(v["manifest"]["version"], "1.2.0");
        assert_eq!(v["signatures"][0]["status"], "valid");
        assert_eq!(v["signatures"][0]["key_id"].as_str().unwrap().len(), 16);
        let system = &v["manifest"]["payloads"][1];
        assert_eq!(
            system["verity"]["data_size"],
            (3 * 1024 * 1024 + 4096) as u64
        );
        assert_eq!(
            system["compression"],
            if extra.is_empty() { "none" } else { "zstd" }
        );

        let o = abkit(&["bundle", "inspect", &s.s(out)]);
        let (stdout, _) = text(&o);
        assert!(stdout.contains("not checked (no keyring)"), "{stdout}");
        assert!(stdout.contains("dm-verity: root "), "{stdout}");

        let dest = s.p(&format!("{out}.d"));
        let o = abkit(&[
            "bundle",
            "extract",
            &s.s(out),
            "--keyring",
            &s.s("ring"),
            "--out",
            dest.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{:?}", text(&o));
        assert_eq!(
            std::fs::read(dest.join("efi")).unwrap(),
            std::fs::read(s.p("boot.efi")).unwrap()
        );
        let extracted = std::fs::read(dest.join("system")).unwrap();
        let input = std::fs::read(s.p("system.img")).unwrap();
        assert_eq!(&extracted[..input.len()], &input[..]);
        let root = system["verity"]["root_hash"].as_str().unwrap();
        let offset = format!("--hash-offset={}", system["verity"]["hash_offset"]);
        let img = dest.join("system");
        let img = img.to_str().unwrap();
        let vs = Command::new("veritysetup")
            .args(["verify", img, img, root, &offset])
            .output()
            .unwrap();
        assert!(vs.status.success(), "veritysetup: {:?}", text(&vs));
    }
}

#[test]
fn verify_failures_exit_nonzero_with_a_named_error() {
    let s = Setup::new();
    assert!(s.create("b.abb", &[]).status.success());
    let o = abkit(&[
        "bundle",
        "verify",
        &s.s("b.abb"),
        "--keyring",
        &s.s("other-ring"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("[no-trusted-signature]"),
        "{:?}",
        text(&o)
    );

    let mut bytes = std::fs::read(s.p("b.abb")).unwrap();
    let at = bytes.len() - 300_000;
    bytes[at] ^= 1;
    std::fs::write(s.p("bad.abb"), &bytes).unwrap();
    let o = abkit(&[
        "bundle",
        "verify",
        &s.s("bad.abb"),
        "--keyring",
        &s.s("ring"),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let (stdout, stderr) = text(&o);
    assert!(stderr.starts_with("abkit: error: "), "{stderr}");
    assert!(
        stderr.contains("[chunk-hash-mismatch] payload `system` chunk"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    // extract of the corrupt bundle: efi verified, system did not, so
    // nothing at all is written (extract_leaves_nothing_... has more).
    let dest = s.p("out");
    let o = abkit(&[
        "bundle",
        "extract",
        &s.s("bad.abb"),
        "--keyring",
        &s.s("ring"),
        "--out",
        dest.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(!dest.exists(), "no output folder after a failed extract");

    std::fs::write(s.p("short.abb"), &bytes[..100]).unwrap();
    let o = abkit(&["bundle", "inspect", &s.s("short.abb")]);
    assert!(text(&o).1.contains("[truncated]"), "{:?}", text(&o));
    let o = abkit(&[
        "bundle",
        "verify",
        &s.s("b.abb"),
        "--keyring",
        &s.s("missing"),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("keyring"), "{:?}", text(&o));

    // A directory is named as one (Linux opens it; its first read fails).
    let o = abkit(&["bundle", "inspect", &s.s("ring")]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("a directory, not a bundle file"),
        "{:?}",
        text(&o)
    );
}

#[test]
fn verify_reads_a_bundle_from_stdin() {
    let s = Setup::new();
    assert!(s.create("b.abb", &["--zstd"]).status.success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(["bundle", "verify", "-", "--keyring", &s.s("ring")])
        .stdin(std::fs::File::open(s.p("b.abb")).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn create_refuses_bad_arguments_by_name() {
    let s = Setup::new();
    let o = s.create("x.abb", &["--zstd-level", "22"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("zstd-level"), "{:?}", text(&o));
    std::fs::write(s.p("bad.key"), "abkit-ed25519-public-key\nAAAA\n").unwrap();
    let mut args: Vec<String> = ["bundle", "create", "--efi"].map(String::from).to_vec();
    args.extend([
        s.s("boot.efi"),
        "--system".into(),
        s.s("system.img"),
        "--version".into(),
        "1.0.0".into(),
    ]);
    args.extend([
        "--compatible".into(),
        "x".into(),
        "--key".into(),
        s.s("bad.key"),
        "-o".into(),
        s.s("x.abb"),
    ]);
    let o = abkit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        text(&o).1.contains("a secret key was expected"),
        "{:?}",
        text(&o)
    );
    assert!(!s.p("x.abb").exists());
    let o = s.create("x.abb", &["--chunk-kib", "6"]);
    let err = text(&o).1;
    assert!(
        err.contains("[manifest-invalid]") && err.contains("chunk_size 6144"),
        "{err}"
    );
    assert!(!s.p("x.abb").exists(), "no output after a failed create");
}

#[test]
fn every_bundle_command_has_help() {
    for sub in [
        &["keygen"][..],
        &["bundle"],
        &["bundle", "create"],
        &["bundle", "verify"],
        &["bundle", "inspect"],
        &["bundle", "extract"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let o = abkit(&args);
        assert!(o.status.success(), "{sub:?}: {:?}", text(&o));
        assert!(text(&o).0.contains("Usage: abkit"), "{sub:?}");
    }
}

/// Every file in `dir`, sorted, for "nothing else was left behind" checks.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn create_refuses_an_output_that_is_an_input_and_leaves_it_intact() {
    let s = Setup::new();
    std::os::unix::fs::symlink(s.p("system.img"), s.p("link.abb")).unwrap();
    std::fs::hard_link(s.p("boot.efi"), s.p("hard.abb")).unwrap();
    let before = listing(s.dir.path());
    let originals: Vec<_> = ["rel.key", "system.img", "boot.efi"]
        .iter()
        .map(|n| std::fs::read(s.p(n)).unwrap())
        .collect();
    for (out, input) in [
        ("rel.key", "rel.key"),
        ("system.img", "system.img"),
        ("boot.efi", "boot.efi"),
        ("link.abb", "system.img"),
        ("hard.abb", "boot.efi"),
        ("ring/../rel.key", "rel.key"),
    ] {
        let o = s.create(out, &[]);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{out}: {stdout}{stderr}");
        assert!(stderr.contains("[output-is-input]"), "{out}: {stderr}");
        assert!(
            stderr.contains(&format!("is the input file {}", s.s(input))),
            "{out}: {stderr}"
        );
    }
    for (name, bytes) in ["rel.key", "system.img", "boot.efi"].iter().zip(&originals) {
        assert_eq!(&std::fs::read(s.p(name)).unwrap(), bytes, "{name} changed");
    }
    assert!(
        std::fs::symlink_metadata(s.p("link.abb"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(listing(s.dir.path()), before, "no file added or removed");
}

#[test]
fn a_bundle_is_written_0644_and_a_failed_create_keeps_the_old_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::new();
    let o = s.create("b.abb", &[]);
    assert!(o.status.success(), "{:?}", text(&o));
    let mode = std::fs::metadata(s.p("b.abb"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o644, "bundles are public");
    assert_eq!(
        std::fs::metadata(s.p("rel.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "the secret key stays private"
    );
    let old = std::fs::read(s.p("b.abb")).unwrap();
    let before = listing(s.dir.path());
    // Fails after the EFI payload was analysed: the system image is a folder.
    std::fs::rename(s.p("system.img"), s.p("system.bak")).unwrap();
    std::fs::create_dir(s.p("system.img")).unwrap();
    let o = s.create("b.abb", &["--version", "2.0.0"]);
    assert!(!o.status.success(), "{:?}", text(&o));
    assert_eq!(
        std::fs::read(s.p("b.abb")).unwrap(),
        old,
        "old bundle intact"
    );
    std::fs::remove_dir(s.p("system.img")).unwrap();
    std::fs::rename(s.p("system.bak"), s.p("system.img")).unwrap();
    assert_eq!(listing(s.dir.path()), before, "no temporary file left");
}

#[test]
fn extract_leaves_nothing_behind_when_the_bundle_fails_verification() {
    let s = Setup::new();
    assert!(s.create("b.abb", &[]).status.success());
    let good = std::fs::read(s.p("b.abb")).unwrap();
    // Three ways to fail after efi (or every payload) verified.
    let mut chunk = good.clone();
    let at = chunk.len() - 300_000;
    chunk[at] ^= 1;
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"junk");
    let short = good[..good.len() - 10].to_vec();
    let extract = |bundle: &str, out: &Path| {
        abkit(&[
            "bundle",
            "extract",
            &s.s(bundle),
            "--keyring",
            &s.s("ring"),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    for (name, bytes, code) in [
        ("chunk.abb", &chunk, "[chunk-hash-mismatch]"),
        ("trailing.abb", &trailing, "[trailing-data]"),
        ("short.abb", &short, "[truncated]"),
    ] {
        std::fs::write(s.p(name), bytes).unwrap();
        let before = listing(s.dir.path());

        // --out does not exist yet: it must still not exist.
        let fresh = s.p("fresh");
        let o = extract(name, &fresh);
        let (_, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(code), "{name}: {stderr}");
        assert!(!fresh.exists(), "{name}: {fresh:?} was created");
        assert_eq!(
            listing(s.dir.path()),
            before,
            "{name}: temporary files left"
        );

        // --out exists with a file of its own: exactly that file remains.
        let existing = s.p("existing");
        std::fs::create_dir_all(&existing).unwrap();
        std::fs::write(existing.join("mine"), b"keep me").unwrap();
        let o = extract(name, &existing);
        assert_eq!(o.status.code(), Some(1), "{name}: {:?}", text(&o));
        assert_eq!(listing(&existing), vec!["mine".to_string()], "{name}");
        assert_eq!(std::fs::read(existing.join("mine")).unwrap(), b"keep me");
    }

    // The good bundle into the existing folder: payloads join the old file.
    let existing = s.p("existing");
    let o = extract("b.abb", &existing);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(listing(&existing), vec!["efi", "mine", "system"]);
    assert_eq!(
        std::fs::read(existing.join("efi")).unwrap(),
        std::fs::read(s.p("boot.efi")).unwrap()
    );
    let (stdout, _) = text(&o);
    assert_eq!(
        stdout,
        format!(
            "{}\n{}\n",
            existing.join("efi").display(),
            existing.join("system").display()
        )
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&existing.join("system")), 0o644);
    // And into a new folder, which appears only complete.
    let fresh = s.p("fresh");
    assert!(extract("b.abb", &fresh).status.success());
    assert_eq!(listing(&fresh), vec!["efi", "system"]);
    assert_eq!(mode(&fresh), 0o755);
}

#[test]
fn keygen_never_writes_through_a_symlink() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Setup::new();
    // A dangling link where the secret key would go: refused, by name.
    std::os::unix::fs::symlink(s.p("stolen"), s.p("new.key")).unwrap();
    let o = abkit(&["keygen", "--out", &s.s("new")]);
    let (_, stderr) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: already exists", s.s("new.key"))),
        "{stderr}"
    );
    assert!(
        !s.p("stolen").exists(),
        "the secret key went through the link"
    );
    assert!(!s.p("new.pub").exists(), "no half pair");
    // Same for the public key: the secret key made first is removed again.
    std::fs::remove_file(s.p("new.key")).unwrap();
    std::os::unix::fs::symlink(s.p("stolen.pub"), s.p("new.pub")).unwrap();
    let o = abkit(&["keygen", "--out", &s.s("new")]);
    assert!(!o.status.success());
    assert!(
        text(&o).1.contains("new.pub: already exists"),
        "{:?}",
        text(&o)
    );
    assert!(!s.p("new.key").exists() && !s.p("stolen.pub").exists());
    // --force replaces the link itself; the file it points to is untouched.
    std::fs::write(s.p("victim"), "precious").unwrap();
    std::fs::remove_file(s.p("new.pub")).unwrap();
    std::os::unix::fs::symlink(s.p("victim"), s.p("new.key")).unwrap();
    let o = abkit(&["keygen", "--out", &s.s("new"), "--force"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(std::fs::read_to_string(s.p("victim")).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(s.p("new.key")).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(s.p("new.key")).unwrap();
    assert!(secret.starts_with("abkit-ed25519-secret-key\n"));
}

#[test]
fn json_failures_are_a_json_error_object_with_a_stable_code() {
    let s = Setup::new();
    assert!(s.create("b.abb", &[]).status.success());
    let mut bad = std::fs::read(s.p("b.abb")).unwrap();
    let at = bad.len() - 300_000;
    bad[at] ^= 1;
    std::fs::write(s.p("bad.abb"), &bad).unwrap();
    // A 16 MB manifest in an unsigned head: refused from the header alone.
    let mut huge = b"ABKITBDL".to_vec();
    huge.extend_from_slice(&3u32.to_le_bytes());
    huge.extend_from_slice(&0u32.to_le_bytes());
    huge.extend_from_slice(&(16_000_000u64).to_le_bytes());
    huge.extend_from_slice(&[0; 8]);
    huge.resize(32 + 16_000_000, b' ');
    std::fs::write(s.p("huge.abb"), &huge).unwrap();
    // A bundle of the old format 1: named as such.
    let mut old = std::fs::read(s.p("b.abb")).unwrap();
    old[8] = 1;
    std::fs::write(s.p("old.abb"), &old).unwrap();

    let cases: [(&[&str], &str); 7] = [
        (
            &["verify", "old.abb", "--keyring", "ring"],
            "old-format-version",
        ),
        (
            &["verify", "bad.abb", "--keyring", "ring"],
            "chunk-hash-mismatch",
        ),
        (
            &["verify", "b.abb", "--keyring", "other-ring"],
            "no-trusted-signature",
        ),
        (&["verify", "b.abb", "--keyring", "nope"], "keyring-missing"),
        (&["verify", "missing.abb", "--keyring", "ring"], "io"),
        (&["inspect", "huge.abb"], "manifest-size"),
        (
            &["inspect", "b.abb", "--keyring", "nope"],
            "keyring-missing",
        ),
    ];
    for (args, code) in cases {
        let mut full = vec!["bundle".to_string(), args[0].to_string()];
        full.extend(args[1..].iter().map(|a| {
            if a.starts_with("--") {
                a.to_string()
            } else {
                s.s(a)
            }
        }));
        full.push("--json".into());
        let start = std::time::Instant::now();
        let o = abkit(&full.iter().map(String::as_str).collect::<Vec<_>>());
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {stdout}"));
        assert_eq!(v["ok"], false, "{args:?}");
        assert_eq!(v["error"]["code"], code, "{args:?}: {stdout}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(!message.is_empty());
        assert!(stderr.starts_with("abkit: error: "), "{stderr}");
        if code == "manifest-size" {
            assert!(message.contains("1048576"), "{message}");
            assert!(start.elapsed() < std::time::Duration::from_secs(2));
        }
    }
    // Success still says ok, for both.
    let o = abkit(&["bundle", "inspect", &s.s("b.abb"), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
}

/// A real bundle of format 2 (SHA-256 chunk hashes), made by abkit before
/// bundle format 3 (`tests/fixtures/format2.abb`, signed by
/// `format2.pub`): every command that reads it refuses it as
/// `old-format-version` and says to rebuild it; `extract` creates nothing.
#[test]
fn a_format_2_bundle_is_refused_as_old_format_version() {
    let s = Setup::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let old = fixtures.join("format2.abb");
    let old = old.to_str().unwrap();
    std::fs::create_dir(s.p("old-ring")).unwrap();
    std::fs::copy(fixtures.join("format2.pub"), s.p("old-ring/old.pub")).unwrap();
    let out = s.s("out");
    let cases: [&[&str]; 4] = [
        &["verify", old, "--keyring", &s.s("old-ring"), "--json"],
        &["inspect", old, "--json"],
        &["inspect", old, "--keyring", &s.s("old-ring"), "--json"],
        &["extract", old, "--keyring", &s.s("old-ring"), "--out", &out],
    ];
    for args in cases {
        let mut full = vec!["bundle"];
        full.extend_from_slice(args);
        let o = abkit(&full);
        let (stdout, stderr) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("[old-format-version]"),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("rebuild the bundle"), "{args:?}: {stderr}");
        if stdout.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["error"]["code"], "old-format-version", "{args:?}");
    }
    assert!(!s.p("out").exists());
}
