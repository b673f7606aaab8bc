//! Cross-check with an independent Authenticode implementation, osslsigncode
//! (when installed): it signs a UKI with a throw-away key and its digest must
//! equal ours; the stamp must leave the signature entry byte for byte and the
//! digest unchanged. osslsigncode 2.9's `verify` refuses any certificate
//! table with more than one entry ("Corrupted attribute certificate table":
//! it compares each entry with the whole table size), so for stamped files
//! that refusal is tolerated; firmware (EDK2) and sbverify walk all entries.

use std::path::Path;
use std::process::Command;

use abkit_uki::{Slot, UkiParts, authenticode_sha256, build, fixture, read_stamp, stamp};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

fn hex(digest: [u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02X}")).collect()
}

/// Runs `osslsigncode verify`; returns (success, calculated digest, output).
fn verify(file: &Path, ca: &Path) -> (bool, String, String) {
    let out = Command::new("osslsigncode")
        .args(["verify", "-in"])
        .arg(file)
        .arg("-CAfile")
        .arg(ca)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let digest = text
        .lines()
        .find_map(|l| l.strip_prefix("Calculated message digest"))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string())
        .unwrap_or_default();
    (out.status.success(), digest, text)
}

#[test]
fn osslsigncode_agrees_and_the_signature_survives_stamping() {
    if !have("osslsigncode") || !have("openssl") {
        eprintln!("osslsigncode or openssl not installed: cross-check skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=abkit stamp test", "-keyout"])
        .arg(p("key.pem"))
        .arg("-out")
        .arg(p("cert.pem"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");

    let kernel = vec![0x4b; 20_000];
    let uki = build(
        &fixture::minimal_stub(),
        &UkiParts {
            linux: &kernel,
            initrd: Some(&[0x49; 5000]),
            cmdline: Some(b"root=PARTLABEL=ABKIT-SYSTEM-X"),
            osrel: None,
        },
    )
    .unwrap();
    std::fs::write(p("uki.efi"), &uki).unwrap();
    let out = Command::new("osslsigncode")
        .args(["sign", "-h", "sha256", "-certs"])
        .arg(p("cert.pem"))
        .arg("-key")
        .arg(p("key.pem"))
        .arg("-in")
        .arg(p("uki.efi"))
        .arg("-out")
        .arg(p("signed.efi"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let signed = std::fs::read(p("signed.efi")).unwrap();
    let digest = authenticode_sha256(&uki).unwrap();
    assert_eq!(authenticode_sha256(&signed).unwrap(), digest);
    let (ok, theirs, text) = verify(&p("signed.efi"), &p("cert.pem"));
    assert!(ok, "the freshly signed file does not verify:\n{text}");
    assert_eq!(theirs, hex(digest));
    assert_eq!(read_stamp(&signed).unwrap(), None);

    // Stamp after sign, then restamp: the signature verifies throughout.
    let b = stamp(&signed, Slot::B).unwrap();
    let a = stamp(&b, Slot::A).unwrap();
    for (name, bytes, slot) in [("b.efi", &b, Slot::B), ("a.efi", &a, Slot::A)] {
        assert_eq!(&bytes[uki.len()..signed.len()], &signed[uki.len()..]);
        assert_eq!(read_stamp(bytes).unwrap(), Some(slot));
        assert_eq!(authenticode_sha256(bytes).unwrap(), digest);
        std::fs::write(p(name), bytes).unwrap();
        let (ok, theirs, text) = verify(&p(name), &p("cert.pem"));
        if ok {
            assert_eq!(theirs, hex(digest), "{name}");
        } else {
            assert!(
                text.contains("Corrupted attribute certificate table"),
                "{name}: the signature no longer verifies after stamping:\n{text}"
            );
            eprintln!("{name}: this osslsigncode cannot verify multi-entry tables");
        }
    }
}

/// A file signed by Debian's sbsign (the distribution kernel, when
/// `make deps` unpacked it, or `$ABKIT_SIGNED_PE`): our digest equals the one
/// in its signature, and stamping it keeps the signature entry and the digest.
#[test]
fn a_distribution_signed_kernel_keeps_its_digest_when_stamped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let path = std::env::var_os("ABKIT_SIGNED_PE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::fs::read_dir(root.join("build/kernel/boot"))
                .ok()?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains("vmlinuz-"))
        });
    let Some(path) = path else {
        eprintln!("no signed kernel (make deps, or set ABKIT_SIGNED_PE): skipped");
        return;
    };
    if !have("osslsigncode") {
        eprintln!("osslsigncode not installed: skipped");
        return;
    }
    let kernel = std::fs::read(&path).unwrap();
    let digest = authenticode_sha256(&kernel).unwrap();
    let out = Command::new("osslsigncode")
        .args(["verify", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let current = text
        .lines()
        .find_map(|l| l.strip_prefix("Current message digest"))
        .map(|rest| rest.trim_start_matches([' ', ':']).trim().to_string());
    assert_eq!(current, Some(hex(digest)), "{}", path.display());

    let stamped = stamp(&kernel, Slot::B).unwrap();
    // Only the checksum and the directory size change before the old end;
    // the signature entry stays byte for byte, the stamp follows it.
    let changed = (0..kernel.len())
        .filter(|&i| stamped[i] != kernel[i])
        .count();
    assert!(changed <= 8, "{changed} bytes changed");
    assert_eq!(stamped.len(), kernel.len() + 32);
    assert_eq!(authenticode_sha256(&stamped).unwrap(), digest);
    assert_eq!(read_stamp(&stamped).unwrap(), Some(Slot::B));
}
