//! `abkit install | mark-good | rollback | status` offline, as a user (or a
//! factory script) runs them: image built by `abkit image build`, bundles
//! by `abkit bundle create`, the machine given with --disk/--ovmf-vars.

mod common;

use std::process::{Command, Output};

/// The scratch folder plus what this file's tests need.
struct World(common::Workdir);

impl std::ops::Deref for World {
    type Target = common::Workdir;
    fn deref(&self) -> &common::Workdir {
        &self.0
    }
}

impl World {
    fn status(&self, slot: &str) -> serde_json::Value {
        let out = self.on(slot, &["status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn bundle(&self, version: &str, tag: u8) -> String {
        self.release(version, &vec![tag; 1 << 20], &[tag])
            .args(&["--chunk-kib", "64"])
            .create(&format!("os-{version}.abb"))
    }
}

/// A disk built the factory way: slot A holds X 1.0.0 from a signed bundle
/// and is recorded as an install records it.
fn world() -> World {
    let w = World(common::Workdir::new());
    w.release_key();
    let x = w.bundle("1.0.0", b'X');
    w.factory_disk(&["--bundle", &x, "--keyring", &w.s("keyring")]);
    w
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

/// `args` (a mark-good) on slot B succeeds and commits it: B is the
/// committed slot and recorded good. Returns that status.
fn mark_good_commits_b(w: &World, args: &[&str]) -> serde_json::Value {
    let out = w.on("b", args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status("b");
    assert_eq!(st["committed_slot"], "B");
    assert_eq!(st["slots"]["B"]["state"], "good");
    st
}
#[test]
fn install_then_status_then_mark_good_offline() {
    let w = world();
    let st = w.status("a");
    assert_eq!(st["running_slot"], "A");
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(
        st["slots"]["A"]["state"], "installed",
        "a factory image records slot A as an install does"
    );
    assert_eq!(st["slots"]["A"]["version"], "1.0.0");
    w.on("a", &["mark-good"]);
    assert_eq!(w.status("a")["slots"]["A"]["state"], "good");

    let y = w.bundle("1.1.0", b'Y');
    let out = w.on(
        "a",
        &["install", &y, "--keyring", &w.s("keyring"), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&out);
    let steps: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&"verify"));
    assert_eq!(steps.last(), Some(&"boot-next"));
    let progress = events.iter().filter(|e| e["event"] == "progress").count();
    assert!(progress >= 2, "{events:?}");
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["report"]["target_slot"], "B");

    let st = w.status("a");
    assert_eq!(st["trial_pending"], true);
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["slots"]["B"]["version"], "1.1.0");
    assert_eq!(st["slots"]["B"]["compatible"], "demo-os");
    let efi: serde_json::Value =
        serde_json::from_str(&w.ok(&["efi", "list", "--ovmf-vars", &w.s("vars.fd"), "--json"]))
            .unwrap();
    assert_eq!(efi["boot_next"], done["report"]["boot_next"]);

    // Taken as the trial boot of B (no firmware ran: BootNext is still
    // set, and mark-good clears it as stale).
    mark_good_commits_b(&w, &["mark-good"]);

    // A rollback to A is now possible, one-shot.
    let out = w.on("b", &["rollback", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["slot"], "A");
}

#[test]
fn bad_inputs_are_named_and_change_nothing() {
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let snapshot = || {
        (
            std::fs::read(w.p("disk.img")).unwrap(),
            std::fs::read(w.p("vars.fd")).unwrap(),
        )
    };

    // A tampered signature region.
    let mut bytes = std::fs::read(&y).unwrap();
    bytes[40] ^= 1;
    std::fs::write(w.p("tampered.abb"), &bytes).unwrap();
    let before = snapshot();
    let out = w.on(
        "a",
        &[
            "install",
            &w.s("tampered.abb"),
            "--keyring",
            &w.s("keyring"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("install of") && err.contains("tampered.abb"),
        "{err}"
    );
    assert!(
        snapshot() == before,
        "a rejected bundle changed the machine"
    );

    // A real bundle of format 2 (SHA-256 chunk hashes, abkit before bundle
    // format 3): refused by name, with the way out, and nothing changed.
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format2.abb");
    let out = w.on(
        "a",
        &["install", old, "--keyring", &w.s("keyring"), "--json"],
    );
    assert!(!out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "old-format-version", "{doc}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rebuild the bundle"), "{err}");
    assert!(
        snapshot() == before,
        "a format 2 bundle changed the machine"
    );

    // A keyring that does not exist.
    let out = w.on("a", &["install", &y, "--keyring", "/nonexistent/keys"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/keys"));

    // Offline needs to know the running slot and the variables.
    let out = w.abkit(&[
        "status",
        "--disk",
        &w.s("disk.img"),
        "--ovmf-vars",
        &w.s("vars.fd"),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--booted-slot"));
    let out = w.abkit(&["status", "--disk", &w.s("disk.img"), "--booted-slot", "a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ovmf-vars FILE or --efivars DIR"));

    // A disk that lost its slot B partition.
    std::fs::copy(w.p("disk.img"), w.p("broken.img")).unwrap();
    let ok = Command::new("sgdisk")
        .args(["-d", "3"])
        .arg(w.p("broken.img"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = w.abkit(&[
        "install",
        &y,
        "--keyring",
        &w.s("keyring"),
        "--disk",
        &w.s("broken.img"),
        "--ovmf-vars",
        &w.s("vars.fd"),
        "--booted-slot",
        "a",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no abkit slot B partition") || err.contains("slot B"),
        "{err}"
    );
    assert!(err.contains("broken.img"), "{err}");
}

#[test]
fn install_reads_a_bundle_piped_into_standard_input_and_names_a_directory() {
    let w = world();
    w.on("a", &["mark-good"]);
    let y = std::fs::read(w.bundle("1.1.0", b'Y')).unwrap();
    let keyring = w.s("keyring");
    let snapshot = || {
        (
            std::fs::read(w.p("disk.img")).unwrap(),
            std::fs::read(w.p("vars.fd")).unwrap(),
        )
    };
    let before = snapshot();

    // A directory is named as one, not reported as a failed read.
    let out = w.on("a", &["install", &keyring, "--keyring", &keyring]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "open bundle {keyring}: a directory, not a bundle file"
        )),
        "{err}"
    );
    assert!(snapshot() == before, "a directory changed the machine");

    // Nothing on standard input: refused before anything is written.
    let out = w.on_fed("a", &["install", "-", "--keyring", &keyring], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("install of - failed") && err.contains("truncated"),
        "{err}"
    );
    assert!(snapshot() == before, "an empty pipe changed the machine");

    // A pipe cut inside the system payload: refused as truncated; the
    // variables and the running slot untouched, slot B recorded empty.
    let status_before = w.status("a");
    let out = w.on_fed(
        "a",
        &["install", "-", "--keyring", &keyring],
        &y[..y.len() - 1000],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("install of - failed") && err.contains("truncated"),
        "{err}"
    );
    assert!(
        std::fs::read(w.p("vars.fd")).unwrap() == before.1,
        "the variables changed"
    );
    let st = w.status("a");
    assert_eq!(st["slots"]["A"], status_before["slots"]["A"]);
    assert_eq!(st["slots"]["B"]["state"], "empty", "{st}");
    assert_eq!(st["trial_pending"], false);

    // The whole bundle through the pipe installs Y into slot B.
    let out = w.on_fed("a", &["install", "-", "--keyring", &keyring, "--json"], &y);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = lines(&out).pop().unwrap();
    assert_eq!(done["report"]["target_slot"], "B", "{done}");
    assert_eq!(done["report"]["delta"], false, "{done}");
    let st = w.status("a");
    assert_eq!(st["slots"]["B"]["version"], "1.1.0");
    assert_eq!(st["trial_pending"], true);
    assert!(slot_b_bytes(&w, 1 << 20) == vec![b'Y'; 1 << 20]);
}

#[test]
fn help_teaches_the_offline_options() {
    let w = World(common::Workdir::new());
    let help = w.ok(&["install", "--help"]);
    for needle in [
        "--keyring",
        "--no-reboot",
        "--allow-downgrade",
        "--json",
        "--disk",
        "--booted-slot",
    ] {
        assert!(help.contains(needle), "{needle} missing from:\n{help}");
    }
}

/// `python3 -m http.server` on 127.0.0.1 serving `dir`, killed on drop.
struct HttpServer {
    child: std::process::Child,
    port: u16,
}

impl HttpServer {
    fn serve(dir: &std::path::Path) -> HttpServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .current_dir(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 is needed for the HTTP tests");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        HttpServer { child, port }
    }
    fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn install_streams_from_an_http_server_and_a_404_changes_nothing() {
    let w = world();
    w.on("a", &["mark-good"]);
    w.bundle("1.1.0", b'Y');
    let server = HttpServer::serve(w.dir.path());
    let snapshot = || {
        (
            std::fs::read(w.p("disk.img")).unwrap(),
            std::fs::read(w.p("vars.fd")).unwrap(),
        )
    };

    let before = snapshot();
    let missing = server.url("missing.abb");
    let out = w.on("a", &["install", &missing, "--keyring", &w.s("keyring")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("missing.abb"), "{err}");
    assert!(snapshot() == before, "a 404 changed the machine");

    let url = server.url("os-1.1.0.abb");
    let out = w.on(
        "a",
        &["install", &url, "--keyring", &w.s("keyring"), "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status("a");
    assert_eq!(st["trial_pending"], true);
    assert_eq!(st["slots"]["B"]["version"], "1.1.0");

    // `bundle verify` opens the same sources as install: a URL too.
    let out = w.abkit(&[
        "bundle",
        "verify",
        &url,
        "--keyring",
        &w.s("keyring"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["version"], "1.1.0", "{doc}");
    let out = w.abkit(&["bundle", "inspect", &missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("missing.abb"), "{err}");
}

#[test]
fn a_disk_built_from_raw_files_installs_only_with_allow_unrecorded() {
    let w = world();
    // The same machine, but slot A built from raw files: no record.
    std::fs::write(w.p("x.img"), vec![b'X'; 1 << 20]).unwrap();
    std::fs::write(
        w.p("x.efi"),
        abkit_disk::fixtures::tiny_efi_application(b"X"),
    )
    .unwrap();
    w.factory_disk(&["--loader", &w.s("x.efi"), "--system", &w.s("x.img")]);
    assert_eq!(w.status("a")["slots"]["A"]["state"], "unknown");
    let y = w.bundle("1.1.0", b'Y');
    let before = std::fs::read(w.p("disk.img")).unwrap();
    let out = w.on("a", &["install", &y, "--keyring", &w.s("keyring")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-unrecorded"), "{err}");
    assert!(std::fs::read(w.p("disk.img")).unwrap() == before);
    let out = w.on(
        "a",
        &[
            "install",
            &y,
            "--keyring",
            &w.s("keyring"),
            "--allow-unrecorded",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status("a")["slots"]["B"]["state"], "installed");
}

#[test]
fn a_killed_install_leaves_no_lock_behind() {
    use std::io::Write;
    let w = world();
    let y = w.bundle("1.1.0", b'Y');
    // The install reads its bundle from a FIFO that the test feeds: it takes
    // the lock, then waits for bytes.
    let fifo = w.p("bundle.fifo");
    common::mkfifo(&fifo);
    let mut child = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "install",
            fifo.to_str().unwrap(),
            "--keyring",
            &w.s("keyring"),
            "--disk",
            &w.s("disk.img"),
            "--ovmf-vars",
            &w.s("vars.fd"),
            "--booted-slot",
            "a",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let bytes = std::fs::read(&y).unwrap();
    feed.write_all(&bytes[..16]).unwrap();
    // While it runs, a second operation is refused and names the holder.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        let out = w.on("a", &["mark-good", "--json"]);
        if !out.status.success() {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "never saw the lock");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let err: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(err["ok"], false);
    assert_eq!(err["error"]["code"], "locked");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", child.id())),
        "{err}"
    );
    // kill -9: the kernel drops the lock with the process.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(feed);
    let out = w.on("a", &["install", &y, "--keyring", &w.s("keyring")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status("a")["trial_pending"], true);
}

/// `abkit bundle push` to a real registry (Debian's docker-registry, plain
/// http on 127.0.0.1); returns the manifest digest it printed.
fn push_to(w: &World, bundle: &str, reference: &str, extra: &[&str]) -> String {
    let mut args = vec!["bundle", "push", bundle, reference, "--insecure-registry"];
    args.extend(extra);
    let out = w.ok(&args);
    let digest = out.trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "push prints the manifest digest: {out:?}"
    );
    digest
}

/// Where slot B's partition starts in disk.img, in bytes (`image inspect`).
fn slot_b_offset(w: &World) -> u64 {
    let inspect: serde_json::Value =
        serde_json::from_str(&w.ok(&["image", "inspect", &w.s("disk.img"), "--json"])).unwrap();
    let part = inspect["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str().unwrap_or("").ends_with("SYSTEM-B"))
        .unwrap_or_else(|| panic!("no slot B in {inspect}"));
    part["first_lba"].as_u64().unwrap() * 512
}

/// The bytes of slot B's partition, as long as `len`.
fn slot_b_bytes(w: &World, len: usize) -> Vec<u8> {
    let offset = slot_b_offset(w);
    let disk = std::fs::read(w.p("disk.img")).unwrap();
    disk[offset as usize..offset as usize + len].to_vec()
}

#[test]
fn install_pulls_a_pushed_bundle_from_a_registry_by_tag_and_by_digest() {
    use abkit_oci::testing::{TestAuth, TestRegistry};
    let registry = TestRegistry::start(TestAuth::None);
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let tag = registry.reference("demo/os:1.1.0");
    let digest = push_to(&w, &y, &tag, &[]);
    // --json says the same, and a second push uploads nothing new.
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["bundle", "push", &y, &tag, "--insecure-registry", "--json"]))
            .unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["manifest_digest"], digest.as_str());
    assert_eq!(json["uploaded"], false);
    w.ok(&[
        "bundle",
        "extract",
        &y,
        "--keyring",
        &w.s("keyring"),
        "--out",
        &w.s("y"),
    ]);
    let system = std::fs::read(w.p("y/system")).unwrap();
    // The bundle reading commands take the registry too.
    let pinned = registry.reference(&format!("demo/os@{digest}"));
    let verified: serde_json::Value = serde_json::from_str(&w.ok(&[
        "bundle",
        "verify",
        &pinned,
        "--keyring",
        &w.s("keyring"),
        "--insecure-registry",
        "--json",
    ]))
    .unwrap();
    assert_eq!(verified["version"], "1.1.0", "{verified}");

    for source in [
        tag.clone(),
        registry.reference(&format!("demo/os@{digest}")),
    ] {
        let out = w.on(
            "a",
            &[
                "install",
                &source,
                "--keyring",
                &w.s("keyring"),
                "--insecure-registry",
                "--json",
            ],
        );
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = lines(&out).into_iter().last().unwrap();
        assert_eq!(done["event"], "done", "{done}");
        assert_eq!(done["report"]["version"], "1.1.0");
        assert!(
            slot_b_bytes(&w, system.len()) == system,
            "{source}: slot B differs from the bundle's system image"
        );
        let st = w.status("a");
        assert_eq!(st["trial_pending"], true);
        assert_eq!(st["slots"]["B"]["version"], "1.1.0");
    }
}

#[test]
fn a_registry_refusal_of_any_kind_changes_nothing_on_the_machine() {
    use abkit_oci::testing::{TestAuth, TestRegistry};
    let registry = TestRegistry::start(TestAuth::None);
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let digest = push_to(
        &w,
        &y,
        &registry.reference("demo/os:1.1.0"),
        &["--chunk-size", "65536"],
    );
    let snapshot = || {
        (
            std::fs::read(w.p("disk.img")).unwrap(),
            std::fs::read(w.p("vars.fd")).unwrap(),
        )
    };
    let before = snapshot();
    let keyring = w.s("keyring");
    let install = |source: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["install", source, "--keyring", &keyring, "--json"];
        args.extend(extra);
        let out = w.on("a", &args);
        assert!(!out.status.success(), "{source} installed");
        lines(&out).into_iter().last().unwrap()
    };
    let insecure = ["--insecure-registry"];

    // The registry serves another manifest under the digest asked for.
    let manifest = registry.blob_file(&digest);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("1.1.0", "9.9.9")).unwrap();
    let pinned = registry.reference(&format!("demo/os@{digest}"));
    let err = install(&pinned, &insecure);
    assert_eq!(err["error"]["code"], "oci-digest-mismatch", "{err}");
    assert!(
        snapshot() == before,
        "a wrong manifest digest changed the machine"
    );
    std::fs::write(&manifest, text).unwrap();

    let err = install(&registry.reference("demo/os:2.0.0"), &insecure);
    assert_eq!(err["error"]["code"], "oci-not-found", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tag not found"),
        "{err}"
    );
    let err = install(&registry.reference("demo/os"), &insecure);
    assert_eq!(err["error"]["code"], "oci-bad-reference", "{err}");
    // https unless asked otherwise: this registry speaks plain http.
    let err = install(&pinned, &[]);
    assert_eq!(err["error"]["code"], "oci-tls", "{err}");
    assert!(snapshot() == before, "a refused source changed the machine");

    // The blob changed behind the registry's back: the bundle's own
    // verification stops it (mid-stream, or at the changed block of a delta
    // install through the blob URL); the slot is left empty, never
    // bootable, and the running slot untouched.
    let bundle_digest = {
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(registry.blob_file(&digest)).unwrap())
                .unwrap();
        m["layers"][0]["digest"].as_str().unwrap().to_owned()
    };
    let blob = registry.blob_file(&bundle_digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    let err = install(&pinned, &insecure);
    let code = err["error"]["code"].as_str().unwrap();
    assert!(
        [
            "chunk-hash-mismatch",
            "block-hash-mismatch",
            "payload-hash-mismatch",
            "oci-blob-digest-mismatch"
        ]
        .contains(&code),
        "{err}"
    );
    let st = w.status("a");
    assert_eq!(st["trial_pending"], false);
    assert_eq!(st["slots"]["B"]["state"], "empty");
    assert_eq!(st["slots"]["A"]["version"], "1.0.0");
}

#[test]
fn an_https_registry_with_basic_auth_needs_its_ca_and_the_credentials() {
    use abkit_oci::testing::{TestAuth, TestRegistry};
    let registry = TestRegistry::start_tls(TestAuth::Basic {
        user: "fleet".into(),
        password: "pa55 word".into(),
    });
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let tag = registry.reference("demo/os:1.1.0");
    std::fs::write(w.p("empty-auth.json"), "{}").unwrap();
    std::fs::write(w.p("registry-ca.pem"), registry.ca_pem()).unwrap();
    let no_files = ["--registry-auth-file", "empty-auth.json"];

    let out = w.abkit(&[
        "bundle",
        "push",
        &y,
        &tag,
        "--registry-ca",
        "registry-ca.pem",
        "--json",
        no_files[0],
        no_files[1],
    ]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "oci-auth-required", "{err}");

    // The password from the environment, the user from a flag.
    let out = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "bundle",
            "push",
            &y,
            &tag,
            "--registry-ca",
            "registry-ca.pem",
            "--registry-user",
            "fleet",
        ])
        .env("ABKIT_REGISTRY_PASSWORD", "pa55 word")
        .current_dir(w.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let keyring = w.s("keyring");
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            &tag,
            "--keyring",
            &keyring,
            "--registry-ca",
            "registry-ca.pem",
            "--json",
        ];
        args.extend(extra);
        w.on("a", &args)
    };
    // The public roots do not vouch for this registry.
    let out = w.on("a", &["install", &tag, "--keyring", &keyring, "--json"]);
    assert_eq!(lines(&out).last().unwrap()["error"]["code"], "oci-tls");
    let out = install(&no_files);
    assert_eq!(
        lines(&out).last().unwrap()["error"]["code"],
        "oci-auth-required"
    );
    std::fs::write(w.p("wrong"), "nope\n").unwrap();
    let out = install(&[
        "--registry-user",
        "fleet",
        "--registry-password-file",
        "wrong",
    ]);
    assert_eq!(
        lines(&out).last().unwrap()["error"]["code"],
        "oci-unauthorized"
    );
    let out = install(&["--registry-user", "fleet"]);
    assert!(
        !out.status.success(),
        "a user without a password is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("ABKIT_REGISTRY_PASSWORD"));
    std::fs::write(w.p("right"), "pa55 word\n").unwrap();
    let out = install(&[
        "--registry-user",
        "fleet",
        "--registry-password-file",
        "right",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status("a")["slots"]["B"]["version"], "1.1.0");
}

/// `--boot-control`: a wrong mode is refused before anything changes; a
/// good one is remembered for the machine, shown by `status`, and the
/// install's trial goes through the loader state.
#[test]
fn boot_control_is_chosen_per_machine_and_shown_by_status() {
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let keyring = w.s("keyring");
    let before = (
        std::fs::read(w.p("disk.img")).unwrap(),
        std::fs::read(w.p("vars.fd")).unwrap(),
    );
    let out = w.on(
        "a",
        &[
            "install",
            &y,
            "--keyring",
            &keyring,
            "--boot-control",
            "sometimes",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bootnext, state-file or auto"), "{err}");
    assert!(
        before
            == (
                std::fs::read(w.p("disk.img")).unwrap(),
                std::fs::read(w.p("vars.fd")).unwrap(),
            ),
        "a refused flag changed the machine"
    );
    let st = w.status("a");
    assert_eq!(st["boot_control"]["mode"], "bootnext");
    assert_eq!(st["boot_control"]["active"], "bootnext");

    let out = w.on(
        "a",
        &[
            "install",
            &y,
            "--keyring",
            &keyring,
            "--boot-control",
            "state-file",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status("a");
    let bc = &st["boot_control"];
    assert_eq!(bc["mode"], "state-file", "{st}");
    assert_eq!(bc["active"], "state-file", "{st}");
    assert!(bc["reason"].as_str().unwrap().contains("operator"), "{st}");
    assert_eq!(bc["loader_state"]["committed"], "A", "{st}");
    assert_eq!(bc["loader_state"]["trial"], "B", "{st}");
    assert_eq!(bc["loader_state"]["tries_left"], 1, "{st}");
    assert!(bc["preloader_entry"].is_number(), "{st}");
    assert_eq!(st["trial_pending"], true, "{st}");
    assert_eq!(st["boot_order"][0], bc["preloader_entry"], "{st}");
    assert!(
        st["boot_next"].is_null(),
        "no BootNext in state-file mode: {st}"
    );
    // The text form says it too.
    let text = String::from_utf8_lossy(&w.on("a", &["status"]).stdout).into_owned();
    assert!(text.contains("boot control:   state-file"), "{text}");
    assert!(
        text.contains("loader state:   committed A, trial B, tries left 1"),
        "{text}"
    );

    // Back to BootNext (installing again): the loader state and the
    // pre-loader entry go, BootNext arms the trial.
    let out = w.on(
        "a",
        &[
            "install",
            &y,
            "--keyring",
            &keyring,
            "--boot-control",
            "bootnext",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status("a");
    assert_eq!(st["boot_control"]["active"], "bootnext", "{st}");
    assert!(st["boot_control"]["loader_state"].is_null(), "{st}");
    assert!(st["boot_control"]["preloader_entry"].is_null(), "{st}");
    assert!(st["boot_next"].is_number(), "{st}");
}

#[test]
fn mark_good_killed_during_its_written_data_check_is_completed_by_a_rerun() {
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let out = w.on("a", &["install", &y, "--keyring", &w.s("keyring")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(w.status("a")["slots"]["B"]["written_check"], "pending");
    let text = String::from_utf8_lossy(&w.on("a", &["status"]).stdout).into_owned();
    assert!(text.contains("written data not yet checked"), "{text}");
    let before = (
        std::fs::read(w.p("disk.img")).unwrap(),
        std::fs::read(w.p("vars.fd")).unwrap(),
    );
    // mark-good on B's trial boot, stopped dead in the middle of its
    // check, then kill -9 (a power cut there: nothing is written yet).
    let mut child = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "mark-good",
            "--disk",
            &w.s("disk.img"),
            "--ovmf-vars",
            &w.s("vars.fd"),
            "--booted-slot",
            "b",
        ])
        .env("ABKIT_HALT_AT", "mark-good:checking-written-data")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "mark-good ended before the checkpoint");
        if line.contains("halted at mark-good:checking-written-data") {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (
            std::fs::read(w.p("disk.img")).unwrap(),
            std::fs::read(w.p("vars.fd")).unwrap(),
        ) == before,
        "mark-good changed the machine before its check finished"
    );
    assert_eq!(w.status("a")["committed_slot"], "A");
    let st = mark_good_commits_b(&w, &["mark-good", "--json"]);
    assert_eq!(st["slots"]["B"]["written_check"], "passed");
}

#[test]
fn mark_good_refuses_a_slot_whose_written_data_changed() {
    let w = world();
    w.on("a", &["mark-good"]);
    let y = w.bundle("1.1.0", b'Y');
    let out = w.on("a", &["install", &y, "--keyring", &w.s("keyring")]);
    assert!(out.status.success());
    // One byte of B's system data changes on the media after the install.
    let start = slot_b_offset(&w);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(w.p("disk.img"))
            .unwrap();
        let at = start + 5 * 4096 + 17;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 1], at).unwrap();
    }
    let out = w.on("b", &["mark-good", "--json"]);
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["code"], "written-data-mismatch", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data block 5 (bytes 20480..24576)"),
        "{err}"
    );
    let st = w.status("a");
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(st["slots"]["B"]["state"], "empty");
    assert_eq!(st["slots"]["B"]["written_check"], "failed");
    assert_eq!(st["slots"]["B"]["health"]["failed_check"], "written-data");
}
