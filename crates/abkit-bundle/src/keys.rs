//! Ed25519 signing keys in abkit's text format, and keyrings (a folder of
//! public keys). A key file is:
//!
//! ```text
//! abkit-ed25519-secret-key          (or abkit-ed25519-public-key)
//! <base64 of 32 bytes: the secret seed, or the public key>
//! # optional comment lines, e.g. who made the key
//! ```
//!
//! A key's id is the first 8 bytes of SHA-256 of its public key, in hex.
//!
//! A keyring folder is a trust store, so [`Keyring::load_dir`] applies
//! ssh-like strict modes: see its documentation and docs/bundle-format.md.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// First line of a secret key file.
pub const SECRET_KEY_TAG: &str = "abkit-ed25519-secret-key";
/// First line of a public key file.
pub const PUBLIC_KEY_TAG: &str = "abkit-ed25519-public-key";
/// Key files are small; anything larger is not one.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Short name of a public key: first 8 bytes of its SHA-256, hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

/// A public key that can check bundle signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Wraps 32 raw bytes, refusing points that are not valid keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| Error::InvalidInput(format!("not an Ed25519 public key: {e}")))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn key_id(&self) -> KeyId {
        key_id_of(&self.0.to_bytes())
    }

    /// Strict Ed25519 verification (rejects weak keys and malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify_strict(message, &sig).is_ok()
    }

    /// Parses the text format (see the module docs).
    pub fn parse(text: &str) -> std::result::Result<PublicKey, String> {
        let bytes = parse_key_text(text, PUBLIC_KEY_TAG)?;
        PublicKey::from_bytes(&bytes).map_err(|e| e.to_string())
    }

    pub fn to_text(&self, comment: Option<&str>) -> String {
        key_text(PUBLIC_KEY_TAG, &self.to_bytes(), comment)
    }

    /// Reads a `.pub` file.
    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = read_key_file(path)?;
        PublicKey::parse(&text).map_err(|reason| Error::KeyFile {
            path: path.to_owned(),
            reason,
        })
    }
}

/// The first 8 bytes of SHA-256 of raw public key bytes.
pub fn key_id_of(public_key: &[u8; 32]) -> KeyId {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    KeyId(id)
}

/// A secret key that signs bundles.
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public_key().key_id())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SecretKey> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)
            .map_err(|e| Error::InvalidInput(format!("no randomness: {e}")))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// A key from a 32-byte seed (tests and reproducible tooling).
    pub fn from_seed(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    pub fn parse(text: &str) -> std::result::Result<SecretKey, String> {
        let seed = parse_key_text(text, SECRET_KEY_TAG)?;
        Ok(SecretKey::from_seed(&seed))
    }

    pub fn to_text(&self, comment: Option<&str>) -> String {
        key_text(SECRET_KEY_TAG, &self.0.to_bytes(), comment)
    }

    /// Reads a `.key` file.
    pub fn load(path: &Path) -> Result<SecretKey> {
        let text = read_key_file(path)?;
        SecretKey::parse(&text).map_err(|reason| Error::KeyFile {
            path: path.to_owned(),
            reason,
        })
    }

    /// Writes `BASE.key` (mode 0600) and `BASE.pub` (0644). Without
    /// `overwrite`, refuses if either name exists, even as a dangling
    /// symbolic link: both are created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
    /// and a `.key` made before a failing `.pub` is removed again. With
    /// `overwrite`, each file is written to a temporary file in the same
    /// folder and renamed over the old name, so a symbolic link there is
    /// replaced, never written through. Returns both paths.
    pub fn write_pair(
        &self,
        base: &Path,
        comment: Option<&str>,
        overwrite: bool,
    ) -> Result<(PathBuf, PathBuf)> {
        if let Some(c) = comment
            && c.contains(['\n', '\r'])
        {
            return Err(Error::InvalidInput("a key comment must be one line".into()));
        }
        let key_path = with_suffix(base, ".key");
        let pub_path = with_suffix(base, ".pub");
        let secret = self.to_text(comment);
        let public = self.public_key().to_text(comment);
        if overwrite {
            replace_file(&key_path, secret.as_bytes(), 0o600)?;
            replace_file(&pub_path, public.as_bytes(), 0o644)?;
            return Ok((key_path, pub_path));
        }
        for p in [&key_path, &pub_path] {
            // symlink_metadata: a dangling link exists too.
            if std::fs::symlink_metadata(p).is_ok() {
                return Err(already_exists(p));
            }
        }
        create_new_file(&key_path, secret.as_bytes(), 0o600)?;
        if let Err(e) = create_new_file(&pub_path, public.as_bytes(), 0o644) {
            let _ = std::fs::remove_file(&key_path);
            return Err(e);
        }
        Ok((key_path, pub_path))
    }
}

