//! `abkit install URL` as a delta (issue 15), offline on a disk image,
//! against real servers: lighttpd (honours Range) and Python's http.server
//! (ignores Range). The slot must equal the new image byte for byte; a
//! server that returns a wrong block is refused with nothing unverified
//! written; a server without Range gets a full download; an interrupted
//! delta resumes without fetching again what it wrote.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The scratch folder plus what this file's tests need.
struct World(common::Workdir);

impl std::ops::Deref for World {
    type Target = common::Workdir;
    fn deref(&self) -> &common::Workdir {
        &self.0
    }
}

/// Size of the test images: 4 MiB of noise in 4 KiB blocks.
const IMAGE: usize = 4 << 20;
const BLOCK: usize = 4096;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

impl World {
    /// An offline command on the disk, slot A taken as running.
    fn on_a(&self, args: &[&str]) -> Output {
        let disk = self.s("disk.img");
        let vars = self.s("vars.fd");
        let mut all = args.to_vec();
        all.extend(["--disk", &disk, "--ovmf-vars", &vars, "--booted-slot", "a"]);
        self.abkit(&all)
    }

    /// Bundle `name` of system image `image` (version 1.1.0).
    fn bundle(&self, name: &str, image: &[u8]) {
        self.bundle_with(name, image, &[]);
    }

