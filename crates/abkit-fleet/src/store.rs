//! A small, blocking view of etcd's v3 key-value API (the `etcd-client`
//! crate on a private tokio runtime), so the threaded agent and the
//! FleetLock server use etcd without being async themselves.
//!
//! Every change the fleet makes is a compare-and-swap on a key's
//! `mod_revision` ([`Store::cas`]): etcd orders the transactions, so any
//! number of servers and agents can share one cluster. Transient failures
//! (a member down, no leader yet) are retried against the other endpoints.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions,
};

use crate::error::{FleetError, Result};

/// How long one etcd request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request is retried (a member restarting, an election).
const RETRY_FOR: Duration = Duration::from_secs(20);

/// A key's value and the revision that last changed it (0: no such key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// A connection to an etcd cluster; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Store {
    runtime: Arc<tokio::runtime::Runtime>,
    client: Client,
    endpoints: Vec<String>,
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
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
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

/// Whether an etcd error is worth retrying on (possibly) another member.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes: CANCELLED 1, UNKNOWN 2, DEADLINE_EXCEEDED 4,
        // ABORTED 10, UNAVAILABLE 14 (etcd's "no leader" is UNAVAILABLE).
        etcd_client::Error::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 10 | 14),
        _ => false,
    }
}

impl Store {
    /// Connects to the cluster (lazily: a member that is down is skipped).
    pub fn connect(endpoints: &[String]) -> Result<Store> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| FleetError::Etcd {
                endpoints: endpoints.join(","),
                message: format!("cannot start the etcd client's runtime: {e}"),
            })?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(30), Duration::from_secs(10));
        let client = runtime
            .block_on(Client::connect(endpoints, Some(options)))
            .map_err(|e| FleetError::Etcd {
                endpoints: endpoints.join(","),
                message: e.to_string(),
            })?;
        Ok(Store {
            runtime: Arc::new(runtime),
            client,
            endpoints: endpoints.to_vec(),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn error(&self, e: etcd_client::Error) -> FleetError {
        FleetError::Etcd {
            endpoints: self.endpoints.join(","),
            message: e.to_string(),
        }
    }

    /// Runs `op` until it succeeds, fails for good, or [`RETRY_FOR`] passes.
    fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let end = Instant::now() + RETRY_FOR;
        let mut pause = Duration::from_millis(50);
        loop {
            let client = self.client.clone();
            let r = self.runtime.block_on(async {
                match tokio::time::timeout(REQUEST_TIMEOUT, op(client)).await {
                    Ok(r) => r,
                    Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "etcd request timed out",
                    ))),
                }
            });
            match r {
                Ok(v) => return Ok(v),
                Err(e) if transient(&e) && Instant::now() < end => {
                    log::debug!("etcd {what}: {e}; retrying");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Versioned>> {
        let key = key.to_string();
        let resp = self.retry("get", |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            mod_revision: kv.mod_revision(),
        }))
    }

    /// Every key under `prefix`, in key order, with the store's revision.
    pub fn list(&self, prefix: &str) -> Result<(i64, Vec<(String, Versioned)>)> {
        let prefix = prefix.to_string();
        let resp = self.retry("list", |mut c| {
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let items = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    Versioned {
                        value: kv.value().to_vec(),
                        mod_revision: kv.mod_revision(),
                    },
                )
            })
            .collect();
        Ok((revision, items))
    }

    /// Writes `value` at `key` only if the key's `mod_revision` is still
    /// `expected` (0: only if the key does not exist). `Ok(false)`: someone
    /// else changed it first; read again and retry.
    pub fn cas(&self, key: &str, expected: i64, value: &[u8]) -> Result<bool> {
        let (key, value) = (key.to_string(), value.to_vec());
        let resp = self.retry("compare-and-swap", |mut c| {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    expected,
                )])
                .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
            async move { c.txn(txn).await }
        })?;
        Ok(resp.succeeded())
    }

    /// Deletes `key` only if its `mod_revision` is still `expected`.
    pub fn cas_delete(&self, key: &str, expected: i64) -> Result<bool> {
        let key = key.to_string();
        let resp = self.retry("compare-and-delete", |mut c| {
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    expected,
                )])
                .and_then([TxnOp::delete(key.clone(), None)]);
            async move { c.txn(txn).await }
        })?;
        Ok(resp.succeeded())
    }

    /// Writes `value` at `key` whatever was there (a machine's own record).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.retry("put", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })?;
        Ok(())
    }

    /// Deletes every key under `prefix`; returns how many there were.
    pub fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let prefix = prefix.to_string();
        let resp = self.retry("delete", |mut c| {
            let prefix = prefix.clone();
            async move {
                c.delete(
                    prefix,
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
            }
        })?;
        Ok(resp.deleted())
    }

    /// Waits until a key under `prefix` changes after `revision`, or
    /// `timeout` passes; returns whether something changed. Errors are
    /// reported as "changed" after a short pause: the caller reads again.
    pub fn wait_for_change(&self, prefix: &str, revision: i64, timeout: Duration) -> bool {
        let mut client = self.client.clone();
        let prefix = prefix.to_string();
        let r = self.runtime.block_on(async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let fut = async {
                let mut stream = client.watch(prefix, Some(options)).await?;
                loop {
                    match stream.message().await? {
                        Some(m) if !m.events().is_empty() => return Ok(true),
                        Some(m) if m.canceled() => return Ok(true),
                        Some(_) => continue,
                        None => return Ok(true),
                    }
                }
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Ok::<bool, etcd_client::Error>(false),
            }
        });
        match r {
            Ok(changed) => changed,
            Err(e) => {
                log::debug!("etcd watch: {e}");
                std::thread::sleep(Duration::from_millis(300).min(timeout));
                true
            }
        }
    }
}
