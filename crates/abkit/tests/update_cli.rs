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
    /// Runs an offline command on the disk, `slot` taken as running.
    fn on(&self, slot: &str, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend([
            "--disk".to_string(),
            self.s("disk.img"),
            "--ovmf-vars".into(),
            self.s("vars.fd"),
            "--booted-slot".into(),
            slot.into(),
        ]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        self.abkit(&all)
    }

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
        let sys = self.p(&format!("sys-{version}.img"));
        std::fs::write(&sys, vec![tag; 1 << 20]).unwrap();
        let efi = self.p(&format!("boot-{version}.efi"));
        std::fs::write(&efi, abkit_disk::fixtures::tiny_efi_application(&[tag])).unwrap();
        let out = self.s(&format!("os-{version}.abb"));
        self.ok(&[
            "bundle",
            "create",
            "--efi",
            efi.to_str().unwrap(),
            "--system",
            sys.to_str().unwrap(),
            "--version",
            version,
            "--compatible",
            "demo-os",
            "--key",
            &self.s("release.key"),
            "--chunk-kib",
            "64",
            "-o",
            &out,
        ]);
        out
    }
}

/// A disk built the factory way: slot A holds X 1.0.0 from a signed bundle
/// and is recorded as an install records it.
fn world() -> World {
    let w = World(common::Workdir::new());
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", w.p("vars.fd"))
        .expect("Debian's OVMF is needed: run `make deps`");
    w.ok(&["keygen", "--out", &w.s("release")]);
    std::fs::create_dir(w.p("keyring")).unwrap();
    std::fs::copy(w.p("release.pub"), w.p("keyring/release.pub")).unwrap();
    let x = w.bundle("1.0.0", b'X');
    w.ok(&[
        "image",
        "build",
        "--bundle",
        &x,
        "--keyring",
        &w.s("keyring"),
        "-o",
        &w.s("disk.img"),
        "--esp-size",
        "33M",
        "--system-size",
        "4M",
        "--data-size",
        "1M",
        "--seed",
        "3",
        "--ovmf-vars",
        &w.s("vars.fd"),
    ]);
    w
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
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
    let out = w.on("b", &["mark-good"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = w.status("b");
    assert_eq!(st["committed_slot"], "B");
    assert_eq!(st["slots"]["B"]["state"], "good");

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
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", w.p("vars.fd")).unwrap();
    w.ok(&[
        "image",
        "build",
        "--loader",
        &w.s("x.efi"),
        "--system",
        &w.s("x.img"),
        "-o",
        &w.s("raw.img"),
        "--esp-size",
        "33M",
        "--system-size",
        "4M",
        "--data-size",
        "1M",
        "--ovmf-vars",
        &w.s("vars.fd"),
    ]);
    std::fs::rename(w.p("raw.img"), w.p("disk.img")).unwrap();
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
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
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