fn already_exists(path: &Path) -> Error {
    Error::KeyFile {
        path: path.to_owned(),
        reason: "already exists (use --force to replace it)".into(),
    }
}

/// Creates a new file: never opens an existing one, never follows a link.
fn create_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => already_exists(path),
            _ => Error::KeyFile {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
    // The umask may have taken bits off: set the mode explicitly.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Replaces `path` with a new file by renaming a complete temporary file
/// from the same folder over it (a link at `path` is replaced, not followed).
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    abkit_atomic::replace(path, contents, Some(mode)).map_err(|e| Error::KeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens a key file for reading without ever blocking or following a
/// symbolic link in its last component: `O_NOFOLLOW` refuses a link,
/// `O_NONBLOCK` keeps a FIFO from hanging the open (it is then refused as
/// not a regular file by `fstat`, before any read).
fn open_key_file(path: &Path, follow_symlink: bool) -> Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let key_error = |reason: String| Error::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY;
    if !follow_symlink {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) if !follow_symlink => Error::UnsafeKeyFile {
                path: path.to_owned(),
                reason: "is a symbolic link".into(),
            },
            _ => key_error(e.to_string()),
        })?;
    let meta = file.metadata().map_err(|e| key_error(e.to_string()))?;
    if !meta.is_file() {
        return Err(Error::UnsafeKeyFile {
            path: path.to_owned(),
            reason: format!(
                "is not a regular file (it is {})",
                kind_of(&meta.file_type())
            ),
        });
    }
    Ok((file, meta))
}

/// Reads at most [`MAX_KEY_FILE_LEN`] bytes of an opened key file as text.
fn read_key_text(path: &Path, file: std::fs::File) -> Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::KeyFile {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if text.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(Error::KeyFile {
            path: path.to_owned(),
            reason: format!("larger than {MAX_KEY_FILE_LEN} bytes: not a key file"),
        });
    }
    Ok(text)
}

/// Reads a key file named on the command line: a symbolic link is followed,
/// but only a regular file is read (a FIFO or device never blocks us).
fn read_key_file(path: &Path) -> Result<String> {
    let (file, _) = open_key_file(path, true)?;
    read_key_text(path, file)
}

/// What kind of file this is, for error messages.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// The effective user id of this process.
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and
    // cannot fail.
    unsafe { libc::geteuid() }
}

/// ssh's StrictModes for keyring entries: a file or folder that someone
/// other than root or us can change is not a trust anchor. Returns why not.
fn unsafe_permissions(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o7777;
    let writers = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    if let Some(who) = writers {
        return Some(format!(
            "is writable by {who} (mode {mode:04o}); run `chmod go-w` on it"
        ));
    }
    let uid = meta.uid();
    let euid = effective_uid();
    if uid != 0 && uid != euid {
        return Some(format!(
            "is owned by uid {uid}, not by root or the user running abkit (uid {euid})"
        ));
    }
    None
}

fn key_text(tag: &str, bytes: &[u8; 32], comment: Option<&str>) -> String {
    let mut s = format!("{tag}\n{}\n", BASE64.encode(bytes));
    if let Some(c) = comment {
        s.push_str(&format!("# {c}\n"));
    }
    s
}

