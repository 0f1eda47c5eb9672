//! API benchmark: 1,000 Services and a Deployment of 1,000 replicas on the embedded lab
//! cluster (durable SQLite store, TLS, the real controllers), then API latency under that load.
//! Service `svc-<i>` selects `app=svc-<i>` (each its own, empty backend, as in a cluster of many
//! apps); the Service `hello-world` selects the Deployment's 1,000 Pods.
//! Loopback only; bounded in time. The last line is one JSON object of the headline figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use labapi::Kind;
use labctl::apiserver::{self, ServeOptions};
use labctl::cluster::ClusterConfig;
use labctl::controllers::{self, ApiOnlyRuntime};
use labctl::pki::Credentials;
use labctl::store::Store;
use serde_json::json;

const SERVICES: usize = 1000;
const REPLICAS: i64 = 1000;
const LIMIT: Duration = Duration::from_secs(120);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(&dir.path().join("store.sqlite"))?);
    // Five workers: each node's /24 pod CIDR holds 253 Pods, as on kind.
    let cluster = ClusterConfig::new("bench", 5);
    let api = Arc::new(apiserver::Api::new(store.clone(), cluster));
    labctl::lab::seed(&api)?;
    controllers::start(api.clone(), Arc::new(ApiOnlyRuntime));
    let creds = Credentials::generate()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let opts = ServeOptions {
        tls: creds.server_config()?,
        token: creds.token.clone(),
        address: format!("127.0.0.1:{port}"),
    };
    tokio::spawn(apiserver::serve(
        api.clone(),
        listener,
        opts,
        std::future::pending(),
    ));
    let kubeconfig = labctl::lab::kubeconfig("bench", port, &creds);
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");

    // 1,000 Services, 8 at a time.
    let started = Instant::now();
    let mut names: Vec<String> = (1..SERVICES).map(|i| format!("svc-{i}")).collect();
    names.push("hello-world".to_string());
    futures::stream::iter(names.iter().map(|name| {
        let svcs = svcs.clone();
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
        }))
        .expect("valid service");
        async move { svcs.create(&PostParams::default(), &svc).await.map(|_| ()) }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let services_created = started.elapsed();
    eprintln!(
        "created {SERVICES} services in {:.0} ms",
        ms(services_created)
    );

    // A Deployment of 1,000 replicas: until every Pod is Ready in the API, and until every
    // Service's slices list all 1,000 ready endpoints.
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "hello-world"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": "hello-world"}},
            "template": {"metadata": {"labels": {"app": "hello-world"}},
                "spec": {"containers": [{"name": "hello-world", "image": "gcr.io/google-samples/hello-app:1.0", "ports": [{"containerPort": 8080}]}]}},
        },
    }))?;
    let started = Instant::now();
    Api::<Deployment>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &deploy)
        .await?;
    let ready_endpoints = |name: &str| -> usize {
        store
            .list(Kind::EndpointSlice, Some("default"))
            .0
            .iter()
            .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name)
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter(|e| e["conditions"]["ready"] == true)
            .count()
    };
    let mut pods_ready = None;
    loop {
        if pods_ready.is_none() {
            let d = store
                .get(Kind::Deployment, "default", "hello-world")
                .expect("deployment");
            if d["status"]["readyReplicas"].as_i64() == Some(REPLICAS) {
                pods_ready = Some(started.elapsed());
            }
        }
        if pods_ready.is_some() && ready_endpoints("hello-world") == REPLICAS as usize {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "the Deployment did not become ready within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pods_ready = pods_ready.expect("set above");
    let slices_complete = started.elapsed();
    eprintln!(
        "{REPLICAS} pods ready in {:.0} ms, all slices complete in {:.0} ms",
        ms(pods_ready),
        ms(slices_complete)
    );

    // Let the controllers finish what follows (Events are written when they are idle), so
    // that the latencies below are those of a cluster holding this many objects.
    let mut last = store.resource_version();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = store.resource_version();
        if now == last {
            break;
        }
        last = now;
        anyhow::ensure!(
            started.elapsed() < LIMIT,
            "the controllers did not settle within {LIMIT:?}"
        );
    }
    eprintln!(
        "settled at resourceVersion {last} after {:.0} ms",
        ms(started.elapsed())
    );

    // Latency under that load (1,000 Services, 1,000 Pods, ~1,000 slices stored).
    let mut get = Histogram::<u64>::new(3)?;
    for i in 0..500 {
        let t = Instant::now();
        svcs.get(&format!("svc-{}", 1 + i % (SERVICES - 1))).await?;
        get.record(t.elapsed().as_micros() as u64)?;
    }
    // List latency as the API serves it (request to last byte), and as a typed kube-rs client
    // sees it (plus decoding 1,000 Services into k8s-openapi structs).
    let mut list = Histogram::<u64>::new(3)?;
    let mut list_typed = Histogram::<u64>::new(3)?;
    for _ in 0..50 {
        let t = Instant::now();
        let req = http::Request::get("/api/v1/namespaces/default/services").body(Vec::new())?;
        let text = client.request_text(req).await?;
        list.record(t.elapsed().as_micros() as u64)?;
        let count = text.matches("\"kind\":\"Service\"").count();
        anyhow::ensure!(count == SERVICES + 1, "list returned {count}");
        let t = Instant::now();
        let l = svcs.list(&ListParams::default()).await?;
        anyhow::ensure!(
            l.items.len() == SERVICES + 1,
            "list returned {}",
            l.items.len()
        );
        list_typed.record(t.elapsed().as_micros() as u64)?;
    }
    // Watch delivery: from a create's answer to the event reaching a watcher.
    let rv = svcs
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = svcs
        .watch(&WatchParams::default().labels("bench=watch"), &rv)
        .await?
        .boxed();
    let mut watch = Histogram::<u64>::new(3)?;
    for i in 0..100 {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": format!("watched-{i}"), "labels": {"bench": "watch"}},
            "spec": {"ports": [{"port": 80}]},
        }))?;
        let t = Instant::now();
        svcs.create(&PostParams::default(), &svc).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await? {
                Some(Ok(WatchEvent::Added(_))) => break,
                Some(Ok(_)) => continue,
                other => anyhow::bail!("watch ended: {other:?}"),
            }
        }
        watch.record(t.elapsed().as_micros() as u64)?;
    }
    let figures = json!({
        "services": SERVICES,
        "replicas": REPLICAS,
        "services_created_ms": ms(services_created).round(),
        "pods_ready_ms": ms(pods_ready).round(),
        "slices_complete_ms": ms(slices_complete).round(),
        "get_p50_ms": pct(&get, 0.5), "get_p99_ms": pct(&get, 0.99),
        "list_1000_services_p50_ms": pct(&list, 0.5), "list_1000_services_p99_ms": pct(&list, 0.99),
        "list_1000_services_typed_client_p99_ms": pct(&list_typed, 0.99),
        "watch_create_to_event_p50_ms": pct(&watch, 0.5), "watch_create_to_event_p99_ms": pct(&watch, 0.99),
        "goal_pods_ready_ms": 1000, "goal_list_p99_ms": 20,
    });
    println!("{figures}");
    Ok(())
}
