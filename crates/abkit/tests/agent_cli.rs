//! `abkit agent` offline, driven by real clients: curl over the Unix socket
//! and over TLS with (and without) client certificates from a CA made here
//! with openssl. The machine is a disk image built the factory way, as in
//! update_cli.rs; "rebooting" runs a command that leaves a mark.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The scratch folder plus what this file's tests need.
struct World(common::Workdir);

impl std::ops::Deref for World {
    type Target = common::Workdir;
    fn deref(&self) -> &common::Workdir {
        &self.0
    }
}

impl World {
    fn machine(&self, slot: &str) -> Vec<String> {
        vec![
            "--disk".into(),
            self.s("disk.img"),
            "--ovmf-vars".into(),
            self.s("vars.fd"),
            "--booted-slot".into(),
            slot.into(),
        ]
    }

    /// `abkit status --json` offline (no agent running).
    fn status(&self, slot: &str) -> Value {
        let mut args = vec!["status".to_string(), "--json".into()];
        args.extend(self.machine(slot));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// A bundle whose 2 MiB system image does not compress, so that half
    /// of its bytes stop an install inside the system write.
    fn bundle(&self, version: &str, seed: u32) -> String {
        self.bundle_of("demo-os", "release", version, seed)
    }

    /// A bundle of product `compatible` signed with `key` (`KEY.key`).
    fn bundle_of(&self, compatible: &str, key: &str, version: &str, seed: u32) -> String {
        let system = abkit_disk::fixtures::noise(2 << 20, u64::from(seed));
        self.release(version, &system, &[seed as u8])
            .compatible(compatible)
            .key(&format!("{key}.key"))
            .args(&["--chunk-kib", "64"])
            .create(&format!("{compatible}-{key}-{version}.abb"))
    }

    /// Starts the agent on the disk, `slot` taken as running; its log goes
    /// to `agent-N.log`.
    fn agent(&self, slot: &str, extra: &[&str]) -> Agent {
        self.agent_env(slot, extra, &[])
    }

    fn agent_env(&self, slot: &str, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let n = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("agent-")
            })
            .count();
        let log = self.p(&format!("agent-{n}.log"));
        let socket = self.p("agent.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_abkit"));
        cmd.arg("agent")
            .args(self.machine(slot))
            .args(["--socket", socket.to_str().unwrap()])
            .args(["--keyring", &self.s("keyring")])
            .args([
                "--reboot-command",
                &format!("echo reboot >> {}", self.s("reboots")),
            ])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().unwrap();
        let agent = Agent { child, socket, log };
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((200, _)) = agent.try_call("GET", "/v1/status", None) {
                break;
            }
            assert!(Instant::now() < end, "agent did not start: {}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn reboots(&self) -> usize {
        std::fs::read_to_string(self.p("reboots"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    /// Waits (up to 10 s) until the agent ran its reboot command `n` times
    /// in all: the gate reports its outcome before it reboots.
    fn wait_reboots(&self, n: usize) -> usize {
        let end = Instant::now() + Duration::from_secs(10);
        while self.reboots() < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reboots()
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl is needed: run `make deps`");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA `name` (name.pem, name.key).
    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    /// A leaf `name` (name.pem, name.key) signed by `ca`, with extensions `ext`.
    fn leaf(&self, name: &str, ca: &str, ext: &str) {
        std::fs::write(self.p(&format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
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
            &format!("{name}.ext"),
        ]);
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on, and `127.0.0.1:PORT`.
fn free_local_port() -> (u16, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (port, format!("127.0.0.1:{port}"))
}

impl World {
    /// An agent on slot A that also serves `listen` over TLS with
    /// `server.pem`, admitting clients of the `operator` CA.
    fn tls_agent(&self, listen: &str) -> Agent {
        self.agent(
            "a",
            &[
                "--listen",
                listen,
                "--tls-cert",
                &self.s("server.pem"),
                "--tls-key",
                &self.s("server.key"),
                "--client-ca",
                &self.s("operator.pem"),
            ],
        )
    }
}

struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args` plus a status-code trailer: `(code, body)`, code
/// 0 when no HTTP answer came.
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is needed: run `make deps`");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON: {body:?}: {e}"))
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_call(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, Value)> {
        let url = format!("http://agent{path}");
        let mut args = vec!["--unix-socket", self.socket.to_str().unwrap(), "-X", method];
        if let Some(b) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        args.push(&url);
        let (code, body) = curl(&args);
        (code != 0).then(|| (code, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|| panic!("no answer to {method} {path}: {}", self.log()))
    }

    /// Asks `GET /v1/status` until `pick` finds what it waits for (`what`);
    /// returns that.
    fn status_until(&self, what: &str, pick: impl Fn(&Value) -> Option<Value>) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, st) = self.call("GET", "/v1/status", None);
            if let Some(v) = pick(&st) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "never {what}: {}\n{}",
                st["agent"],
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the health gate has finished; returns `agent.health`.
    fn health_done(&self) -> Value {
        self.status_until("finished the health gate", |st| {
            let h = &st["agent"]["health"];
            (!matches!(h["phase"].as_str(), Some("pending" | "running"))).then(|| h.clone())
        })
    }

    /// Waits until `agent.poll` satisfies `until`; returns it.
    fn poll_until(&self, what: &str, until: impl Fn(&Value) -> bool) -> Value {
        self.status_until(what, |st| {
            let p = &st["agent"]["poll"];
            until(p).then(|| p.clone())
        })
    }

    /// Waits for operation `id` to finish (or `until` to hold); returns it.
    fn operation_until(&self, id: &str, until: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, op) = self.call("GET", &format!("/v1/operations/{id}"), None);
            assert_eq!(code, 200, "{op}");
            if until(&op) {
                return op;
            }
            assert!(Instant::now() < end, "operation {id}: {op}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn operation(&self, id: &str) -> Value {
        self.operation_until(id, |op| op["state"] != "running")
    }

    fn update(&self, source: &str, reboot: bool) -> (u16, Value) {
        let body = serde_json::json!({"source": source, "reboot": reboot}).to_string();
        self.call("POST", "/v1/update", Some(&body))
    }
}

/// A disk built the factory way: slot A holds X 1.0.0 from a signed bundle,
/// and is committed.
fn world() -> World {
    let w = World(common::Workdir::new());
    w.release_key();
    let x = w.bundle("1.0.0", 1);
    w.factory_disk(&["--bundle", &x, "--keyring", &w.s("keyring")]);
    w
}

fn steps(op: &Value) -> Vec<String> {
    op["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| e["step"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_update_over_the_socket_installs_arms_the_trial_and_reboots() {
    let w = world();
    let y = w.bundle("1.1.0", 2);
    let agent = w.agent("a", &["--health-check", "true"]);
    // A committed boot: the checks run and are reported, nothing else.
    let health = agent.health_done();
    assert_eq!(health["phase"], "passed", "{health}");
    assert_eq!(health["on_trial"], false);
    assert_eq!(health["action"], "reported");
    assert_eq!(health["checks"][0]["name"], "command:true");
    assert_eq!(w.reboots(), 0);

    // Socket: mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Bad input: coded 400s, unknown paths 404, and nothing changes.
    for (body, code) in [
        ("{not json", "bad-json"),
        (r#"{"source": "os.abb"}"#, "bad-source"),
        (r#"{"source": "/nonexistent/os.abb"}"#, "bad-source"),
        (
            r#"{"source": "http://127.0.0.1:1/os.abb"}"#,
            "insecure-source",
        ),
        (r#"{"source": "/dev/null", "rebot": true}"#, "bad-json"),
        (
            r#"{"source": "/dev/null", "activate": "teleport"}"#,
            "bad-activate",
        ),
    ] {
        let (status, v) = agent.call("POST", "/v1/update", Some(body));
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}: {v}"
        );
        assert_eq!(v["ok"], false);
    }
    assert_eq!(agent.call("GET", "/v1/nope", None).0, 404);
    assert_eq!(agent.call("GET", "/v1/update", None).0, 405);
    assert_eq!(agent.call("GET", "/v1/operations/xyz", None).0, 404);

    // While the agent runs, the CLI refuses to change the machine around it.
    let mut args = vec![
        "install".to_string(),
        y.clone(),
        "--keyring".into(),
        w.s("keyring"),
        "--json".into(),
    ];
    args.extend(w.machine("a"));
    let out = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args(&args)
        .env("ABKIT_AGENT_SOCKET", &agent.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(err["error"]["code"], "agent-running", "{err}");
    let pid = agent.child.id();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("an abkit agent is running (pid {pid})")),
        "{err}"
    );

    let (status, v) = agent.update(&y, true);
    assert_eq!(status, 202, "{v}");
    let op = agent.operation(v["operation"].as_str().unwrap());
    assert_eq!(op["state"], "succeeded", "{op}\n{}", agent.log());
    assert_eq!(op["kind"], "update");
    let s = steps(&op);
    assert_eq!(s.first().map(String::as_str), Some("verify"), "{s:?}");
    assert_eq!(s.last().map(String::as_str), Some("boot-next"), "{s:?}");
    assert!(
        op["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "progress")
    );
    assert_eq!(op["result"]["target_slot"], "B");
    assert_eq!(op["result"]["version"], "1.1.0");

    let (code, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(code, 200);
    assert_eq!(st["trial_pending"], true);
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["slots"]["B"]["version"], "1.1.0");
    assert_eq!(st["slots"]["A"]["health"]["result"], "passed");
    assert_eq!(st["agent"]["operation"]["id"], op["id"]);
    assert_eq!(st["agent"]["api"], 1);
    assert_eq!(w.reboots(), 1, "reboot: true reboots once the update is in");
}

/// With an agent running, `abkit install` and `abkit rollback` become its
/// operations: the CLI follows them and shows their events and errors
/// (with the agent's codes); options the API cannot carry are refused.
#[test]
fn the_cli_goes_through_a_running_agent() {
    let w = world();
    let y = w.bundle("1.1.0", 2);
    let agent = w.agent("a", &["--health-check", "true"]);
    agent.health_done();
    let cli = |words: &[&str]| {
        let mut args: Vec<String> = words.iter().map(|s| s.to_string()).collect();
        args.extend(w.machine("a"));
        Command::new(env!("CARGO_BIN_EXE_abkit"))
            .args(&args)
            .env("ABKIT_AGENT_SOCKET", &agent.socket)
            .output()
            .unwrap()
    };
    let lines = |out: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(json)
            .collect()
    };

    let out = cli(&["install", &y, "--no-reboot", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let events = lines(&out);
    assert!(
        events.iter().any(|e| e["event"] == "progress"),
        "{events:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{done}");
    assert_eq!(done["report"]["target_slot"], "B");
    assert_eq!(done["report"]["version"], "1.1.0");
    // The agent did it (its operation), and rebooted nothing.
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["agent"]["operation"]["kind"], "update", "{st}");
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["trial_pending"], true);
    assert_eq!(w.reboots(), 0);

    // The agent's refusal comes back with its code.
    std::fs::write(w.p("garbage.abb"), b"this is not a bundle").unwrap();
    let garbage = w.s("garbage.abb");
    let out = cli(&["install", &garbage, "--no-reboot", "--json"]);
    assert!(!out.status.success());
    let err = lines(&out).pop().unwrap();
    assert_eq!(err["error"]["code"], "truncated", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the agent reports"),
        "{err}"
    );
    let out = cli(&["rollback", "--json"]);
    assert!(!out.status.success());
    let err = json(&String::from_utf8_lossy(&out.stdout));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the agent reports"),
        "{err}"
    );

    // What the API cannot carry is refused, not dropped.
    for (args, named) in [
        (["install", &y, "--no-delta", "--json"], "--no-delta"),
        (["install", "-", "--no-reboot", "--json"], "standard input"),
    ] {
        let out = cli(&args);
        assert!(!out.status.success());
        let err = json(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(err["error"]["code"], "agent-running", "{err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(named),
            "{err}"
        );
    }
    assert_eq!(w.reboots(), 0);
}

#[test]
fn mutual_tls_admits_only_clients_of_the_operator_ca() {
    let w = world();
    w.ca("operator");
    w.ca("stranger");
    w.leaf(
        "server",
        "operator",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    w.leaf("client", "operator", "extendedKeyUsage=clientAuth\n");
    w.leaf("intruder", "stranger", "extendedKeyUsage=clientAuth\n");
    let (port, listen) = free_local_port();

    // TCP without client certificates is not offered.
    let mut args = vec![
        "agent".to_string(),
        "--socket".into(),
        w.s("x.sock"),
        "--listen".into(),
        listen.clone(),
    ];
    args.extend([
        "--tls-cert".into(),
        w.s("server.pem"),
        "--tls-key".into(),
        w.s("server.key"),
    ]);
    args.extend(w.machine("a"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = w.abkit(&args);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("TCP without client certificates is not offered")
    );

    let agent = w.tls_agent(&listen);
    agent.health_done();
    let y = w.bundle("1.1.0", 2);
    let body = serde_json::json!({"source": y, "reboot": false}).to_string();
    let url = format!("https://127.0.0.1:{port}/v1/update");
    let tls = |cert: Option<&str>| -> (u16, String) {
        let (c, k) = cert
            .map(|n| (w.s(&format!("{n}.pem")), w.s(&format!("{n}.key"))))
            .unzip();
        let mut a = vec!["--cacert".to_string(), w.s("operator.pem")];
        if let (Some(c), Some(k)) = (c, k) {
            a.extend(["--cert".into(), c, "--key".into(), k]);
        }
        a.extend([
            "-X".into(),
            "POST".into(),
            "--data-binary".into(),
            body.clone(),
            url.clone(),
        ]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        curl(&a)
    };
    // No certificate, or one from another CA: refused in the handshake, no
    // HTTP answer, nothing installed.
    assert_eq!(tls(None).0, 0);
    assert_eq!(tls(Some("intruder")).0, 0);
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["agent"]["operation"], Value::Null, "{st}");
    assert_ne!(st["slots"]["B"]["state"], "installed");

    let (code, body) = tls(Some("client"));
    assert_eq!(code, 202, "{body}\n{}", agent.log());
    let op = agent.operation(json(&body)["operation"].as_str().unwrap());
    assert_eq!(op["state"], "succeeded", "{op}");
    let (code, st) = curl(&[
        "--cacert",
        &w.s("operator.pem"),
        "--cert",
        &w.s("client.pem"),
        "--key",
        &w.s("client.key"),
        &format!("https://127.0.0.1:{port}/v1/status"),
    ]);
    assert_eq!(code, 200);
    let st = json(&st);
    assert_eq!(st["trial_pending"], true);
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(w.reboots(), 0, "reboot: false");
}

/// A TCP peer that sends the start of a TLS ClientHello one byte every
/// 2 s (a timeout per read never fires). Returns how long the agent kept
/// the connection open, `None` if still open after 30 s.
fn drip_tls_hello(addr: &str) -> Option<Duration> {
    use std::io::Read;
    // Record header (handshake, TLS 1.0, 512 bytes), ClientHello of 508.
    let mut hello = [0u8; 64];
    hello[..11].copy_from_slice(&[0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3]);
    let started = Instant::now();
    let mut peer = std::net::TcpStream::connect(addr).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for byte in hello {
        if peer.write_all(&[byte]).is_err() {
            return Some(started.elapsed());
        }
        match peer.read(&mut [0u8; 256]) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // An alert, the end of the stream, or a reset: cut off.
            _ => return Some(started.elapsed()),
        }
        if started.elapsed() > Duration::from_secs(30) {
            return None;
        }
    }
    None
}

#[test]
fn tcp_peers_that_drip_bytes_are_cut_off_and_never_crowd_out_the_local_socket() {
    let w = world();
    w.ca("operator");
    w.leaf(
        "server",
        "operator",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    let (_, listen) = free_local_port();
    let agent = w.tls_agent(&listen);
    agent.health_done();
    // More dripping peers than a listener serves at once (32).
    let peers: Vec<_> = (0..40)
        .map(|_| {
            let addr = listen.clone();
            std::thread::spawn(move || drip_tls_hello(&addr))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // The local socket has slots of its own: it answers while TCP is full.
    let (code, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(code, 200, "{st}");
    // Each peer is cut off when its 10 s for handshake and request are
    // up, though it never paused for 10 s.
    for peer in peers {
        assert!(
            peer.join().unwrap().is_some(),
            "a peer dripping bytes kept its connection for 30 s\n{}",
            agent.log()
        );
    }
    let (code, _) = agent.call("GET", "/v1/status", None);
    assert_eq!(code, 200);
}

#[test]
fn a_second_update_while_one_runs_gets_409() {
    let w = world();
    let y = w.bundle("1.1.0", 2);
    let agent = w.agent("a", &[]);
    agent.health_done();
    let pipe = w.p("slow.abb");
    // The FIFO must exist before the request names it.
    common::mkfifo(&pipe);
    let (code, v) = agent.update(pipe.to_str().unwrap(), false);
    assert_eq!(code, 202, "{v}");
    let first = v["operation"].as_str().unwrap().to_string();
    for path in ["/v1/update", "/v1/rollback", "/v1/reboot"] {
        let body = serde_json::json!({"source": y}).to_string();
        let (code, v) = agent.call("POST", path, Some(&body));
        assert_eq!(code, 409, "{path}: {v}");
        assert_eq!(v["error"]["code"], "busy");
        assert_eq!(v["operation"], first.as_str());
    }
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["agent"]["operation"]["state"], "running");
    // Feed the bundle: the first update completes, then another is taken.
    let mut writer = std::fs::File::options().write(true).open(&pipe).unwrap();
    writer.write_all(&std::fs::read(&y).unwrap()).unwrap();
    drop(writer);
    let op = agent.operation(&first);
    assert_eq!(op["state"], "succeeded", "{op}\n{}", agent.log());
    let (code, v) = agent.update(&y, false);
    assert_eq!(code, 202, "{v}");
    assert_eq!(
        agent.operation(v["operation"].as_str().unwrap())["state"],
        "succeeded"
    );
    assert_eq!(w.reboots(), 0);
}

#[test]
fn an_agent_killed_mid_install_restarts_with_the_target_empty_and_takes_a_new_update() {
    let w = world();
    let y = w.bundle("1.1.0", 2);
    let mut agent = w.agent("a", &[]);
    agent.health_done();
    let pipe = w.p("slow.abb");
    common::mkfifo(&pipe);
    let (code, v) = agent.update(pipe.to_str().unwrap(), false);
    assert_eq!(code, 202, "{v}");
    let id = v["operation"].as_str().unwrap().to_string();
    let bytes = std::fs::read(&y).unwrap();
    let mut writer = std::fs::File::options().write(true).open(&pipe).unwrap();
    writer.write_all(&bytes[..bytes.len() / 2]).unwrap();
    agent.operation_until(&id, |op| steps(op).iter().any(|s| s == "write-system"));
    // SIGKILL: no chance to clean up.
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    drop(writer);
    drop(agent);

    let agent = w.agent("a", &[]);
    agent.health_done();
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["slots"]["B"]["state"], "empty", "{st}");
    assert_eq!(st["trial_pending"], false);
    assert_eq!(st["agent"]["operation"], Value::Null);
    let (code, v) = agent.update(&y, false);
    assert_eq!(code, 202, "{v}");
    let op = agent.operation(v["operation"].as_str().unwrap());
    assert_eq!(op["state"], "succeeded", "{op}\n{}", agent.log());
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["trial_pending"], true);
}

#[test]
fn the_health_gate_reboots_a_failing_or_hanging_trial_and_commits_a_passing_one() {
    let w = world();
    let y = w.bundle("1.1.0", 2);
    let mut install = vec![
        "install".to_string(),
        y.clone(),
        "--keyring".into(),
        w.s("keyring"),
    ];
    install.extend(w.machine("a"));
    let install: Vec<&str> = install.iter().map(String::as_str).collect();
    w.ok(&install);
    // From here on slot B is taken as booted: its trial boot (the stale
    // BootNext is left; mark-good clears it).

    // A failing check: recorded, rebooted, not committed.
    {
        let agent = w.agent(
            "b",
            &[
                "--health-check",
                "true",
                "--health-check",
                "echo boom >&2; exit 1",
            ],
        );
        let h = agent.health_done();
        assert_eq!(h["phase"], "failed", "{h}");
        assert_eq!(h["on_trial"], true);
        assert_eq!(h["action"], "reboot");
        assert_eq!(h["failed_check"], "command:echo boom >&2; exit 1");
        assert_eq!(h["checks"].as_array().unwrap().len(), 2);
        assert_eq!(w.wait_reboots(1), 1);
    }
    assert_eq!(w.reboots(), 1);
    let st = w.status("b");
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(st["on_trial"], true);
    assert_eq!(st["slots"]["B"]["state"], "installed");
    let health = &st["slots"]["B"]["health"];
    assert_eq!(health["result"], "failed");
    assert_eq!(health["failed_check"], "command:echo boom >&2; exit 1");
    assert!(
        health["output_tail"]
            .as_str()
            .unwrap()
            .starts_with("boom\n"),
        "{health}"
    );

    // A hanging check: killed at its timeout, the same outcome.
    let started = Instant::now();
    {
        let agent = w.agent(
            "b",
            &["--health-check", "sleep 60", "--health-timeout", "1s"],
        );
        let h = agent.health_done();
        assert_eq!(h["phase"], "failed", "{h}");
        assert_eq!(h["checks"][0]["timed_out"], true);
        assert_eq!(w.wait_reboots(2), 2);
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(w.reboots(), 2);
    let st = w.status("b");
    assert_eq!(st["committed_slot"], "A");
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(
        st["slots"]["B"]["health"]["failed_check"],
        "command:sleep 60"
    );
    assert!(
        st["slots"]["B"]["health"]["output_tail"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );

    // The deadline bounds them all.
    {
        let agent = w.agent(
            "b",
            &[
                "--health-check",
                "sleep 0.4",
                "--health-check",
                "sleep 0.4",
                "--health-check",
                "sleep 0.4",
                "--deadline",
                "700ms",
            ],
        );
        assert_eq!(agent.health_done()["failed_check"], "deadline");
        assert_eq!(w.wait_reboots(3), 3);
    }
    assert_eq!(w.reboots(), 3);
    assert_eq!(
        w.status("b")["slots"]["B"]["health"]["failed_check"],
        "deadline"
    );

    // Passing checks commit the trial, without a reboot.
    {
        let agent = w.agent(
            "b",
            &["--health-check", "test \"$ABKIT_SLOT$ABKIT_ON_TRIAL\" = B1"],
        );
        let h = agent.health_done();
        assert_eq!(h["phase"], "passed", "{h}\n{}", agent.log());
        assert_eq!(h["action"], "committed");
    }
    assert_eq!(w.reboots(), 3);
    let st = w.status("b");
    assert_eq!(st["committed_slot"], "B");
    assert_eq!(st["on_trial"], false);
    assert_eq!(st["slots"]["B"]["state"], "good");
    assert_eq!(st["slots"]["B"]["health"]["result"], "passed");
    assert_eq!(st["slots"]["B"]["health"].get("failed_check"), None);
}

#[test]
fn the_agent_tells_systemd_it_is_ready_how_health_went_and_pings_the_watchdog() {
    let w = world();
    let notify = std::os::unix::net::UnixDatagram::bind(w.p("notify")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _agent = w.agent_env(
        "a",
        &["--health-check", "true"],
        &[
            ("NOTIFY_SOCKET", &w.s("notify")),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // Until two watchdog pings and the health result have arrived (their
    // order depends on how fast the checks run).
    let healthy = |got: &[String]| got.iter().any(|m| m == "STATUS=slot A committed, healthy");
    while got.iter().filter(|m: &&String| *m == "WATCHDOG=1").count() < 2 || !healthy(&got) {
        let n = notify.recv(&mut buf).expect("no more notifications");
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(got[0].starts_with("READY=1\nSTATUS="), "{got:?}");
    assert!(
        got.iter().any(|m| m == "STATUS=slot A committed, healthy"),
        "{got:?}"
    );
}

/// `python3 -m http.server` on a free port of 127.0.0.1, serving `dir`.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn start(dir: &std::path::Path) -> HttpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The interpreter itself, not a wrapper (a pyenv shim) that would
        // leave the server running when the child is killed.
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed for the polling tests");
        let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let child = Command::new(python)
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed for the polling tests");
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "the HTTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer { child, port }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts `bundle` on the channel at once (rename: the server never serves
/// half a file).
fn publish(channel: &std::path::Path, bundle: &str) {
    let tmp = channel.join(".latest.abb.new");
    std::fs::copy(bundle, &tmp).unwrap();
    std::fs::rename(&tmp, channel.join("latest.abb")).unwrap();
}

#[test]
fn polling_installs_only_a_newer_signed_version_of_this_product_and_only_once() {
    let w = world();
    w.ok(&["keygen", "--out", &w.s("stranger")]);
    let older = w.bundle("0.9.0", 4);
    let other = w.bundle_of("other-os", "release", "2.0.0", 5);
    let unsigned = w.bundle_of("demo-os", "stranger", "2.0.0", 6);
    let newer = w.bundle("1.1.0", 2);
    let channel = w.p("channel");
    std::fs::create_dir(&channel).unwrap();
    publish(&channel, &older);
    let server = HttpServer::start(&channel);
    let url = format!("http://127.0.0.1:{}/latest.abb", server.port);
    let before = w.status("a")["slots"]["B"].clone();
    let agent = w.agent(
        "a",
        &[
            "--health-check",
            "true",
            "--allow-http",
            "--poll-url",
            &url,
            "--poll-interval",
            "1s",
            "--poll-jitter",
            "0s",
        ],
    );
    let skipped = |why: &'static str| {
        move |p: &Value| {
            p["outcome"] == "skip" && p["detail"].as_str().is_some_and(|d| d.contains(why))
        }
    };
    let p = agent.poll_until("an older version skipped", skipped("up to date"));
    assert_eq!(p["url"], url.as_str());
    assert_eq!(p["offered"], "0.9.0");
    publish(&channel, &other);
    agent.poll_until(
        "another product skipped",
        skipped("this machine runs demo-os"),
    );
    let failed = |code: &'static str| {
        move |p: &Value| {
            p["outcome"] == "error" && p["detail"].as_str().is_some_and(|d| d.starts_with(code))
        }
    };
    publish(&channel, &unsigned);
    agent.poll_until(
        "an unknown signer refused",
        failed("[no-trusted-signature]"),
    );
    std::fs::write(w.p("garbage.abb"), "<html>not a bundle</html>\n".repeat(40)).unwrap();
    publish(&channel, &w.s("garbage.abb"));
    agent.poll_until("garbage refused", failed("[bad-magic]"));
    std::fs::remove_file(channel.join("latest.abb")).unwrap();
    let p = agent.poll_until("a missing file reported", |p| {
        p["outcome"] == "error"
            && !p["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("[bad-magic]")
    });
    assert!(p["detail"].as_str().unwrap().contains("404"), "{p}");
    // Nothing of that touched the machine.
    assert_eq!(w.reboots(), 0);
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["slots"]["B"], before, "{st}");
    assert_eq!(st["trial_pending"], false);

    // The newer release: installed once, with a reboot.
    publish(&channel, &newer);
    let p = agent.poll_until("the newer version installed", |p| p["outcome"] == "install");
    assert_eq!(p["offered"], "1.1.0");
    let end = Instant::now() + Duration::from_secs(60);
    while w.reboots() == 0 {
        assert!(Instant::now() < end, "no reboot: {}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert_eq!(st["slots"]["B"]["version"], "1.1.0", "{st}");
    assert_eq!(st["slots"]["B"]["state"], "installed");
    assert_eq!(st["trial_pending"], true);
    assert_eq!(st["agent"]["operation"]["kind"], "update");
    assert_eq!(st["agent"]["operation"]["source"], url.as_str());
    assert_eq!(st["agent"]["operation"]["state"], "succeeded");
    // The next checks see it waiting for its trial: no second install.
    agent.poll_until(
        "the installed version skipped",
        skipped("waits for its trial"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(w.reboots(), 1, "{}", agent.log());
}

#[test]
fn polling_waits_for_its_maintenance_window() {
    let w = world();
    // A one-minute window twelve hours from now (UTC).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let start = (now / 60 + 12 * 60) % (24 * 60);
    let end = (start + 1) % (24 * 60);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    let agent = w.agent(
        "a",
        &[
            "--health-check",
            "true",
            "--allow-http",
            "--poll-url",
            "http://127.0.0.1:1/latest.abb",
            "--poll-interval",
            "1s",
            "--poll-jitter",
            "0s",
            "--poll-window",
            &window,
        ],
    );
    agent.health_done();
    let p = agent.poll_until("a check scheduled at the window", |p| {
        p["next_check_at"]
            .as_u64()
            .is_some_and(|t| t >= now + 11 * 3600)
    });
    assert!(p["last_check_at"].is_null(), "{p}");
    assert!(agent.log().contains("outside the maintenance window"));
    std::thread::sleep(Duration::from_millis(1500));
    let (_, st) = agent.call("GET", "/v1/status", None);
    assert!(st["agent"]["poll"]["last_check_at"].is_null(), "{st}");
}
