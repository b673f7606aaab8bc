//! A test-only hook for power-cut tests: stop the engine dead at a named
//! point so a VM test can cut the power exactly there.
//!
//! It does nothing unless the environment variable `ABKIT_HALT_AT` is set
//! to the name of a checkpoint. When [`checkpoint`] is reached with that
//! name, it prints `abkit: halted at <name>` to stderr, calls `sync()` so
//! that everything written so far is on the disk (the state a real power
//! cut at that instant would leave), and then sleeps forever: the VM test
//! (`crates/abkit-vmtest`) sees the line on the serial console and kills
//! QEMU. Under emulation, timing a cut from the serial log is too coarse
//! for steps that take milliseconds; this makes the cut land at one exact
//! step, every time.
//!
//! Checkpoints (one line each at the step they name):
//!
//! | name | where |
//! | --- | --- |
//! | `install:loader-temp-written` | install: the system written and verified, the new loader written to its temporary file, not yet renamed into place |
//! | `mark-good:recorded-good` | mark-good: the running slot's record says `good`; BootOrder not yet changed |
//! | `mark-good:boot-order-written` | mark-good: BootOrder commits the running slot; the fallback loader not yet repointed |
//! | `mark-good:committed` | mark-good: BootOrder and the fallback loader changed, just before it returns |
//!
//! A machine in service never has the variable set; nothing else reads it.

use std::io::Write;

/// The environment variable naming the checkpoint to halt at.
pub const HALT_AT: &str = "ABKIT_HALT_AT";

/// Halts here forever if `ABKIT_HALT_AT` names this checkpoint (see the
/// module docs); otherwise returns at once.
pub fn checkpoint(name: &'static str) {
    if !should_halt(std::env::var_os(HALT_AT).as_deref(), name) {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "abkit: halted at {name}");
    let _ = err.flush();
    drop(err);
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn should_halt(wanted: Option<&std::ffi::OsStr>, name: &str) -> bool {
    wanted.is_some_and(|w| w == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn halts_only_at_the_named_checkpoint() {
        assert!(should_halt(
            Some(OsStr::new("mark-good:recorded-good")),
            "mark-good:recorded-good"
        ));
        assert!(!should_halt(None, "mark-good:recorded-good"));
        assert!(!should_halt(
            Some(OsStr::new("")),
            "mark-good:recorded-good"
        ));
        assert!(!should_halt(
            Some(OsStr::new("mark-good:committed")),
            "mark-good:recorded-good"
        ));
    }

    #[test]
    fn an_unset_variable_returns_at_once() {
        // The test process never sets ABKIT_HALT_AT for this name.
        checkpoint("test:never-set-anywhere");
    }
}
