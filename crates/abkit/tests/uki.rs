//! `abkit uki build`, `stamp` and `inspect` as a user runs them, checked
//! against binutils' `objdump -h`, on a minimal stub made by
//! `abkit_uki::fixture` (the real stub is covered by the
//! `loader-paths` VM scenario, crates/abkit-vmtest/src/loader_scenarios.rs).

use std::path::Path;
use std::process::{Command, Output};

fn abkit(args: &[&std::ffi::OsStr], env_stub: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abkit"));
    cmd.args(args).env_remove("ABKIT_STUB");
    if let Some(stub) = env_stub {
        cmd.env("ABKIT_STUB", stub);
    }
    cmd.output().expect("run abkit")
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new(stub: &[u8]) -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stub.efi"), stub).unwrap();
        std::fs::write(dir.path().join("vmlinuz"), vec![0x4b; 10_000]).unwrap();
        std::fs::write(dir.path().join("initrd"), vec![0x49; 3_000]).unwrap();
        std::fs::write(
            dir.path().join("os-release"),
            "ID=t\nPRETTY_NAME=\"Test 1\"\n",
        )
        .unwrap();
        Inputs { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `abkit uki build` with every part; the stub from --stub when `flag`.
    fn build(&self, flag: bool) -> Output {
        let (stub, kernel, initrd, osrel, out) = (
            self.path("stub.efi"),
            self.path("vmlinuz"),
            self.path("initrd"),
            self.path("os-release"),
            self.path("boot.efi"),
        );
        let mut args = vec![
            os("uki"),
            os("build"),
            os("--kernel"),
            kernel.as_os_str(),
            os("--initrd"),
            initrd.as_os_str(),
            os("--osrel"),
            osrel.as_os_str(),
            os("--cmdline"),
            os("console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X"),
            os("-o"),
            out.as_os_str(),
        ];
        if flag {
            args.extend([os("--stub"), stub.as_os_str()]);
        }
        abkit(&args, if flag { None } else { Some(&stub) })
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn built_sections_show_in_objdump_and_inspect() {
    let inputs = Inputs::new(&abkit_uki::fixture::minimal_stub());
    let out = inputs.build(true);
    assert!(out.status.success(), "{}", stderr(&out));

    let objdump = Command::new("objdump")
        .arg("-h")
        .arg(inputs.path("boot.efi"))
        .output()
        .expect("objdump (binutils) is installed by make deps");
    assert!(objdump.status.success(), "{}", stderr(&objdump));
    let listing = String::from_utf8(objdump.stdout).unwrap();
    let rows: Vec<(String, u64)> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.first()?.parse::<u32>().ok()?;
            Some((
                fields[1].to_string(),
                u64::from_str_radix(fields[2], 16).ok()?,
            ))
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        (".text", 1),
        (".abkit", 21),
        (".osrel", 26),
        (".cmdline", 43),
        (".initrd", 3000),
        (".linux", 10_000),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), *s))
    .collect();
    assert_eq!(rows, expected, "{listing}");

    let json = abkit(
        &[
            os("uki"),
            os("inspect"),
            os("--json"),
            inputs.path("boot.efi").as_os_str(),
        ],
        None,
    );
    assert!(json.status.success(), "{}", stderr(&json));
    let info: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        info["cmdline"],
        "console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X"
    );
    assert_eq!(info["os_pretty_name"], "Test 1");
    assert_eq!(info["linux_size"], 10_000);
    assert_eq!(info["initrd_size"], 3_000);
    assert_eq!(info["stub"], "abkit-stub 0.0.0-test");
    assert_eq!(info["checksum_stored"], info["checksum_computed"]);
    assert_eq!(info["sections"].as_array().unwrap().len(), 6);

    let text = abkit(
        &[
            os("uki"),
            os("inspect"),
            inputs.path("boot.efi").as_os_str(),
        ],
        None,
    );
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("kind:      loader built on abkit-stub 0.0.0-test"),
        "{text}"
    );
    assert!(
        text.contains("cmdline:   console=ttyS0 root=PARTLABEL=ABKIT-SYSTEM-X"),
        "{text}"
    );
    assert!(text.contains("kernel:    10000 bytes"), "{text}");
}

