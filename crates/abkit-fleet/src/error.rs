//! Why a fleet operation failed, with a stable code for `--json` output.

use thiserror::Error;

/// Each variant's stable code ([`FleetError::code`]) is its name in
/// kebab-case unless a `strum` attribute says otherwise.
#[derive(Debug, Error, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum FleetError {
    #[error("etcd ({endpoints}): {message}")]
    Etcd { endpoints: String, message: String },
    #[error("{0}")]
    BadInput(String),
    #[error("etcd key {key} holds something that is not ours: {message}")]
    #[strum(serialize = "etcd-corrupt")]
    Corrupt { key: String, message: String },
    #[error("no rollout in etcd (start one with `abkit rollout start`)")]
    NoRollout,
    #[error(
        "no machine has registered in etcd: start the agents (with --etcd) first, so the waves can be assigned"
    )]
    NoMachines,
    #[error("rollout {id} is {state}: {message}")]
    RolloutState {
        id: String,
        state: String,
        message: String,
    },
    #[error("{what}: gave up after {tries} conflicting updates")]
    Contended { what: String, tries: u32 },
    #[error("cannot serve FleetLock on {addr}: {message}")]
    Listen { addr: String, message: String },
}

impl FleetError {
    /// A stable, machine-readable name of the error (docs/fleet.md).
    pub fn code(&self) -> &'static str {
        self.into()
    }
}

/// `Result` with this crate's error.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (docs/fleet.md, `--json`): this pins
    /// every one of them.
    #[test]
    fn every_code_is_pinned() {
        let s = || String::from("x");
        let all = [
            (
                FleetError::Etcd {
                    endpoints: s(),
                    message: s(),
                },
                "etcd",
            ),
            (FleetError::BadInput(s()), "bad-input"),
            (
                FleetError::Corrupt {
                    key: s(),
                    message: s(),
                },
                "etcd-corrupt",
            ),
            (FleetError::NoRollout, "no-rollout"),
            (FleetError::NoMachines, "no-machines"),
            (
                FleetError::RolloutState {
                    id: s(),
                    state: s(),
                    message: s(),
                },
                "rollout-state",
            ),
            (
                FleetError::Contended {
                    what: s(),
                    tries: 1,
                },
                "contended",
            ),
            (
                FleetError::Listen {
                    addr: s(),
                    message: s(),
                },
                "listen",
            ),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }
}
