//! The one error type of this crate: every way a bundle, a key or an image can
//! be wrong has its own variant, so callers and tests can tell them apart.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while reading, verifying or writing bundles.
/// Each variant's stable code ([`Error::code`]) is its name in kebab-case.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),
    #[error("bundle is truncated: it ends inside the {section}")]
    Truncated { section: String },
    #[error("not an abkit bundle: bad magic bytes {found:02x?}")]
    BadMagic { found: [u8; 8] },
    #[error("unsupported bundle format version {found} (this abkit reads version {supported})")]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    #[error(
        "bundle format version {found} was written by an older abkit (1: no block index, 2: SHA-256 chunk hashes); this abkit reads only version {supported} (BLAKE3 chunk hashes): rebuild the bundle with `abkit bundle create` of this version"
    )]
    OldFormatVersion { found: u32, supported: u32 },
    #[error("payload `{payload}`: block index does not match its BLAKE3 in the manifest")]
    IndexHashMismatch { payload: String },
    #[error("payload `{payload}`: block index is invalid: {reason}")]
    IndexInvalid { payload: String, reason: String },
    #[error("payload `{payload}` block {block}: BLAKE3 does not match the signed block index")]
    BlockHashMismatch { payload: String, block: u64 },
    #[error("bundle header field `{field}` must be zero, found {value:#x}")]
    ReservedFieldSet { field: &'static str, value: u64 },
    #[error("manifest length {len} bytes is out of range (1..={max})")]
    ManifestSize { len: u64, max: u64 },
    #[error("bundle declares {count} signatures, at most {max} are allowed")]
    TooManySignatures { count: u32, max: u32 },
    #[error("manifest is not valid JSON for this format: {0}")]
    ManifestJson(#[source] serde_json::Error),
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest lists {count} payloads, at most {max} are allowed")]
    TooManyPayloads { count: usize, max: usize },
    #[error("bundle has no signature")]
    NoSignature,
    #[error("no signature from a key in the keyring (bundle signed by: {})", signers.join(", "))]
    NoTrustedSignature { signers: Vec<String> },
    #[error("signature by trusted key {key_id} does not match the bundle header and manifest")]
    BadSignature { key_id: String },
    #[error("payload `{payload}` chunk {chunk}: BLAKE3 does not match the manifest")]
    ChunkHashMismatch { payload: String, chunk: u64 },
    #[error("payload `{payload}`: BLAKE3 of the whole payload does not match the manifest")]
    PayloadHashMismatch { payload: String },
    #[error("payload `{payload}`: size is {actual} bytes, the manifest says {expected}")]
    PayloadSizeMismatch {
        payload: String,
        expected: u64,
        actual: u64,
    },
    #[error("payload `{payload}`: zstd data decompresses to more than the declared {limit} bytes")]
    DecompressedTooLarge { payload: String, limit: u64 },
    #[error("payload `{payload}`: zstd data is corrupt: {reason}")]
    Decompress { payload: String, reason: String },
    #[error("bundle has trailing data after the last payload")]
    TrailingData,
    #[error("key file {path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("keyring {path} holds no *.pub key")]
    EmptyKeyring { path: PathBuf },
    #[error("keyring directory {path} does not exist")]
    KeyringMissing { path: PathBuf },
    #[error("keyring directory {path}: {reason}")]
    KeyringDir { path: PathBuf, reason: String },
    #[error("key file {path} is not trusted: {reason}")]
    UnsafeKeyFile { path: PathBuf, reason: String },
    #[error("dm-verity: {0}")]
    Verity(String),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("output {output} is the input file {input}; refusing to overwrite it")]
    OutputIsInput { output: PathBuf, input: PathBuf },
    #[error("payload `{payload}` already failed: {reason}")]
    PayloadFailed { payload: String, reason: String },
    #[error(
        "the UKI's command line has roothash={uki} but the system payload's dm-verity root is {system}: this release would not boot"
    )]
    RootHashMismatch { uki: String, system: String },
}

impl From<std::io::Error> for Error {
    /// Unwraps an [`Error`] that travelled through `std::io::Read` (as
    /// [`crate::PayloadReader`] errors do), so `?` keeps the typed error.
    fn from(err: std::io::Error) -> Error {
        match err.downcast::<Error>() {
            Ok(ours) => ours,
            Err(err) => Error::Io(err),
        }
    }
}

