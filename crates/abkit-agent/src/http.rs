//! Just enough HTTP/1.1 for a JSON API: one request per connection (the
//! response says `Connection: close`), a bounded head and a bounded body
//! given by `Content-Length`. Works over any stream: a Unix socket or TLS.

use std::io::{Read, Write};

use serde_json::Value;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted (requests are small JSON objects).
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A response: a status and a JSON body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    pub fn json(status: u16, body: Value) -> Response {
        Response { status, body }
    }

    /// `{"ok": false, "error": {"code": ..., "message": ...}}`, as the CLI's
    /// `--json` failures.
    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Response::json(
            status,
            serde_json::json!({"ok": false, "error": {"code": code, "message": message.into()}}),
        )
    }
}

/// Reads one request. `Err` carries the response to send instead (or
/// nothing to send when the peer went away).
pub fn read_request(s: &mut dyn Read) -> Result<Request, Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => n,
        };
        // Only the new bytes and the three before them can complete the
        // blank line (a client sending a byte at a time costs no rescans).
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
            break from + i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(Response::error(
                431,
                "head-too-large",
                "request head too large",
            )));
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => {
            return Err(Some(Response::error(
                400,
                "bad-request",
                "malformed HTTP request",
            )));
        }
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let mut length = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Some(Response::error(
                411,
                "length-required",
                "send the body with Content-Length",
            )));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Some(Response::error(400, "bad-request", "bad Content-Length")))?;
        }
    }
    if length > MAX_BODY {
        return Err(Some(Response::error(
            413,
            "body-too-large",
            "request body too large",
        )));
    }
    let mut body = buf[head_len..].to_vec();
    body.truncate(length);
    while body.len() < length {
        let want = (length - body.len()).min(chunk.len());
        match s.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(Request { method, path, body })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Writes `resp` as the whole answer of this connection.
pub fn write_response(s: &mut dyn Write, resp: &Response) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(&resp.body).unwrap_or_default();
    body.push(b'\n');
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(&body)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_split_across_reads_is_put_together() {
        /// Hands out `self.2` bytes per read: the blank line that ends the
        /// head falls across reads at every place for steps 1 to 5.
        struct Drip(Vec<u8>, usize, usize);
        impl Read for Drip {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.2).min(self.0.len() - self.1);
                buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let raw = b"POST /v1/update HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"source\":1}\nEXTRA";
        for step in 1..=5 {
            let r = read_request(&mut Drip(raw.to_vec(), 0, step)).unwrap();
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/v1/update");
            assert_eq!(r.body, b"{\"source\":1}\n", "{step} bytes per read");
        }
    }

    #[test]
    fn bad_requests_get_a_coded_answer() {
        let e = read_request(&mut &b"GARBAGE\r\n\r\n"[..])
            .unwrap_err()
            .unwrap();
        assert_eq!(
            (e.status, e.body["error"]["code"].as_str()),
            (400, Some("bad-request"))
        );
        let e = read_request(&mut &b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"[..])
            .unwrap_err()
            .unwrap();
        assert_eq!(e.status, 413);
        assert!(
            read_request(&mut &b"GET / HTTP/1.1\r\n"[..])
                .unwrap_err()
                .is_none()
        );
    }

    #[test]
    fn a_response_is_exact_bytes() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &Response::json(202, serde_json::json!({"operation": "x"})),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 23\r\nConnection: close\r\n\r\n{\n  \"operation\": \"x\"\n}\n"
        );
    }
}
