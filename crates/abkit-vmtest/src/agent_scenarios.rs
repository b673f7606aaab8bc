//! Scenarios of issue 13, the agent on the machine: the test OS starts
//! `abkit agent` (its `agent` step) and the host drives the node API over
//! mutual TLS through QEMU's port forwarding, while the boot runs.
//!
//! | name | proves |
//! | --- | --- |
//! | `agent-update` | the host's `POST /v1/update` (client certificate from the operator CA) installs Y on X's machine, which reboots itself; on Y's trial boot the agent's health gate commits B (no mark-good by the init); the host reads the committed status and reboots the node through the API |
//! | `agent-health-fail` | Ybroken installed (offline); on its trial boot the agent's health check fails, the result lands in B's slot record, the agent reboots; BootOrder (unchanged) brings back X on A, committed |
//! | `agent-unauthorized` | a client without a certificate and one with a certificate of another CA are refused at the TLS handshake (their update never reaches the API); slots, BootOrder and BootNext stay as they were |
//!
//! The TLS material and the agent's settings reach the guest through QEMU's
//! fw_cfg (files under `/sys/firmware/qemu_fw_cfg/by_name/opt/abkit/`): the
//! verified root stays the one every scenario boots.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::fixtures::{X, Y, Y_BROKEN, run};
use crate::qemu::{Boot, BootSpec};
use crate::scenarios::{
    Scenario, Suite, expect_healthy, expect_os, expect_status, offline_install, offline_status,
    on_disk, status,
};
use crate::serial::Ending;
use crate::vars::BootVars;

/// The port the guest's agent serves TLS on.
const GUEST_PORT: u16 = 7443;
/// Where fw_cfg files appear in the guest.
const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name";
/// The agent's health check in the test OS root (`testos::initrd::HEALTH_CHECK`).
const HEALTH_CHECK: &str = "exec:/etc/abkit/health.d/testos-health";
/// How long the host waits for the guest's agent to answer.
const AGENT_UP: Duration = Duration::from_secs(240);

/// A throw-away PKI made with openssl: the operator CA, the node's server
/// certificate (for 127.0.0.1, where the forwarded port is), an operator
/// client, and an intruder whose certificate another CA signed.
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn make(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca("operator")?;
        pki.ca("stranger")?;
        pki.leaf(
            "node",
            "operator",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        pki.leaf(
            "operator-client",
            "operator",
            "extendedKeyUsage=clientAuth\n",
        )?;
        pki.leaf("intruder", "stranger", "extendedKeyUsage=clientAuth\n")?;
        Ok(pki)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("openssl").args(args).current_dir(&self.dir))
            .context("openssl (make deps installs it)")?;
        Ok(())
    }

    fn new_key(&self, name: &str, req: &[&str]) -> anyhow::Result<()> {
        let (key, subj) = (format!("{name}.key"), format!("/CN={name}"));
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ];
        args.extend(["-nodes", "-keyout", &key, "-subj", &subj]);
        args.extend(req);
        self.openssl(&args)
    }

    fn ca(&self, name: &str) -> anyhow::Result<()> {
        let out = format!("{name}.pem");
        self.new_key(
            name,
            &[
                "-x509",
                "-days",
                "2",
                "-out",
                &out,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )
    }

    fn leaf(&self, name: &str, ca: &str, ext: &str) -> anyhow::Result<()> {
        let (csr, ext_file) = (format!("{name}.csr"), format!("{name}.ext"));
        std::fs::write(self.dir.join(&ext_file), ext)?;
        self.new_key(name, &["-out", &csr])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &ext_file,
        ])
    }
}

/// What one curl call got: an HTTP answer, or none (curl's exit code and
/// message, e.g. a refused handshake).
#[derive(Debug, Clone)]
pub struct Answer {
    /// 0 when no HTTP answer came.
    pub code: u16,
    pub body: Value,
    pub curl_exit: i32,
    pub curl_error: String,
}

/// An API client on the host: curl to the forwarded port, trusting the
/// operator CA, with a client certificate (`operator-client`, `intruder`)
/// or none.
pub struct Client {
    port: u16,
    ca: PathBuf,
    cert: Option<(PathBuf, PathBuf)>,
}

