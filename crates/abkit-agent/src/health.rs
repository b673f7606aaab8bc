//! The health checks: executables in a directory, shell commands, systemd
//! units that must be active, and "rejoin" probes (an http(s) URL that must
//! answer 2xx). Each runs with its own timeout, all of them within one
//! deadline; the first failure stops the run (the boot is bad already).
//!
//! A check's process runs in a process group of its own, so that a timeout
//! kills everything it started; its stdout and stderr go to one pipe, of
//! which the last [`TAIL`] bytes are kept for the log and the slot record.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use wait_timeout::ChildExt;

use crate::config::HealthSettings;

/// Bytes of a check's output that are kept.
pub const TAIL: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An executable file in the health directory.
    Exec,
    /// A shell command (`sh -c`), from the config or `--health-check`.
    Command,
    /// A systemd unit that must be active.
    Unit,
    /// An http(s) URL that must answer 2xx.
    Rejoin,
}

/// One check to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub kind: CheckKind,
    /// What it runs: a path, a command line, a unit or a URL.
    pub target: String,
}

impl Check {
    /// The name the check is reported and recorded under.
    pub fn name(&self) -> String {
        let kind = match self.kind {
            CheckKind::Exec => "exec",
            CheckKind::Command => "command",
            CheckKind::Unit => "unit",
            CheckKind::Rejoin => "rejoin",
        };
        format!("{kind}:{}", self.target)
    }
}

/// How one check went.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub kind: CheckKind,
    pub ok: bool,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The last bytes of its output (or the probe's answer or error).
    pub output_tail: String,
}

/// How the whole run went.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub passed: bool,
    /// The first failed check's name, or `deadline`.
    pub failed_check: Option<String>,
    pub output_tail: Option<String>,
}

/// The checks the settings name, in the order they run: the directory's
/// executables (by file name), commands, units, rejoin probes. A missing
/// directory holds no checks; an unreadable one is an error.
pub fn collect(h: &HealthSettings) -> std::io::Result<Vec<Check>> {
    let mut checks = Vec::new();
    if let Some(dir) = &h.dir {
        checks.extend(executables(dir)?.into_iter().map(|p| Check {
            kind: CheckKind::Exec,
            target: p.to_string_lossy().into_owned(),
        }));
    }
    let add = |kind, list: &[String]| {
        list.iter()
            .map(move |t| Check {
                kind,
                target: t.clone(),
            })
            .collect::<Vec<_>>()
    };
    checks.extend(add(CheckKind::Command, &h.commands));
    checks.extend(add(CheckKind::Unit, &h.units));
    checks.extend(add(CheckKind::Rejoin, &h.rejoin));
    Ok(checks)
}

/// Executable regular files in `dir`, sorted by name; names starting with
/// `.` or ending with `~` (editor leftovers) are skipped.
fn executables(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            found.push(entry.path());
        } else if meta.is_file() {
            log::warn!(
                "health check {} is not executable: skipped",
                entry.path().display()
            );
        }
    }
    found.sort();
    Ok(found)
}

/// Runs `checks` in order, each for at most `timeout` and all within
/// `deadline`, stopping at the first failure. `env` is added to each
/// process's environment; `seen` gets every result as it comes.
pub fn run_all(
    checks: &[Check],
    timeout: Duration,
    deadline: Duration,
    env: &[(&str, String)],
    seen: &mut dyn FnMut(&CheckResult),
) -> Outcome {
    let end = Instant::now() + deadline;
    for check in checks {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return deadline_passed(deadline);
        }
        let result = run_one(check, timeout.min(left), env);
        seen(&result);
        if !result.ok {
            if result.timed_out && timeout > left {
                // It was cut short by the deadline, not by its own timeout.
                let mut o = deadline_passed(deadline);
                o.output_tail = Some(result.output_tail);
                return o;
            }
            return Outcome {
                passed: false,
                failed_check: Some(result.name),
                output_tail: Some(result.output_tail),
            };
        }
    }
    Outcome {
        passed: true,
        failed_check: None,
        output_tail: None,
    }
}

fn deadline_passed(deadline: Duration) -> Outcome {
    Outcome {
        passed: false,
        failed_check: Some("deadline".into()),
        output_tail: Some(format!(
            "the health checks did not all pass within {}",
            humantime::format_duration(deadline)
        )),
    }
}

