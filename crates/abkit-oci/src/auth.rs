//! Registry authentication as the distribution spec and Docker's token
//! protocol define it: requests go out anonymously until the registry answers
//! 401 with a `WWW-Authenticate` challenge; `Basic` is answered with the
//! credentials, `Bearer realm=...,service=...` with a token fetched from the
//! realm (with the credentials, or anonymously) and renewed before it
//! expires. Credentials come from the caller or a docker-style config.json.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ureq::Agent;

use crate::OciError;

/// A user name and password (or access token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password);
        format!("Basic {}", STANDARD.encode(pair))
    }
}

/// The docker-style config files searched, in order, when no file is
/// named: `$REGISTRY_AUTH_FILE` (podman's variable),
/// `$DOCKER_CONFIG/config.json`, `$HOME/.docker/config.json`, and
/// `/etc/abkit/registry-auth.json` (a device's root-owned file).
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(file) = std::env::var_os("REGISTRY_AUTH_FILE") {
        files.push(PathBuf::from(file));
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        files.push(Path::new(&dir).join("config.json"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        files.push(Path::new(&home).join(".docker/config.json"));
    }
    files.push(PathBuf::from("/etc/abkit/registry-auth.json"));
    files
}

/// The credentials for `registry` (`HOST[:PORT]`) in a docker-style
/// config.json: `{"auths": {"HOST[:PORT]": {"auth": base64("user:pass")}}}`
/// (or `"username"` and `"password"`); keys may carry a scheme and path
/// (`https://HOST/v1/`). `credsStore` and `credHelpers` (external programs)
/// are not run: a warning says so.
pub fn credentials_from_file(path: &Path, registry: &str) -> Result<Option<Credentials>, OciError> {
    let bad = |problem: String| OciError::Credentials {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
        #[serde(default, rename = "credsStore")]
        creds_store: Option<String>,
        #[serde(default, rename = "credHelpers")]
        cred_helpers: BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let config: Config =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a docker config.json: {e}")))?;
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| auth_key_host(key) == registry)
        .map(|(_, entry)| entry);
    let Some(entry) = entry else {
        if config.cred_helpers.contains_key(registry) || config.creds_store.is_some() {
            log::warn!(
                "{}: credentials for {registry} are kept by a credential helper, which abkit \
                 does not run; put them in \"auths\" or pass --registry-user",
                path.display()
            );
        }
        return Ok(None);
    };
    if let (Some(username), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        }));
    }
    let Some(auth) = &entry.auth else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(auth.trim())
        .map_err(|e| bad(format!("the \"auth\" of {registry} is not base64: {e}")))?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| bad(format!("the \"auth\" of {registry} is not UTF-8")))?;
    let (username, password) = decoded
        .split_once(':')
        .ok_or_else(|| bad(format!("the \"auth\" of {registry} is not user:password")))?;
    Ok(Some(Credentials {
        username: username.to_owned(),
        password: password.to_owned(),
    }))
}