#[test]
fn the_stub_comes_from_abkit_stub_env_too() {
    let inputs = Inputs::new(&abkit_uki::fixture::minimal_stub());
    let out = inputs.build(false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(inputs.path("boot.efi").is_file());
}

#[test]
fn without_a_stub_the_error_says_where_to_get_one() {
    let inputs = Inputs::new(b"");
    let (kernel, out) = (inputs.path("vmlinuz"), inputs.path("boot.efi"));
    let run = abkit(
        &[
            os("uki"),
            os("build"),
            os("--kernel"),
            kernel.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1));
    let err = stderr(&run);
    assert!(
        err.starts_with("abkit: error: no loader stub: pass --stub FILE or set $ABKIT_STUB"),
        "{err}"
    );
    assert!(err.contains("make stub"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_stub_missing_its_marker_section_is_refused() {
    let inputs = Inputs::new(&abkit_uki::fixture::stub_with(&[(".text", &[0xc3])]));
    let out = inputs.build(true);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("abkit: error: cannot build a loader from the stub "),
        "{err}"
    );
    assert!(
        err.contains("the stub has no .abkit section: it is not an abkit loader stub (build one with `make stub`)"),
        "{err}"
    );
    assert!(!inputs.path("boot.efi").exists());
}

#[test]
fn a_corrupt_stub_is_refused_naming_the_section() {
    let mut stub = abkit_uki::fixture::minimal_stub();
    stub.truncate(0x610); // the .abkit section at 0x600 is cut
    let inputs = Inputs::new(&stub);
    let out = inputs.build(true);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("the stub is corrupt: section .abkit: its data at 0x600+0x15 extends past the 1552 bytes of the image"),
        "{err}"
    );
    assert!(!inputs.path("boot.efi").exists());
}

#[test]
fn inspect_refuses_a_cut_loader_and_a_non_pe_file() {
    let inputs = Inputs::new(&abkit_uki::fixture::minimal_stub());
    assert!(inputs.build(true).status.success());
    let uki = std::fs::read(inputs.path("boot.efi")).unwrap();
    std::fs::write(inputs.path("cut.efi"), &uki[..uki.len() - 1000]).unwrap();
    let out = abkit(
        &[os("uki"), os("inspect"), inputs.path("cut.efi").as_os_str()],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("corrupt image: section .linux: its data at"),
        "{}",
        stderr(&out)
    );

    let out = abkit(
        &[
            os("uki"),
            os("inspect"),
            inputs.path("os-release").as_os_str(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a PE image: no MZ signature at offset 0"),
        "{}",
        stderr(&out)
    );
}

fn inspect_json(path: &Path) -> serde_json::Value {
    let out = abkit(
        &[os("uki"), os("inspect"), os("--json"), path.as_os_str()],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn stamp_in_place_and_to_a_copy_keeps_the_digest() {
    let inputs = Inputs::new(&abkit_uki::fixture::minimal_stub());
    assert!(inputs.build(true).status.success());
    let boot = inputs.path("boot.efi");
    let plain = inspect_json(&boot);
    assert_eq!(plain["slot_stamp"], serde_json::Value::Null);
    assert_eq!(plain["certificates"], 0);
    let digest = plain["authenticode_sha256"].as_str().unwrap().to_string();
    assert_eq!(digest.len(), 64);

    // In place (-o the same file), then a copy with the other slot.
    let out = abkit(
        &[
            os("uki"),
            os("stamp"),
            os("--slot"),
            os("B"),
            boot.as_os_str(),
            os("-o"),
            boot.as_os_str(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stamped"), "{}", stderr(&out));
    let copy = inputs.path("bootx64.efi");
    let out = abkit(
        &[
            os("uki"),
            os("stamp"),
            os("--slot"),
            os("a"),
            boot.as_os_str(),
            os("-o"),
            copy.as_os_str(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(inputs.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    for (path, slot) in [(&boot, "B"), (&copy, "A")] {
        let info = inspect_json(path);
        assert_eq!(info["slot_stamp"], slot);
        assert_eq!(
            info["certificates"], 1,
            "stamping twice must not add a stamp"
        );
        assert_eq!(info["authenticode_sha256"], digest.as_str());
        assert_eq!(info["checksum_stored"], info["checksum_computed"]);
        assert_eq!(info["sections"].as_array().unwrap().len(), 6);
    }
    assert_eq!(
        std::fs::metadata(&boot).unwrap().len(),
        std::fs::metadata(&copy).unwrap().len()
    );

    let text = abkit(&[os("uki"), os("inspect"), copy.as_os_str()], None);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("stamp:     slot A"), "{text}");
    assert!(
        text.contains(&format!("authenticode sha256: {digest}")),
        "{text}"
    );

    // binutils still reads the stamped file's sections.
    let objdump = Command::new("objdump")
        .arg("-h")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(objdump.status.success(), "{}", stderr(&objdump));
    assert!(String::from_utf8_lossy(&objdump.stdout).contains(".linux"));
}

#[test]
fn stamp_refuses_a_non_pe_file_and_a_table_not_at_the_end() {
    let inputs = Inputs::new(&abkit_uki::fixture::minimal_stub());
    assert!(inputs.build(true).status.success());
    let (text, out) = (inputs.path("os-release"), inputs.path("out.efi"));
    let run = abkit(
        &[
            os("uki"),
            os("stamp"),
            os("--slot"),
            os("A"),
            text.as_os_str(),
            os("-o"),
            out.as_os_str(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("not a readable PE image: not a PE image: no MZ signature"),
        "{}",
        stderr(&run)
    );
    assert!(!out.exists());

    let mut stamped = abkit_uki::stamp(
        &std::fs::read(inputs.path("boot.efi")).unwrap(),
        abkit_uki::Slot::A,
    )
    .unwrap();
    stamped.extend_from_slice(&[0; 16]);
    let bad = inputs.path("bad.efi");
    std::fs::write(&bad, &stamped).unwrap();
    let run = abkit(
        &[
            os("uki"),
            os("stamp"),
            os("--slot"),
            os("B"),
            bad.as_os_str(),
            os("-o"),
            bad.as_os_str(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr(&run).contains("does not end where the"),
        "{}",
        stderr(&run)
    );
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        stamped,
        "a refused stamp leaves the file alone"
    );

    // inspect still shows such a file, naming the problem.
    let info = inspect_json(&bad);
    assert_eq!(info["slot_stamp"], serde_json::Value::Null);
    assert!(
        info["stamp_problem"]
            .as_str()
            .unwrap()
            .contains("does not end")
    );
}
