//! Why a registry operation failed: [`OciError`], one variant per problem an
//! operator can act on, each with a stable code (`oci-...`, documented in
//! docs/oci.md) for `--json` output and scripts.

use std::io;

/// A failed push or pull.
///
/// Each variant's stable code ([`OciError::code`]) is `oci-` and its name in
/// kebab-case, except `Fetch` and `Io`: those are not the registry's own
/// problems and carry the codes every crate uses for them.
#[derive(Debug, thiserror::Error, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case", prefix = "oci-")]
#[non_exhaustive]
pub enum OciError {
    /// The `oci://` reference does not follow the grammar.
    #[error("bad registry reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },

    /// The tag, digest or repository does not exist (HTTP 404).
    #[error("{reference}: {what} not found in the registry{detail}")]
    NotFound {
        reference: String,
        what: &'static str,
        /// Empty, or `: <registry's message>`.
        detail: String,
    },

    /// The registry wants credentials and none were given.
    #[error(
        "{registry} requires credentials ({scheme} auth): pass --registry-user (password from \
         $ABKIT_REGISTRY_PASSWORD or --registry-password-file) or add the registry to a \
         docker-style config.json (docs/oci.md)"
    )]
    AuthRequired {
        registry: String,
        scheme: &'static str,
    },

    /// The registry (or its token service) refused the credentials given,
    /// or refused the operation for them (401 after authenticating, 403).
    #[error("{registry} refused access{detail}")]
    Unauthorized { registry: String, detail: String },

    /// The manifest the registry served does not hash to the digest asked
    /// for (or to the digest it announced): it is not the artifact meant.
    #[error(
        "{reference}: the registry served a manifest with digest {actual}, not {expected}: refused"
    )]
    DigestMismatch {
        reference: String,
        expected: String,
        actual: String,
    },

    /// The bundle blob does not hash to the digest in the manifest.
    #[error("blob {expected}: the registry served content with digest {actual}: refused")]
    BlobDigestMismatch { expected: String, actual: String },

    /// The bundle blob is not as long as the manifest says.
    #[error("blob {digest}: {detail}")]
    #[strum(serialize = "blob-size-mismatch")]
    BlobSize { digest: String, detail: String },

    /// The manifest is not an abkit bundle artifact.
    #[error("{reference} is not an abkit bundle: {reason}")]
    NotABundle { reference: String, reason: String },

    /// Any other answer the registry gave that ends the operation.
    #[error("{method} {url}: HTTP {status}{detail}")]
    Registry {
        method: &'static str,
        url: String,
        status: u16,
        /// Empty, or `: CODE message, ...` from the registry's error body.
        detail: String,
    },

    /// The registry could not be reached or the connection broke (after
    /// the retries the policy allows for small requests).
    #[error("{method} {url}: {problem}")]
    Connection {
        method: &'static str,
        url: String,
        problem: String,
    },

    /// TLS refused the registry (unknown issuer, wrong name, handshake) or
    /// a redirect would have left https: not retried.
    #[error("{method} {url}: TLS: {problem}")]
    Tls {
        method: &'static str,
        url: String,
        problem: String,
    },

    /// The registry answered with something this client cannot use.
    #[error("{method} {url}: {problem}")]
    Protocol {
        method: &'static str,
        url: String,
        problem: String,
    },

    /// A credentials file is unreadable or malformed.
    #[error("registry credentials {path}: {problem}")]
    Credentials { path: String, problem: String },

    /// Streaming the blob failed (the download's own retries are spent).
    #[error(transparent)]
    Fetch(#[from] abkit_fetch::FetchError),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl OciError {
    /// A stable, machine-readable name of the error (docs/oci.md).
    pub fn code(&self) -> &'static str {
        match self {
            OciError::Fetch(_) => "fetch",
            OciError::Io { .. } => "io",
            registry => registry.into(),
        }
    }

    /// The `OciError` inside an error returned by a blob reader's `read`,
    /// if that is where it came from.
    pub fn from_io(error: &io::Error) -> Option<&OciError> {
        error.get_ref()?.downcast_ref::<OciError>()
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> OciError {
        let context = context.into();
        move |source| OciError::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (docs/oci.md, `--json`): this pins
    /// every one of them.
    #[test]
    fn every_code_is_pinned() {
        let s = || String::from("x");
        let all = [
            (
                OciError::BadReference {
                    reference: s(),
                    reason: s(),
                },
                "oci-bad-reference",
            ),
            (
                OciError::NotFound {
                    reference: s(),
                    what: "tag",
                    detail: s(),
                },
                "oci-not-found",
            ),
            (
                OciError::AuthRequired {
                    registry: s(),
                    scheme: "Basic",
                },
                "oci-auth-required",
            ),
            (
                OciError::Unauthorized {
                    registry: s(),
                    detail: s(),
                },
                "oci-unauthorized",
            ),
            (
                OciError::DigestMismatch {
                    reference: s(),
                    expected: s(),
                    actual: s(),
                },
                "oci-digest-mismatch",
            ),
            (
                OciError::BlobDigestMismatch {
                    expected: s(),
                    actual: s(),
                },
                "oci-blob-digest-mismatch",
            ),
            (
                OciError::BlobSize {
                    digest: s(),
                    detail: s(),
                },
                "oci-blob-size-mismatch",
            ),
            (
                OciError::NotABundle {
                    reference: s(),
                    reason: s(),
                },
                "oci-not-a-bundle",
            ),
            (
                OciError::Registry {
                    method: "GET",
                    url: s(),
                    status: 500,
                    detail: s(),
                },
                "oci-registry",
            ),
            (
                OciError::Connection {
                    method: "GET",
                    url: s(),
                    problem: s(),
                },
                "oci-connection",
            ),
            (
                OciError::Tls {
                    method: "GET",
                    url: s(),
                    problem: s(),
                },
                "oci-tls",
            ),
            (
                OciError::Protocol {
                    method: "GET",
                    url: s(),
                    problem: s(),
                },
                "oci-protocol",
            ),
            (
                OciError::Credentials {
                    path: s(),
                    problem: s(),
                },
                "oci-credentials",
            ),
            (
                OciError::Fetch(abkit_fetch::FetchError::BadUrl {
                    url: s(),
                    reason: s(),
                }),
                "fetch",
            ),
            (
                OciError::Io {
                    context: s(),
                    source: io::Error::other("x"),
                },
                "io",
            ),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }
}
