//! The embedded wasm host on loopback: exact bytes from the component, one process serving
//! several Pods with their own host names, instance reuse, traps, logs and the artifact cache.

mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hello_app::respond::AppVersion;
use hello_app::wasm_host::{HostConfig, LogBuffer, Pod, PodLog, PodSpec, WasmHost, cache};
use util::{Running, assert_hello, get, local, send};

/// Compiled components shared by these tests, so only the first compiles.
fn test_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wasm-cache")
}

fn host() -> WasmHost {
    WasmHost::new(HostConfig {
        cache_dir: Some(test_cache()),
        ..HostConfig::default()
    })
    .expect("the host starts")
}

/// Pods served on loopback by a one-thread runtime on its own thread, as the binary does.
struct Served {
    addrs: Vec<SocketAddr>,
    pods: Vec<Pod>,
    stop: Option<tokio::sync::broadcast::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn serve(host: &WasmHost, specs: Vec<PodSpec>) -> Served {
    let pods: Vec<Pod> = specs.into_iter().map(|s| host.pod(s)).collect();
    let (stop, _) = tokio::sync::broadcast::channel(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_pods = pods.clone();
    let thread_stop = stop.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut addrs = Vec::new();
            for pod in thread_pods {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addrs.push(listener.local_addr().unwrap());
                let mut stopped = thread_stop.subscribe();
                tasks.spawn(async move {
                    pod.serve(listener, async move {
                        let _ = stopped.recv().await;
                    })
                    .await
                });
            }
            ready_tx.send(addrs).unwrap();
            while let Some(done) = tasks.join_next().await {
                done.unwrap().unwrap();
            }
        });
    });
    let addrs = ready_rx
        .recv_timeout(util::PATIENCE)
        .expect("pods listening");
    Served {
        addrs,
        pods,
        stop: Some(stop),
        thread: Some(thread),
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn two_pods_in_one_process_answer_with_their_own_names() {
    let host = host();
    let served = serve(
        &host,
        vec![
            PodSpec::new("hello-world-6d8f9-abcde").log(PodLog::Discard),
            PodSpec::new("hello-world-6d8f9-fghij").log(PodLog::Discard),
        ],
    );
    for _ in 0..3 {
        assert_hello(
            &get(served.addrs[0], "/"),
            "1.0.0",
            "hello-world-6d8f9-abcde",
        );
        assert_hello(
            &get(served.addrs[1], "/x/y"),
            "1.0.0",
            "hello-world-6d8f9-fghij",
        );
    }
}

#[test]
fn methods_paths_and_protocol_corners_match_the_native_server() {
    let host = host();
    let served = serve(&host, vec![PodSpec::new("pod-a").log(PodLog::Discard)]);
    let addr = served.addrs[0];
    for path in ["/", "/healthz", "/unknown?q=1"] {
        assert_hello(&get(addr, path), "1.0.0", "pod-a");
    }
    let post = send(
        addr,
        "POST /p HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        false,
    );
    assert_hello(&post, "1.0.0", "pod-a");
    let head = send(
        addr,
        "HEAD / HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n",
        true,
    );
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("45"));
    assert!(head.body.is_empty());

    let redirect = get(addr, "/a/../b?q=1");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location"), Some("/b?q=1"));
    assert_eq!(
        redirect.body_str(),
        "<a href=\"/b?q=1\">Moved Permanently</a>.\n\n"
    );

    let no_host = send(addr, "GET / HTTP/1.1\r\n\r\n", false);
    assert_eq!(no_host.status, 400);
    assert_eq!(
        no_host.body_str(),
        "400 Bad Request: missing required Host header"
    );
    let http10 = send(addr, "GET / HTTP/1.0\r\n\r\n", false);
    assert_hello(&http10, "1.0.0", "pod-a");
}

#[test]
fn version_two_pods_say_so() {
    let host = host();
    let served = serve(
        &host,
        vec![
            PodSpec::new("v2")
                .version(AppVersion::V2)
                .log(PodLog::Discard),
        ],
    );
    assert_hello(&get(served.addrs[0], "/"), "2.0.0", "v2");
}

#[test]
fn instances_are_reused_across_requests() {
    let host = host();
    let served = serve(&host, vec![PodSpec::new("reuse").log(PodLog::Discard)]);
    let mut stream = std::net::TcpStream::connect(served.addrs[0]).unwrap();
    stream.set_read_timeout(Some(util::PATIENCE)).unwrap();
    for _ in 0..200 {
        use std::io::Write;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: lab\r\n\r\n")
            .unwrap();
        assert_hello(&util::read_response(&mut stream, false), "1.0.0", "reuse");
    }
    let stats = served.pods[0].stats();
    assert_eq!(stats.requests, 200);
    assert_eq!(stats.instances_created, 1, "{stats:?}");
    assert_eq!(stats.failures, 0);
}

