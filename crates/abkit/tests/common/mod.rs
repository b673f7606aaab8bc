//! What the CLI test files share: a scratch folder and the `abkit` binary
//! run in it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The smallest partitions `abkit image build` accepts that hold a test
/// release: a 33 MiB ESP (the FAT32 minimum), 4 MiB slots, 1 MiB DATA.
pub const SMALL_PARTITIONS: [&str; 6] = [
    "--esp-size",
    "33M",
    "--system-size",
    "4M",
    "--data-size",
    "1M",
];

/// Makes a FIFO at `path` (mode 0600): a bundle source that delivers only
/// what the test writes into it, when it writes it.
pub fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// A scratch folder for one test.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A path in the folder.
    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same, as a string for command lines.
    pub fn s(&self, name: &str) -> String {
        self.p(name).to_string_lossy().into_owned()
    }

    /// Runs `abkit ARGS` in the folder (relative paths are the folder's),
    /// with no standard input.
    pub fn abkit<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs `abkit ARGS` with `stdin` written into its standard input.
    pub fn abkit_fed<S: AsRef<OsStr>>(&self, args: &[S], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        let stdin = stdin.to_vec();
        // Fed from a thread so a child that stops reading cannot block us.
        let feeder = std::thread::spawn(move || pipe.write_all(&stdin));
        let out = child.wait_with_output().unwrap();
        let _ = feeder.join();
        out
    }

    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_abkit"));
        command.args(args).current_dir(self.dir.path());
        command
    }

    /// Runs `abkit ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.abkit(args);
        assert!(
            out.status.success(),
            "abkit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The disk of [`Workdir::factory_disk`]: `disk.img` with `vars.fd`.
impl Workdir {
    /// `keygen` of `release.key`/`release.pub` and `keyring/` holding the
    /// public key.
    pub fn release_key(&self) {
        self.ok(&["keygen", "--out", &self.s("release")]);
        std::fs::create_dir(self.p("keyring")).unwrap();
        std::fs::copy(self.p("release.pub"), self.p("keyring/release.pub")).unwrap();
    }

    /// `disk.img` (33 MiB ESP, 4 MiB slots, 1 MiB DATA) and `vars.fd` (a
    /// copy of Debian's OVMF VARS) built by `abkit image build` with
    /// `source` (`--bundle FILE --keyring DIR`, or `--loader --system`).
    pub fn factory_disk(&self, source: &[&str]) {
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", self.p("vars.fd"))
            .expect("Debian's OVMF is needed: run `make deps`");
        let (disk, vars) = (self.s("disk.img"), self.s("vars.fd"));
        let mut args = vec!["image", "build"];
        args.extend_from_slice(source);
        args.extend(SMALL_PARTITIONS);
        args.extend(["-o", &disk, "--seed", "3", "--ovmf-vars", &vars]);
        self.ok(&args);
    }

    /// Runs an offline machine command on [`Workdir::factory_disk`]'s disk,
    /// `slot` (`a`/`b`) taken as running.
    pub fn on(&self, slot: &str, args: &[&str]) -> Output {
        self.abkit(&self.offline(slot, args))
    }

    /// [`Workdir::on`] with `stdin` written into abkit's standard input.
    pub fn on_fed(&self, slot: &str, args: &[&str], stdin: &[u8]) -> Output {
        self.abkit_fed(&self.offline(slot, args), stdin)
    }

    /// `args` with the options naming the disk, its variables and the slot.
    fn offline(&self, slot: &str, args: &[&str]) -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(
            [
                "--disk",
                &self.s("disk.img"),
                "--ovmf-vars",
                &self.s("vars.fd"),
                "--booted-slot",
                slot,
            ]
            .map(String::from),
        );
        all
    }
}

/// A release to sign with `abkit bundle create` in a [`Workdir`]: a system
/// image and a tiny EFI application as the loader (see [`Workdir::release`]).
pub struct Release<'a> {
    w: &'a Workdir,
    version: &'a str,
    system: &'a [u8],
    efi_tag: &'a [u8],
    compatible: &'a str,
    key: String,
    extra: Vec<&'a str>,
}

impl Workdir {
    /// Version `version` with `system` as its system image and a tiny EFI
    /// application tagged `efi_tag` as its loader; compatible `demo-os`,
    /// signed by `release.key` unless told otherwise.
    pub fn release<'a>(
        &'a self,
        version: &'a str,
        system: &'a [u8],
        efi_tag: &'a [u8],
    ) -> Release<'a> {
        Release {
            w: self,
            version,
            system,
            efi_tag,
            compatible: "demo-os",
            key: self.s("release.key"),
            extra: Vec::new(),
        }
    }
}

impl<'a> Release<'a> {
    pub fn compatible(mut self, compatible: &'a str) -> Self {
        self.compatible = compatible;
        self
    }
    /// Signs with the secret key at `path` (relative to the folder).
    pub fn key(mut self, path: &str) -> Self {
        self.key = self.w.s(path);
        self
    }
    /// More `bundle create` arguments (`--chunk-kib 64`, `--zstd`, ...).
    pub fn args(mut self, args: &[&'a str]) -> Self {
        self.extra.extend_from_slice(args);
        self
    }
    /// Writes the inputs beside `out` and creates the bundle `out` (relative
    /// to the folder); returns its full path.
    pub fn create(self, out: &str) -> String {
        let (system, efi) = (format!("{out}.system.img"), format!("{out}.efi"));
        std::fs::write(self.w.p(&system), self.system).unwrap();
        let loader = abkit_disk::fixtures::tiny_efi_application(self.efi_tag);
        std::fs::write(self.w.p(&efi), loader).unwrap();
        let out = self.w.s(out);
        let (system, efi) = (self.w.s(&system), self.w.s(&efi));
        let mut args = vec![
            "bundle",
            "create",
            "--efi",
            &efi,
            "--system",
            &system,
            "--version",
            self.version,
            "--compatible",
            self.compatible,
            "--key",
            &self.key,
            "-o",
            &out,
        ];
        args.extend_from_slice(&self.extra);
        self.w.ok(&args);
        out
    }
}
