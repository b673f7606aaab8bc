//! abkit's end-to-end tests and `make demo`: the test OS (testos/) booted
//! on real firmware (OVMF under QEMU) from disk images and bundles built by
//! the `abkit` command, checked through the guest's serial console and the
//! firmware's VARS file read offline. docs/vm-tests.md explains the setup.

pub mod agent_scenarios;
pub mod debian_scenarios;
pub mod delta_scenarios;
pub mod fixtures;
pub mod http;
pub mod loader_scenarios;
pub mod oci_scenarios;
pub mod qemu;
pub mod quirk_scenarios;
pub mod root_scenarios;
pub mod scenarios;
pub mod secure_boot_scenarios;
pub mod serial;
pub mod vars;
pub mod verify_scenarios;
