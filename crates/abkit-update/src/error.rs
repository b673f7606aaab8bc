//! Why an update operation stopped. Every variant names the problem; the
//! engine's order of steps guarantees what each one leaves behind.

use std::io;

use thiserror::Error;

use crate::Slot;

/// Each variant's stable code ([`UpdateError::code`]) is its name in
/// kebab-case unless a `strum` attribute says otherwise; a bundle's or a
/// registry's error keeps its own code.
#[derive(Debug, Error, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum UpdateError {
    #[error(transparent)]
    #[strum(serialize = "boot-variables")]
    Boot(#[from] abkit_efi::BootError),
    #[error(transparent)]
    #[strum(serialize = "variable-store")]
    Store(#[from] abkit_efi::StoreError),
    #[error(transparent)]
    Disk(#[from] abkit_disk::DiskError),
    #[error(transparent)]
    #[strum(transparent)]
    Bundle(#[from] abkit_bundle::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "bundle is for {bundle:?} but this machine runs {machine:?}: refusing to install another product"
    )]
    Incompatible { bundle: String, machine: String },
    #[error(
        "bundle version {bundle} is older than the committed version {committed}; pass --allow-downgrade to install it anyway"
    )]
    Downgrade { bundle: String, committed: String },
    #[error(
        "bundle {bundle} updates only from version {min} or newer; this machine runs {current}"
    )]
    BelowMinVersion {
        bundle: String,
        min: String,
        current: String,
    },
    #[error(
        "the running slot {running} is on its trial boot and not yet marked good (the committed slot is {committed}): installing now would overwrite the last good version; run `abkit mark-good` once it is healthy, or reboot to go back"
    )]
    #[strum(serialize = "running-slot-on-trial")]
    RunningSlotNotCommitted { running: Slot, committed: String },
    #[error("bundle has no {0:?} payload")]
    MissingPayload(&'static str),
    #[error("the {payload} payload is {size} bytes but slot {slot} holds only {capacity}")]
    SlotTooSmall {
        payload: String,
        slot: Slot,
        size: u64,
        capacity: u64,
    },
    #[error("the ESP has {free} bytes free but the new loader needs {needed}")]
    EspFull { free: u64, needed: u64 },
    #[error("slot {slot} does not read back what was written: expected {expected}, read {found}")]
    ReadBackMismatch {
        slot: Slot,
        expected: String,
        found: String,
    },
    /// mark-good's check of the written system data (issue 14) found the
    /// slot's bytes on the media differ from the signed verity tree.
    #[error(
        "slot {slot}'s written system data does not match its signed verity root hash: {detail}; nothing was committed, the slot is recorded empty and the next boot returns to the committed slot"
    )]
    WrittenDataMismatch { slot: Slot, detail: String },
    #[error(
        "slot {slot} holds no version that was ever marked good ({state}): nothing to roll back to"
    )]
    NothingToRollBack { slot: Slot, state: String },
    #[error("cannot tell which slot is running: {0}")]
    UnknownRunningSlot(String),
    #[error("cannot find the boot disk: {0}")]
    NoBootDisk(String),
    #[error(transparent)]
    Fetch(#[from] abkit_fetch::FetchError),
    #[error(transparent)]
    #[strum(transparent)]
    Oci(#[from] abkit_oci::OciError),
    #[error("{0}")]
    #[strum(serialize = "boot-policy")]
    Policy(String),
    /// The boot-control record or the loader-state file is damaged, or the
    /// boot control cannot do what was asked.
    #[error("boot control: {message}")]
    BootControl { message: String },
    /// kexec activation failed (the trial is still armed for a reboot).
    #[error("kexec: {0}")]
    Kexec(String),
    #[error("refusing to commit slot {slot}: {reason}")]
    NotCommittable { slot: Slot, reason: String },
    #[error(
        "another abkit operation{} holds the lock on {}: try again when it has finished",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        path.display()
    )]
    Locked {
        path: std::path::PathBuf,
        pid: Option<u32>,
    },
    #[error(
        "the running slot's record does not say its {missing}, so this bundle for {bundle:?} cannot be checked against it; pass --allow-unrecorded to install anyway (a factory image built from raw files)"
    )]
    UnrecordedBase {
        missing: &'static str,
        bundle: String,
    },
    #[error("the {payload} payload is not usable: {reason}")]
    BadPayload {
        payload: &'static str,
        reason: String,
    },
    #[error("size arithmetic overflows: {0}")]
    SizeOverflow(String),
    /// Only with the `testing` feature: a simulated power cut.
    #[cfg(feature = "testing")]
    #[error("power cut: injected fault at mutation {0}")]
    InjectedFault(usize),
}

