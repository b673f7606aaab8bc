//! The agent's settings: `/etc/abkit/agent.toml` (every key documented in
//! docs/agent.md), overridden by command-line flags, resolved with defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use abkit_update::boot_control::BootControl;
use serde::Deserialize;

use crate::error::{AgentError, Result};

/// Where the live agent reads its configuration.
pub const DEFAULT_CONFIG: &str = "/etc/abkit/agent.toml";
/// The API's Unix socket.
pub const DEFAULT_SOCKET: &str = "/run/abkit/agent.sock";
/// Trusted bundle signers.
pub const DEFAULT_KEYRING: &str = "/etc/abkit/keyring";
/// Health checks: every executable file in it.
pub const DEFAULT_HEALTH_DIR: &str = "/etc/abkit/health.d";
/// How long one check may take.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long all checks together may take.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
/// How often the channel is checked (when `poll.url` is set).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3600);
/// The random part added to each wait, so a fleet does not ask at once.
pub const DEFAULT_POLL_JITTER: Duration = Duration::from_secs(600);

/// The configuration file, and the flags that override it: every key is
/// optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub socket: Option<PathBuf>,
    pub keyring: Option<PathBuf>,
    /// A shell command that reboots the machine (`sh -c`).
    pub reboot_command: Option<String>,
    /// Accept plain `http://` bundle URLs in `POST /v1/update` (bundles are
    /// signed either way; https hides what is downloaded).
    pub allow_http: Option<bool>,
    /// `bootnext`, `state-file` or `auto` (docs/update.md, "Boot control"):
    /// applied to the machine when the agent starts.
    pub boot_control: Option<String>,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub poll: PollConfig,
    /// FleetLock and rollouts (crate::fleet).
    #[serde(default)]
    pub fleet: crate::fleet::FleetConfig,
}

/// `[poll]`: checking a channel for newer releases (off without `url`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollConfig {
    /// The channel: the URL (or absolute path) of the bundle its publisher
    /// points at the newest release.
    pub url: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub jitter: Option<Duration>,
    /// `"HH:MM-HH:MM"` (UTC): install only then.
    pub window: Option<String>,
    /// Reboot into the new version right after installing it (default true).
    pub reboot: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `ADDR:PORT` to serve the API on over TLS; needs the other three keys.
    pub listen: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The operator CA: every client must present a certificate it signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub units: Vec<String>,
    #[serde(default)]
    pub rejoin: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    pub check_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub deadline: Option<Duration>,
}

pub(crate) fn duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `"90s"`, `"5m"`, `"1500ms"`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

