//! The keyring is a trust store: only regular, non-hidden `*.pub` files in a
//! folder that only root or the current user can change are trusted, like
//! ssh's StrictModes. A refusal names the file and the reason; nothing here
//! may hang on a FIFO or follow a symbolic link.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use abkit_bundle::{Error, Keyring, SecretKey};

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

/// A fresh keyring folder (mode 0755) holding `good.pub` (key 1, 0644).
fn ring_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ring");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    write_key(&dir.join("good.pub"), &key(1), 0o644);
    (tmp, dir)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write_key(path: &Path, key: &SecretKey, mode: u32) {
    std::fs::write(path, key.public_key().to_text(None)).unwrap();
    chmod(path, mode);
}

/// Loads `dir` on another thread, so a hang fails the test instead of
/// blocking it forever.
fn load(dir: &Path) -> abkit_bundle::Result<Keyring> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || tx.send(Keyring::load_dir(&dir)).unwrap());
    rx.recv_timeout(Duration::from_secs(10))
        .expect("Keyring::load_dir hung")
}

fn unsafe_key_file(result: abkit_bundle::Result<Keyring>) -> (PathBuf, String) {
    match result {
        Err(Error::UnsafeKeyFile { path, reason }) => (path, reason),
        other => panic!("expected unsafe-key-file, got {other:?}"),
    }
}

#[test]
fn a_safe_keyring_loads_its_keys() {
    let (_tmp, dir) = ring_dir();
    write_key(&dir.join("second.pub"), &key(2), 0o600);
    std::fs::write(dir.join("README"), "not a key").unwrap();
    let ring = load(&dir).unwrap();
    assert_eq!(ring.keys().len(), 2);
    assert!(ring.contains(&key(1).public_key().to_bytes()));
    assert!(ring.contains(&key(2).public_key().to_bytes()));
    assert!(ring.skipped().is_empty());
}

#[test]
fn a_key_file_group_or_others_can_write_is_refused_by_name() {
    for (mode, who) in [
        (0o664, "its group"),
        (0o646, "others"),
        (0o666, "group and others"),
    ] {
        let (_tmp, dir) = ring_dir();
        let evil = dir.join("evil.pub");
        write_key(&evil, &key(2), mode);
        let (path, reason) = unsafe_key_file(load(&dir));
        assert_eq!(path, evil);
        assert!(reason.contains(&format!("writable by {who}")), "{reason}");
        assert!(reason.contains(&format!("{mode:04o}")), "{reason}");
        let err = load(&dir).unwrap_err();
        assert_eq!(err.code(), "unsafe-key-file");
        assert!(err.to_string().contains("evil.pub"), "{err}");
    }
}

#[test]
fn a_keyring_folder_group_or_others_can_write_is_refused() {
    let (_tmp, dir) = ring_dir();
    chmod(&dir, 0o775);
    match load(&dir) {
        Err(Error::KeyringDir { path, reason }) => {
            assert_eq!(path, dir);
            assert!(reason.contains("writable by its group"), "{reason}");
        }
        other => panic!("expected keyring-dir, got {other:?}"),
    }
    chmod(&dir, 0o1777);
    let err = load(&dir).unwrap_err();
    assert_eq!(err.code(), "keyring-dir");
    assert!(
        err.to_string().contains("writable by group and others"),
        "{err}"
    );
}

#[test]
fn a_symlinked_key_is_refused_even_if_its_target_is_safe() {
    let (tmp, dir) = ring_dir();
    let target = tmp.path().join("elsewhere.pub");
    write_key(&target, &key(2), 0o644);
    let link = dir.join("link.pub");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (path, reason) = unsafe_key_file(load(&dir));
    assert_eq!(path, link);
    assert!(reason.contains("symbolic link"), "{reason}");
    // A dangling one too.
    std::fs::remove_file(&target).unwrap();
    let (path, _) = unsafe_key_file(load(&dir));
    assert_eq!(path, link);
}

#[test]
fn a_fifo_named_pub_is_refused_without_hanging() {
    let (_tmp, dir) = ring_dir();
    let fifo = dir.join("fifo.pub");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    chmod(&fifo, 0o644);
    let (path, reason) = unsafe_key_file(load(&dir));
    assert_eq!(path, fifo);
    assert!(reason.contains("a FIFO"), "{reason}");
}

#[test]
fn a_folder_named_pub_is_refused() {
    let (_tmp, dir) = ring_dir();
    std::fs::create_dir(dir.join("sub.pub")).unwrap();
    let (path, reason) = unsafe_key_file(load(&dir));
    assert_eq!(path, dir.join("sub.pub"));
    assert!(reason.contains("a directory"), "{reason}");
}

#[test]
fn hidden_pub_files_are_skipped_never_trusted() {
    let (_tmp, dir) = ring_dir();
    write_key(&dir.join(".hidden.pub"), &key(2), 0o644);
    let ring = load(&dir).unwrap();
    assert!(ring.contains(&key(1).public_key().to_bytes()));
    assert!(!ring.contains(&key(2).public_key().to_bytes()));
    assert_eq!(ring.keys().len(), 1);
    assert_eq!(ring.skipped().len(), 1);
    assert_eq!(ring.skipped()[0].path, dir.join(".hidden.pub"));
    assert_eq!(ring.skipped()[0].reason, "hidden file");
    // Only hidden keys: the keyring is empty.
    std::fs::remove_file(dir.join("good.pub")).unwrap();
    assert!(matches!(load(&dir), Err(Error::EmptyKeyring { .. })));
}

#[test]
fn a_key_owned_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot make a file owned by someone else; skipped");
        return;
    }
    let (_tmp, dir) = ring_dir();
    let theirs = dir.join("theirs.pub");
    write_key(&theirs, &key(2), 0o644);
    std::os::unix::fs::chown(&theirs, Some(4242), None).unwrap();
    let (path, reason) = unsafe_key_file(load(&dir));
    assert_eq!(path, theirs);
    assert!(reason.contains("owned by uid 4242"), "{reason}");
}

#[test]
fn a_missing_keyring_is_called_a_keyring_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = load(&missing).unwrap_err();
    assert!(matches!(&err, Error::KeyringMissing { path } if *path == missing));
    assert_eq!(
        err.to_string(),
        format!("keyring directory {} does not exist", missing.display())
    );
    assert_eq!(err.code(), "keyring-missing");
    // A file where the folder should be.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let err = load(&file).unwrap_err().to_string();
    assert!(err.contains("is not a directory"), "{err}");
}
