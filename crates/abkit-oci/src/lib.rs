//! Update bundles in OCI registries: `abkit bundle push` stores a bundle as
//! an OCI artifact (abkit's own media types, docs/oci.md) and `abkit install
//! oci://HOST/REPO:TAG` or `@sha256:<digest>` pulls it, by the OCI
//! distribution spec: blob uploads (one `PUT` or `PATCH` chunks), tags,
//! digests checked on every manifest and blob, Basic and Bearer (token
//! service) authentication, https by default.
//!
//! The registry is a transport, not a trust anchor: the pulled bundle still
//! goes through abkit's verifier, and its own signature decides.

mod auth;
mod client;
mod error;
pub mod manifest;
mod pull;
mod push;
mod reference;
#[cfg(feature = "testing")]
pub mod testing;

pub use auth::{Credentials, credentials_from_file, default_auth_files};
pub use client::{Registry, RegistryOptions};
pub use error::OciError;
pub use manifest::{ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, Descriptor, Manifest};
pub use pull::{Artifact, BlobReader, open_bundle, open_bundle_ranged, resolve};
pub use push::{PushOptions, PushReport, push_bundle};
pub use reference::{Digest, Reference, SCHEME, is_oci};
