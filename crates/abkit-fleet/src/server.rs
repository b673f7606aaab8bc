//! `abkit fleetlock serve`: a FleetLock server (the protocol Zincati
//! speaks) whose only state is the semaphores in etcd ([`crate::semaphore`]).
//!
//! `POST /v1/pre-reboot` locks a slot, `POST /v1/steady-state` unlocks it;
//! both need the header `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": "...", "group": "..."}}`. `200` means done;
//! any other status carries `{"kind": "...", "value": "..."}` (kinds are a
//! small fixed set, as the protocol asks) and the client waits and
//! retries. Like Zincati, clients may send no Content-Type. `GET /v1/groups` lists the semaphores.

use std::io::Read;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tiny_http::{Header, Method, Request, Response, Server};

use crate::error::{FleetError, Result};
use crate::semaphore::{self, LockOutcome};
use crate::store::Store;

/// Request bodies are tiny; anything bigger is refused unread.
const MAX_BODY: u64 = 16 << 10;

/// What the server runs with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Slots of a group the first time it is seen (etcd keeps the count
    /// after that; `abkit fleetlock slots` and `rollout start` change it).
    pub default_slots: u64,
    /// Threads answering requests.
    pub threads: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    client_params: ClientParams,
}

#[derive(Debug, Deserialize, Serialize)]
pub struct ClientParams {
    pub id: String,
    pub group: String,
}

/// A running server: its address, and a way to stop it (tests).
pub struct FleetLockServer {
    server: Arc<Server>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl FleetLockServer {
    /// Binds `addr` (`HOST:PORT`; port 0 picks a free one) and starts serving.
    pub fn start(store: Store, addr: &str, opts: ServeOptions) -> Result<FleetLockServer> {
        let server = Server::http(addr).map_err(|e| FleetError::Listen {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
        let server = Arc::new(server);
        let threads = (0..opts.threads.max(1))
            .map(|i| {
                let (server, store, opts) = (server.clone(), store.clone(), opts.clone());
                std::thread::Builder::new()
                    .name(format!("fleetlock-{i}"))
                    .spawn(move || {
                        while let Ok(req) = server.recv() {
                            handle(&store, &opts, req);
                        }
                    })
                    .expect("spawn a FleetLock thread")
            })
            .collect();
        Ok(FleetLockServer { server, threads })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server
            .server_addr()
            .to_ip()
            .expect("FleetLock listens on TCP")
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }

    /// Stops accepting and waits for the threads.
    pub fn stop(self) {
        self.server.unblock();
        for _ in 1..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn json_header() -> Header {
    Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).expect("a valid header")
}

fn reply(req: Request, status: u16, body: serde_json::Value) {
    let text = format!("{body}\n");
    let resp = Response::from_string(text)
        .with_status_code(status)
        .with_header(json_header());
    if let Err(e) = req.respond(resp) {
        log::debug!("fleetlock: cannot answer: {e}");
    }
}

/// A FleetLock error body (`kind`, `value`), as Airlock sends them.
fn error(req: Request, status: u16, kind: &str, value: impl Into<String>) {
    let value = value.into();
    log::info!(
        "fleetlock: {} {} → {status} {kind}: {value}",
        req.method(),
        req.url()
    );
    reply(
        req,
        status,
        serde_json::json!({"kind": kind, "value": value}),
    );
}

fn handle(store: &Store, opts: &ServeOptions, mut req: Request) {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    match (req.method(), path) {
        (Method::Get, "/v1/groups") => {
            return match semaphore::list(store) {
                Ok(groups) => {
                    let map: serde_json::Map<String, serde_json::Value> = groups
                        .into_iter()
                        .map(|(g, s)| (g, serde_json::to_value(s).unwrap_or_default()))
                        .collect();
                    reply(req, 200, serde_json::Value::Object(map))
                }
                Err(e) => error(req, 503, "etcd", e.to_string()),
            };
        }
        (Method::Post, "/v1/pre-reboot" | "/v1/steady-state") => {}
        (_, "/v1/pre-reboot" | "/v1/steady-state" | "/v1/groups") => {
            return error(req, 405, "method_not_allowed", "use POST");
        }
        _ => return error(req, 404, "not_found", format!("no endpoint {path}")),
    }
    let protocol = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("fleet-lock-protocol"))
        .map(|h| h.value.as_str().trim().to_string());
    if protocol.as_deref() != Some("true") {
        return error(
            req,
            400,
            "missing_header",
            "the header fleet-lock-protocol: true is required",
        );
    }
    if req.body_length().is_some_and(|n| n as u64 > MAX_BODY) {
        return error(req, 413, "body_too_large", "the body is too large");
    }
    let mut text = Vec::new();
    if let Err(e) = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut text) {
        return error(req, 400, "bad_body", format!("cannot read the body: {e}"));
    }
    if text.len() as u64 > MAX_BODY {
        return error(req, 413, "body_too_large", "the body is too large");
    }
    let body: Body = match serde_json::from_slice(&text) {
        Ok(b) => b,
        Err(e) => return error(req, 400, "bad_body", format!("not a FleetLock body: {e}")),
    };
    let ClientParams { id, group } = body.client_params;
    if let Err(e) = semaphore::check_group(&group).and_then(|_| semaphore::check_id(&id)) {
        return error(req, 400, "bad_client_params", e.to_string());
    }
    if path == "/v1/pre-reboot" {
        match semaphore::lock(store, &group, &id, opts.default_slots) {
            Ok(LockOutcome::Granted) => {
                log::info!("fleetlock: {id} holds a reboot slot of group {group}");
                reply(req, 200, serde_json::json!({}))
            }
            Ok(LockOutcome::Full(sem)) => error(
                req,
                409,
                "failed_lock_semaphore_full",
                format!(
                    "all {} reboot slots of group {group} are held (by {})",
                    sem.total_slots,
                    sem.holders.join(", ")
                ),
            ),
            Err(e) => error(req, 503, "failed_lock", e.to_string()),
        }
    } else {
        match semaphore::unlock(store, &group, &id) {
            Ok(held) => {
                if held {
                    log::info!("fleetlock: {id} released its reboot slot of group {group}");
                }
                reply(req, 200, serde_json::json!({}))
            }
            Err(e) => error(req, 503, "failed_unlock", e.to_string()),
        }
    }
}