fn parse_key_text(text: &str, tag: &str) -> std::result::Result<[u8; 32], String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    match lines.next() {
        Some(first) if first == tag => {}
        Some(SECRET_KEY_TAG) => {
            return Err("this is a secret key, a public key was expected".into());
        }
        Some(PUBLIC_KEY_TAG) => {
            return Err("this is a public key, a secret key was expected".into());
        }
        _ => return Err(format!("first line must be `{tag}`")),
    }
    let b64 = lines.next().ok_or("the base64 key line is missing")?;
    if lines.next().is_some() {
        return Err("unexpected text after the key line (comments start with #)".into());
    }
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| format!("key line is not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("key is {} bytes, expected 32", b.len()))
}

/// A `*.pub` file in a keyring folder that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedKeyFile {
    pub path: PathBuf,
    pub reason: String,
}

/// The public keys a device trusts: the regular `*.pub` files of a folder
/// that only root or the current user can change (see [`Keyring::load_dir`]).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<PublicKey>,
    skipped: Vec<SkippedKeyFile>,
}

impl Keyring {
    /// A keyring of the given keys.
    pub fn from_keys(keys: Vec<PublicKey>) -> Keyring {
        Keyring {
            keys,
            skipped: Vec::new(),
        }
    }

    /// Loads the keys of a keyring folder. Trusted: every regular file whose
    /// name ends in `.pub`, does not start with `.`, and that neither the
    /// folder's nor the file's group or others can write, owned (like the
    /// folder) by root or the current user. Other names are ignored.
    ///
    /// - The folder missing ([`Error::KeyringMissing`]), not a folder, or
    ///   writable by group/others or owned by someone else
    ///   ([`Error::KeyringDir`]): error.
    /// - A hidden `.*.pub` (editor lock files, half-copied files): skipped,
    ///   with a `log` warning and an entry in [`Keyring::skipped`].
    /// - A `*.pub` that is a symbolic link, a FIFO, a folder or a device, or
    ///   that group/others can write or someone else owns:
    ///   [`Error::UnsafeKeyFile`]. A FIFO is never opened, a symbolic link
    ///   never followed.
    /// - A `*.pub` that does not parse ([`Error::KeyFile`]), or no key at
    ///   all ([`Error::EmptyKeyring`]): error.
    ///
    /// A key it refuses is never trusted; the errors make the operator fix
    /// the trust store instead of silently running with a different one.
    pub fn load_dir(dir: &Path) -> Result<Keyring> {
        let dir_error = |reason: String| Error::KeyringDir {
            path: dir.to_owned(),
            reason,
        };
        let meta = match std::fs::metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::KeyringMissing {
                    path: dir.to_owned(),
                });
            }
            Err(e) => return Err(dir_error(e.to_string())),
        };
        if !meta.is_dir() {
            return Err(dir_error(format!(
                "is not a directory (it is {})",
                kind_of(&meta.file_type())
            )));
        }
        if let Some(reason) = unsafe_permissions(&meta) {
            return Err(dir_error(reason));
        }
        let mut paths = Vec::new();
        let mut skipped = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| dir_error(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| dir_error(e.to_string()))?;
            let name = entry.file_name();
            let name = name.as_encoded_bytes();
            if !name.ends_with(b".pub") {
                continue;
            }
            let path = entry.path();
            if name.starts_with(b".") {
                log::warn!("keyring: skipping hidden file {}", path.display());
                skipped.push(SkippedKeyFile {
                    path,
                    reason: "hidden file".into(),
                });
                continue;
            }
            paths.push(path);
        }
        paths.sort();
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        if paths.is_empty() {
            return Err(Error::EmptyKeyring {
                path: dir.to_owned(),
            });
        }
        let keys = paths
            .iter()
            .map(|p| load_trusted_key(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Keyring { keys, skipped })
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The `*.pub` files [`Keyring::load_dir`] skipped (hidden files).
    pub fn skipped(&self) -> &[SkippedKeyFile] {
        &self.skipped
    }

    /// Whether this exact public key is trusted.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.keys.iter().any(|k| &k.to_bytes() == key)
    }
}

