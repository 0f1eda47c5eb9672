//! Helpers for hello-app's integration tests: a raw HTTP/1.x client (so tests see the exact
//! bytes a server writes) and a runner for the `hello-app` binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Bounds every wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A parsed response: status, headers in arrival order (names lower-cased), body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    pub version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Header names, sorted, for exact comparisons (hyper's order differs from Go's).
    pub fn header_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        names
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

/// Sends `request` as written and reads one response (`head_only` for HEAD, which has no body
/// whatever its Content-Length says).
pub fn send(addr: SocketAddr, request: &str, head_only: bool) -> RawResponse {
    let mut stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request.as_bytes()).expect("write request");
    read_response(&mut stream, head_only)
}

/// Reads one response from `stream`.
pub fn read_response(stream: &mut TcpStream, head_only: bool) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = parsed.parse(&buf).expect("valid response") {
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let status = parsed.code.unwrap();
            let version = parsed.version.unwrap();
            let length = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse::<usize>().unwrap());
            let mut body = buf[head_len..].to_vec();
            if !head_only {
                match length {
                    Some(n) => {
                        while body.len() < n {
                            let got = stream.read(&mut chunk).expect("read body");
                            assert!(got > 0, "connection closed mid-body");
                            body.extend_from_slice(&chunk[..got]);
                        }
                    }
                    None => {
                        stream.read_to_end(&mut body).expect("read body to close");
                    }
                }
            }
            return RawResponse {
                version,
                status,
                headers,
                body,
            };
        }
        let got = stream.read(&mut chunk).expect("read head");
        assert!(
            got > 0,
            "connection closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// `GET path` over HTTP/1.1 with a Host header.
pub fn get(addr: SocketAddr, path: &str) -> RawResponse {
    send(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"),
        false,
    )
}

/// Asserts the exact answer of the app: status, the three headers and the body bytes.
pub fn assert_hello(resp: &RawResponse, version: &str, hostname: &str) {
    let body = format!("Hello, world!\nVersion: {version}\nHostname: {hostname}\n");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.body_str(), body);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        resp.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    let date = resp.header("date").expect("a Date header");
    assert!(date.ends_with(" GMT"), "HTTP date: {date}");
    // `Connection: close` is echoed when the client asked for it or the server is draining,
    // as Go's server does; nothing else may be there.
    let mut names = resp.header_names();
    names.retain(|n| !(*n == "connection" && resp.header("connection") == Some("close")));
    assert_eq!(
        names,
        ["content-length", "content-type", "date"],
        "{resp:?}"
    );
}

/// A `hello-app` process whose stderr lines are collected; killed on drop.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `hello-app args...` with `env`, without RUST_BACKTRACE from the caller.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hello-app"));
        cmd.args(args)
            .env_remove("PORT")
            .env_remove("HELLO_APP_VERSION")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start hello-app");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the next stderr line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no stderr line with {needle:?}; saw {:?}", self.seen),
            }
        }
    }

    /// The port of the next `Server listening on port N` line.
    pub fn listening_port(&mut self) -> u16 {
        let line = self.wait_line("Server listening on port ");
        line.rsplit(' ').next().unwrap().parse().expect("a port")
    }

    /// Sends SIGTERM (as Kubernetes does on Pod deletion).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits, bounded, for the process to exit.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "hello-app did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