impl Error {
    /// A stable short name for the kind of error, for scripts and logs
    /// (`abkit bundle verify` prints it): e.g. `chunk-hash-mismatch`.
    pub fn code(&self) -> &'static str {
        self.into()
    }

    /// Maps an `UnexpectedEof` from `read_exact` to [`Error::Truncated`] naming `section`.
    pub(crate) fn from_read(err: std::io::Error, section: impl Into<String>) -> Error {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            Error::Truncated {
                section: section.into(),
            }
        } else {
            Error::Io(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (docs/bundle-format.md, `--json`):
    /// this pins every one of them.
    #[test]
    fn every_code_is_pinned() {
        let p = || PathBuf::from("k");
        let s = || String::from("x");
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let all: Vec<(Error, &str)> = vec![
            (Error::Io(std::io::Error::other("x")), "io"),
            (Error::Truncated { section: s() }, "truncated"),
            (Error::BadMagic { found: [0; 8] }, "bad-magic"),
            (
                Error::UnsupportedFormatVersion {
                    found: 9,
                    supported: 3,
                },
                "unsupported-format-version",
            ),
            (
                Error::OldFormatVersion {
                    found: 1,
                    supported: 3,
                },
                "old-format-version",
            ),
            (
                Error::IndexHashMismatch { payload: s() },
                "index-hash-mismatch",
            ),
            (
                Error::IndexInvalid {
                    payload: s(),
                    reason: s(),
                },
                "index-invalid",
            ),
            (
                Error::BlockHashMismatch {
                    payload: s(),
                    block: 0,
                },
                "block-hash-mismatch",
            ),
            (
                Error::ReservedFieldSet {
                    field: "f",
                    value: 1,
                },
                "reserved-field-set",
            ),
            (Error::ManifestSize { len: 0, max: 1 }, "manifest-size"),
            (
                Error::TooManySignatures { count: 9, max: 1 },
                "too-many-signatures",
            ),
            (Error::ManifestJson(json), "manifest-json"),
            (Error::ManifestInvalid(s()), "manifest-invalid"),
            (
                Error::TooManyPayloads { count: 9, max: 1 },
                "too-many-payloads",
            ),
            (Error::NoSignature, "no-signature"),
            (
                Error::NoTrustedSignature { signers: vec![] },
                "no-trusted-signature",
            ),
            (Error::BadSignature { key_id: s() }, "bad-signature"),
            (
                Error::ChunkHashMismatch {
                    payload: s(),
                    chunk: 0,
                },
                "chunk-hash-mismatch",
            ),
            (
                Error::PayloadHashMismatch { payload: s() },
                "payload-hash-mismatch",
            ),
            (
                Error::PayloadSizeMismatch {
                    payload: s(),
                    expected: 1,
                    actual: 2,
                },
                "payload-size-mismatch",
            ),
            (
                Error::DecompressedTooLarge {
                    payload: s(),
                    limit: 1,
                },
                "decompressed-too-large",
            ),
            (
                Error::Decompress {
                    payload: s(),
                    reason: s(),
                },
                "decompress",
            ),
            (Error::TrailingData, "trailing-data"),
            (
                Error::KeyFile {
                    path: p(),
                    reason: s(),
                },
                "key-file",
            ),
            (Error::EmptyKeyring { path: p() }, "empty-keyring"),
            (Error::KeyringMissing { path: p() }, "keyring-missing"),
            (
                Error::KeyringDir {
                    path: p(),
                    reason: s(),
                },
                "keyring-dir",
            ),
            (
                Error::UnsafeKeyFile {
                    path: p(),
                    reason: s(),
                },
                "unsafe-key-file",
            ),
            (Error::Verity(s()), "verity"),
            (Error::InvalidInput(s()), "invalid-input"),
            (
                Error::OutputIsInput {
                    output: p(),
                    input: p(),
                },
                "output-is-input",
            ),
            (
                Error::PayloadFailed {
                    payload: s(),
                    reason: s(),
                },
                "payload-failed",
            ),
            (
                Error::RootHashMismatch {
                    uki: s(),
                    system: s(),
                },
                "root-hash-mismatch",
            ),
        ];
        assert_eq!(all.len(), 33);
        for (err, code) in all {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }
}