/// Loads one keyring entry: checked without following a link or opening a
/// FIFO (`lstat` first), then opened with `O_NOFOLLOW | O_NONBLOCK` and
/// checked again on the open file, so what is read is what was checked.
fn load_trusted_key(path: &Path) -> Result<PublicKey> {
    let unsafe_file = |reason: String| Error::UnsafeKeyFile {
        path: path.to_owned(),
        reason,
    };
    let lmeta = std::fs::symlink_metadata(path).map_err(|e| Error::KeyFile {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if !lmeta.is_file() {
        return Err(unsafe_file(format!(
            "is {}, only regular files are trusted",
            kind_of(&lmeta.file_type())
        )));
    }
    let (file, meta) = open_key_file(path, false)?;
    if let Some(reason) = unsafe_permissions(&meta) {
        return Err(unsafe_file(reason));
    }
    let text = read_key_text(path, file)?;
    PublicKey::parse(&text).map_err(|reason| Error::KeyFile {
        path: path.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_round_trips_with_comment() {
        let sk = SecretKey::from_seed(&[42; 32]);
        let text = sk.to_text(Some("release key"));
        assert!(text.starts_with("abkit-ed25519-secret-key\n"));
        assert!(text.ends_with("# release key\n"));
        let back = SecretKey::parse(&text).unwrap();
        assert_eq!(back.public_key(), sk.public_key());
        let pubtext = sk.public_key().to_text(None);
        assert_eq!(PublicKey::parse(&pubtext).unwrap(), sk.public_key());
        assert_eq!(sk.public_key().key_id().to_string().len(), 16);
    }

    #[test]
    fn bad_key_texts_name_the_problem() {
        let sk = SecretKey::from_seed(&[1; 32]);
        let cases = [
            ("", "first line"),
            ("ssh-ed25519 AAAA", "first line"),
            (
                &sk.to_text(None)[..],
                "secret key, a public key was expected",
            ),
            ("abkit-ed25519-public-key\n", "missing"),
            ("abkit-ed25519-public-key\n!!!\n", "base64"),
            ("abkit-ed25519-public-key\nAAAA\n", "3 bytes"),
            ("abkit-ed25519-public-key\nAAAA\nextra\n", "unexpected text"),
        ];
        for (text, needle) in cases {
            let err = PublicKey::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn write_pair_sets_modes_and_keyring_loads() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let sk = SecretKey::from_seed(&[3; 32]);
        let (k, p) = sk
            .write_pair(&dir.path().join("release"), None, false)
            .unwrap();
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(k.ends_with("release.key") && p.ends_with("release.pub"));
        assert!(matches!(
            sk.write_pair(&dir.path().join("release"), None, false),
            Err(Error::KeyFile { .. })
        ));
        let ring = Keyring::load_dir(dir.path()).unwrap();
        assert!(ring.contains(&sk.public_key().to_bytes()));
        assert_eq!(ring.keys().len(), 1);
        std::fs::write(dir.path().join("broken.pub"), "nonsense").unwrap();
        let err = Keyring::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("broken.pub"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Keyring::load_dir(empty.path()),
            Err(Error::EmptyKeyring { .. })
        ));
    }

    #[test]
    fn verify_is_strict_about_message_and_key() {
        let sk = SecretKey::from_seed(&[5; 32]);
        let sig = sk.sign(b"hello");
        assert!(sk.public_key().verify(b"hello", &sig));
        assert!(!sk.public_key().verify(b"hellp", &sig));
        assert!(
            !SecretKey::from_seed(&[6; 32])
                .public_key()
                .verify(b"hello", &sig)
        );
    }
}