impl UpdateError {
    /// A stable, machine-readable name of the error (for `--json` output
    /// and scripts); documented in docs/update.md.
    pub fn code(&self) -> &'static str {
        self.into()
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> UpdateError {
        let context = context.into();
        move |source| UpdateError::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (docs/update.md, `--json`, the
    /// agent's API): this pins every one of them, and that a bundle or
    /// registry error keeps its own.
    #[test]
    fn every_code_is_pinned() {
        let s = || String::from("x");
        let io = || io::Error::other("x");
        let store = || abkit_efi::StoreError::Malformed {
            path: "v".into(),
            reason: s(),
        };
        let all = [
            (UpdateError::Boot(store().into()), "boot-variables"),
            (UpdateError::Store(store()), "variable-store"),
            (
                UpdateError::Disk(abkit_disk::DiskError::BadEspPath(s())),
                "disk",
            ),
            (
                UpdateError::Bundle(abkit_bundle::Error::NoSignature),
                "no-signature",
            ),
            (
                UpdateError::Io {
                    context: s(),
                    source: io(),
                },
                "io",
            ),
            (
                UpdateError::Incompatible {
                    bundle: s(),
                    machine: s(),
                },
                "incompatible",
            ),
            (
                UpdateError::Downgrade {
                    bundle: s(),
                    committed: s(),
                },
                "downgrade",
            ),
            (
                UpdateError::BelowMinVersion {
                    bundle: s(),
                    min: s(),
                    current: s(),
                },
                "below-min-version",
            ),
            (
                UpdateError::RunningSlotNotCommitted {
                    running: Slot::B,
                    committed: s(),
                },
                "running-slot-on-trial",
            ),
            (UpdateError::MissingPayload("system"), "missing-payload"),
            (
                UpdateError::SlotTooSmall {
                    payload: s(),
                    slot: Slot::B,
                    size: 2,
                    capacity: 1,
                },
                "slot-too-small",
            ),
            (UpdateError::EspFull { free: 0, needed: 1 }, "esp-full"),
            (
                UpdateError::ReadBackMismatch {
                    slot: Slot::B,
                    expected: s(),
                    found: s(),
                },
                "read-back-mismatch",
            ),
            (
                UpdateError::WrittenDataMismatch {
                    slot: Slot::B,
                    detail: s(),
                },
                "written-data-mismatch",
            ),
            (
                UpdateError::NothingToRollBack {
                    slot: Slot::A,
                    state: s(),
                },
                "nothing-to-roll-back",
            ),
            (UpdateError::UnknownRunningSlot(s()), "unknown-running-slot"),
            (UpdateError::NoBootDisk(s()), "no-boot-disk"),
            (
                UpdateError::Fetch(abkit_fetch::FetchError::BadUrl {
                    url: s(),
                    reason: s(),
                }),
                "fetch",
            ),
            (
                UpdateError::Oci(abkit_oci::OciError::Credentials {
                    path: s(),
                    problem: s(),
                }),
                "oci-credentials",
            ),
            (UpdateError::Policy(s()), "boot-policy"),
            (UpdateError::BootControl { message: s() }, "boot-control"),
            (UpdateError::Kexec(s()), "kexec"),
            (
                UpdateError::NotCommittable {
                    slot: Slot::B,
                    reason: s(),
                },
                "not-committable",
            ),
            (
                UpdateError::Locked {
                    path: "l".into(),
                    pid: None,
                },
                "locked",
            ),
            (
                UpdateError::UnrecordedBase {
                    missing: "product",
                    bundle: s(),
                },
                "unrecorded-base",
            ),
            (
                UpdateError::BadPayload {
                    payload: "efi",
                    reason: s(),
                },
                "bad-payload",
            ),
            (UpdateError::SizeOverflow(s()), "size-overflow"),
            #[cfg(feature = "testing")]
            (UpdateError::InjectedFault(1), "injected-fault"),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }
}