impl Config {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(AgentError::io(format!("read {}", path.display())))?;
        toml::from_str(&text).map_err(|e| AgentError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// This configuration with every key that `over` sets replaced (a list
    /// replaces the whole list).
    pub fn overridden_by(self, over: Config) -> Config {
        fn list(base: Vec<String>, over: Vec<String>) -> Vec<String> {
            if over.is_empty() { base } else { over }
        }
        Config {
            socket: over.socket.or(self.socket),
            keyring: over.keyring.or(self.keyring),
            reboot_command: over.reboot_command.or(self.reboot_command),
            allow_http: over.allow_http.or(self.allow_http),
            boot_control: over.boot_control.or(self.boot_control),
            tls: TlsConfig {
                listen: over.tls.listen.or(self.tls.listen),
                cert: over.tls.cert.or(self.tls.cert),
                key: over.tls.key.or(self.tls.key),
                client_ca: over.tls.client_ca.or(self.tls.client_ca),
            },
            health: HealthConfig {
                dir: over.health.dir.or(self.health.dir),
                commands: list(self.health.commands, over.health.commands),
                units: list(self.health.units, over.health.units),
                rejoin: list(self.health.rejoin, over.health.rejoin),
                check_timeout: over.health.check_timeout.or(self.health.check_timeout),
                deadline: over.health.deadline.or(self.health.deadline),
            },
            poll: PollConfig {
                url: over.poll.url.or(self.poll.url),
                interval: over.poll.interval.or(self.poll.interval),
                jitter: over.poll.jitter.or(self.poll.jitter),
                window: over.poll.window.or(self.poll.window),
                reboot: over.poll.reboot.or(self.poll.reboot),
            },
            fleet: self.fleet.overridden_by(over.fleet),
        }
    }

    /// The settings with defaults filled in. `live`: the running system
    /// (an offline agent looks at no health directory unless told to).
    pub fn resolve(self, live: bool) -> Result<Settings> {
        let t = self.tls;
        let tls = match (t.listen, t.cert, t.key, t.client_ca) {
            (None, None, None, None) => None,
            (Some(listen), Some(cert), Some(key), Some(client_ca)) => Some(TlsSettings {
                listen,
                cert,
                key,
                client_ca,
            }),
            (None, ..) => {
                return Err(AgentError::BadOption(
                    "TLS certificates given without an address to listen on (--listen / tls.listen)"
                        .into(),
                ));
            }
            _ => {
                return Err(AgentError::BadOption(
                    "TCP needs a server certificate, its key and the operator CA that signs every \
                     client's certificate (--tls-cert, --tls-key, --client-ca): TCP without client \
                     certificates is not offered"
                        .into(),
                ));
            }
        };
        let h = self.health;
        let health = HealthSettings {
            dir: h
                .dir
                .or_else(|| live.then(|| PathBuf::from(DEFAULT_HEALTH_DIR))),
            commands: h.commands,
            units: h.units,
            rejoin: h.rejoin,
            check_timeout: h.check_timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT),
            deadline: h.deadline.unwrap_or(DEFAULT_DEADLINE),
        };
        for url in &health.rejoin {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(AgentError::BadOption(format!(
                    "rejoin probe {url:?} is not an http(s) URL"
                )));
            }
        }
        let allow_http = self.allow_http.unwrap_or(false);
        let poll = resolve_poll(self.poll, allow_http)?;
        let fleet = self.fleet.resolve(live)?;
        let boot_control = match self.boot_control.as_deref() {
            None => None,
            Some(text) => Some(BootControl::parse(text).ok_or_else(|| {
                AgentError::BadOption(format!(
                    "boot_control {text:?} is not one of bootnext, state-file, auto"
                ))
            })?),
        };
        Ok(Settings {
            fleet,
            boot_control,
            socket: self.socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            keyring: self.keyring.unwrap_or_else(|| DEFAULT_KEYRING.into()),
            reboot_command: self.reboot_command,
            allow_http,
            tls,
            health,
            poll,
        })
    }
}

/// `[poll]` checked: a usable URL, a positive interval, a window that
/// parses; none of the other keys without `url`.
fn resolve_poll(p: PollConfig, allow_http: bool) -> Result<Option<PollSettings>> {
    let Some(url) = p.url else {
        if p.interval.is_some() || p.jitter.is_some() || p.window.is_some() || p.reboot.is_some() {
            return Err(AgentError::BadOption(
                "poll settings given without a channel to poll (--poll-url / poll.url)".into(),
            ));
        }
        return Ok(None);
    };
    let ok = url.starts_with("https://")
        || (url.starts_with("http://") && allow_http)
        || (!url.contains("://") && Path::new(&url).is_absolute());
    if !ok {
        return Err(AgentError::BadOption(format!(
            "poll.url {url:?}: an https:// URL (http:// with allow_http) or an absolute path"
        )));
    }
    let interval = p.interval.unwrap_or(DEFAULT_POLL_INTERVAL);
    if interval.is_zero() {
        return Err(AgentError::BadOption(
            "poll.interval must be longer than 0".into(),
        ));
    }
    let window = match &p.window {
        Some(w) => Some(crate::poll::Window::parse(w).map_err(AgentError::BadOption)?),
        None => None,
    };
    Ok(Some(PollSettings {
        url,
        interval,
        jitter: p.jitter.unwrap_or(DEFAULT_POLL_JITTER),
        window,
        window_text: p.window,
        reboot: p.reboot.unwrap_or(true),
    }))
}

