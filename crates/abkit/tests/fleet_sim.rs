//! The fleet simulation (`make fleet-sim`; a quick variant runs in `make
//! test`): many offline agents — each a real `abkit agent` process on its
//! own small disk image and OVMF VARS file — a real 3-member etcd cluster
//! on 127.0.0.1 and two FleetLock servers (`abkit fleetlock serve`).
//!
//! A machine "reboots" when its agent runs the reboot command (`kill -9`
//! of the agent itself); the machine's supervisor thread then boots it
//! through the firmware model (BootNext, BootOrder: `abkit_update::firmware`)
//! and starts the agent again on the slot that model picked. How many
//! machines were down at once is measured from what the machines did:
//! from the reboot a machine's own agent started until that machine's
//! agent reported steady state again.
//!
//! Scenarios: a good release reaches every machine; a release failing on
//! 30% of machines halts in its first wave; an etcd member and a FleetLock
//! server are killed mid-rollout. Each prints a JSON report. Also here:
//! an update through the agent's API waits for a FleetLock slot.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abkit_disk::Slot;
use abkit_efi::OvmfVarsFile;
use abkit_fleet::rollout::{self, Phase, RolloutState};
use abkit_fleet::testing::{EtcdCluster, free_port};
use abkit_fleet::{Store, parse_endpoints, semaphore};
use abkit_update::firmware::simulate_boot;
use abkit_update::offline::OfflineMachine;
use serde_json::Value;

const OLD: &str = "1.0.0";
const NEW: &str = "1.1.0";

/// What a machine did, with the time since the scenario started.
#[derive(Debug, Clone)]
enum Event {
    /// Its agent rebooted it (the agent process ended by the reboot command).
    Reboot(f64),
    /// Its agent told FleetLock it is in steady state.
    Steady(f64),
}

