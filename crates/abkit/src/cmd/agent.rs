//! `abkit agent`: the daemon (health gate and node API, in `abkit-agent`),
//! and the check the other machine commands make that no agent is running.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use abkit_agent::config::{
    Config, DEFAULT_CONFIG, DEFAULT_SOCKET, HealthConfig, PollConfig, TlsConfig,
};
use abkit_agent::fleet::FleetConfig;
use clap::Args;

use super::machine::MachineArgs;

/// The variable naming the agent's socket for the CLI's check (offline
/// machines are checked only when it is set).
pub const SOCKET_ENV: &str = "ABKIT_AGENT_SOCKET";

#[derive(Args)]
pub struct AgentArgs {
    #[command(flatten)]
    machine: MachineArgs,

    /// Settings file [default: /etc/abkit/agent.toml on the running system,
    /// if it exists; none offline]. Flags override its keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// The API's Unix socket (mode 0600) [default: /run/abkit/agent.sock].
    #[arg(long, value_name = "PATH", help_heading = "API")]
    socket: Option<PathBuf>,

    /// Also serve the API over TCP with TLS on ADDR:PORT; needs --tls-cert,
    /// --tls-key and --client-ca (clients must present a certificate).
    #[arg(long, value_name = "ADDR", help_heading = "API")]
    listen: Option<String>,

    /// The server's certificate chain (PEM).
    #[arg(long, value_name = "FILE", help_heading = "API")]
    tls_cert: Option<PathBuf>,

    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE", help_heading = "API")]
    tls_key: Option<PathBuf>,

    /// The operator CA (PEM): only clients with a certificate it signed
    /// get past the TLS handshake.
    #[arg(long, value_name = "FILE", help_heading = "API")]
    client_ca: Option<PathBuf>,

    /// Folder of trusted bundle signers (*.pub) [default: /etc/abkit/keyring].
    #[arg(long, value_name = "DIR")]
    keyring: Option<PathBuf>,

    /// Accept plain http:// bundle URLs in POST /v1/update.
    #[arg(long)]
    allow_http: bool,

    /// A health check: a shell command that must exit 0 (repeatable).
    #[arg(long, value_name = "CMD", help_heading = "Health gate")]
    health_check: Vec<String>,

    /// Every executable in DIR is a health check [default: /etc/abkit/health.d
    /// on the running system; none offline].
    #[arg(long, value_name = "DIR", help_heading = "Health gate")]
    health_dir: Option<PathBuf>,

    /// A systemd unit that must become active (repeatable): one still
    /// starting is waited for, within --health-timeout; failed, unknown or
    /// idle after the boot fails at once.
    #[arg(long, value_name = "UNIT", help_heading = "Health gate")]
    health_unit: Vec<String>,

    /// An http(s) URL that must answer 2xx (repeatable).
    #[arg(long, value_name = "URL", help_heading = "Health gate")]
    rejoin_url: Vec<String>,

    /// Time for one check ("60s", "2m", or seconds) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Health gate")]
    health_timeout: Option<Duration>,

    /// Time for all checks together [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Health gate")]
    deadline: Option<Duration>,

    /// Set the machine's boot control at start: bootnext, state-file or
    /// auto (`abkit install --help` explains them).
    #[arg(long, value_name = "MODE", value_parser = super::install::boot_control)]
    boot_control: Option<abkit_update::boot_control::BootControl>,

    /// Reboot with this shell command instead of reboot(2) (offline: the
    /// only way the agent "reboots").
    #[arg(long, value_name = "CMD", help_heading = "Health gate")]
    reboot_command: Option<String>,

    /// Poll this channel: the https URL (or absolute path) of the bundle
    /// its publisher points at the newest release; a newer version of this
    /// machine's product is installed (off by default).
    #[arg(long, value_name = "URL", help_heading = "Polling")]
    poll_url: Option<String>,

    /// Time between checks [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Polling")]
    poll_interval: Option<Duration>,

    /// Up to this much random time is added to each wait [default: 10m].
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Polling")]
    poll_jitter: Option<Duration>,

    /// Install only within this daily window, "HH:MM-HH:MM" in UTC.
    #[arg(long, value_name = "WINDOW", help_heading = "Polling")]
    poll_window: Option<String>,

    /// Install what the channel offers but do not reboot into it.
    #[arg(long, help_heading = "Polling")]
    poll_no_reboot: bool,

    /// A FleetLock server (base URL; repeat for failover): trial reboots
    /// wait for a slot (POST /v1/pre-reboot), and a slot is given back
    /// (POST /v1/steady-state) once committed or back on the old slot.
    #[arg(long = "fleetlock-url", value_name = "URL", help_heading = "Fleet")]
    fleetlock_url: Vec<String>,

    /// etcd client URLs, comma-separated: follow `abkit rollout` (install
    /// when this machine's wave opens). Needs --fleetlock-url.
    #[arg(long, value_name = "URL[,URL...]", help_heading = "Fleet")]
    etcd: Option<String>,

    /// This machine's FleetLock group [default: default].
    #[arg(long, value_name = "NAME", help_heading = "Fleet")]
    group: Option<String>,

    /// This machine's id in the fleet [default: /etc/machine-id; required offline].
    #[arg(long, value_name = "ID", help_heading = "Fleet")]
    machine_id: Option<String>,

