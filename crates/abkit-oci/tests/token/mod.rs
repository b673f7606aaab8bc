//! A token service for the registry's `auth: token` mode (Docker's token
//! protocol): `GET /token?service=S&scope=repository:NAME:ACTIONS` with
//! Basic credentials answers `{"token": JWT}`, an ES256 JWT whose `x5c`
//! header carries the certificate the registry trusts (`rootcertbundle`).
//! Key and certificate come from the openssl command; ring signs.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

pub const SERVICE: &str = "abkit-test-registry";
pub const ISSUER: &str = "abkit-test-issuer";

pub struct TokenService {
    addr: String,
    pub cert: PathBuf,
    scopes: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

impl TokenService {
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenService {
        openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "token.key",
            ],
        );
        openssl(
            dir,
            &[
                "pkcs8",
                "-topk8",
                "-nocrypt",
                "-in",
                "token.key",
                "-outform",
                "DER",
                "-out",
                "token.p8",
            ],
        );
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "token.key",
                "-subj",
                "/CN=abkit-token",
                "-days",
                "2",
                "-out",
                "token.crt",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.crt",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        let pkcs8 = std::fs::read(dir.join("token.p8")).unwrap();
        let cert_der = std::fs::read(dir.join("token.der")).unwrap();
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("an ECDSA P-256 key");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let (scopes2, stop2) = (scopes.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &expected, &key, &rng, &cert_der, &scopes2);
            }
        });
        TokenService {
            addr,
            cert: dir.join("token.crt"),
            scopes,
            stop,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The scopes tokens were asked for, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.lock().unwrap().clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn answer(
    stream: TcpStream,
    expected: &str,
    key: &EcdsaKeyPair,
    rng: &SystemRandom,
    cert_der: &[u8],
    scopes: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut authorization = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(value.trim().to_owned());
        }
    }
    let mut out = stream;
    if authorization.as_deref() != Some(expected) {
        let body = r#"{"details":"bad credentials"}"#;
        return write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let mut scope = String::new();
    let mut service = String::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("scope", v)) => scope = percent_decode(v),
            Some(("service", v)) => service = percent_decode(v),
            _ => {}
        }
    }
    assert_eq!(
        service, SERVICE,
        "the client passes the challenge's service"
    );
    scopes.lock().unwrap().push(scope.clone());
    // repository:NAME:ACTIONS (NAME may hold no ':').
    let mut parts = scope.splitn(3, ':');
    let (kind, name, actions) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header =
        serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": "builder", "aud": SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10, "jti": format!("{now}-{}", scope.len()),
        "access": [{"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}],
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(rng, signing_input.as_bytes()).expect("sign");
    let jwt = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    );
    let body = serde_json::json!({"token": jwt, "expires_in": 300}).to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
