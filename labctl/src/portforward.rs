//! `labctl port-forward`: a Service of the lab on the host's 127.0.0.1, so that a browser on
//! the host can open it. Each connection accepted on 127.0.0.1 is relayed to the Service's
//! ClusterIP and port from inside the lab: in kernel mode from a socket made in a worker's
//! network namespace (so the node's Service rules pick a Pod, per connection), in userspace
//! mode from the host to the ClusterIP's loopback twin. Nothing of the lab is linked to the
//! host's namespace; only this process holds a socket on each side.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Service;

use crate::lab::{self, LabDir, Mode};
use crate::network;
use crate::runtime::{loopback_twin, userspace_port};

/// What to forward: `svc/NAME` (or `service/NAME`, or `NAME`) and `[LOCAL]:REMOTE` or `PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The Service's name.
    pub service: String,
    /// The port on 127.0.0.1 (0: any free port).
    pub local: u16,
    /// The Service's port.
    pub remote: u16,
}

impl Forward {
    /// Parses `svc/hello-world` and `8080:80` (also `80`, meaning 80:80, and `:80`, meaning a
    /// free local port), as kubectl does.
    pub fn parse(target: &str, ports: &str) -> Result<Forward> {
        // A bare name is a Service too, as for `labctl verify` and `labctl rules`: only
        // Services are forwarded.
        let service = crate::probe::parse_service(target)?;
        let port = |p: &str| -> Result<u16> {
            p.parse()
                .with_context(|| format!("{p:?} in {ports:?} is not a port number"))
        };
        let (local, remote) = match ports.split_once(':') {
            Some(("", r)) => (0, port(r)?),
            Some((l, r)) => (port(l)?, port(r)?),
            None => (port(ports)?, port(ports)?),
        };
        if remote == 0 {
            bail!("the Service port in {ports:?} must not be 0");
        }
        Ok(Forward {
            service,
            local,
            remote,
        })
    }
}

/// Where connections go, and how they are made.
#[derive(Clone)]
enum Dial {
    /// From inside a node's namespace to the ClusterIP.
    Namespace(String, SocketAddrV4),
    /// From the host to the ClusterIP's loopback twin (userspace mode).
    Host(SocketAddrV4),
}

impl Dial {
    fn connect(&self) -> std::io::Result<std::net::TcpStream> {
        let timeout = Duration::from_secs(5);
        match self {
            Dial::Namespace(ns, addr) => {
                let addr = SocketAddr::V4(*addr);
                network::in_namespace(ns, move || {
                    std::net::TcpStream::connect_timeout(&addr, timeout)
                })
            }
            Dial::Host(addr) => {
                std::net::TcpStream::connect_timeout(&SocketAddr::V4(*addr), timeout)
            }
        }
    }
}

/// Forwards until Ctrl-C (or SIGTERM). Prints `Forwarding from 127.0.0.1:LOCAL -> svc/NAME
/// (CLUSTER-IP:PORT)` once listening, and `Handling connection for LOCAL` per connection.
pub async fn run(dir: &LabDir, namespace: &str, forward: &Forward) -> Result<()> {
    let config = dir.running_config()?;
    let mode = lab::running_mode(dir);
    if mode == Some(Mode::ApiOnly) {
        bail!(
            "lab {:?} runs in API-only mode (--network none): nothing serves its Services",
            dir.name
        );
    }
    let text = std::fs::read_to_string(dir.kubeconfig_path())
        .with_context(|| format!("reading {}", dir.kubeconfig_path().display()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?,
    )?;
    let services: kube::Api<Service> = kube::Api::namespaced(client, namespace);
    let svc = services
        .get_opt(&forward.service)
        .await
        .with_context(|| format!("asking lab {:?} for the Service", dir.name))?
        .ok_or_else(|| {
            anyhow!(
                "services {:?} not found in namespace {namespace:?}",
                forward.service
            )
        })?;
    let spec = svc.spec.unwrap_or_default();
    let cluster_ip: Ipv4Addr = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| {
            anyhow!(
                "service {:?} has no ClusterIP to forward to",
                forward.service
            )
        })?;
    let ports = spec.ports.unwrap_or_default();
    if !ports.iter().any(|p| p.port == i32::from(forward.remote)) {
        let have: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
        bail!(
            "service {:?} has no port {}; its ports are {}",
            forward.service,
            forward.remote,
            have.join(", ")
        );
    }
    let target = SocketAddrV4::new(cluster_ip, forward.remote);
    let dial = if mode == Some(Mode::Userspace) {
        Dial::Host(SocketAddrV4::new(
            loopback_twin(cluster_ip),
            userspace_port(forward.remote),
        ))
    } else {
        let worker = config
            .cluster
            .nodes
            .iter()
            .find(|n| !n.control_plane)
            .context("the lab has no worker")?;
        Dial::Namespace(network::Names::new(&dir.name).node(&worker.name), target)
    };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, forward.local))
        .await
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow!(
                    "127.0.0.1:{} is in use by another program; choose another local port (`{} svc/{} 0:{}` picks a free one)",
                    forward.local,
                    lab::command_for("port-forward", &dir.name),
                    forward.service,
                    forward.remote
                )
            } else {
                anyhow!("listening on 127.0.0.1:{}: {e}", forward.local)
            }
        })?;
    let local = listener.local_addr()?.port();
    println!(
        "Forwarding from 127.0.0.1:{local} -> svc/{} ({target})",
        forward.service
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (mut inbound, _) = tokio::select! {
            accepted = listener.accept() => accepted.context("accepting on 127.0.0.1")?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
        };
        // Whoever reads our output may have gone away; forwarding goes on regardless.
        let _ = writeln!(std::io::stdout(), "Handling connection for {local}");
        let dial = dial.clone();
        tokio::spawn(async move {
            let outbound = tokio::task::spawn_blocking(move || dial.connect()).await;
            let outbound = match outbound {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    eprintln!("error: connecting to {target} inside the lab: {e}");
                    return;
                }
                Err(e) => {
                    eprintln!("error: connecting to {target} inside the lab: {e}");
                    return;
                }
            };
            let relay = async {
                outbound.set_nonblocking(true)?;
                let mut outbound = tokio::net::TcpStream::from_std(outbound)?;
                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
            };
            if let Err(e) = relay.await {
                eprintln!("error: relaying to {target}: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_ports_parse_as_kubectl_writes_them() {
        let f = Forward::parse("svc/hello-world", "8080:80").unwrap();
        assert_eq!(
            f,
            Forward {
                service: "hello-world".into(),
                local: 8080,
                remote: 80
            }
        );
        assert_eq!(Forward::parse("service/web", "80").unwrap().local, 80);
        assert_eq!(Forward::parse("svc/web", ":80").unwrap().local, 0);
        assert_eq!(Forward::parse("web", "80").unwrap().service, "web");
        let e = Forward::parse("pod/web", "80").unwrap_err().to_string();
        assert!(e.contains("write svc/<name>"), "{e}");
        assert!(Forward::parse("svc/web", "x:80").is_err());
        assert!(Forward::parse("svc/web", "80:0").is_err());
    }
}