/// Runs one check for at most `timeout`.
pub fn run_one(check: &Check, timeout: Duration, env: &[(&str, String)]) -> CheckResult {
    let start = Instant::now();
    let (ok, timed_out, output) = match check.kind {
        CheckKind::Exec => run_process(Command::new(&check.target), timeout, env),
        CheckKind::Command => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(&check.target);
            run_process(c, timeout, env)
        }
        CheckKind::Unit => run_process(unit_check("systemctl", &check.target), timeout, env),
        CheckKind::Rejoin => probe(&check.target, timeout),
    };
    let result = CheckResult {
        name: check.name(),
        kind: check.kind,
        ok,
        timed_out,
        duration_ms: start.elapsed().as_millis() as u64,
        output_tail: output,
    };
    if result.ok {
        log::info!("health check {} passed", result.name);
    } else {
        log::warn!(
            "health check {} failed{}: {}",
            result.name,
            if timed_out { " (timed out)" } else { "" },
            result.output_tail.trim_end()
        );
    }
    result
}

/// The unit check as a shell loop (`$1` is systemctl, `$2` the unit): a
/// unit still starting is waited for (the agent starts early in the boot,
/// often before the units it checks are up), so the check's own timeout is
/// what bounds "never becomes active". Passes on `active`; fails at once on
/// `failed`, on a unit systemd does not know, and on a unit that is
/// inactive with no job queued once the boot is over (nothing will start
/// it). Prints each state it sees, for the output tail.
const UNIT_CHECK: &str = r#"
command -v "$1" >/dev/null 2>&1 || { echo "$1 not found: unit checks need systemd"; exit 127; }
last=
while :; do
  s=$("$1" is-active -- "$2" 2>&1)
  [ "$s" = "$last" ] || echo "$2: $s"
  last=$s
  case $s in
    active) exit 0 ;;
    failed) "$1" status --no-pager --lines=5 -- "$2" 2>&1 | tail -n 8; exit 3 ;;
  esac
  if [ "$("$1" show -p LoadState --value -- "$2" 2>&1)" = not-found ]; then
    echo "$2: no such unit"; exit 4
  fi
  if [ "$s" = inactive ] && [ -z "$("$1" list-jobs --no-legend -- "$2" 2>/dev/null)" ]; then
    case $("$1" is-system-running 2>/dev/null) in
      initializing|starting) ;;
      *) echo "$2: inactive and nothing queued to start it"; exit 3 ;;
    esac
  fi
  sleep 0.5
done
"#;

/// `sh -c UNIT_CHECK sh SYSTEMCTL UNIT`.
fn unit_check(systemctl: &str, unit: &str) -> Command {
    let mut c = Command::new("/bin/sh");
    c.args(["-c", UNIT_CHECK, "sh", systemctl, unit]);
    c
}

/// `(ok, timed_out, output tail)` of a process: ok is exit status 0.
fn run_process(
    mut cmd: Command,
    timeout: Duration,
    env: &[(&str, String)],
) -> (bool, bool, String) {
    let (read_end, write_end) = match pipe() {
        Ok(p) => p,
        Err(e) => return (false, false, format!("cannot make a pipe: {e}")),
    };
    let write_copy = match write_end.try_clone() {
        Ok(w) => w,
        Err(e) => return (false, false, format!("cannot make a pipe: {e}")),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::from(write_copy))
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let spawned = cmd.spawn();
    // Our copies of the pipe's write end live in `cmd`: close them, so the
    // reader sees the end when the check (and all it started) is gone.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (false, false, format!("cannot start: {e}")),
    };
    let (tx, rx) = mpsc::channel();
    let mut reader = std::fs::File::from(read_end);
    std::thread::spawn(move || {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > TAIL {
                tail.drain(..tail.len() - TAIL);
            }
        }
        let _ = tx.send(tail);
    });
    let (ok, timed_out, note) = match child.wait_timeout(timeout) {
        Ok(Some(status)) => (
            status.success(),
            false,
            (!status.success()).then(|| format!("[{status}]")),
        ),
        Ok(None) => {
            // SAFETY: kill takes no pointers; the group is the child's own.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            (
                false,
                true,
                Some(format!(
                    "[timed out after {}: killed]",
                    humantime::format_duration(timeout)
                )),
            )
        }
        Err(e) => (false, false, Some(format!("[cannot wait: {e}]"))),
    };
    // A process that left the group may still hold the pipe: do not wait
    // for it long.
    let tail = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&tail).into_owned();
    if let Some(note) = note {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&note);
    }
    (ok, timed_out, keep_tail(text))
}

