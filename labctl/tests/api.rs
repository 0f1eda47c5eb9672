//! The lab's API through kube-rs and raw HTTP: bad input is refused and changes nothing,
//! watches resume across a restart, acknowledged writes survive `kill -9`, and the
//! EndpointSlice controller keeps ready endpoints in place.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use support::Lab;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap()
}

fn status_of(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other}"),
    }
}

async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .body(body)
        .unwrap();
    match client.request_text(req).await {
        Ok(text) => (200, text),
        Err(e) => {
            let (code, reason, message) = status_of(e);
            (code, format!("{reason}: {message}"))
        }
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let lab = Lab::start();
    let client = lab.client().await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = svcs
        .create(&PostParams::default(), &service("web"))
        .await
        .unwrap();
    // Services and their versions: the controllers write slices and Events meanwhile, so
    // the store's own resourceVersion moves on by itself.
    let services = |list: kube::core::ObjectList<Service>| -> Vec<(String, String)> {
        list.items
            .into_iter()
            .map(|s| {
                (
                    s.metadata.name.unwrap_or_default(),
                    s.metadata.resource_version.unwrap_or_default(),
                )
            })
            .collect()
    };
    let before = services(svcs.list(&ListParams::default()).await.unwrap());

    let (code, text) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        "application/json",
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(code, 400, "{text}");
    let (code, text) = raw(
        &client,
        "POST",
        "/api/v1/namespaces/default/services",
        "application/json",
        vec![b' '; 4 * 1024 * 1024],
    )
    .await;
    assert_eq!(code, 413, "{text}");

    let mut bad_port = service("bad");
    bad_port.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 70000;
    let (code, reason, message) = status_of(
        svcs.create(&PostParams::default(), &bad_port)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert_eq!(
        message,
        r#"Service "bad" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"#
    );

    let (code, reason, _) = status_of(
        svcs.create(&PostParams::default(), &service("Not_A_Name"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    let mut stale = created.clone();
    stale.metadata.resource_version = Some("1".into());
    stale.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let (code, reason, _) = status_of(
        svcs.replace("web", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    let (code, reason, _) = status_of(
        svcs.create(&PostParams::default(), &service("web"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // No credentials: 401, and nothing is revealed.
    let text = std::fs::read_to_string(lab.kubeconfig()).unwrap();
    let token_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("token:"))
        .unwrap();
    let forged = text.replace(token_line, "    token: not-the-token");
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&forged).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let intruder: Api<Service> =
        Api::namespaced(kube::Client::try_from(config).unwrap(), "default");
    let (code, reason, _) = status_of(intruder.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));

    let after = services(svcs.list(&ListParams::default()).await.unwrap());
    assert_eq!(
        after, before,
        "a refused request changed the stored Services"
    );
    assert_eq!(after.len(), 2, "kubernetes and web: {after:?}");
}

/// The next object name; watch errors (a 410 after the restart) are skipped, since the
/// watcher relists after them.
async fn next(
    names: &mut futures::stream::BoxStream<'static, Result<String, watcher::Error>>,
) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), names.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
        {
            Ok(name) => return name,
            Err(e) => eprintln!("watch error (the watcher retries): {e}"),
        }
    }
}

#[tokio::test]
async fn a_kube_rs_watcher_lists_watches_and_resumes_after_a_restart() {
    let lab = Lab::start();
    let svcs: Api<Service> = Api::namespaced(lab.client().await, "default");
    let mut names = watcher(svcs.clone(), watcher::Config::default().timeout(5))
        .default_backoff()
        .try_filter_map(|e| async move {
            Ok(match e {
                watcher::Event::Apply(s) | watcher::Event::InitApply(s) => s.metadata.name,
                _ => None,
            })
        })
        .boxed();
    assert_eq!(next(&mut names).await, "kubernetes");
    svcs.create(&PostParams::default(), &service("first"))
        .await
        .unwrap();
    assert_eq!(next(&mut names).await, "first");

    lab.kill9();
    lab.up();
    let svcs: Api<Service> = Api::namespaced(lab.client().await, "default");
    svcs.create(&PostParams::default(), &service("second"))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.contains(&"second".to_string()) {
        seen.push(next(&mut names).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let lab = Lab::start();
    let svcs: Api<Service> = Api::namespaced(lab.client().await, "default");
    let writer = {
        let svcs = svcs.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..2000 {
                let name = format!("svc-{i}");
                match svcs.create(&PostParams::default(), &service(&name)).await {
                    Ok(_) => acknowledged.push(name),
                    Err(_) => break,
                }
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let lab_ref = &lab;
    tokio::task::block_in_place(|| lab_ref.kill9());
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() > 10 && acknowledged.len() < 2000,
        "the kill landed mid-stream ({} writes)",
        acknowledged.len()
    );
    lab.up();
    let svcs: Api<Service> = Api::namespaced(lab.client().await, "default");
    let stored: std::collections::HashSet<String> = svcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !stored.contains(*n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test]
async fn paging_dry_run_and_the_three_patch_types() {
    use kube::api::{DeleteParams, Patch, PatchParams};
    let lab = Lab::start();
    let svcs: Api<Service> = Api::namespaced(lab.client().await, "default");
    for name in ["a", "b", "c"] {
        svcs.create(&PostParams::default(), &service(name))
            .await
            .unwrap();
    }
    // limit / continue walk the sorted list page by page.
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    loop {
        let page = svcs.list(&params).await.unwrap();
        names.extend(page.items.into_iter().filter_map(|s| s.metadata.name));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "kubernetes"]);

    // dryRun answers with the would-be object and stores nothing.
    let dry = svcs
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &service("dry"),
        )
        .await
        .unwrap();
    assert!(
        dry.spec
            .unwrap()
            .cluster_ip
            .is_some_and(|ip| ip.starts_with("10."))
    );
    assert!(svcs.get_opt("dry").await.unwrap().is_none());
    svcs.delete(
        "a",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(svcs.get_opt("a").await.unwrap().is_some());

    // Strategic merge merges ports by `port`; merge patch replaces the list; JSON patch edits it.
    let pp = PatchParams::default();
    let smp = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 81, "name": "alt", "targetPort": 8081}]}});
    let s = svcs.patch("a", &pp, &Patch::Strategic(&smp)).await.unwrap();
    let ports: Vec<i32> = s
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    let merge = json!({"metadata": {"labels": {"tier": "web"}}});
    let s = svcs.patch("a", &pp, &Patch::Merge(&merge)).await.unwrap();
    assert_eq!(s.metadata.labels.unwrap()["tier"], "web");
    let ops: json_patch::Patch = serde_json::from_value(
        json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 90}]),
    )
    .unwrap();
    let s = svcs.patch("a", &pp, &Patch::<()>::Json(ops)).await.unwrap();
    assert_eq!(s.spec.unwrap().ports.unwrap()[0].port, 90);
    // A patch that breaks validation is refused with the field named.
    let bad = json!({"spec": {"type": "Balanced"}});
    let (code, _, message) =
        status_of(svcs.patch("a", &pp, &Patch::Merge(&bad)).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.type: Unsupported value: \"Balanced\""),
        "{message}"
    );
}

