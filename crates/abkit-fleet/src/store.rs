//! A small, blocking client of etcd's v3 key-value API through etcd's own
//! JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, base64
//! keys and values, served on the client URL by etcd 3.4 and newer) over
//! the `ureq` the agent already links: no gRPC stack, no async runtime.
//!
//! Every change the fleet makes is a compare-and-swap on a key's
//! `mod_revision` ([`Store::cas`]): etcd orders the transactions, so any
//! number of servers and agents can share one cluster. Transient failures
//! (a member down, no leader yet) are retried against the other endpoints.

use std::io::{BufRead, BufReader};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{FleetError, Result};

/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long connecting to one member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a request is retried (a member restarting, an election).
const RETRY_FOR: Duration = Duration::from_secs(20);
/// The largest answer read (a list of every machine of a big fleet).
const MAX_RESPONSE: u64 = 256 << 20;
/// The gateway's path prefix: `/v3/` since etcd 3.4 (3.3 had `/v3beta/`).
const API: &str = "/v3";

/// A key's value and the revision that last changed it (0: no such key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A connection to an etcd cluster; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Store {
    agent: ureq::Agent,
    endpoints: Arc<Vec<String>>,
    /// The member asked first: the last one that answered.
    current: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

/// Splits `a,b,c` into endpoints, adding `http://` where no scheme is given.
pub fn parse_endpoints(text: &str) -> Result<Vec<String>> {
    let eps: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let url = if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            };
            url.trim_end_matches('/').to_string()
        })
        .collect();
    if eps.is_empty() {
        return Err(FleetError::BadInput(format!(
            "no etcd endpoint in {text:?} (give URL[,URL...])"
        )));
    }
    for e in &eps {
        if !e.starts_with("http://") {
            return Err(FleetError::BadInput(format!(
                "etcd endpoint {e:?}: only http:// is supported (etcd on a trusted network or loopback)"
            )));
        }
    }
    Ok(eps)
}

/// Why one request to one member failed.
enum Failure {
    /// Worth another try, perhaps on another member.
    Transient(String),
    /// The same answer would come again (a bad request, not etcd at all).
    Fatal(String),
}

/// etcd's int64 fields arrive as JSON strings ("12"); absent means 0.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        Text(String),
        Number(i64),
    }
    match Int::deserialize(d)? {
        Int::Number(n) => Ok(n),
        Int::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Deserialize)]
struct TxnResponse {
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct DeleteRangeResponse {
    #[serde(default, deserialize_with = "int64")]
    deleted: i64,
}

/// An error the gateway returns: gRPC's code and message.
#[derive(Deserialize)]
struct GatewayError {
    #[serde(default)]
    code: i32,
    #[serde(default)]
    message: String,
}

/// One line of `/v3/watch`'s stream.
#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<GatewayError>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<Value>,
    #[serde(default)]
    canceled: bool,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// etcd's request fields for every key that starts with `prefix`.
fn prefix_range(prefix: &str) -> serde_json::Map<String, Value> {
    let mut range = serde_json::Map::new();
    range.insert("key".into(), b64(prefix.as_bytes()).into());
    range.insert(
        "range_end".into(),
        b64(&prefix_end(prefix.as_bytes())).into(),
    );
    range
}

/// The end of etcd's range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty (or all 0xff): every key from `prefix` on.
    vec![0]
}

impl KeyValue {
    fn decode(self) -> Result<(String, Versioned)> {
        let bad = |what: &str, e: base64::DecodeError| FleetError::Etcd {
            endpoints: String::new(),
            message: format!("etcd sent a {what} that is not base64: {e}"),
        };
        let key = B64.decode(&self.key).map_err(|e| bad("key", e))?;
        let value = B64.decode(&self.value).map_err(|e| bad("value", e))?;
        Ok((
            String::from_utf8_lossy(&key).into_owned(),
            Versioned {
                value,
                mod_revision: self.mod_revision,
            },
        ))
    }
}

/// gRPC codes worth retrying: CANCELLED 1, UNKNOWN 2, DEADLINE_EXCEEDED 4,
/// ABORTED 10, UNAVAILABLE 14 (etcd's "no leader" is UNAVAILABLE).
fn transient_code(code: i32) -> bool {
    matches!(code, 1 | 2 | 4 | 10 | 14)
}