    /// [`World::bundle`] with more `bundle create` options.
    fn bundle_with(&self, name: &str, image: &[u8], extra: &[&str]) {
        std::fs::write(self.p("y.img"), image).unwrap();
        let efi = abkit_disk::fixtures::tiny_efi_application(b"Y");
        std::fs::write(self.p("y.efi"), efi).unwrap();
        self.ok(&[
            "bundle",
            "create",
            "--efi",
            &self.s("y.efi"),
            "--system",
            &self.s("y.img"),
            "--version",
            "1.1.0",
            "--compatible",
            "demo-os",
            "--key",
            &self.s("release.key"),
            "-o",
            &self.s(&format!("www/{name}")),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>());
    }

    /// The first `len` bytes of slot B.
    fn slot_b(&self, len: usize) -> Vec<u8> {
        let disk = abkit_disk::DiskImage::open_read_only(self.p("disk.img")).unwrap();
        let range = disk.slot_range(abkit_disk::Slot::B);
        let mut buf = vec![0u8; len];
        std::os::unix::fs::FileExt::read_exact_at(disk.file(), &mut buf, range.start).unwrap();
        buf
    }

    /// The system payload of bundle `name` (image, padding, verity tree).
    fn system_payload(&self, name: &str) -> Vec<u8> {
        let out = self.p(&format!("x-{name}"));
        self.ok(&[
            "bundle",
            "extract",
            &self.s(&format!("www/{name}")),
            "--keyring",
            &self.s("keyring"),
            "--out",
            out.to_str().unwrap(),
        ]);
        std::fs::read(out.join("system")).unwrap()
    }

    /// `install URL --json --no-reboot` on slot A: the "done" report or
    /// the error object.
    fn install(&self, url: &str, extra: &[&str]) -> (Output, Value) {
        let keyring = self.s("keyring");
        let mut args = vec!["install", url, "--keyring", &keyring, "--json"];
        args.extend(extra);
        let out = self.on_a(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "done" || v["ok"] == false)
            .unwrap_or(Value::Null);
        (out, last)
    }
}

/// A disk whose slot A holds version 1.0.0 (image `x`), marked good, and a
/// keyring; `www/` is the served folder.
fn world(x: &[u8]) -> World {
    let w = World(common::Workdir::new());
    std::fs::create_dir(w.p("www")).unwrap();
    w.ok(&["keygen", "--out", &w.s("release")]);
    std::fs::create_dir(w.p("keyring")).unwrap();
    std::fs::copy(w.p("release.pub"), w.p("keyring/release.pub")).unwrap();
    std::fs::write(w.p("x.img"), x).unwrap();
    let efi = abkit_disk::fixtures::tiny_efi_application(b"X");
    std::fs::write(w.p("x.efi"), efi).unwrap();
    w.ok(&[
        "bundle",
        "create",
        "--efi",
        &w.s("x.efi"),
        "--system",
        &w.s("x.img"),
        "--version",
        "1.0.0",
        "--compatible",
        "demo-os",
        "--key",
        &w.s("release.key"),
        "-o",
        &w.s("x.abb"),
    ]);
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", w.p("vars.fd"))
        .expect("Debian's OVMF is needed: run `make deps`");
    w.ok(&[
        "image",
        "build",
        "--bundle",
        &w.s("x.abb"),
        "--keyring",
        &w.s("keyring"),
        "-o",
        &w.s("disk.img"),
        "--esp-size",
        "33M",
        "--system-size",
        "8M",
        "--data-size",
        "1M",
        "--ovmf-vars",
        &w.s("vars.fd"),
    ]);
    let out = w.on_a(&["mark-good"]);
    assert!(out.status.success(), "{out:?}");
    w
}

/// `x` with `count` 4 KiB blocks changed, spread evenly from `from`.
fn changed(x: &[u8], count: usize, from: usize) -> (Vec<u8>, Vec<usize>) {
    let mut y = x.to_vec();
    let blocks = (x.len() - from) / BLOCK;
    let changed: Vec<usize> = (0..count)
        .map(|i| from / BLOCK + i * blocks / count)
        .collect();
    for (n, &b) in changed.iter().enumerate() {
        y[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&noise(BLOCK, 1000 + n as u64));
    }
    (y, changed)
}

/// A process that is killed when dropped.
struct Server(Child, u16);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server on {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// lighttpd (Debian's `lighttpd`) serving `www/`: honours Range.
fn lighttpd(w: &World) -> Server {
    let port = free_port();
    let conf = format!(
        "server.document-root = \"{}\"\nserver.port = {port}\nserver.bind = \"127.0.0.1\"\n\
         server.errorlog = \"{}\"\n",
        w.s("www"),
        w.s("lighttpd.log")
    );
    std::fs::write(w.p("lighttpd.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/lighttpd")
        .args(["-D", "-f", &w.s("lighttpd.conf")])
        .stdout(Stdio::null())
        .spawn()
        .expect("lighttpd is needed: run `make deps`");
    wait_for(port);
    Server(child, port)
}

/// Python's http.server serving `www/`: ignores Range.
fn python_server(w: &World) -> Server {
    let port = free_port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "-d",
            &w.s("www"),
        ])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(port);
    Server(child, port)
}

fn url(s: &Server, name: &str) -> String {
    format!("http://127.0.0.1:{}/{name}", s.1)
}

fn n(v: &Value, key: &str) -> u64 {
    v["report"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {v}"))
}

#[test]
fn a_delta_install_equals_the_new_image_and_fetches_only_what_changed() {
    let x = noise(IMAGE, 1);
    let w = world(&x);
    // 5% of the blocks changed, scattered.
    let (y, _) = changed(&x, IMAGE / BLOCK / 20, 0);
    w.bundle("y.abb", &y);
    let server = lighttpd(&w);
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["report"]["delta"], true, "{report}");
    let payload = w.system_payload("y.abb");
    assert_eq!(
        w.slot_b(payload.len()),
        payload,
        "slot B is not the new image"
    );
    let fetched = n(&report, "bytes_fetched");
    let reused = n(&report, "bytes_reused");
    // The changed blocks, the verity tree (new), the index and the head.
    let changed = (IMAGE / 20) as u64;
    let tree = payload.len() as u64 - IMAGE as u64;
    assert!(
        fetched < changed + tree + 128 * 1024 + payload.len() as u64 / 128 + 64 * 1024,
        "fetched {fetched} bytes for {changed} changed"
    );
    assert!(
        reused >= IMAGE as u64 - changed - 64 * 1024,
        "reused {reused}"
    );

    // --no-delta: the whole bundle, nothing reused.
    let (out, report) = w.install(&url(&server, "y.abb"), &["--no-delta"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["report"]["delta"], false);
    let size = std::fs::metadata(w.p("www/y.abb")).unwrap().len();
    assert_eq!(n(&report, "bytes_fetched"), size);
    assert_eq!(n(&report, "bytes_reused"), 0);
    assert_eq!(w.slot_b(payload.len()), payload);
}

#[test]
fn a_wrong_block_is_refused_and_a_rerun_resumes_where_it_stopped() {
    let x = noise(IMAGE, 2);
    let w = world(&x);
    let (y, changed) = changed(&x, 64, 0);
    w.bundle("y.abb", &y);
    let good = std::fs::read(w.p("www/y.abb")).unwrap();
    let payload = w.system_payload("y.abb");
    // The served bundle has one changed block wrong (the signature and the
    // index are intact): a server returning a wrong block.
    let bad_block = changed[48];
    let system_at = good.len() - payload.len();
    let mut bad = good.clone();
    bad[system_at + bad_block * BLOCK + 100] ^= 0x55;
    std::fs::write(w.p("www/y.abb"), &bad).unwrap();
    let server = lighttpd(&w);
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        report["error"]["code"], "block-hash-mismatch",
        "{report} {out:?}"
    );
    // Nothing unverified reached the slot: the wrong block is not there.
    let slot = w.slot_b(payload.len());
    let wrong = &bad[system_at + bad_block * BLOCK..system_at + (bad_block + 1) * BLOCK];
    assert!(
        slot.chunks(BLOCK).all(|b| b != wrong),
        "the wrong block was written"
    );
    let status = w.on_a(&["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("\"empty\""), "{text}");

    // The server is fixed; the rerun finds what the first run wrote in
    // slot B and fetches only the blocks from about the failure on.
    std::fs::write(w.p("www/y.abb"), &good).unwrap();
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(w.slot_b(payload.len()), payload);
    let fetched = n(&report, "bytes_fetched");
    let first_run_blocks = 64 * BLOCK as u64;
    assert!(
        fetched < first_run_blocks,
        "the rerun fetched {fetched} bytes, a fresh run fetches more than {first_run_blocks}"
    );
}

#[test]
fn a_server_without_range_support_gets_a_full_download_with_a_warning() {
    let x = noise(IMAGE, 3);
    let w = world(&x);
    let (y, _) = changed(&x, 10, 0);
    w.bundle("y.abb", &y);
    let server = python_server(&w);
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["report"]["delta"], false);
    let size = std::fs::metadata(w.p("www/y.abb")).unwrap().len();
    assert_eq!(n(&report, "bytes_fetched"), size);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ignores Range requests"), "{stdout}");
    let payload = w.system_payload("y.abb");
    assert_eq!(w.slot_b(payload.len()), payload);
}

