//! The native server as a client and an operator see it: exact bytes on loopback, logs,
//! configuration errors and SIGTERM.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use util::{PATIENCE, Running, assert_hello, get, local, send};

fn start(env: &[(&str, &str)], args: &[&str]) -> (Running, std::net::SocketAddr) {
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "PORT") {
        env.push(("PORT", "0"));
    }
    let mut args = args.to_vec();
    args.extend(["--bind", "127.0.0.1", "--hostname", "hello-world-abc12"]);
    let mut server = Running::start(&args, &env);
    let port = server.listening_port();
    (server, local(port))
}

#[test]
fn every_method_and_path_gets_the_exact_answer() {
    let (mut server, addr) = start(&[], &[]);
    for path in ["/", "/healthz", "/some/unknown/path", "/index.html?x=1"] {
        assert_hello(&get(addr, path), "1.0.0", "hello-world-abc12");
    }
    let post = send(
        addr,
        "POST /form HTTP/1.1\r\nHost: lab\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello=world",
        false,
    );
    assert_hello(&post, "1.0.0", "hello-world-abc12");
    let brew = send(
        addr,
        "BREW /pot HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_hello(&brew, "1.0.0", "hello-world-abc12");
    server.wait_line("Serving request: /some/unknown/path");
    server.wait_line("Serving request: /pot");
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let (_server, addr) = start(&[], &[]);
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"HEAD / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").expect("a complete head");
    assert_eq!(body, "", "HEAD must not carry a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\ncontent-length: 57"), "{head}");
    assert!(
        lower.contains("\r\ncontent-type: text/plain; charset=utf-8"),
        "{head}"
    );
}

#[test]
fn go_servemux_corners_are_reproduced() {
    let (_server, addr) = start(&[], &[]);
    let redirect = get(addr, "/a/../b?q=1");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/b?q=1"));
    assert_eq!(
        redirect.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        redirect.body_str(),
        "<a href=\"/b?q=1\">Moved Permanently</a>.\n\n"
    );

    let options = send(
        addr,
        "OPTIONS * HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
        false,
    );
    assert_eq!((options.status, options.body.len()), (200, 0));
    assert_eq!(options.header("content-length"), Some("0"));

    let no_host = send(addr, "GET / HTTP/1.1\r\n\r\n", false);
    assert_eq!(no_host.status, 400);
    assert_eq!(no_host.header("connection"), Some("close"));
    assert_eq!(
        no_host.body_str(),
        "400 Bad Request: missing required Host header"
    );

    let http10 = send(addr, "GET / HTTP/1.0\r\n\r\n", false);
    assert_eq!(http10.version, 0);
    assert_hello(&http10, "1.0.0", "hello-world-abc12");
}

#[test]
fn version_two_is_chosen_by_env_or_flag() {
    let (_a, addr) = start(&[("HELLO_APP_VERSION", "2.0")], &[]);
    assert_hello(&get(addr, "/"), "2.0.0", "hello-world-abc12");
    let (_b, addr) = start(&[], &["--app-version", "2.0"]);
    assert_hello(&get(addr, "/"), "2.0.0", "hello-world-abc12");
}

#[test]
fn kernel_hostname_is_the_default() {
    let mut server = Running::start(&["--bind", "127.0.0.1"], &[("PORT", "0")]);
    let addr = local(server.listening_port());
    let want = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_hello(&get(addr, "/"), "1.0.0", want.trim_end());
}

#[test]
fn logs_use_the_originals_format_and_decoded_path() {
    let (mut server, addr) = start(&[], &[]);
    let listening = server.seen[0].clone();
    assert_go_log_line(
        &listening,
        &format!("Server listening on port {}", addr.port()),
    );
    get(addr, "/a/%20b?x=1");
    let line = server.wait_line("Serving request:");
    assert_go_log_line(&line, "Serving request: /a/ b");
}

/// `2026/11/25 02:15:35 <message>`: Go's `log` standard flags.
fn assert_go_log_line(line: &str, message: &str) {
    let (stamp, rest) = line.split_at(20);
    assert_eq!(rest, message, "{line}");
    let shape: String = stamp
        .chars()
        .map(|c| if c.is_ascii_digit() { '9' } else { c })
        .collect();
    assert_eq!(shape, "9999/99/99 99:99:99 ", "{line}");
}

#[test]
fn bad_port_is_one_line_naming_the_value() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hello-app"))
        .env("PORT", "eighty")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("invalid PORT \"eighty\""), "{stderr}");
}

#[test]
fn empty_port_means_8080_like_the_original() {
    // Checks the choice, not the bind: 8080 may be taken on the machine running the test, and
    // then the error names it instead of the `Server listening` line.
    let mut server = Running::start(&["--bind", "127.0.0.1"], &[("PORT", "")]);
    let line = server.wait_line("listening");
    assert!(line.contains("8080"), "{line}");
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits_zero() {
    let (mut server, addr) = start(&[], &[]);
    // An idle keep-alive connection must not hold the shutdown back.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /first HTTP/1.1\r\nHost: lab\r\n\r\n")
        .unwrap();
    util::read_response(&mut idle, false);

    // A request whose head has begun to arrive is in flight.
    let mut in_flight = TcpStream::connect(addr).unwrap();
    in_flight.set_read_timeout(Some(PATIENCE)).unwrap();
    in_flight
        .write_all(b"GET /slow HTTP/1.1\r\nHost: lab\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    server.terminate();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    in_flight.write_all(b"\r\n").unwrap();
    let resp = util::read_response(&mut in_flight, false);
    assert_hello(&resp, "1.0.0", "hello-world-abc12");

    let started = Instant::now();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0), "SIGTERM must exit 0");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        started.elapsed()
    );
}