impl Store {
    /// Prepares a client of the cluster. Nothing is sent yet: a member that
    /// is down is only skipped when a request finds it so.
    pub fn connect(endpoints: &[String]) -> Result<Store> {
        if endpoints.is_empty() {
            return Err(FleetError::BadInput("no etcd endpoint given".into()));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // etcd sits on loopback or a trusted network: never a proxy.
            .proxy(None)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("abkit/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Store {
            agent,
            endpoints: Arc::new(endpoints.to_vec()),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn error(&self, message: String) -> FleetError {
        FleetError::Etcd {
            endpoints: self.endpoints.join(","),
            message,
        }
    }

    /// The member to ask next (its index and URL).
    fn endpoint(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        (i, &self.endpoints[i])
    }

    /// Moves on from member `index`, which did not answer (unless another
    /// thread already did).
    fn skip(&self, index: usize) {
        let next = (index + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// One POST of `body` to `path` on one member.
    fn post_once<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
    ) -> std::result::Result<T, Failure> {
        let url = format!("{endpoint}{API}{path}");
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let mut resp = match self
            .agent
            .post(&url)
            .header("content-type", "application/json")
            .send(&body[..])
        {
            Ok(r) => r,
            Err(e) => return Err(Failure::Transient(format!("{url}: {e}"))),
        };
        let status = resp.status().as_u16();
        let text = match resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
        {
            Ok(t) => t,
            Err(e) => {
                return Err(Failure::Transient(format!(
                    "{url}: reading the answer: {e}"
                )));
            }
        };
        if status == 200 {
            return serde_json::from_str(&text).map_err(|e| {
                Failure::Fatal(format!(
                    "{url}: not an answer of etcd's v3 JSON gateway ({e}): {}",
                    excerpt(&text)
                ))
            });
        }
        match serde_json::from_str::<GatewayError>(&text) {
            Ok(g) if !g.message.is_empty() => {
                let message = format!("{url}: {} (gRPC code {})", g.message, g.code);
                if transient_code(g.code) {
                    Err(Failure::Transient(message))
                } else {
                    Err(Failure::Fatal(message))
                }
            }
            _ if status == 404 => Err(Failure::Fatal(format!(
                "{url}: HTTP 404: no etcd v3 JSON gateway there (etcd 3.4 or newer serves {API}/)"
            ))),
            _ if status >= 500 || status == 408 || status == 429 => Err(Failure::Transient(
                format!("{url}: HTTP {status}: {}", excerpt(&text)),
            )),
            _ => Err(Failure::Fatal(format!(
                "{url}: HTTP {status}: {}",
                excerpt(&text)
            ))),
        }
    }

    /// POSTs until a member answers, the request fails for good, or
    /// [`RETRY_FOR`] passes; each transient failure moves on to the next
    /// member.
    fn post<T: DeserializeOwned>(&self, what: &str, path: &str, body: Value) -> Result<T> {
        let end = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            let (index, endpoint) = self.endpoint();
            match self.post_once(endpoint, path, &body) {
                Ok(v) => return Ok(v),
                Err(Failure::Transient(m)) if Instant::now() < end => {
                    log::debug!("etcd {what}: {m}; retrying");
                    self.skip(index);
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(Failure::Transient(m) | Failure::Fatal(m)) => {
                    return Err(self.error(format!("{what}: {m}")));
                }
            }
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let resp: RangeResponse =
            self.post("get", "/kv/range", json!({ "key": b64(key.as_bytes()) }))?;
        match resp.kvs.into_iter().next() {
            Some(kv) => Ok(Some(self.decoded(kv)?.1)),
            None => Ok(None),
        }
    }

    fn decoded(&self, kv: KeyValue) -> Result<(String, Versioned)> {
        kv.decode().map_err(|e| match e {
            FleetError::Etcd { message, .. } => self.error(message),
            other => other,
        })
    }

    /// Every key under `prefix`, in key order, with the store's revision.
    pub fn list(&self, prefix: &str) -> Result<(i64, Vec<(String, Versioned)>)> {
        let resp: RangeResponse =
            self.post("list", "/kv/range", Value::Object(prefix_range(prefix)))?;
        let items = resp
            .kvs
            .into_iter()
            .map(|kv| self.decoded(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok((resp.header.revision, items))
    }

    /// Runs `op` only if `key`'s `mod_revision` is still `expected`.
    fn txn_if(&self, what: &str, key: &str, expected: i64, op: Value) -> Result<bool> {
        let resp: TxnResponse = self.post(
            what,
            "/kv/txn",
            json!({
                "compare": [{
                    "target": "MOD",
                    "result": "EQUAL",
                    "key": b64(key.as_bytes()),
                    "mod_revision": expected.to_string(),
                }],
                "success": [op],
            }),
        )?;
        Ok(resp.succeeded)
    }

    /// Writes `value` at `key` only if the key's `mod_revision` is still
    /// `expected` (0: only if the key does not exist). `Ok(false)`: someone
    /// else changed it first; read again and retry.
    pub fn cas(&self, key: &str, expected: i64, value: &[u8]) -> Result<bool> {
        let put = json!({ "request_put": { "key": b64(key.as_bytes()), "value": b64(value) } });
        self.txn_if("compare-and-swap", key, expected, put)
    }

    /// Deletes `key` only if its `mod_revision` is still `expected`.
    pub fn cas_delete(&self, key: &str, expected: i64) -> Result<bool> {
        let delete = json!({ "request_delete_range": { "key": b64(key.as_bytes()) } });
        self.txn_if("compare-and-delete", key, expected, delete)
    }

    /// Writes `value` at `key` whatever was there (a machine's own record).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let _: Value = self.post(
            "put",
            "/kv/put",
            json!({ "key": b64(key.as_bytes()), "value": b64(value) }),
        )?;
        Ok(())
    }

    /// Deletes every key under `prefix`; returns how many there were.
    pub fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let resp: DeleteRangeResponse = self.post(
            "delete",
            "/kv/deleterange",
            Value::Object(prefix_range(prefix)),
        )?;
        Ok(resp.deleted)
    }

    /// Waits until a key under `prefix` changes after `revision`, or
    /// `timeout` passes; returns whether something changed. Errors are
    /// reported as "changed" after a short pause: the caller reads again.
    pub fn wait_for_change(&self, prefix: &str, revision: i64, timeout: Duration) -> bool {
        let start = Instant::now();
        let (index, endpoint) = self.endpoint();
        match self.watch_once(endpoint, prefix, revision, timeout) {
            Ok(changed) => changed,
            // The stream ends with an error when the wait is over.
            Err(_) if start.elapsed() >= timeout => false,
            Err(e) => {
                log::debug!("etcd watch: {e}");
                self.skip(index);
                let left = timeout.saturating_sub(start.elapsed());
                std::thread::sleep(Duration::from_millis(300).min(left));
                true
            }
        }
    }

    /// Streams `/v3/watch` from one member until an event, a cancel, or
    /// the end of `timeout` (an error then).
    fn watch_once(
        &self,
        endpoint: &str,
        prefix: &str,
        revision: i64,
        timeout: Duration,
    ) -> std::result::Result<bool, String> {
        let url = format!("{endpoint}{API}/watch");
        let mut request = prefix_range(prefix);
        request.insert("start_revision".into(), (revision + 1).to_string().into());
        let body = json!({ "create_request": request });
        let body = serde_json::to_vec(&body).expect("a JSON value serializes");
        let resp = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json")
            .send(&body[..])
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status() != 200 {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let reader = BufReader::new(resp.into_body().into_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| format!("{url}: {e}"))?;
            if line.trim().is_empty() {
                continue;
            }
            let msg: WatchLine = serde_json::from_str(&line)
                .map_err(|e| format!("{url}: not a watch answer ({e}): {}", excerpt(&line)))?;
            if let Some(e) = msg.error {
                return Err(format!("{url}: {} (gRPC code {})", e.message, e.code));
            }
            match msg.result {
                Some(r) if !r.events.is_empty() || r.canceled => return Ok(true),
                _ => continue,
            }
        }
        // The member closed the stream: let the caller read again.
        Ok(true)
    }
}

/// The start of an answer, for an error message.
fn excerpt(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"abc/"), b"abc0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn int64_fields_are_read_from_strings_numbers_or_absence() {
        let h: RangeResponse = serde_json::from_str(
            r#"{"header":{"revision":"42"},"kvs":[{"key":"YQ==","mod_revision":7}]}"#,
        )
        .unwrap();
        assert_eq!(h.header.revision, 42);
        assert_eq!(h.kvs[0].mod_revision, 7);
        let (k, v) = h.kvs.into_iter().next().unwrap().decode().unwrap();
        assert_eq!((k.as_str(), v.value.as_slice()), ("a", &b""[..]));
        let d: DeleteRangeResponse = serde_json::from_str(r#"{"header":{}}"#).unwrap();
        assert_eq!(d.deleted, 0);
    }

    #[test]
    fn endpoints_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(
            parse_endpoints("10.0.0.1:2379, http://h:2379/").unwrap(),
            ["http://10.0.0.1:2379", "http://h:2379"]
        );
        assert!(parse_endpoints("https://h:2379").is_err());
        assert!(parse_endpoints(" , ").is_err());
    }
}
