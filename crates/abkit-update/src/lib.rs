//! The A/B update engine: the heart of abkit.
//!
//! Installs a verified bundle into the slot that is not running and asks the
//! firmware to boot it once (BootNext); `mark_good` makes the running slot
//! permanent (BootOrder) after its health checks; `rollback` boots the other
//! slot once; `status` reports all of it. Everything acts on a [`Machine`]:
//! the running Linux system ([`live`]) or a disk image offline ([`offline`]).
//! [`boot_policy`] is the only code that changes BootNext, BootOrder and
//! the entries' ACTIVE flags. [`firmware`] models how firmware picks what
//! to boot, for tests.

pub mod boot_control;
pub mod boot_policy;
mod copy;
pub mod delta;
pub mod error;
pub mod factory;
#[cfg(feature = "testing")]
pub mod fault;
#[cfg(feature = "testing")]
pub mod firmware;
pub mod halt;
pub mod image_report;
pub mod install;
pub mod kexec;
pub mod live;
pub mod lock;
pub mod machine;
pub mod mark_good;
pub mod offline;
pub mod payloads;
pub mod progress;
pub mod record;
pub mod rollback;
pub mod source;
pub mod status;
pub mod written_check;

pub use abkit_disk::Slot;
pub use error::UpdateError;
pub use install::{InstallOptions, InstallReport, Transfer, install, install_delta};
pub use machine::{EspFiles, Machine, SlotDevice};
pub use mark_good::{MarkGoodReport, mark_good, mark_good_with};
pub use progress::{Event, Reporter, Step};
pub use record::{SlotRecord, SlotState, WrittenCheck};
pub use rollback::rollback;
pub use status::{Status, status};

/// `Result` with this crate's error.
pub type Result<T, E = UpdateError> = std::result::Result<T, E>;