impl Client {
    pub fn new(pki: &Pki, port: u16, cert: Option<&str>) -> Client {
        Client {
            port,
            ca: pki.file("operator.pem"),
            cert: cert.map(|c| (pki.file(&format!("{c}.pem")), pki.file(&format!("{c}.key")))),
        }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--cacert")
        .arg(&self.ca);
        if let Some((cert, key)) = &self.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        cmd.arg(format!("https://127.0.0.1:{}{path}", self.port));
        let out = cmd.output().context("curl (make deps installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        Ok(Answer {
            code: code.trim().parse().unwrap_or(0),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
            curl_exit: out.status.code().unwrap_or(-1),
            curl_error: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Asks `GET /v1/status` until the agent answers 200 and `until` holds
    /// for the answer, or the boot ended (`stop`), or `AGENT_UP` passed.
    pub fn wait_for(
        &self,
        stop: &AtomicBool,
        what: &str,
        until: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let end = Instant::now() + AGENT_UP;
        loop {
            let a = self.call("GET", "/v1/status", None)?;
            if a.code == 200 && until(&a.body) {
                return Ok(a.body);
            }
            if stop.load(Ordering::SeqCst) {
                bail!("the boot ended before {what} (last answer: {a:?})");
            }
            if Instant::now() > end {
                bail!(
                    "no {what} within {} s (last answer: {a:?})",
                    AGENT_UP.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A free TCP port on the host's loopback (QEMU binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Where the guest reads the fw_cfg file `opt/abkit/<name>`.
fn guest_file(name: &str) -> String {
    format!("{FW_CFG}/opt/abkit/{name}/raw")
}

/// A boot whose action starts the agent with settings from `agent.toml`
/// (TLS on [`GUEST_PORT`] with the node's certificate and the operator CA,
/// short health timeouts), reachable on the host at `port`.
fn agent_boot(pki: &Pki, dir: &Path, port: u16) -> anyhow::Result<BootSpec> {
    let config = format!(
        "# abkit agent settings of the VM scenarios (through fw_cfg)\n\
         [tls]\nlisten = \"0.0.0.0:{GUEST_PORT}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\
         [health]\ncheck_timeout = \"30s\"\ndeadline = \"60s\"\n",
        guest_file("tls/node.pem"),
        guest_file("tls/node.key"),
        guest_file("tls/operator.pem"),
    );
    let config_file = dir.join("agent.toml");
    std::fs::write(&config_file, config)?;
    Ok(BootSpec {
        action: format!("agent --config {}; poweroff", guest_file("agent.toml")),
        forwards: vec![(port, GUEST_PORT)],
        fw_cfg_files: vec![
            ("opt/abkit/agent.toml".into(), config_file),
            ("opt/abkit/tls/node.pem".into(), pki.file("node.pem")),
            ("opt/abkit/tls/node.key".into(), pki.file("node.key")),
            (
                "opt/abkit/tls/operator.pem".into(),
                pki.file("operator.pem"),
            ),
        ],
        ..BootSpec::default()
    })
}

/// Boots with `spec` while `drive` talks to the guest from another thread;
/// `drive` sees `stop` set once QEMU has exited.
fn boot_driven<T: Send>(
    s: &mut Scenario<'_>,
    spec: BootSpec,
    drive: impl FnOnce(&AtomicBool) -> anyhow::Result<T> + Send,
) -> anyhow::Result<(Boot, BootVars, T)> {
    let stop = AtomicBool::new(false);
    let (booted, driven) = std::thread::scope(|scope| {
        let driver = scope.spawn(|| drive(&stop));
        let booted = s.boot_with(spec);
        stop.store(true, Ordering::SeqCst);
        let driven = driver
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the host's API driver panicked")));
        (booted, driven)
    });
    let (boot, vars) = booted?;
    let driven =
        driven.with_context(|| format!("the host's API calls (log {})", boot.log.display()))?;
    Ok((boot, vars, driven))
}

/// The lines the agent logged (its stderr, echoed by the init).
fn agent_log(boot: &Boot) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read(&boot.log).with_context(|| format!("{}", boot.log.display()))?;
    Ok(String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix("testos: err: "))
        .map(str::to_string)
        .collect())
}

/// Checks the agent logged a line containing each of `parts`.
fn expect_logged(boot: &Boot, parts: &[&str]) -> anyhow::Result<()> {
    let log = agent_log(boot)?;
    ensure!(
        log.iter().any(|l| parts.iter().all(|p| l.contains(p))),
        "the agent logged no line with {parts:?} (log {})",
        boot.log.display()
    );
    Ok(())
}

fn health_done(st: &Value) -> bool {
    matches!(
        st["agent"]["health"]["phase"].as_str(),
        Some("passed" | "failed" | "error")
    )
}

pub fn agent_update(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "agent-update")?;
    let pki = Pki::make(&s.dir.join("pki"))?;
    let ours = s.vars()?.our_order();

    // 1. X (committed) serves the API; the operator asks for Y over mutual
    // TLS; the node installs it and reboots itself.
    let port = free_port()?;
    let spec = agent_boot(&pki, &s.dir, port)?;
    let (b, vars, (before, accepted, seen)) = boot_driven(&mut s, spec, |stop| {
        let op = Client::new(&pki, port, Some("operator-client"));
        let before = op.wait_for(stop, "the agent's health gate", health_done)?;
        let accepted = op.call(
            "POST",
            "/v1/update",
            Some(&json!({"source": on_disk(&Y), "reboot": true})),
        )?;
        // Follow the operation until it ends or the node goes away.
        let id = accepted.body["operation"].as_str().unwrap_or_default();
        let mut seen = Vec::new();
        while !id.is_empty() && !stop.load(Ordering::SeqCst) {
            let a = op.call("GET", &format!("/v1/operations/{id}"), None)?;
            if a.code != 200 {
                break;
            }
            let done = a.body["state"] != "running";
            seen.push(a.body);
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok((before, accepted, seen))
    })?;
    let log = b.log.display().to_string();
    expect_os(&b, &X, 'A')?;
    expect_status(&before, 'A', 'A', &[('A', X.version)]).context("GET /v1/status before")?;
    ensure!(
        before["agent"]["health"]["on_trial"] == false
            && before["agent"]["health"]["action"] == "reported",
        "X's agent gate on a committed boot: {}",
        before["agent"]["health"]
    );
    ensure!(
        accepted.code == 202 && accepted.body["operation"].is_string(),
        "POST /v1/update answered {accepted:?}"
    );
    for op in &seen {
        ensure!(
            op["state"] != "failed",
            "the update failed: {op} (log {log})"
        );
    }
    expect_logged(&b, &["installed abkit-testos 1.1.0 into slot B"])?;
    expect_logged(&b, &["rebooting (update 1.1.0 installed)"])?;
    ensure!(
        b.report.ending == Ending::Unknown,
        "the boot should end by the agent's reboot, not the init's (log {log})"
    );
    vars.expect('A', Some('B')).context("after the update")?;
    // (OVMF adds its own entries on a machine's first boot: ours must stay.)
    ensure!(vars.our_order() == ours, "our BootOrder changed");
    let order = vars.boot_order.clone();

    // 2. Y's trial boot: the init leaves the gate to the agent, whose check
    // passes: B committed. The operator sees it and reboots the node.
    let spec = agent_boot(&pki, &s.dir, port)?;
    let (b, vars, (after, reboot)) = boot_driven(&mut s, spec, |stop| {
        let op = Client::new(&pki, port, Some("operator-client"));
        let after = op.wait_for(stop, "the health gate's verdict", health_done)?;
        let reboot = op.call("POST", "/v1/reboot", None)?;
        Ok((after, reboot))
    })?;
    let log = b.log.display().to_string();
    expect_os(&b, &Y, 'B')?;
    ensure!(
        b.report.result("mark-good").is_none(),
        "the init ran mark-good on an agent boot (log {log})"
    );
    expect_status(&after, 'B', 'B', &[('A', X.version), ('B', Y.version)])
        .context("GET /v1/status after the gate")?;
    let gate = &after["agent"]["health"];
    ensure!(
        gate["on_trial"] == true
            && gate["phase"] == "passed"
            && gate["action"] == "committed"
            && gate["checks"][0]["name"] == HEALTH_CHECK
            && gate["checks"][0]["ok"] == true,
        "Y's health gate: {gate}"
    );
    ensure!(reboot.code == 202, "POST /v1/reboot answered {reboot:?}");
    expect_logged(&b, &["slot B passed its trial and is committed"])?;
    vars.expect('B', None).context("after Y's trial boot")?;
    ensure!(
        vars.boot_order.len() == order.len(),
        "BootOrder lost or gained entries: {order:?} -> {:?}",
        vars.boot_order
    );
    let st = offline_status(suite, &s.machine, 'B')?;
    let rec = &st["slots"]["B"];
    ensure!(
        rec["state"] == "good" && rec["health"]["result"] == "passed",
        "slot B's record after the gate: {rec}"
    );
    Ok(s)
}

pub fn agent_health_fail(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "agent-health-fail")?;
    offline_install(&s, &Y_BROKEN)?;
    let ours = s.vars()?.our_order();

    // 1. Ybroken's trial boot: the agent's check fails; it records why and
    // reboots, BootNext on the last good slot.
    let (b, vars) = s.boot("agent; poweroff")?;
    let log = b.log.display().to_string();
    expect_os(&b, &Y_BROKEN, 'B')?;
    ensure!(
        b.report.result("mark-good").is_none(),
        "mark-good ran on a failed trial (log {log})"
    );
    expect_logged(
        &b,
        &[
            "slot B failed its trial boot at",
            HEALTH_CHECK,
            "built to fail",
        ],
    )?;
    // X came from the factory and never booted, so it is not recorded good:
    // no BootNext for it (rollback refuses); BootOrder brings it back.
    expect_logged(
        &b,
        &["cannot arm the last good slot", "nothing-to-roll-back"],
    )?;
    ensure!(
        b.report.ending == Ending::Unknown,
        "the boot should end by the agent's reboot, not the init's (log {log})"
    );
    vars.expect('A', None).context("after the failed trial")?;
    // (OVMF adds its own entries on a machine's first boot: ours must stay.)
    ensure!(vars.our_order() == ours, "our BootOrder changed");
    let order = vars.boot_order.clone();
    let st = offline_status(suite, &s.machine, 'A')?;
    let rec = &st["slots"]["B"];
    ensure!(
        rec["state"] == "installed"
            && rec["health"]["result"] == "failed"
            && rec["health"]["failed_check"] == HEALTH_CHECK
            && rec["health"]["output_tail"]
                .as_str()
                .is_some_and(|t| t.contains("built to fail")),
        "slot B's record after the failed trial: {rec}"
    );

    // 2. X on A, committed, healthy.
    let (b, vars) = s.boot("status; poweroff")?;
    expect_healthy(&b, &X, 'A')?;
    vars.expect('A', None)?;
    ensure!(vars.boot_order == order, "BootOrder changed");
    expect_status(status(&b)?, 'A', 'A', &[('A', X.version)])?;
    Ok(s)
}

pub fn agent_unauthorized(suite: &Suite) -> anyhow::Result<Scenario<'_>> {
    let mut s = Scenario::new(suite, "agent-unauthorized")?;
    let pki = Pki::make(&s.dir.join("pki"))?;
    let before_vars = s.vars()?;
    let before = offline_status(suite, &s.machine, 'A')?;
    let port = free_port()?;
    let spec = agent_boot(&pki, &s.dir, port)?;
    let update = json!({"source": on_disk(&Y), "reboot": true});
    let (b, vars, (refused, after, reboot)) = boot_driven(&mut s, spec, |stop| {
        let op = Client::new(&pki, port, Some("operator-client"));
        op.wait_for(stop, "the agent's health gate", health_done)?;
        // Without a certificate, and with another CA's: no HTTP at all.
        let mut refused = Vec::new();
        for who in [None, Some("intruder")] {
            let c = Client::new(&pki, port, who);
            refused.push((
                who.unwrap_or("no certificate"),
                c.call("POST", "/v1/update", Some(&update))?,
            ));
        }
        // The operator's client still gets in: nothing ran.
        let after = op.call("GET", "/v1/status", None)?;
        let reboot = op.call("POST", "/v1/reboot", None)?;
        Ok((refused, after, reboot))
    })?;
    for (who, a) in &refused {
        ensure!(
            a.code == 0 && a.curl_exit != 0,
            "{who}: expected the TLS handshake to fail, got {a:?}"
        );
    }
    // The agent saw both handshakes fail, for the right reasons.
    expect_logged(&b, &["tls 10.0.2.2:", "peer sent no certificates"])?;
    expect_logged(&b, &["tls 10.0.2.2:", "UnknownIssuer"])?;
    ensure!(
        after.code == 200 && after.body["agent"]["operation"].is_null(),
        "the operator's status after the refused clients: {after:?}"
    );
    ensure!(reboot.code == 202, "POST /v1/reboot answered {reboot:?}");
    expect_os(&b, &X, 'A')?;
    // Nothing changed: VARS, and slot B as the image builder left it.
    vars.expect('A', None)?;
    ensure!(
        (vars.slot_a, vars.slot_b, vars.our_order())
            == (
                before_vars.slot_a,
                before_vars.slot_b,
                before_vars.our_order()
            ),
        "our boot entries or their order changed: {} -> {}",
        before_vars.summary(),
        vars.summary()
    );
    let st = offline_status(suite, &s.machine, 'A')?;
    ensure!(
        st["slots"]["B"] == before["slots"]["B"],
        "slot B changed: {} -> {}",
        before["slots"]["B"],
        st["slots"]["B"]
    );
    expect_status(&st, 'A', 'A', &[('A', X.version)])?;
    Ok(s)
}