/// `https://host:5000/v1/` → `host:5000`.
fn auth_key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` value (RFC 9110 11.6.1: a scheme, then
/// `name=value` or `name="quoted value"` pairs separated by commas). A
/// Bearer challenge wins over Basic when several are given.
pub(crate) fn parse_challenge(value: &str) -> Option<Challenge> {
    let mut found = None;
    let mut rest = value.trim();
    while !rest.is_empty() {
        let scheme_end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let scheme = rest[..scheme_end].trim_end_matches(',');
        rest = rest[scheme_end..].trim_start();
        let mut params = BTreeMap::new();
        // Parameters until the next scheme (a token not followed by '=').
        while let Some(eq) = rest.find('=') {
            let name = rest[..eq].trim();
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == ',') {
                break;
            }
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(quoted) = rest.strip_prefix('"') {
                let mut out = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, next)) = chars.next() {
                                out.push(next);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        _ => out.push(c),
                    }
                }
                value = out;
                rest = &quoted[end.min(quoted.len())..];
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_owned();
                rest = &rest[end..];
            }
            params.insert(name.to_ascii_lowercase(), value);
            rest = rest.trim_start();
            match rest.strip_prefix(',') {
                Some(after) => rest = after.trim_start(),
                None => break,
            }
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            if let Some(realm) = params.remove("realm") {
                return Some(Challenge::Bearer {
                    realm,
                    service: params.remove("service"),
                    scope: params.remove("scope"),
                });
            }
        } else if scheme.eq_ignore_ascii_case("basic") {
            found = Some(Challenge::Basic);
        }
        if scheme.is_empty() {
            break;
        }
    }
    found
}

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    renew_at: Instant,
}

/// What the registry asked for, as learnt from its challenges.
#[derive(Debug, Clone, Default)]
enum Scheme {
    /// No challenge yet: requests go out without credentials.
    #[default]
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        token: Option<Token>,
    },
}

/// The authentication state of one client of one repository, shared by
/// its API requests and its blob download (which may outlive a token).
#[derive(Debug)]
pub(crate) struct Auth {
    pub(crate) registry: String,
    credentials: Option<Credentials>,
    /// `repository:NAME:pull` or `repository:NAME:pull,push`.
    scope: String,
    /// Plain http allowed (also for the token realm).
    insecure: bool,
    scheme: Scheme,
}

impl Auth {
    pub(crate) fn new(
        registry: &str,
        credentials: Option<Credentials>,
        scope: String,
        insecure: bool,
    ) -> Auth {
        Auth {
            registry: registry.to_owned(),
            credentials,
            scope,
            insecure,
            scheme: Scheme::Anonymous,
        }
    }

    pub(crate) fn has_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The `Authorization` value for the next request, renewing an
    /// expired bearer token.
    pub(crate) fn header(&mut self, agent: &Agent) -> Result<Option<String>, OciError> {
        match &self.scheme {
            Scheme::Anonymous => Ok(None),
            Scheme::Basic => Ok(self.credentials.as_ref().map(Credentials::basic)),
            Scheme::Bearer { token, .. } => {
                if let Some(token) = token
                    && Instant::now() < token.renew_at
                {
                    return Ok(Some(format!("Bearer {}", token.value)));
                }
                let token = self.fetch_token(agent)?;
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Learns from a 401's challenge. Returns whether a retry with the new
    /// credentials can succeed (false: the same ones were already refused).
    pub(crate) fn challenge(
        &mut self,
        www_authenticate: Option<&str>,
        agent: &Agent,
    ) -> Result<bool, OciError> {
        let challenge = www_authenticate.and_then(parse_challenge);
        match challenge {
            Some(Challenge::Basic) => {
                if self.credentials.is_none() {
                    return Err(OciError::AuthRequired {
                        registry: self.registry.clone(),
                        scheme: "basic",
                    });
                }
                let first = !matches!(self.scheme, Scheme::Basic);
                self.scheme = Scheme::Basic;
                Ok(first)
            }
            Some(Challenge::Bearer {
                realm,
                service,
                scope: _,
            }) => {
                // A fresh token for our whole scope (a challenge to a pull
                // request names only `pull`; a push needs `pull,push`).
                let had_token = matches!(&self.scheme, Scheme::Bearer { token: Some(_), realm: r, .. } if *r == realm);
                if had_token {
                    return Ok(false);
                }
                self.scheme = Scheme::Bearer {
                    realm,
                    service,
                    token: None,
                };
                self.fetch_token(agent)?;
                Ok(true)
            }
            None => Err(OciError::Unauthorized {
                registry: self.registry.clone(),
                detail: format!(
                    ": HTTP 401 with no usable WWW-Authenticate challenge ({:?})",
                    www_authenticate.unwrap_or("")
                ),
            }),
        }
    }

    /// Gets a token from the realm for our scope (Docker's token protocol:
    /// `GET realm?service=S&scope=X`, with Basic credentials when we have
    /// them, answered with `{"token" or "access_token", "expires_in"}`).
    fn fetch_token(&mut self, agent: &Agent) -> Result<String, OciError> {
        let Scheme::Bearer { realm, service, .. } = &self.scheme else {
            unreachable!("fetch_token only runs for a bearer challenge")
        };
        let realm = realm.clone();
        if !(realm.starts_with("https://") || self.insecure && realm.starts_with("http://")) {
            return Err(OciError::Protocol {
                method: "GET",
                url: realm,
                problem: "the token service is not an https URL (use --insecure-registry to \
                          allow plain http)"
                    .into(),
            });
        }
        let mut request = agent.get(&realm).query("scope", &self.scope);
        if let Some(service) = service {
            request = request.query("service", service);
        }
        if let Some(credentials) = &self.credentials {
            request = request.header("Authorization", credentials.basic());
        }
        let response = request.call().map_err(|e| OciError::Connection {
            method: "GET",
            url: realm.clone(),
            problem: e.to_string(),
        })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(if self.credentials.is_some() {
                OciError::Unauthorized {
                    registry: self.registry.clone(),
                    detail: format!(
                        ": the token service {realm} refused the credentials (HTTP {status})"
                    ),
                }
            } else {
                OciError::AuthRequired {
                    registry: self.registry.clone(),
                    scheme: "bearer",
                }
            });
        }
        if status != 200 {
            return Err(OciError::Registry {
                method: "GET",
                url: realm,
                status,
                detail: " from the token service".into(),
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = response
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| OciError::Connection {
                method: "GET",
                url: realm.clone(),
                problem: e.to_string(),
            })?;
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|e| OciError::Protocol {
                method: "GET",
                url: realm.clone(),
                problem: format!("the token answer is not JSON: {e}"),
            })?;
        let value = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url: realm.clone(),
                problem: "the token answer holds no token".into(),
            })?;
        // The protocol's default lifetime is 60 s; renew 10 s early (or at
        // half the lifetime of a very short one).
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(1));
        let margin = Duration::from_secs(10).min(lifetime / 2);
        if let Scheme::Bearer { token, .. } = &mut self.scheme {
            *token = Some(Token {
                value: value.clone(),
                renew_at: Instant::now() + (lifetime - margin),
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas_and_several_schemes() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Basic realm="x", Bearer realm="http://t/x\"y", error="insufficient_scope""#
            ),
            Some(Challenge::Bearer {
                realm: "http://t/x\"y".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge(""), None);
    }

    #[test]
    fn docker_config_entries_are_found_by_host_in_every_key_form() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let auth = STANDARD.encode("alice:s3cr:et");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"https://reg.example:5000/v1/": {{"auth": "{auth}"}},
                    "other.example": {{"username": "bob", "password": "pw"}},
                    "empty.example": {{}}}}, "credHelpers": {{"helped.example": "ecr-login"}}}}"#
            ),
        )
        .unwrap();
        let got = credentials_from_file(&path, "reg.example:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("alice", "s3cr:et")
        );
        let got = credentials_from_file(&path, "other.example")
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.username.as_str(), got.password.as_str()),
            ("bob", "pw")
        );
        assert_eq!(credentials_from_file(&path, "reg.example").unwrap(), None);
        assert_eq!(credentials_from_file(&path, "empty.example").unwrap(), None);
        assert_eq!(
            credentials_from_file(&path, "helped.example").unwrap(),
            None
        );
        assert!(
            !format!("{got:?}").contains("pw"),
            "the password is never printed"
        );

        std::fs::write(&path, r#"{"auths": {"r": {"auth": "bm8tY29sb24="}}}"#).unwrap();
        let err = credentials_from_file(&path, "r").unwrap_err();
        assert_eq!(err.code(), "oci-credentials");
        assert!(err.to_string().contains("user:password"), "{err}");
        std::fs::write(&path, "[").unwrap();
        assert_eq!(
            credentials_from_file(&path, "r").unwrap_err().code(),
            "oci-credentials"
        );
    }
}