/// Everything the agent runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The boot control to set on the machine at start (`None`: keep).
    pub boot_control: Option<BootControl>,
    pub socket: PathBuf,
    pub keyring: PathBuf,
    pub reboot_command: Option<String>,
    pub allow_http: bool,
    pub tls: Option<TlsSettings>,
    pub health: HealthSettings,
    pub poll: Option<PollSettings>,
    /// A fleet member: FleetLock before trial reboots, rollouts from etcd.
    pub fleet: Option<crate::fleet::FleetSettings>,
}

#[derive(Debug, Clone)]
pub struct PollSettings {
    pub url: String,
    pub interval: Duration,
    pub jitter: Duration,
    pub window: Option<crate::poll::Window>,
    /// The window as written (for the log).
    pub window_text: Option<String>,
    pub reboot: bool,
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub listen: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone)]
pub struct HealthSettings {
    pub dir: Option<PathBuf>,
    pub commands: Vec<String>,
    pub units: Vec<String>,
    pub rejoin: Vec<String>,
    pub check_timeout: Duration,
    pub deadline: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_config_parses_and_flags_override_it() {
        let text = include_str!("../../../dist/agent.toml");
        let file: Config = toml::from_str(text).unwrap();
        let over = Config {
            health: HealthConfig {
                commands: vec!["true".into()],
                deadline: Some(Duration::from_secs(7)),
                ..Default::default()
            },
            ..Default::default()
        };
        let s = file.overridden_by(over).resolve(true).unwrap();
        assert_eq!(s.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(s.health.commands, ["true"]);
        assert_eq!(s.health.deadline, Duration::from_secs(7));
        assert_eq!(s.health.check_timeout, DEFAULT_CHECK_TIMEOUT);
        assert_eq!(s.health.dir.as_deref(), Some(Path::new(DEFAULT_HEALTH_DIR)));
        assert!(s.tls.is_none());
    }

    #[test]
    fn durations_unknown_keys_and_half_tls_are_refused_or_read() {
        let c: Config =
            toml::from_str("[health]\ndeadline = \"90s\"\ncheck_timeout = \"5\"").unwrap();
        assert_eq!(c.health.deadline, Some(Duration::from_secs(90)));
        assert_eq!(c.health.check_timeout, Some(Duration::from_secs(5)));
        assert!(toml::from_str::<Config>("sokcet = \"/x\"").is_err());
        assert!(toml::from_str::<Config>("[health]\ndeadline = \"soon\"").is_err());
        let half: Config = toml::from_str("[tls]\nlisten = \"127.0.0.1:7443\"").unwrap();
        let err = half.resolve(false).unwrap_err();
        assert!(err.to_string().contains("not offered"), "{err}");
        let offline = Config::default().resolve(false).unwrap();
        assert_eq!(offline.health.dir, None);
        assert!(offline.poll.is_none());
    }

    #[test]
    fn poll_keys_are_checked() {
        let p: Config = toml::from_str(
            "[poll]\nurl = \"https://u/stable.abb\"\ninterval = \"30m\"\nwindow = \"01:00-03:00\"",
        )
        .unwrap();
        let s = p.resolve(true).unwrap().poll.unwrap();
        assert_eq!(s.interval, Duration::from_secs(1800));
        assert_eq!(s.jitter, DEFAULT_POLL_JITTER);
        assert!(s.reboot && s.window.is_some());
        let err = |text: &str| {
            toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.resolve(true).map(|_| ()).map_err(|e| e.to_string()))
                .unwrap_err()
        };
        assert!(err("[poll]\nurl = \"http://u/x.abb\"").contains("allow_http"));
        assert!(err("[poll]\nurl = \"x.abb\"").contains("absolute path"));
        assert!(err("[poll]\ninterval = \"1h\"").contains("without a channel"));
        assert!(err("[poll]\nurl = \"/x.abb\"\ninterval = \"0s\"").contains("longer than 0"));
        assert!(err("[poll]\nurl = \"/x.abb\"\nwindow = \"late\"").contains("window"));
        assert!(err("[poll]\nurl = \"/x.abb\"\nchannel = \"beta\"").contains("unknown field"));
        let http: Config =
            toml::from_str("allow_http = true\n[poll]\nurl = \"http://u/x.abb\"").unwrap();
        assert!(http.resolve(false).unwrap().poll.is_some());
    }
}
