//! Test machinery (feature `testing`): a real registry — Debian's
//! `docker-registry` (distribution 2.8) — started on 127.0.0.1 on a free
//! port with its own config file and storage folder in a temporary folder,
//! and stopped when the [`TestRegistry`] is dropped. A missing binary fails
//! the test with the install hint; it never skips.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use abkit_fetch::testing::make_certificates;

/// Where Debian's package puts the registry.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How the test registry authenticates.
#[derive(Debug, Clone)]
pub enum TestAuth {
    /// Anyone may push and pull.
    None,
    /// `htpasswd` Basic auth with one user (bcrypt, made with apache2-utils'
    /// `htpasswd`).
    Basic { user: String, password: String },
    /// Bearer tokens from `realm`, signed by the key of `cert` (PEM).
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert: PathBuf,
    },
}

/// A running `docker-registry`, stopped on drop.
pub struct TestRegistry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    dir: tempfile::TempDir,
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port on 127.0.0.1")
}

impl TestRegistry {
    /// Starts a plain-http registry and waits until it accepts connections.
    pub fn start(auth: TestAuth) -> TestRegistry {
        TestRegistry::start_with(auth, false)
    }

    /// Starts a registry serving https with a certificate for 127.0.0.1
    /// signed by a CA made for it ([`TestRegistry::ca_pem`]).
    pub fn start_tls(auth: TestAuth) -> TestRegistry {
        TestRegistry::start_with(auth, true)
    }

    fn start_with(auth: TestAuth, tls: bool) -> TestRegistry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: the OCI tests need a real registry. Install Debian's \
             docker-registry package (`make deps`, or `apt-get install docker-registry`)"
        );
        let mut tries = 0;
        loop {
            tries += 1;
            let mut registry = TestRegistry::spawn(&auth, tls);
            if registry.wait_ready() {
                return registry;
            }
            // Another process may have taken the port between probe and bind.
            assert!(tries < 5, "the registry did not start: {}", registry.log());
        }
    }

    fn spawn(auth: &TestAuth, tls: bool) -> TestRegistry {
        let dir = tempfile::tempdir().expect("temporary folder");
        let tls_section = if tls {
            make_certificates(dir.path());
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("server.crt").display(),
                dir.path().join("server.key").display()
            )
        } else {
            String::new()
        };
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("storage folder");
        let auth_section = match auth {
            TestAuth::None => String::new(),
            TestAuth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .unwrap_or_else(|e| {
                        panic!(
                            "htpasswd cannot run ({e}): install Debian's apache2-utils \
                             (`make deps`)"
                        )
                    });
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: abkit-test\n    path: {}\n",
                    file.display()
                )
            }
            TestAuth::Token {
                realm,
                service,
                issuer,
                cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: \
                 {issuer}\n    rootcertbundle: {}\n",
                cert.display()
            ),
        };
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{tls_section}{auth_section}",
                storage.display()
            ),
        )
        .expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REGISTRY_BIN}: {e}"));
        TestRegistry { child, addr, dir }
    }

    /// Waits up to 20 s for the port to accept; false when the process
    /// ended first.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The PEM of the CA that signed an https registry's certificate.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.crt")).expect("an https test registry")
    }

    /// The registry's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The storage folder (`docker/registry/v2/...`), for tests that
    /// tamper with what the registry serves.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file the registry serves for the blob (or manifest) `digest`.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }

    /// `oci://127.0.0.1:PORT/<rest>`.
    pub fn reference(&self, rest: &str) -> String {
        format!("oci://{}/{rest}", self.addr)
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
