//! The node API, version 1 (docs/agent.md):
//! - `GET /v1/status`: `abkit status --json` plus `"agent"`: the health
//!   gate and the current operation;
//! - `POST /v1/update` `{"source", "reboot", "allow_downgrade", "activate"}`
//!   (`activate`: `"reboot"` or `"kexec"`): `202`
//!   `{"operation": id}`, `409` while another operation runs, `400` for bad
//!   input;
//! - `GET /v1/operations/<id>`: state, progress events, result or error;
//! - `POST /v1/rollback`: arms a one-shot boot of the other slot (`200`);
//! - `POST /v1/reboot`: `202` `{"operation": id}`, then reboots.
//!
//! Failures are `{"ok": false, "error": {"code", "message"}}`.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::Agent;
use crate::http::{Request, Response};

/// The API version in every path.
pub const VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    source: String,
    #[serde(default = "yes")]
    reboot: bool,
    #[serde(default)]
    allow_downgrade: bool,
    /// `"reboot"` (default) or `"kexec"`: how the new version starts.
    #[serde(default)]
    activate: Option<String>,
}

fn yes() -> bool {
    true
}

/// Answers one request.
pub fn handle(agent: &Arc<Agent>, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/v1/status") => status(agent),
        ("POST", "/v1/update") => update(agent, &req.body),
        ("POST", "/v1/rollback") => rollback(agent),
        ("POST", "/v1/reboot") => reboot(agent),
        ("GET", p) if p.starts_with("/v1/operations/") => {
            let id = &p["/v1/operations/".len()..];
            match agent.ops.get(id) {
                Some(op) => Response::json(200, serde_json::to_value(op).unwrap_or(Value::Null)),
                None => Response::error(
                    404,
                    "no-such-operation",
                    format!("no operation {id:?} (a restarted agent forgets its operations)"),
                ),
            }
        }
        (_, "/v1/status" | "/v1/update" | "/v1/rollback" | "/v1/reboot") => Response::error(
            405,
            "method-not-allowed",
            format!("{} is not allowed on {path}", req.method),
        ),
        _ => Response::error(404, "not-found", format!("no endpoint {path}")),
    }
}

fn status(agent: &Arc<Agent>) -> Response {
    let machine = agent.with_machine(false, |m| abkit_update::status(m));
    let agent_state = json!({
        "api": VERSION,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "health": agent.health(),
        "operation": agent.ops.current(),
        "poll": agent.poll_state(),
    });
    match machine {
        Ok(s) => {
            let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
            if let Value::Object(map) = &mut v {
                map.insert("agent".into(), agent_state);
            }
            Response::json(200, v)
        }
        Err(e) => {
            let mut r = Response::error(500, &e.code, e.message);
            r.body["agent"] = agent_state;
            r
        }
    }
}

fn busy(running: String) -> Response {
    let mut r = Response::error(
        409,
        "busy",
        format!("operation {running} is running: try again when it has finished"),
    );
    r.body["operation"] = Value::String(running);
    r
}

fn update(agent: &Arc<Agent>, body: &[u8]) -> Response {
    let req: UpdateRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(
                400,
                "bad-json",
                format!(
                    "expected {{\"source\": \"<https URL or absolute path>\", \"reboot\": true|false}}: {e}"
                ),
            );
        }
    };
    if let Err((code, message)) = check_source(&req.source, agent.settings.allow_http) {
        return Response::error(400, code, message);
    }
    let kexec = match req.activate.as_deref() {
        None | Some("reboot") => false,
        Some("kexec") => true,
        Some(other) => {
            return Response::error(
                400,
                "bad-activate",
                format!("activate {other:?} is not \"reboot\" or \"kexec\""),
            );
        }
    };
    let id = match agent.ops.start("update", Some(req.source.clone())) {
        Ok(id) => id,
        Err(running) => return busy(running),
    };
    log::info!("operation {id}: update from {}", req.source);
    let a = agent.clone();
    let op = id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("update-{id}"))
        .spawn(move || a.run_update(&op, &req.source, req.reboot, req.allow_downgrade, kexec));
    if let Err(e) = spawned {
        agent.ops.finish(
            &id,
            Err(crate::ops::OpError {
                code: "io".into(),
                message: format!("cannot start a thread: {e}"),
            }),
        );
        return Response::error(500, "io", format!("cannot start a thread: {e}"));
    }
    Response::json(202, json!({"operation": id}))
}

/// An https URL, an http one only when allowed, a registry reference
/// (`oci://`, always over https: docs/oci.md), or an absolute path to
/// something that exists.
fn check_source(source: &str, allow_http: bool) -> Result<(), (&'static str, String)> {
    if source.starts_with("https://") || source.starts_with("oci://") {
        return Ok(());
    }
    if source.starts_with("http://") {
        return if allow_http {
            Ok(())
        } else {
            Err((
                "insecure-source",
                "plain http:// sources are off (allow_http in agent.toml); use https://".into(),
            ))
        };
    }
    if source.contains("://") {
        return Err((
            "bad-source",
            format!("{source:?}: only https:// URLs, oci:// references and absolute paths"),
        ));
    }
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(("bad-source", format!("{source:?} is not an absolute path")));
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Err(("bad-source", format!("{source} does not exist")));
    }
    Ok(())
}

fn rollback(agent: &Arc<Agent>) -> Response {
    let id = match agent.ops.start("rollback", None) {
        Ok(id) => id,
        Err(running) => return busy(running),
    };
    match agent.with_machine(true, |m| abkit_update::rollback(m)) {
        Ok(report) => {
            let v = serde_json::to_value(&report).unwrap_or(Value::Null);
            agent.ops.finish(&id, Ok(v.clone()));
            Response::json(200, json!({"operation": id, "result": v}))
        }
        Err(e) => {
            let status = match e.code.as_str() {
                "nothing-to-roll-back" | "locked" | "running-slot-on-trial" => 409,
                _ => 500,
            };
            let r = Response::error(status, &e.code, e.message.clone());
            agent.ops.finish(&id, Err(e));
            r
        }
    }
}

fn reboot(agent: &Arc<Agent>) -> Response {
    let id = match agent.ops.start("reboot", None) {
        Ok(id) => id,
        Err(running) => return busy(running),
    };
    let a = agent.clone();
    let op = id.clone();
    std::thread::spawn(move || {
        // Let the answer reach the client first.
        std::thread::sleep(std::time::Duration::from_millis(200));
        a.ops.finish(&op, Ok(json!({"rebooting": true})));
        a.reboot("asked through the API");
    });
    Response::json(202, json!({"operation": id}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_https_urls_or_existing_absolute_paths() {
        assert!(check_source("https://u/x.abb", false).is_ok());
        assert!(check_source("oci://registry.example/os:1.2.0", false).is_ok());
        assert_eq!(
            check_source("http://u/x.abb", false).unwrap_err().0,
            "insecure-source"
        );
        assert!(check_source("http://u/x.abb", true).is_ok());
        assert_eq!(check_source("ftp://u/x", true).unwrap_err().0, "bad-source");
        assert_eq!(check_source("x.abb", true).unwrap_err().0, "bad-source");
        assert_eq!(
            check_source("/nonexistent/x.abb", true).unwrap_err().0,
            "bad-source"
        );
        assert!(check_source("/dev/null", false).is_ok());
    }
}
