//! The CLI's side: is an agent running on this socket, and who is it?

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::error::{AgentError, Result};

/// The peer of a Unix socket connection, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy)]
pub struct PeerCred {
    pub pid: u32,
    pub uid: u32,
}

pub fn peer_cred(stream: &UnixStream) -> Option<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(PeerCred {
        pid: cred.pid as u32,
        uid: cred.uid,
    })
}

/// `Some(pid)` when an agent answers on `socket` (the pid when it can be
/// told), `None` when nothing listens there (no file, or a stale one).
pub fn running_agent(socket: &Path) -> Option<Option<u32>> {
    match UnixStream::connect(socket) {
        Ok(s) => Some(peer_cred(&s).map(|c| c.pid)),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(None),
        Err(_) => None,
    }
}

/// Refuses (with the agent's pid) when an agent runs on `socket`: commands
/// that change the machine go through it then, not around it.
pub fn refuse_if_running(socket: &Path) -> Result<()> {
    match running_agent(socket) {
        Some(pid) => Err(AgentError::Running {
            socket: socket.to_path_buf(),
            pid,
        }),
        None => Ok(()),
    }
}

/// One request to the agent on `socket` (HTTP/1.1, one request per
/// connection, as the server answers): the status code and the JSON body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let io = |what: &str| {
        let context = format!("{what} the agent on {}", socket.display());
        move |source| AgentError::Io { context, source }
    };
    let mut stream = UnixStream::connect(socket).map_err(io("connect to"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(io("send a request to"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(io("read the answer of"))?;
    let text = String::from_utf8_lossy(&answer);
    let bad = |why: &str| AgentError::Io {
        context: format!("the agent on {} answered {why}", socket.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("without a header"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("without a status"))?;
    let json = serde_json::from_str(body).map_err(|_| bad("with a body that is not JSON"))?;
    Ok((status, json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_an_agent_and_a_stale_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        assert!(refuse_if_running(&path).is_ok(), "no file: no agent");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let err = refuse_if_running(&path).unwrap_err();
        assert_eq!(err.code(), "agent-running");
        assert!(
            err.to_string()
                .contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        drop(listener);
        assert!(
            refuse_if_running(&path).is_ok(),
            "a stale socket file: no agent"
        );
    }
}
