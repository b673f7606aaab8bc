//! abkit update bundles: one signed file that carries an OS version (the EFI
//! payload and the system image with its dm-verity tree), written by
//! [`create_bundle`] and read by [`BundleReader`], which streams with bounded
//! memory and hands out only bytes that were verified against the signature.
//!
//! The byte layout is documented in `docs/bundle-format.md` and, in code, in
//! [`format`]. A consumer's loop looks like this:
//!
//! ```no_run
//! # fn main() -> Result<(), abkit_bundle::Error> {
//! use abkit_bundle::{BundleReader, Keyring};
//! let keyring = Keyring::load_dir("/etc/abkit/keyring".as_ref())?;
//! let file = std::fs::File::open("update.abb")?;
//! // Header, manifest and signatures are read and checked here; nothing else.
//! let mut bundle = BundleReader::open(file, &keyring)?;
//! println!("version {}", bundle.manifest().version);
//! while let Some(mut payload) = bundle.next_payload()? {
//!     let name = payload.entry().name.clone();
//!     // Every byte read here belongs to a chunk whose BLAKE3 was checked.
//!     let mut sink = std::io::sink();
//!     std::io::copy(&mut payload, &mut sink)?;
//!     // Size and whole-payload BLAKE3: only now is the payload final.
//!     let digest = payload.finish()?;
//!     println!("{name}: {}", hex::encode(digest));
//! }
//! # Ok(()) }
//! ```

pub mod format;
pub mod index;
pub mod keys;
pub mod manifest;
pub mod reader;
pub mod rootfs;
pub mod verity;
pub mod writer;

mod error;
mod pool;

pub use error::{Error, Result};
pub use index::{BlockIndex, Layout};
pub use keys::{KeyId, Keyring, PublicKey, SecretKey, SkippedKeyFile};
pub use manifest::{Compression, IndexRef, Manifest, PayloadEntry, VerityParams};
pub use reader::{BundleHead, BundleReader, PayloadReader, SignatureStatus, VerifiedBlock};
pub use writer::{CreateOptions, PayloadSpec, create_bundle, write_head};
