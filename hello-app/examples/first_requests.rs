//! Sends one request to each of many fresh wasm-hosted Pods, without sockets, to profile what
//! a Pod's first request costs (its instance is created then):
//! `perf record target/release/examples/first_requests 1000`.

use std::time::Instant;

use bytes::Bytes;
use hello_app::wasm_host::{HostConfig, PodLog, PodSpec, WasmHost};
use http_body_util::{BodyExt, Empty};

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let host = WasmHost::new(HostConfig {
            max_instances: n + 16,
            ..HostConfig::default()
        })
        .unwrap();
        let pods: Vec<_> = (0..n)
            .map(|i| host.pod(PodSpec::new(format!("pod-{i}")).log(PodLog::Discard)))
            .collect();
        let local = "127.0.0.1:8080".parse().unwrap();
        let request = || {
            hyper::Request::get("/")
                .header("host", "lab")
                .body(Empty::<Bytes>::new())
                .unwrap()
        };
        let started = Instant::now();
        for pod in &pods {
            let response = pod.handle(request(), local).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(body.starts_with(b"Hello, world!"));
        }
        let first = started.elapsed() / n;
        let started = Instant::now();
        for pod in &pods {
            let response = pod.handle(request(), local).await;
            response.into_body().collect().await.unwrap();
        }
        let second = started.elapsed() / n;
        println!("{n} Pods: first request {first:?}, second {second:?} per Pod");
    });
}