#[test]
fn a_warmed_pod_has_its_instance_before_the_first_request() {
    let host = host();
    let served = serve(&host, vec![PodSpec::new("warm").log(PodLog::Discard)]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(served.pods[0].warm()).unwrap();
    runtime.block_on(served.pods[0].warm()).unwrap();
    assert_eq!(served.pods[0].stats().instances_created, 1, "warmed once");
    assert_hello(&get(served.addrs[0], "/"), "1.0.0", "warm");
    let stats = served.pods[0].stats();
    assert_eq!(
        (stats.requests, stats.instances_created),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn a_trapping_guest_answers_500_and_the_host_keeps_serving() {
    let host = host();
    // A zero request timeout interrupts the guest at its first epoch check: a real trap.
    let served = serve(
        &host,
        vec![
            PodSpec::new("trapping")
                .request_timeout(Duration::ZERO)
                .log(PodLog::Discard),
            PodSpec::new("healthy").log(PodLog::Discard),
        ],
    );
    for round in 0..3 {
        let failed = get(served.addrs[0], "/");
        assert_eq!(failed.status, 500, "round {round}: {failed:?}");
        assert_eq!(failed.body_str(), "Internal Server Error\n");
        assert_hello(&get(served.addrs[1], "/"), "1.0.0", "healthy");
    }
    assert_eq!(served.pods[0].stats().failures, 3);
    assert_eq!(served.pods[1].stats().failures, 0);
}

#[test]
fn each_pod_logs_its_own_requests_like_the_original() {
    let host = host();
    let log = LogBuffer::new(1 << 16);
    let served = serve(
        &host,
        vec![
            PodSpec::new("logged").log(PodLog::Memory(log.clone())),
            PodSpec::new("quiet").log(PodLog::Discard),
        ],
    );
    get(served.addrs[0], "/a/%20b?x=1");
    get(served.addrs[1], "/other");
    let text = String::from_utf8(log.contents().to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(lines[0].ends_with(" Serving request: /a/ b"), "{text}");
    assert_eq!(
        lines[0].len(),
        "2026/11/25 02:15:35 Serving request: /a/ b".len()
    );
}

#[test]
fn a_full_log_drops_its_oldest_lines_and_the_pod_keeps_serving() {
    let host = host();
    // Room for about three lines ("2026/11/25 02:15:35 Serving request: /n" is 40 bytes).
    let log = LogBuffer::new(130);
    let served = serve(
        &host,
        vec![PodSpec::new("logged").log(PodLog::Memory(log.clone()))],
    );
    for i in 0..20 {
        let resp = get(served.addrs[0], &format!("/{i:02}"));
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
    }
    let text = String::from_utf8(log.contents()).unwrap();
    let paths: Vec<&str> = text
        .lines()
        .map(|l| l.rsplit_once("Serving request: ").unwrap().1)
        .collect();
    assert_eq!(paths, ["/17", "/18", "/19"], "{text}");
    assert_eq!(served.pods[0].stats().failures, 0);
}

#[test]
fn compiled_component_is_cached_by_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let config = HostConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let first = WasmHost::new(config.clone()).unwrap();
    let path = cache::artifact_path(
        first.engine(),
        hello_app::wasm_host::BUILTIN_COMPONENT,
        dir.path(),
    );
    let written = std::fs::read(&path).expect("the artifact is cached");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();

    let second = WasmHost::new(config.clone()).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        modified,
        "reused, not rewritten"
    );
    let served = serve(&second, vec![PodSpec::new("cached").log(PodLog::Discard)]);
    assert_hello(&get(served.addrs[0], "/"), "1.0.0", "cached");

    // A damaged artifact is ignored, recompiled and replaced.
    std::fs::write(&path, b"not a component").unwrap();
    let third = WasmHost::new(config).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), written);
    drop((first, third));
}

#[test]
fn cli_serves_several_pods_and_exits_zero_on_sigterm() {
    let cache = test_cache();
    let mut server = Running::start(
        &[
            "wasm",
            "--pod",
            "hello-a=127.0.0.1:0",
            "--pod",
            "hello-b=127.0.0.1:0",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    let a = local(server.listening_port());
    let b = local(server.listening_port());
    assert_hello(&get(a, "/"), "1.0.0", "hello-a");
    assert_hello(&get(b, "/"), "1.0.0", "hello-b");
    server.wait_line("Serving request: /");
    server.terminate();
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn cli_rejects_a_malformed_pod() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hello-app"))
        .args(["wasm", "--pod", "no-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("expected NAME=ADDRESS, got \"no-address\""),
        "{stderr}"
    );
}