#[test]
fn a_killed_delta_install_resumes_without_fetching_again() {
    use std::io::{BufRead, BufReader};
    let x = noise(IMAGE, 4);
    let w = world(&x);
    let (y, _) = changed(&x, 100, 0);
    w.bundle("y.abb", &y);
    let server = lighttpd(&w);
    // Killed (-9) once the system is written, before the loader is renamed
    // and the slot recorded: the machine's state after a power cut there.
    let mut child = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "install",
            &url(&server, "y.abb"),
            "--keyring",
            &w.s("keyring"),
        ])
        .args([
            "--json",
            "--disk",
            &w.s("disk.img"),
            "--ovmf-vars",
            &w.s("vars.fd"),
        ])
        .args(["--booted-slot", "a"])
        .env("ABKIT_HALT_AT", "install:loader-temp-written")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let halted = stderr
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("halted at install:loader-temp-written"));
    assert!(halted, "the install never reached its checkpoint");
    child.kill().unwrap();
    child.wait().unwrap();
    let status = w.on_a(&["status", "--json"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("\"empty\""), "{text}");

    // The rerun finds every block in slot B and fetches only the head and
    // the block indexes.
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    let payload = w.system_payload("y.abb");
    assert_eq!(w.slot_b(payload.len()), payload);
    let fetched = n(&report, "bytes_fetched");
    let index = (payload.len() / BLOCK * 32) as u64;
    assert!(
        fetched < index + 128 * 1024,
        "the rerun fetched {fetched} bytes (index {index})"
    );
}

#[test]
fn a_compressed_bundle_is_fetched_by_frames() {
    let x = noise(IMAGE, 5);
    let w = world(&x);
    let (y, _) = changed(&x, 4, 0);
    w.bundle_with("y.abb", &y, &["--zstd", "--chunk-kib", "64"]);
    let server = lighttpd(&w);
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["report"]["delta"], true, "{report}");
    let payload = w.system_payload("y.abb");
    assert_eq!(w.slot_b(payload.len()), payload);
    let size = std::fs::metadata(w.p("www/y.abb")).unwrap().len();
    let fetched = n(&report, "bytes_fetched");
    assert!(fetched < size / 2, "fetched {fetched} of {size}");
}

#[test]
fn a_delta_that_would_fetch_nearly_everything_installs_in_full() {
    let x = noise(IMAGE, 6);
    let w = world(&x);
    // Nothing of X in Y: a delta would fetch every block by ranges.
    let y = noise(IMAGE, 66);
    w.bundle("y.abb", &y);
    let server = lighttpd(&w);
    let (out, report) = w.install(&url(&server, "y.abb"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["report"]["delta"], false, "{report}");
    assert_eq!(n(&report, "bytes_reused"), 0);
    let size = std::fs::metadata(w.p("www/y.abb")).unwrap().len();
    let fetched = n(&report, "bytes_fetched");
    // The whole bundle, plus the head and indexes read to decide.
    assert!(
        fetched >= size && fetched < size + size / 50,
        "fetched {fetched} of {size}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("installing the whole bundle instead"),
        "{stdout}"
    );
    let payload = w.system_payload("y.abb");
    assert_eq!(w.slot_b(payload.len()), payload);
}
