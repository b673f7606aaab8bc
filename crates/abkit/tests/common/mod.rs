//! What the CLI test files share: a scratch folder and the `abkit` binary
//! run in it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A scratch folder for one test.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A path in the folder.
    pub fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The same, as a string for command lines.
    pub fn s(&self, name: &str) -> String {
        self.p(name).to_string_lossy().into_owned()
    }

    /// Runs `abkit ARGS` in the folder (relative paths are the folder's).
    pub fn abkit(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_abkit"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }

    /// Runs `abkit ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.abkit(args);
        assert!(
            out.status.success(),
            "abkit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
