//! The FleetLock client, speaking the protocol exactly as Zincati does:
//! `POST {base}/v1/pre-reboot` before rebooting into a trial and
//! `POST {base}/v1/steady-state` once committed or back on the old slot,
//! with the header `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id": ..., "group": ...}}`. Anything but a 2xx is a
//! refusal: the caller waits (with [`Backoff`]) and asks again.
//!
//! Zincati takes one server URL; this client takes a list and moves to the
//! next on a connection failure (servers share their state in etcd, so any
//! of them answers the same).

use std::time::Duration;

use serde::Serialize;

/// Why a FleetLock request did not get a `200`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetLockError {
    /// The server answered, but not with 200 (`kind`/`value` from its body).
    #[error("FleetLock {url}: {status} {kind}: {value}")]
    Refused {
        url: String,
        status: u16,
        kind: String,
        value: String,
    },
    #[error("FleetLock {url}: {message}")]
    Unreachable { url: String, message: String },
}

#[derive(Serialize)]
struct Body<'a> {
    client_params: ClientParams<'a>,
}

#[derive(Serialize)]
struct ClientParams<'a> {
    id: &'a str,
    group: &'a str,
}

/// One machine's FleetLock identity and its servers.
#[derive(Debug, Clone)]
pub struct FleetLockClient {
    urls: Vec<String>,
    id: String,
    group: String,
    http: ureq::Agent,
}

impl FleetLockClient {
    pub fn new(urls: Vec<String>, id: &str, group: &str) -> FleetLockClient {
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        FleetLockClient {
            urls: urls
                .into_iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            id: id.to_string(),
            group: group.to_string(),
            http,
        }
    }

    /// `RecursiveLock`: a reboot slot for this machine.
    pub fn pre_reboot(&self) -> Result<(), FleetLockError> {
        self.call("pre-reboot")
    }

    /// `UnlockIfHeld`: give back the slot (succeeds when none is held).
    pub fn steady_state(&self) -> Result<(), FleetLockError> {
        self.call("steady-state")
    }

    fn call(&self, op: &str) -> Result<(), FleetLockError> {
        let body = serde_json::to_string(&Body {
            client_params: ClientParams {
                id: &self.id,
                group: &self.group,
            },
        })
        .expect("a FleetLock body serializes");
        let mut last = None;
        for base in &self.urls {
            let url = format!("{base}/v1/{op}");
            let sent = self
                .http
                .post(&url)
                .header("fleet-lock-protocol", "true")
                .content_type("application/json")
                .send(body.as_str());
            let mut resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = Some(FleetLockError::Unreachable {
                        url,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let status = resp.status().as_u16();
            // Zincati takes any 2xx as success (servers answer 200).
            if (200..300).contains(&status) {
                return Ok(());
            }
            let text = resp
                .body_mut()
                .with_config()
                .limit(16 << 10)
                .read_to_string()
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let field = |k: &str| v[k].as_str().map(str::to_string);
            return Err(FleetLockError::Refused {
                url,
                status,
                kind: field("kind").unwrap_or_else(|| "unknown".into()),
                value: field("value").unwrap_or(text),
            });
        }
        Err(last.unwrap_or(FleetLockError::Unreachable {
            url: String::new(),
            message: "no FleetLock server configured".into(),
        }))
    }
}

/// Exponential backoff with jitter between FleetLock (and etcd) retries:
/// `first`, doubling up to `max`, each pause scaled by 0.5–1.5 so a fleet
/// that was refused together does not come back together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration, seed: &str) -> Backoff {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Backoff {
            next: first,
            max,
            seed: h | 1,
        }
    }

    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let scale = 0.5 + (self.seed % 1000) as f64 / 1000.0;
        let d = self.next.mul_f64(scale);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), "m1");
        let pauses: Vec<Duration> = (0..8).map(|_| b.pause()).collect();
        assert!(pauses[0] >= Duration::from_millis(50) && pauses[0] <= Duration::from_millis(150));
        assert!(pauses[7] >= Duration::from_secs(1) && pauses[7] <= Duration::from_secs(3));
        let mut other = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), "m2");
        assert_ne!(pauses, (0..8).map(|_| other.pause()).collect::<Vec<_>>());
    }

    #[test]
    fn an_unreachable_server_is_named() {
        let c = FleetLockClient::new(vec!["http://127.0.0.1:1".into()], "m1", "default");
        match c.pre_reboot() {
            Err(FleetLockError::Unreachable { url, .. }) => {
                assert_eq!(url, "http://127.0.0.1:1/v1/pre-reboot")
            }
            other => panic!("{other:?}"),
        }
    }
}
