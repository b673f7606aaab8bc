//! The payloads an A/B bundle must carry, and the one check of them that
//! `install` and the factory (`image build --bundle`) share: an `efi`
//! payload that is a PE/COFF EFI application, and a `system` payload with
//! dm-verity parameters.

use std::io::Read;

use abkit_bundle::{BundleReader, Manifest, PayloadEntry, PayloadReader};

use crate::{Result, UpdateError};

/// A payload abkit writes, by its name in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// The system image with its dm-verity tree: goes into the slot.
    System,
    /// The loader (a UKI): goes onto the ESP as the slot's loader.
    Efi,
}

impl Payload {
    /// Every payload abkit writes.
    pub const ALL: [Payload; 2] = [Payload::System, Payload::Efi];

    /// The payload's name in the manifest.
    pub const fn name(self) -> &'static str {
        match self {
            Payload::System => "system",
            Payload::Efi => "efi",
        }
    }

    /// The payload named `name`, if abkit uses it.
    pub fn from_name(name: &str) -> Option<Payload> {
        Payload::ALL.into_iter().find(|p| p.name() == name)
    }

    /// This payload's entry in `manifest`.
    pub fn entry(self, manifest: &Manifest) -> Result<&PayloadEntry> {
        manifest
            .payload(self.name())
            .ok_or(UpdateError::MissingPayload(self.name()))
    }
}

/// Reads every payload of `bundle` in bundle order: `write` gets each one
/// abkit uses, the others are read through (verified all the same) and
/// skipped. Fails when the bundle lacks a payload abkit needs.
pub fn stream_payloads<R: Read>(
    bundle: &mut BundleReader<R>,
    mut write: impl FnMut(Payload, &mut PayloadReader<'_, R>) -> Result<()>,
) -> Result<()> {
    let mut seen = Vec::new();
    while let Some(mut p) = bundle.next_payload()? {
        match Payload::from_name(&p.entry().name) {
            Some(kind) => {
                write(kind, &mut p)?;
                seen.push(kind);
            }
            None => log::info!(
                "skipping payload {:?} that this version does not use",
                p.entry().name
            ),
        }
        p.finish()?;
    }
    match Payload::ALL.into_iter().find(|kind| !seen.contains(kind)) {
        Some(missing) => Err(UpdateError::MissingPayload(missing.name())),
        None => Ok(()),
    }
}

/// How many leading bytes of the `efi` payload [`check_loader_head`] needs.
pub const LOADER_HEAD: usize = 4096;

/// What the manifest alone must show: both payloads, a system payload with
/// dm-verity parameters, sizes that are not absurd. Returns the entries.
pub fn check_manifest(manifest: &Manifest) -> Result<(PayloadEntry, PayloadEntry)> {
    let system = Payload::System.entry(manifest)?.clone();
    let efi = Payload::Efi.entry(manifest)?.clone();
    if system.verity.is_none() {
        return Err(UpdateError::BadPayload {
            payload: Payload::System.name(),
            reason: "it carries no dm-verity parameters (create the bundle with a verity tree)"
                .into(),
        });
    }
    if system.size == 0 {
        return Err(UpdateError::BadPayload {
            payload: Payload::System.name(),
            reason: "it is empty".into(),
        });
    }
    if efi.size < 64 {
        return Err(UpdateError::BadPayload {
            payload: Payload::Efi.name(),
            reason: format!("{} bytes is too small for an EFI application", efi.size),
        });
    }
    Ok((system, efi))
}

/// Checks that the first bytes of the verified `efi` payload are a PE/COFF
/// EFI application, before it can replace a loader.
pub fn check_loader_head(head: &[u8]) -> Result<()> {
    abkit_loader_core::check_efi_application(head)
        .map(drop)
        .map_err(|e| UpdateError::BadPayload {
            payload: Payload::Efi.name(),
            reason: format!("not an EFI application: {e}"),
        })
}

/// A reader over the `efi` payload that keeps what the checks need as it
/// passes by: the first [`LOADER_HEAD`] bytes and the UKI's command line.
pub struct LoaderCapture<R> {
    inner: R,
    head: Vec<u8>,
    cmdline: abkit_uki::root::CmdlineCatcher,
}

impl<R> LoaderCapture<R> {
    pub fn new(inner: R) -> LoaderCapture<R> {
        LoaderCapture {
            inner,
            head: Vec::new(),
            cmdline: abkit_uki::root::CmdlineCatcher::new(),
        }
    }

    /// Checks what passed by: a PE/COFF EFI application whose `roothash=`
    /// (if its command line has one) is the `system` payload's verity root.
    pub fn check(self, system: &PayloadEntry) -> Result<()> {
        check_loader_head(&self.head)?;
        let cmdline = self.cmdline.finish();
        check_root_hash(cmdline.as_deref(), system)
    }
}

impl<R: std::io::Read> std::io::Read for LoaderCapture<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Write;
        let n = self.inner.read(buf)?;
        let room = LOADER_HEAD.saturating_sub(self.head.len()).min(n);
        self.head.extend_from_slice(&buf[..room]);
        self.cmdline.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A UKI command line's `roothash=` must be the `system` payload's verity
/// root, or the release could never mount its root.
pub fn check_root_hash(cmdline: Option<&str>, system: &PayloadEntry) -> Result<()> {
    let Some(uki) = cmdline
        .and_then(abkit_uki::root::root_verity)
        .map(|v| v.root_hash)
    else {
        return Ok(());
    };
    let system = system
        .verity
        .as_ref()
        .map(|v| hex::encode(v.root_hash.0))
        .unwrap_or_else(|| "none".into());
    if uki.eq_ignore_ascii_case(&system) {
        Ok(())
    } else {
        Err(abkit_bundle::Error::RootHashMismatch { uki, system }.into())
    }
}