fn keep_tail(mut text: String) -> String {
    if text.len() > TAIL {
        let mut cut = text.len() - TAIL;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    text
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An http(s) GET that must answer 2xx within `timeout`.
fn probe(url: &str, timeout: Duration) -> (bool, bool, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(url).call() {
        Ok(resp) => {
            let status = resp.status();
            (status.is_success(), false, format!("HTTP {status}"))
        }
        Err(ureq::Error::Timeout(t)) => (false, true, format!("timed out ({t})")),
        Err(e) => (false, false, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(c: &str) -> Check {
        Check {
            kind: CheckKind::Command,
            target: c.into(),
        }
    }

    fn run(checks: &[Check], timeout: u64, deadline: u64) -> (Outcome, Vec<CheckResult>) {
        let mut seen = Vec::new();
        let o = run_all(
            checks,
            Duration::from_millis(timeout),
            Duration::from_millis(deadline),
            &[("ABKIT_SLOT", "B".into())],
            &mut |r| seen.push(r.clone()),
        );
        (o, seen)
    }

    #[test]
    fn all_passing_checks_pass_and_see_the_environment() {
        let (o, seen) = run(&[cmd("test \"$ABKIT_SLOT\" = B"), cmd("true")], 5000, 10000);
        assert!(o.passed, "{seen:?}");
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(|r| r.ok && !r.timed_out));
    }

    #[test]
    fn the_first_failure_stops_the_run_and_keeps_its_output() {
        let (o, seen) = run(
            &[
                cmd("echo fine"),
                cmd("echo out; echo err >&2; exit 3"),
                cmd("true"),
            ],
            5000,
            10000,
        );
        assert!(!o.passed);
        assert_eq!(
            o.failed_check.as_deref(),
            Some("command:echo out; echo err >&2; exit 3")
        );
        assert_eq!(seen.len(), 2, "the third check never ran");
        let tail = o.output_tail.unwrap();
        assert!(tail.starts_with("out\nerr\n"), "{tail:?}");
        assert!(tail.contains("exit status: 3"), "{tail:?}");
    }

    #[test]
    fn a_hanging_check_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let start = Instant::now();
        let (o, seen) = run(&[cmd(&script)], 300, 10000);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert!(!o.passed);
        assert!(seen[0].timed_out);
        assert!(o.output_tail.unwrap().contains("timed out"));
        std::thread::sleep(Duration::from_millis(2500));
        assert!(
            !marker.exists(),
            "a child of the check outlived the timeout"
        );
    }

    /// A stand-in for systemctl whose answers come from files in `dir`:
    /// `state` (is-active), `load` (LoadState), `job` (list-jobs), `system`
    /// (is-system-running).
    fn fake_systemctl(dir: &Path) -> PathBuf {
        let path = dir.join("systemctl");
        let d = dir.display();
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ncase $1 in\n  is-active) cat {d}/state ;;\n  show) cat {d}/load ;;\n  \
                 list-jobs) cat {d}/job 2>/dev/null ;;\n  is-system-running) cat {d}/system ;;\n  \
                 status) echo \"demo.service - failed for a test\" ;;\nesac\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (file, text) in [
            ("state", "activating"),
            ("load", "loaded"),
            ("system", "running"),
        ] {
            std::fs::write(dir.join(file), text).unwrap();
        }
        path
    }

    fn unit_run(systemctl: &Path, timeout_ms: u64) -> (bool, bool, String, Duration) {
        let t = Instant::now();
        let (ok, timed_out, out) = run_process(
            unit_check(systemctl.to_str().unwrap(), "demo.service"),
            Duration::from_millis(timeout_ms),
            &[],
        );
        (ok, timed_out, out, t.elapsed())
    }

    #[test]
    fn a_unit_check_waits_for_a_starting_unit() {
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_systemctl(dir.path());
        let state = dir.path().join("state");
        let flip = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1200));
            std::fs::write(state, "active").unwrap();
        });
        let (ok, timed_out, out, took) = unit_run(&sc, 10_000);
        flip.join().unwrap();
        assert!(ok && !timed_out, "{out}");
        assert!(took >= Duration::from_millis(1000), "{took:?}");
        assert_eq!(out, "demo.service: activating\ndemo.service: active\n");
    }

    #[test]
    fn a_unit_that_never_becomes_active_fails_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_systemctl(dir.path());
        let (ok, timed_out, out, took) = unit_run(&sc, 1500);
        assert!(!ok && timed_out, "{out}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(out.contains("demo.service: activating"), "{out}");
    }

    #[test]
    fn a_failed_missing_or_idle_unit_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let sc = fake_systemctl(dir.path());
        let d = dir.path();
        std::fs::write(d.join("state"), "failed").unwrap();
        let (ok, timed_out, out, took) = unit_run(&sc, 10_000);
        assert!(!ok && !timed_out && took < Duration::from_secs(5), "{out}");
        assert!(out.contains("demo.service: failed") && out.contains("failed for a test"));

        std::fs::write(d.join("state"), "inactive").unwrap();
        std::fs::write(d.join("load"), "not-found").unwrap();
        let (ok, _, out, took) = unit_run(&sc, 10_000);
        assert!(!ok && took < Duration::from_secs(5), "{out}");
        assert!(out.contains("no such unit"), "{out}");

        // Inactive, nothing queued, boot over: nothing will start it.
        std::fs::write(d.join("load"), "loaded").unwrap();
        let (ok, _, out, took) = unit_run(&sc, 10_000);
        assert!(!ok && took < Duration::from_secs(5), "{out}");
        assert!(out.contains("nothing queued"), "{out}");

        // The same while the boot is still starting, or with a job queued:
        // waited for (here until the timeout).
        std::fs::write(d.join("system"), "starting").unwrap();
        let (ok, timed_out, out, _) = unit_run(&sc, 1200);
        assert!(!ok && timed_out, "{out}");
        std::fs::write(d.join("system"), "running").unwrap();
        std::fs::write(d.join("job"), "42 demo.service start waiting").unwrap();
        let (ok, timed_out, out, _) = unit_run(&sc, 1200);
        assert!(!ok && timed_out, "{out}");

        let (ok, _, out, _) = unit_run(&d.join("no-systemctl"), 10_000);
        assert!(!ok && out.contains("not found"), "{out}");
    }

    #[test]
    fn the_deadline_bounds_the_whole_run() {
        let (o, _) = run(
            &[cmd("sleep 0.3"), cmd("sleep 0.3"), cmd("sleep 5")],
            10000,
            500,
        );
        assert!(!o.passed);
        assert_eq!(o.failed_check.as_deref(), Some("deadline"));
    }

    #[test]
    fn the_directory_gives_its_executables_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mode) in [
            ("20-b", 0o755),
            ("10-a", 0o700),
            ("30-plain", 0o644),
            (".hidden", 0o755),
            ("x~", 0o755),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let h = HealthSettings {
            dir: Some(dir.path().into()),
            commands: vec!["true".into()],
            units: vec!["sshd.service".into()],
            rejoin: vec![],
            check_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(1),
        };
        let names: Vec<String> = collect(&h).unwrap().iter().map(Check::name).collect();
        let d = dir.path().display();
        assert_eq!(
            names,
            [
                format!("exec:{d}/10-a"),
                format!("exec:{d}/20-b"),
                "command:true".into(),
                "unit:sshd.service".into()
            ]
        );
        let missing = HealthSettings {
            dir: Some(dir.path().join("nope")),
            ..h
        };
        assert_eq!(collect(&missing).unwrap().len(), 2);
    }

    #[test]
    fn a_rejoin_probe_needs_a_2xx_answer() {
        use std::io::Write;
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for answer in ["204 No Content", "503 Service Unavailable"] {
                let (mut s, _) = server.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                write!(
                    s,
                    "HTTP/1.1 {answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
            }
        });
        let url = format!("http://127.0.0.1:{port}/ready");
        let check = Check {
            kind: CheckKind::Rejoin,
            target: url,
        };
        let good = run_one(&check, Duration::from_secs(5), &[]);
        assert!(good.ok, "{good:?}");
        let bad = run_one(&check, Duration::from_secs(5), &[]);
        assert!(!bad.ok);
        assert_eq!(bad.output_tail, "HTTP 503 Service Unavailable");
        t.join().unwrap();
    }
}