    /// Longest pause between FleetLock retries [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration, help_heading = "Fleet")]
    fleet_max_backoff: Option<Duration>,
}

fn duration(text: &str) -> Result<Duration, String> {
    abkit_agent::config::parse_duration(text)
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let live = args.machine.disk.is_none();
    let file = match &args.config {
        Some(path) => Config::load(path)?,
        None if live && std::path::Path::new(DEFAULT_CONFIG).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG))?
        }
        None => Config::default(),
    };
    let flags = Config {
        socket: args.socket,
        keyring: args.keyring,
        reboot_command: args.reboot_command,
        allow_http: args.allow_http.then_some(true),
        boot_control: args.boot_control.map(|m| m.name().to_string()),
        tls: TlsConfig {
            listen: args.listen,
            cert: args.tls_cert,
            key: args.tls_key,
            client_ca: args.client_ca,
        },
        health: HealthConfig {
            dir: args.health_dir,
            commands: args.health_check,
            units: args.health_unit,
            rejoin: args.rejoin_url,
            check_timeout: args.health_timeout,
            deadline: args.deadline,
        },
        poll: PollConfig {
            url: args.poll_url,
            interval: args.poll_interval,
            jitter: args.poll_jitter,
            window: args.poll_window,
            reboot: args.poll_no_reboot.then_some(false),
        },
        fleet: FleetConfig {
            etcd: args.etcd.into_iter().collect(),
            fleetlock: args.fleetlock_url,
            group: args.group,
            machine_id: args.machine_id,
            max_backoff: args.fleet_max_backoff,
        },
    };
    let settings = file.overridden_by(flags).resolve(live)?;
    // Fail now, not at the first request, on a machine that cannot be opened.
    drop(args.machine.open()?);
    let machine = args.machine.clone();
    let open: abkit_agent::OpenMachine = Arc::new(move || machine.open().map_err(Into::into));
    abkit_agent::run(settings, open, live)?;
    Ok(())
}

/// Refuses to go on when an agent runs: it owns the machine then (commands
/// that change the machine go through its API). Checked on the running
/// system's socket, or on $ABKIT_AGENT_SOCKET when set (also offline).
pub fn refuse_if_agent_runs(machine: &MachineArgs) -> anyhow::Result<()> {
    let socket = match std::env::var_os(SOCKET_ENV) {
        Some(p) => PathBuf::from(p),
        None if machine.disk.is_none() => PathBuf::from(DEFAULT_SOCKET),
        None => return Ok(()),
    };
    abkit_agent::client::refuse_if_running(&socket)?;
    Ok(())
}

/// The socket of an agent that owns this machine, if one answers: the
/// running system's socket, or $ABKIT_AGENT_SOCKET when set (also offline).
pub fn running_agent_socket(machine: &MachineArgs) -> Option<PathBuf> {
    let socket = match std::env::var_os(SOCKET_ENV) {
        Some(p) => PathBuf::from(p),
        None if machine.disk.is_none() => PathBuf::from(DEFAULT_SOCKET),
        None => return None,
    };
    abkit_agent::client::running_agent(&socket).map(|_| socket)
}

/// A failure the agent reported for an operation it ran for this command,
/// with the agent's own error code.
#[derive(Debug)]
pub struct AgentReported {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for AgentReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the agent reports: {}", self.message)
    }
}

impl std::error::Error for AgentReported {}

impl AgentReported {
    /// From an answer's or an operation's `{"error": {"code", "message"}}`.
    pub fn from_body(body: &serde_json::Value) -> AgentReported {
        let error = &body["error"];
        AgentReported {
            code: error["code"].as_str().unwrap_or("agent").to_string(),
            message: error["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string()),
        }
    }
}

fn reported(body: &serde_json::Value) -> AgentReported {
    AgentReported::from_body(body)
}

/// Runs an update through the agent on `socket` (`POST /v1/update`, then
/// `GET /v1/operations/<id>` until it ends), printing the operation's
/// events as `install --json` does (with `json`) or one line per step;
/// returns the install report. The agent, not this process, writes the
/// machine: two writers never race.
pub fn update_through_agent(
    socket: &std::path::Path,
    request: &serde_json::Value,
    json: bool,
) -> anyhow::Result<serde_json::Value> {
    use abkit_agent::client::request as call;
    let (status, body) = call(socket, "POST", "/v1/update", Some(request))?;
    if status != 202 {
        return Err(reported(&body).into());
    }
    let id = body["operation"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("the agent answered 202 without an operation id: {body}"))?
        .to_string();
    if !json {
        eprintln!(
            "abkit: an agent runs on {}: it installs (operation {id})",
            socket.display()
        );
    }
    let mut shown = 0;
    loop {
        let (status, op) = call(socket, "GET", &format!("/v1/operations/{id}"), None)?;
        if status != 200 {
            return Err(reported(&op).into());
        }
        let events = op["events"].as_array().cloned().unwrap_or_default();
        for event in events.iter().skip(shown) {
            if json {
                println!("{event}");
            } else if let Some(message) = event["message"].as_str() {
                eprintln!("abkit: {message}");
            }
        }
        shown = shown.max(events.len());
        match op["state"].as_str() {
            Some("succeeded") => return Ok(op["result"].clone()),
            Some("failed") => return Err(reported(&op).into()),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
