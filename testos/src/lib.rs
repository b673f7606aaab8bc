//! The test OS that abkit's VM tests boot: a static `/init` (the
//! `testos-init` binary) and the code that packs it into an initrd.
//!
//! The initrd is a newc cpio archive written by [`cpio`]; [`initrd`] lays out
//! the test OS in it (init, kernel modules and the list of modules to load).

pub mod cpio;
pub mod dm;
pub mod guest;
pub mod initrd;