#[test]
fn a_taken_api_port_is_explained_and_the_lab_kept() {
    let lab = Lab::start();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.state().join("config.json")).expect("config.json"),
    )
    .expect("JSON");
    let port = config["port"].as_u64().expect("port") as u16;
    let down = support::labctl(&["down", "--name", &lab.name], lab.dir.path());
    assert!(down.status.success());
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).expect("taking the port");
    let up = support::labctl(&["up", "--name", &lab.name], lab.dir.path());
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(!up.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("serves its API on 127.0.0.1:{port}"))
            && stderr.contains("but that port is taken")
            && stderr.contains("--purge"),
        "{stderr}"
    );
    // Nothing was lost: the stored objects are still there.
    assert!(lab.state().join("store.sqlite").exists());
}

/// Ready endpoints (by IP) of every slice, as a watcher sees them.
fn ready_ips(
    slices: &std::collections::BTreeMap<String, EndpointSlice>,
) -> std::collections::BTreeSet<String> {
    slices
        .values()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| e.addresses.first().cloned())
        .collect()
}

/// Also: the Endpoints mirror follows the slices, and a slice a client empties is put back.
#[tokio::test]
async fn a_ready_endpoint_never_leaves_the_slices_while_others_come_and_go() {
    let lab = Lab::start();
    let client = lab.client().await;
    let replicas = 500;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "many"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "many"}},
                 "template": {"metadata": {"labels": {"app": "many"}},
                              "spec": {"containers": [{"name": "c", "image": "gcr.io/google-samples/hello-app:1.0", "ports": [{"containerPort": 8080}]}]}}},
    }))
    .unwrap();
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "many"},
        "spec": {"selector": {"app": "many"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(
        slices.clone(),
        watcher::Config::default().labels("kubernetes.io/service-name=many"),
    )
    .boxed();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    // Five slices fill up as the Pods get ready; then Pods are deleted and replaced. Every
    // state the watcher sees must hold every endpoint that was ready before and still is
    // (a deleted Pod's endpoint may go).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut state = std::collections::BTreeMap::new();
    let mut kept: std::collections::BTreeSet<String> = Default::default();
    let mut gone: std::collections::BTreeSet<String> = Default::default();
    let mut deleted = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while deleted < 5 || ready_ips(&state).len() < replicas {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("the slices settle within a minute")
            .unwrap()
            .unwrap();
        match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                state.insert(s.metadata.name.clone().unwrap(), s);
            }
            watcher::Event::Delete(s) => {
                state.remove(s.metadata.name.as_deref().unwrap());
            }
            _ => continue,
        }
        let ready = ready_ips(&state);
        let missing: Vec<&String> = kept.difference(&ready).collect();

        assert!(
            missing.is_empty(),
            "{} ready endpoints left the slices: {missing:?}",
            missing.len()
        );
        // A deleted Pod's endpoint may still be ready in events that were on their way.
        kept = ready.difference(&gone).cloned().collect();
        if ready.len() == replicas && deleted < 5 {
            let list = pods
                .list(&ListParams::default().labels("app=many"))
                .await
                .unwrap();
            let victim = list
                .items
                .iter()
                .find(|p| p.metadata.deletion_timestamp.is_none())
                .unwrap();
            let ip = victim.status.as_ref().unwrap().pod_ip.clone().unwrap();
            pods.delete(
                victim.metadata.name.as_deref().unwrap(),
                &Default::default(),
            )
            .await
            .unwrap();
            kept.remove(&ip);
            gone.insert(ip);
            deleted += 1;
        }
    }

    // The Endpoints object follows the slices (after them, for readers): the same ready
    // addresses once the replacements are ready and the deleted Pods gone.
    let endpoints: Api<Endpoints> = Api::namespaced(client, "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=many"))
            .await
            .unwrap();
        let in_slices = ready_ips(
            &listed
                .items
                .into_iter()
                .map(|s| (s.metadata.name.clone().unwrap(), s))
                .collect(),
        );
        let mirror = endpoints.get("many").await.unwrap();
        let subsets = mirror.subsets.iter().flatten();
        let mut in_mirror: Vec<String> = subsets
            .clone()
            .flat_map(|s| s.addresses.iter().flatten())
            .map(|a| a.ip.clone())
            .collect();
        in_mirror.sort();
        let not_ready = subsets
            .flat_map(|s| s.not_ready_addresses.iter().flatten())
            .count();
        let in_slices: Vec<String> = in_slices.into_iter().collect();
        if in_mirror == in_slices && in_slices.len() == replicas && not_ready == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 30 s the Endpoints list {} ready and {not_ready} not-ready addresses, the slices {} ready",
            in_mirror.len(),
            in_slices.len(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A client that empties a slice the controller manages sees it put back, as Kubernetes'
    // EndpointSlice controller does.
    let listed = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=many"))
        .await
        .unwrap();
    let victim = listed.items[0].metadata.name.clone().unwrap();
    let held = listed.items[0].endpoints.len();
    let emptied = json!({"endpoints": []});
    slices
        .patch(&victim, &PatchParams::default(), &Patch::Merge(&emptied))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = slices.get(&victim).await.unwrap().endpoints.len();
        if now == held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{victim} holds {now} endpoints 10 s after a client emptied it, not {held}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
