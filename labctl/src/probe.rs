//! `labctl verify`'s I/O: which address of a Service to send to from a given place, which
//! Pods are Ready behind it (from the lab's API), and the run of requests itself. The verdict
//! is [`crate::verify`]'s.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::ListParams;

use crate::lab::{LabConfig, LabDir};
use crate::reach::{Origin, Reach};
use crate::verify::{self, Report, Tally};

/// How long to wait for a Service's first answer before the counted requests.
const WARM_UP: Duration = Duration::from_secs(10);

/// What to verify.
#[derive(Debug, Clone)]
pub struct Request {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// Which of its ports (the first when `None`).
    pub port: Option<u16>,
    /// Where the requests start.
    pub origin: Origin,
    /// How many.
    pub requests: u32,
    /// The uniformity test's significance level.
    pub significance: f64,
}

/// `svc/NAME`, `service/NAME`, `services/NAME` or `NAME`.
pub fn parse_service(text: &str) -> Result<String> {
    let name = match text.split_once('/') {
        Some(("svc" | "service" | "services", name)) => name,
        Some((kind, _)) => bail!("{text:?} is not a Service: write svc/<name> (got kind {kind:?})"),
        None => text,
    };
    if name.is_empty() {
        bail!("{text:?} names no Service: write svc/<name>");
    }
    Ok(name.to_string())
}

/// A kube-rs client for lab `dir`.
pub async fn client(dir: &LabDir) -> Result<kube::Client> {
    let path = dir.kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("using {}", path.display()))?;
    kube::Client::try_from(config).context("building the API client")
}

/// Sends the requests and judges the answers.
pub async fn verify(dir: &LabDir, config: &LabConfig, request: &Request) -> Result<Report> {
    let place = Reach::new(dir, &request.origin)?;
    let client = client(dir).await?;
    let services: kube::Api<Service> = kube::Api::namespaced(client.clone(), &request.namespace);
    let service = match services.get(&request.name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => bail!(
            "service {:?} not found in namespace {:?} (`kubectl get svc -n {}` lists them)",
            request.name,
            request.namespace,
            request.namespace
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "getting service {:?} in namespace {:?}",
                    request.name, request.namespace
                )
            });
        }
    };
    let target = target(&service, config, request)?;
    let ready = ready_pods(&client, &service, &request.namespace).await?;
    let (count, timeout) = (request.requests, Duration::from_secs(3));
    let what = format!("svc/{} via {target} from {}", request.name, place.place);
    let significance = request.significance;
    tokio::task::spawn_blocking(move || {
        // A Service exposed a moment ago answers once the dataplanes have synced (kube-proxy
        // takes a moment too): wait for a first answer, bounded, before the counted run.
        let started = std::time::Instant::now();
        while started.elapsed() < WARM_UP
            && place
                .get_many(target, 1, Duration::from_millis(500))
                .pop()
                .is_none_or(|r| r.is_err())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        verify::judge_confirmed(&what, &ready, significance, || {
            Tally::of(place.get_many(target, count, timeout), |e| {
                format!("{}: {e}", place.describe(target))
            })
        })
    })
    .await
    .context("the request loop")
}

/// The address requests from `request.origin` go to: the ClusterIP from a node (or the host
/// in userspace mode), else the LoadBalancer address, else a node's NodePort.
fn target(service: &Service, config: &LabConfig, request: &Request) -> Result<SocketAddr> {
    let spec = service.spec.clone().unwrap_or_default();
    let ports = spec.ports.clone().unwrap_or_default();
    let port = match request.port {
        Some(p) => ports
            .iter()
            .find(|sp| sp.port == i32::from(p))
            .with_context(|| {
                format!(
                    "service {:?} has no port {p}; its ports are {}",
                    request.name,
                    ports
                        .iter()
                        .map(|p| p.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
        None => ports
            .first()
            .with_context(|| format!("service {:?} has no ports", request.name))?,
    };
    let service_port = u16::try_from(port.port).context("the service port")?;
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    if matches!(request.origin, Origin::Node(_) | Origin::Host) {
        let ip = cluster_ip.with_context(|| {
            format!(
                "service {:?} has no ClusterIP (headless?); nothing to send to",
                request.name
            )
        })?;
        return Ok(SocketAddr::from((ip, service_port)));
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.as_deref())
        .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    if let Some(ip) = ingress {
        return Ok(SocketAddr::from((ip, service_port)));
    }
    if let Some(node_port) = port.node_port {
        let node = config
            .cluster
            .nodes
            .iter()
            .find(|n| !n.control_plane)
            .context("the lab has no worker node")?;
        return Ok(SocketAddr::from((
            node.internal_ip,
            u16::try_from(node_port).context("the nodePort")?,
        )));
    }
    bail!(
        "service {:?} is a {} Service, reachable only inside the cluster: use --from node (or expose it as NodePort or LoadBalancer)",
        request.name,
        spec.type_.as_deref().unwrap_or("ClusterIP")
    )
}

/// Names of the Pods the Service selects that are Ready and not terminating.
async fn ready_pods(
    client: &kube::Client,
    service: &Service,
    namespace: &str,
) -> Result<Vec<String>> {
    let selector: BTreeMap<String, String> = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        bail!("the service has no selector, so no Pods are known to be behind it");
    }
    let labels = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&labels))
        .await
        .with_context(|| format!("listing Pods with {labels}"))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_names() {
        assert_eq!(
            super::parse_service("svc/hello-world").unwrap(),
            "hello-world"
        );
        assert_eq!(super::parse_service("hello-world").unwrap(), "hello-world");
        let e = super::parse_service("deploy/hello-world")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a Service"), "{e}");
    }
}