/// One simulated machine: its files and its supervisor thread.
struct Machine {
    id: String,
    dir: PathBuf,
    events: Arc<Mutex<Vec<Event>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The scratch folder, the release and the golden disk every machine copies.
struct Fleet {
    work: common::Workdir,
    new_bundle: String,
}

impl Fleet {
    fn new() -> Fleet {
        let work = common::Workdir::new();
        work.ok(&["keygen", "--out", &work.s("release")]);
        std::fs::create_dir(work.p("keyring")).unwrap();
        std::fs::copy(work.p("release.pub"), work.p("keyring/release.pub")).unwrap();
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", work.p("vars.fd"))
            .expect("Debian's OVMF is needed: run `make deps`");
        let old = bundle(&work, OLD, 1);
        let new_bundle = bundle(&work, NEW, 2);
        work.ok(&[
            "image",
            "build",
            "--bundle",
            &old,
            "--keyring",
            &work.s("keyring"),
            "-o",
            &work.s("disk.img"),
            "--esp-size",
            "33M",
            "--system-size",
            "1M",
            "--data-size",
            "1M",
            "--seed",
            "5",
            "--ovmf-vars",
            &work.s("vars.fd"),
        ]);
        Fleet { work, new_bundle }
    }
}

/// A bundle with a small system image of `version`.
fn bundle(w: &common::Workdir, version: &str, seed: u8) -> String {
    let system = abkit_disk::fixtures::noise(256 << 10, u64::from(seed));
    w.release(version, &system, &[seed])
        .create(&format!("os-{version}.abb"))
}

/// `abkit fleetlock serve`, killed on drop.
struct FleetLockServer {
    child: Option<Child>,
    url: String,
}

impl FleetLockServer {
    fn start(etcd: &str, log: &Path) -> FleetLockServer {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_abkit"))
            .args(["fleetlock", "serve", "--etcd", etcd])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "FleetLock server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        FleetLockServer {
            child: Some(child),
            url,
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for FleetLockServer {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Options {
    nodes: usize,
    waves: &'static str,
    max_unavailable: u64,
    halt_after: u32,
    /// Share of each wave whose health check fails on the new release.
    failing_percent: usize,
    /// Kill an etcd member and a FleetLock server once this share is committed.
    chaos_at_percent: Option<u64>,
    timeout: Duration,
}

/// Boots the machine in `dir` through the firmware model: the slot it runs.
fn firmware_boot(dir: &Path) -> Slot {
    let vars = Box::new(OvmfVarsFile::open(dir.join("vars.fd")).unwrap());
    let mut m = OfflineMachine::open(&dir.join("disk.img"), vars, Slot::A).unwrap();
    simulate_boot(&mut m)
        .unwrap()
        .expect("nothing bootable")
        .slot
}

/// The committed slot's version and whether slot B was ever written.
fn disk_state(dir: &Path) -> (String, bool) {
    let vars = Box::new(OvmfVarsFile::open(dir.join("vars.fd")).unwrap());
    let mut m = OfflineMachine::open(&dir.join("disk.img"), vars, Slot::A).unwrap();
    let s = abkit_update::status(&mut m).unwrap();
    let version = |slot: Slot| {
        s.slots[&slot.letter().to_string()]
            .record
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    (version(s.committed_slot), !version(Slot::B).is_empty())
}

/// Starts machine `i`'s supervisor: boot, run the agent until it reboots
/// the machine, boot again, until `stop`.
#[allow(clippy::too_many_arguments)]
fn spawn_machine(
    fleet: &Fleet,
    scenario: &str,
    i: usize,
    id: String,
    etcd: String,
    fleetlock: Vec<String>,
    failing: bool,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Machine {
    let dir = fleet.work.p(&format!("{scenario}/{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(fleet.work.p("disk.img"))
        .arg(dir.join("disk.img"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::copy(fleet.work.p("vars.fd"), dir.join("vars.fd")).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let keyring = fleet.work.s("keyring");
    let (d, ev, machine_id) = (dir.clone(), events.clone(), id.clone());
    let thread = std::thread::spawn(move || {
        let mut boots = 0;
        while !stop.load(Ordering::SeqCst) {
            let slot = firmware_boot(&d);
            boots += 1;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_abkit"));
            cmd.arg("agent")
                .arg("--disk")
                .arg(d.join("disk.img"))
                .arg("--ovmf-vars")
                .arg(d.join("vars.fd"))
                .args(["--booted-slot", &slot.letter().to_string()])
                .arg("--socket")
                .arg(d.join("agent.sock"))
                .args(["--keyring", &keyring])
                .args(["--reboot-command", "kill -9 $PPID"])
                .args(["--etcd", &etcd, "--machine-id", &machine_id])
                .args(["--fleet-max-backoff", "2s", "--deadline", "20s"]);
            // Machines alternate which FleetLock server they ask first.
            for k in 0..fleetlock.len() {
                cmd.args(["--fleetlock-url", &fleetlock[(i + k) % fleetlock.len()]]);
            }
            if failing {
                cmd.args(["--health-check", "test \"$ABKIT_ON_TRIAL\" = 0"]);
            }
            let mut child = cmd
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let stderr = child.stderr.take().unwrap();
            let (ev2, log) = (ev.clone(), d.join(format!("agent-{boots}.log")));
            let reader = std::thread::spawn(move || {
                let mut out = std::fs::File::create(log).unwrap();
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    use std::io::Write;
                    let _ = writeln!(out, "{line}");
                    if line.contains("steady state reported") {
                        ev2.lock()
                            .unwrap()
                            .push(Event::Steady(t0.elapsed().as_secs_f64()));
                    }
                }
            });
            let status = loop {
                if stop.load(Ordering::SeqCst) {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    return;
                }
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let _ = reader.join();
            // SIGKILL is how the reboot command "reboots": anything else is
            // an agent that died by itself, which is a bug.
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                status.signal(),
                Some(9),
                "agent {machine_id} exited: {status}"
            );
            ev.lock()
                .unwrap()
                .push(Event::Reboot(t0.elapsed().as_secs_f64()));
        }
    });
    Machine {
        id,
        dir,
        events,
        thread: Some(thread),
    }
}

/// Down intervals (reboot → next steady state) of every machine, and the
/// largest number that overlap.
fn max_concurrent(machines: &[Machine]) -> usize {
    let mut edges: Vec<(f64, i32)> = Vec::new();
    for m in machines {
        let mut down: Option<f64> = None;
        for e in m.events.lock().unwrap().iter() {
            match *e {
                Event::Reboot(t) => {
                    down.get_or_insert(t);
                }
                Event::Steady(t) => {
                    if let Some(s) = down.take() {
                        edges.push((s, 1));
                        edges.push((t, -1));
                    }
                }
            }
        }
        if let Some(s) = down {
            edges.push((s, 1));
        }
    }
    // At equal times an end comes before a start.
    edges.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

fn run_scenario(fleet: &Fleet, name: &str, o: &Options) -> serde_json::Value {
    let started = Instant::now();
    let etcd = EtcdCluster::start(3);
    let endpoints = etcd.endpoints();
    let mut servers = [
        FleetLockServer::start(&endpoints, &fleet.work.p(&format!("{name}-fl1.log"))),
        FleetLockServer::start(&endpoints, &fleet.work.p(&format!("{name}-fl2.log"))),
    ];
    let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
    let store = Store::connect(&parse_endpoints(&endpoints).unwrap()).unwrap();
    let ids: Vec<String> = (0..o.nodes).map(|i| format!("m-{i:03}")).collect();
    // Which machines fail: `failing_percent` of each wave, by the same
    // stable order the rollout uses.
    let waves = rollout::parse_waves(o.waves).unwrap();
    let assignment = rollout::assign(&ids, &waves);
    let mut failing = std::collections::BTreeSet::new();
    for w in 0..waves.len() {
        let members: Vec<&String> = ids.iter().filter(|id| assignment[*id] == w).collect();
        let n = (members.len() * o.failing_percent).div_ceil(100);
        failing.extend(members.into_iter().take(n).cloned());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut machines: Vec<Machine> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            spawn_machine(
                fleet,
                name,
                i,
                id.clone(),
                endpoints.clone(),
                urls.clone(),
                failing.contains(id),
                t0,
                stop.clone(),
            )
        })
        .collect();
    // Every agent registered: then the operator starts the rollout.
    let end = Instant::now() + o.timeout;
    while rollout::machines(&store).unwrap().len() < o.nodes {
        assert!(Instant::now() < end, "{name}: agents did not register");
        std::thread::sleep(Duration::from_millis(200));
    }
    let rollout_started = Instant::now();
    fleet.work.ok(&[
        "rollout",
        "start",
        "--etcd",
        &endpoints,
        "--source",
        &fleet.new_bundle,
        "--waves",
        o.waves,
        "--max-unavailable",
        &o.max_unavailable.to_string(),
        "--halt-after",
        &o.halt_after.to_string(),
    ]);
    let mut chaos = None;
    let mut etcd = etcd;
    let status = loop {
        let s = rollout::status(&store).unwrap();
        if let Some(p) = o.chaos_at_percent
            && chaos.is_none()
            && s.committed * 100 >= p * o.nodes as u64
        {
            etcd.members[2].kill();
            servers[1].kill();
            chaos = Some(serde_json::json!({
                "killed_at_committed": s.committed,
                "etcd_member": etcd.members[2].name,
                "fleetlock_server": urls[1],
            }));
        }
        let busy = s.waves.iter().any(|w| w.installing + w.rebooting > 0);
        match s.state {
            RolloutState::Completed => break s,
            RolloutState::Halted | RolloutState::Aborted if !busy => {
                // Long enough for any agent that would (wrongly) start an
                // install after the halt to show it.
                std::thread::sleep(Duration::from_secs(2));
                break rollout::status(&store).unwrap();
            }
            _ => {}
        }
        assert!(
            Instant::now() < end,
            "{name}: the rollout did not finish: {}",
            serde_json::to_string(&s).unwrap()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let rollout_secs = rollout_started.elapsed().as_secs_f64();
    // Every machine that rebooted is back in steady state before we stop.
    let settle = Instant::now() + Duration::from_secs(30);
    while semaphore::list(&store)
        .unwrap()
        .iter()
        .any(|(_, s)| !s.holders.is_empty())
        && Instant::now() < settle
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let holders_left: Vec<String> = semaphore::list(&store)
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s.holders)
        .collect();
    stop.store(true, Ordering::SeqCst);
    for m in &mut machines {
        if let Some(t) = m.thread.take() {
            t.join().unwrap();
        }
    }
    let plan = rollout::read_plan(&store).unwrap().unwrap().0;
    let records = rollout::machines(&store).unwrap();
    // What the disks say, machine by machine.
    let mut on_new = 0;
    let mut failed_back_on_old = true;
    let mut touched_outside_first_wave = 0;
    for m in &machines {
        let (version, b_written) = disk_state(&m.dir);
        if version == NEW {
            on_new += 1;
        }
        let rec = records.iter().find(|r| r.id == m.id).unwrap();
        let in_rollout = rec.rollout.as_deref() == Some(plan.id.as_str());
        if in_rollout && rec.phase == Phase::RolledBack && version != OLD {
            failed_back_on_old = false;
        }
        if plan.wave_of(&m.id) > 0 && (b_written || in_rollout) {
            touched_outside_first_wave += 1;
        }
    }
    let report = serde_json::json!({
        "scenario": name,
        "nodes": o.nodes,
        "committed": status.committed,
        "rolled_back": status.rolled_back,
        "failed": status.failed,
        "on_new_version_by_disk": on_new,
        "max_unavailable": o.max_unavailable,
        "max_concurrent_reboots": max_concurrent(&machines),
        "halted": status.state == RolloutState::Halted,
        "state": status.state,
        "reason": status.reason,
        "failed_machines_back_on_old_version": failed_back_on_old,
        "machines_touched_outside_first_wave": touched_outside_first_wave,
        "reboot_slots_held_at_end": holders_left,
        "waves": status.waves,
        "chaos": chaos,
        "rollout_seconds": (rollout_secs * 10.0).round() / 10.0,
        "wall_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{}", serde_json::to_string(&report).unwrap());
    if let Ok(dir) = std::env::var("FLEET_SIM_REPORTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            Path::new(&dir).join(format!("{name}.json")),
            serde_json::to_string_pretty(&report).unwrap(),
        )
        .unwrap();
    }
    drop(servers);
    drop(etcd);
    report
}

fn check_good(r: &serde_json::Value, nodes: usize, k: u64) {
    assert_eq!(r["committed"], nodes as u64, "{r}");
    assert_eq!(r["on_new_version_by_disk"], nodes as u64, "{r}");
    assert_eq!(r["halted"], false, "{r}");
    let peak = r["max_concurrent_reboots"].as_u64().unwrap();
    assert!(peak >= 1 && peak <= k, "{r}");
    assert_eq!(r["reboot_slots_held_at_end"], serde_json::json!([]), "{r}");
}

fn check_halt(r: &serde_json::Value, k: u64) {
    assert_eq!(r["halted"], true, "{r}");
    assert!(r["rolled_back"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["failed_machines_back_on_old_version"], true, "{r}");
    assert_eq!(r["machines_touched_outside_first_wave"], 0, "{r}");
    assert!(r["max_concurrent_reboots"].as_u64().unwrap() <= k, "{r}");
    assert_eq!(r["reboot_slots_held_at_end"], serde_json::json!([]), "{r}");
}

fn scenarios(nodes: usize, k: u64, waves_good: &'static str, waves_bad: &'static str) {
    let fleet = Fleet::new();
    let timeout = Duration::from_secs(60 + 6 * nodes as u64);
    let good = Options {
        nodes,
        waves: waves_good,
        max_unavailable: k,
        halt_after: 1,
        failing_percent: 0,
        chaos_at_percent: None,
        timeout,
    };
    let r = run_scenario(&fleet, "good-release", &good);
    check_good(&r, nodes, k);
    let bad = Options {
        waves: waves_bad,
        failing_percent: 30,
        halt_after: if nodes >= 50 { 2 } else { 1 },
        ..good
    };
    let r = run_scenario(&fleet, "failing-release", &bad);
    check_halt(&r, k);
    let chaos = Options {
        chaos_at_percent: Some(30),
        ..good
    };
    let r = run_scenario(&fleet, "member-and-server-killed", &chaos);
    check_good(&r, nodes, k);
    assert!(!r["chaos"].is_null(), "{r}");
}

/// The quick variant, part of `make test`: 12 machines.
#[test]
fn fleet_sim_quick() {
    scenarios(12, 3, "25%,100%", "25%,100%");
}

/// The full simulation: `make fleet-sim` (FLEET_SIM_NODES, default 100).
#[test]
#[ignore = "minutes long: make fleet-sim"]
fn fleet_sim_full() {
    let nodes = std::env::var("FLEET_SIM_NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    scenarios(nodes, 5, "1%,10%,50%,100%", "10%,50%,100%");
}

/// `curl --unix-socket` against an agent; the body as JSON.
fn agent_call(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Option<Value> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "--unix-socket"])
        .arg(socket)
        .args(["-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.arg(format!("http://agent{path}")).output().ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// An update through the agent's API reboots only once FleetLock grants a
/// slot: while another machine holds the group's only slot, the install
/// finishes but the machine waits.
#[test]
fn an_api_update_reboots_only_with_a_fleetlock_slot() {
    let fleet = Fleet::new();
    let etcd = EtcdCluster::start(1);
    let server = FleetLockServer::start(&etcd.endpoints(), &fleet.work.p("fl.log"));
    let store = Store::connect(&parse_endpoints(&etcd.endpoints()).unwrap()).unwrap();
    semaphore::set_slots(&store, "default", 1).unwrap();
    semaphore::lock(&store, "default", "other", 1).unwrap();
    let w = &fleet.work;
    let reboots = w.p("reboots");
    let socket = w.p("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_abkit"))
        .args([
            "agent",
            "--disk",
            &w.s("disk.img"),
            "--ovmf-vars",
            &w.s("vars.fd"),
        ])
        .args(["--booted-slot", "A", "--keyring", &w.s("keyring")])
        .arg("--socket")
        .arg(&socket)
        .args([
            "--reboot-command",
            &format!("echo reboot >> {}", reboots.display()),
        ])
        .args(["--fleetlock-url", &server.url, "--machine-id", "m1"])
        .args(["--fleet-max-backoff", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(w.p("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while agent_call(&socket, "GET", "/v1/status", None).is_none() {
        assert!(Instant::now() < end, "the agent did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = serde_json::json!({"source": fleet.new_bundle, "reboot": true}).to_string();
    let started = agent_call(&socket, "POST", "/v1/update", Some(&body)).unwrap();
    let op = started["operation"].as_str().unwrap().to_string();
    loop {
        let o = agent_call(&socket, "GET", &format!("/v1/operations/{op}"), None).unwrap();
        if o["state"] == "succeeded" {
            break;
        }
        assert_ne!(o["state"], "failed", "{o}");
        assert!(Instant::now() < end, "the update did not finish: {o}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Installed, but the only slot is another machine's: no reboot.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!reboots.exists(), "rebooted without a FleetLock slot");
    semaphore::unlock(&store, "default", "other").unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !reboots.exists() {
        assert!(Instant::now() < end, "no reboot after the slot was freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let held = semaphore::read(&store, "default")
        .unwrap()
        .unwrap()
        .0
        .holders;
    assert_eq!(held, ["m1"]);
    let _ = agent.kill();
    let _ = agent.wait();
}

/// An agent that died mid-install (its record still says `installing`)
/// takes its step again at the next start, and the rollout completes.
#[test]
fn an_install_cut_short_is_tried_again() {
    let fleet = Fleet::new();
    let etcd = EtcdCluster::start(1);
    let endpoints = etcd.endpoints();
    let server = FleetLockServer::start(&endpoints, &fleet.work.p("fl.log"));
    let store = Store::connect(&parse_endpoints(&endpoints).unwrap()).unwrap();
    let mut rec = rollout::MachineRecord {
        id: "m-000".into(),
        group: "default".into(),
        phase: Phase::Idle,
        rollout: None,
        version: Some(OLD.into()),
        target_version: None,
        error: None,
        updated_at: 0,
    };
    rollout::write_machine(&store, &rec).unwrap();
    let plan = rollout::start(
        &store,
        &rollout::StartOptions {
            source: fleet.new_bundle.clone(),
            waves: vec![100],
            max_unavailable: 1,
            halt_after: 1,
        },
    )
    .unwrap();
    rec.phase = Phase::Installing;
    rec.rollout = Some(plan.id.clone());
    rollout::write_machine(&store, &rec).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut m = spawn_machine(
        &fleet,
        "cut",
        0,
        "m-000".into(),
        endpoints.clone(),
        vec![server.url.clone()],
        false,
        Instant::now(),
        stop.clone(),
    );
    let end = Instant::now() + Duration::from_secs(60);
    while rollout::status(&store).unwrap().state != RolloutState::Completed {
        assert!(
            Instant::now() < end,
            "{:?}",
            rollout::status(&store).unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::SeqCst);
    m.thread.take().unwrap().join().unwrap();
    let s = rollout::status(&store).unwrap();
    assert_eq!((s.committed, s.failed), (1, 0));
    assert_eq!(disk_state(&m.dir).0, NEW);
}
