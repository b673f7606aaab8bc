//! Test machinery: real etcd members on 127.0.0.1 (Debian's `etcd`), each
//! with its own data directory and free ports, killed when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; etcd binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A 1- or 3-member etcd cluster started by the test.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A scratch directory removed on drop (no tempfile dependency here).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Member {
    fn spawn(&mut self, cluster: &str, state: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log file");
        let child = Command::new("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "abkit-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--quota-backend-bytes", "268435456"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is needed (Debian etcd-server: run `make deps`)");
        self.child = Some(child);
    }

    /// SIGKILLs the member (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = std::env::temp_dir().join(format!(
            "abkit-etcd-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                data_dir: dir.join(format!("m{i}.etcd")),
                log: dir.join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.spawn(&cluster, "new");
        }
        let c = EtcdCluster {
            members,
            _dir: tempfile_dir::Dir(dir),
        };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// The client URLs, comma-separated (what `--etcd` takes).
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn endpoint_list(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Waits until every running member says it is healthy.
    pub fn wait_healthy(&self, within: Duration) {
        let end = Instant::now() + within;
        for m in self.members.iter().filter(|m| m.is_running()) {
            loop {
                let ok = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args(["--endpoints", &m.client_url, "endpoint", "health"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "etcd member {} did not become healthy (log: {})",
                    m.name,
                    m.log.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
