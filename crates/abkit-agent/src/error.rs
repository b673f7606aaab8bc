//! Why the agent could not start or do what it was asked.

use std::path::PathBuf;

use thiserror::Error;

/// Each variant's stable code ([`AgentError::code`]) is its name in
/// kebab-case unless a `strum` attribute says otherwise; an update error
/// keeps its own code.
#[derive(Debug, Error, strum::IntoStaticStr)]
#[strum(serialize_all = "kebab-case")]
pub enum AgentError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    BadOption(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "an abkit agent is running{}: use it (its API on {}) or stop it (systemctl stop abkit-agent)",
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        socket.display()
    )]
    #[strum(serialize = "agent-running")]
    Running { socket: PathBuf, pid: Option<u32> },
    #[error("cannot open the machine: {0}")]
    Machine(String),
    #[error(transparent)]
    #[strum(transparent)]
    Update(#[from] abkit_update::UpdateError),
}

impl AgentError {
    /// A stable, machine-readable name of the error (docs/agent.md).
    pub fn code(&self) -> &'static str {
        self.into()
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
        let context = context.into();
        move |source| AgentError::Io { context, source }
    }
}

/// `Result` with this crate's error.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are a public contract (docs/agent.md, `--json`, the API):
    /// this pins every one of them, and that an update error keeps its own.
    #[test]
    fn every_code_is_pinned() {
        let s = || String::from("x");
        let all = [
            (
                AgentError::Io {
                    context: s(),
                    source: std::io::Error::other("x"),
                },
                "io",
            ),
            (
                AgentError::Config {
                    path: PathBuf::from("c"),
                    message: s(),
                },
                "config",
            ),
            (AgentError::BadOption(s()), "bad-option"),
            (AgentError::Tls(s()), "tls"),
            (
                AgentError::Running {
                    socket: PathBuf::from("s"),
                    pid: None,
                },
                "agent-running",
            ),
            (AgentError::Machine(s()), "machine"),
            (
                AgentError::Update(abkit_update::UpdateError::EspFull { free: 0, needed: 1 }),
                "esp-full",
            ),
        ];
        for (err, code) in all {
            assert_eq!(err.code(), code, "{err:?}");
        }
    }
}
