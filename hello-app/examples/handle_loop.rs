//! Calls one wasm-hosted Pod in a loop, without sockets, to profile what the host and the
//! component cost per request (`perf record target/release/examples/handle_loop`).

use std::time::Instant;

use bytes::Bytes;
use hello_app::wasm_host::{HostConfig, PodLog, PodSpec, WasmHost};
use http_body_util::{BodyExt, Empty};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = WasmHost::new(HostConfig::default()).unwrap();
        let pod = host.pod(PodSpec::new("loop").log(PodLog::Discard));
        let local = "127.0.0.1:8080".parse().unwrap();
        let request = || {
            hyper::Request::get("/")
                .header("host", "lab")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        for _ in 0..1000 {
            pod.handle(request(), local).await;
        }
        let started = Instant::now();
        for _ in 0..n {
            let response = pod.handle(request(), local).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 44);
        }
        let per = started.elapsed() / n;
        println!("{n} requests, {per:?} per request in process");
    });
}
