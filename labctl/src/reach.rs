//! Sending requests from a place in a running lab: a node (as `curl` on a kind node), the
//! client outside the cluster (as a browser), or the host. In kernel mode a place is a network
//! namespace; in userspace mode every lab address has a loopback twin on the host.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::lab::{self, LabConfig, LabDir, Mode};
use crate::network::{self, Names};
use crate::runtime::{loopback_twin, userspace_port};

/// Where requests start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A node's namespace; `None` is the first worker.
    Node(Option<String>),
    /// The client namespace outside the cluster.
    Client,
    /// The host's own namespace.
    Host,
}

/// A place in a running lab that requests can be sent from.
#[derive(Debug, Clone)]
pub struct Reach {
    how: How,
    /// Where it is, for messages: `lab-worker`, `client`, `host`.
    pub place: String,
}

#[derive(Debug, Clone)]
enum How {
    Namespace(String),
    Loopback,
    /// Inside a container (a kind node), through `docker exec`.
    Docker(String),
    /// Straight from the host (a real cluster's LoadBalancer address).
    Direct,
}

impl Reach {
    /// Resolves `origin` in the running lab `dir`, with errors that say what to do instead.
    pub fn new(dir: &LabDir, origin: &Origin) -> Result<Reach> {
        let config = dir.running_config()?;
        match lab::running_mode(dir) {
            Some(Mode::Userspace) => Ok(Reach {
                how: How::Loopback,
                // Every lab address has a loopback twin here, whatever the origin.
                place: "host".into(),
            }),
            Some(Mode::Kernel) => {
                let place = match origin {
                    Origin::Node(node) => node.clone().unwrap_or_else(|| first_worker(&config)),
                    Origin::Client => "client".into(),
                    Origin::Host => bail!(
                        "lab {:?} runs in kernel mode, whose namespaces have no link to the host; send from `--from client` (outside the cluster) or `--from node`, or forward a port to the host with `{}`",
                        dir.name,
                        lab::command_for("port-forward", &dir.name)
                    ),
                };
                Ok(Reach {
                    how: How::Namespace(namespace(dir, &config, &place)?),
                    place,
                })
            }
            _ => bail!(
                "lab {:?} runs without a network (API-only mode), so nothing serves its Pods; make it anew with a network: `labctl down --name {} --purge`, then `{} --network auto`",
                dir.name,
                dir.name,
                lab::command_for("up", &dir.name)
            ),
        }
    }

    /// A kind node: requests and commands go through `docker exec <container>`.
    pub fn docker(container: &str) -> Reach {
        Reach {
            how: How::Docker(container.to_string()),
            place: container.to_string(),
        }
    }

    /// The host itself, sending to addresses it can route to.
    pub fn host() -> Reach {
        Reach {
            how: How::Direct,
            place: "host".into(),
        }
    }

    /// Whether the lab serves on loopback twins (userspace mode).
    pub fn is_loopback(&self) -> bool {
        matches!(self.how, How::Loopback)
    }

    /// Sends `count` GETs of `/` to `target`, one connection each, in order; every answer's
    /// body or the error it met. Each request waits at most `timeout`.
    pub fn get_many(
        &self,
        target: SocketAddr,
        count: u32,
        timeout: Duration,
    ) -> Vec<std::io::Result<String>> {
        let host = target.to_string();
        match &self.how {
            How::Loopback | How::Direct => {
                let addr = match self.how {
                    How::Loopback => twin(target),
                    _ => target,
                };
                (0..count)
                    .map(|_| {
                        let stream = TcpStream::connect_timeout(&addr, timeout)?;
                        network::http_exchange(stream, &host, timeout)
                    })
                    .collect()
            }
            How::Namespace(ns) => {
                // One thread in the namespace makes every connection: entering it per request
                // would cost a thread each.
                let run = network::in_namespace(ns, move || {
                    Ok((0..count)
                        .map(|_| {
                            let stream = TcpStream::connect_timeout(&target, timeout)?;
                            network::http_exchange(stream, &host, timeout)
                        })
                        .collect::<Vec<_>>())
                });
                run.unwrap_or_else(|e| vec![Err(e)])
            }
            How::Docker(container) => docker_curl(container, target, count, timeout),
        }
    }

    /// One GET, with what failed in its error.
    pub fn get(&self, target: SocketAddr, timeout: Duration) -> Result<String> {
        self.get_many(target, 1, timeout)
            .pop()
            .expect("one request")
            .with_context(|| self.describe(target))
    }

    /// `GET http://<target>/` and where it was sent from, for error messages.
    pub fn describe(&self, target: SocketAddr) -> String {
        match self.how {
            How::Loopback => format!(
                "GET http://{target}/ (served at {} in userspace mode)",
                twin(target)
            ),
            How::Namespace(_) | How::Docker(_) | How::Direct => {
                format!("GET http://{target}/ from {}", self.place)
            }
        }
    }

    /// Runs `command` where this place is (inside its namespace, or on the host).
    pub fn command(&self, program: &str) -> std::process::Command {
        match &self.how {
            How::Namespace(ns) => {
                let mut c = std::process::Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            How::Docker(container) => {
                let mut c = std::process::Command::new("docker");
                c.args(["exec", container, program]);
                c
            }
            How::Loopback | How::Direct => std::process::Command::new(program),
        }
    }
}

/// `count` curls inside `container` in one `docker exec` (kind node images have curl), each
/// answer followed by a marker line so that they can be told apart.
fn docker_curl(
    container: &str,
    target: SocketAddr,
    count: u32,
    timeout: Duration,
) -> Vec<std::io::Result<String>> {
    const END: &str = "--labctl-answer-end--";
    let script = format!(
        "for i in $(seq {count}); do curl -sS -m {} http://{target}/ 2>&1 || echo 'curl failed'; echo {END}; done",
        timeout.as_secs().max(1)
    );
    let out = match std::process::Command::new("docker")
        .args(["exec", container, "sh", "-c", &script])
        .output()
    {
        Ok(out) => out,
        Err(e) => return vec![Err(e)],
    };
    String::from_utf8_lossy(&out.stdout)
        .split(&format!("{END}\n"))
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.starts_with("Hello") {
                Ok(a.to_string())
            } else {
                Err(std::io::Error::other(a.trim().to_string()))
            }
        })
        .collect()
}

/// Where a lab address is served in userspace mode.
pub fn twin(target: SocketAddr) -> SocketAddr {
    let ip = match target.ip() {
        IpAddr::V4(ip) if !ip.is_loopback() => loopback_twin(ip),
        ip => return SocketAddr::new(ip, userspace_port(target.port())),
    };
    SocketAddr::from((ip, userspace_port(target.port())))
}

/// The lab's first worker node.
pub fn first_worker(config: &LabConfig) -> String {
    config
        .cluster
        .nodes
        .iter()
        .find(|n| !n.control_plane)
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

/// The namespace of `place` (a node name or `client`) in a kernel-mode lab.
pub fn namespace(dir: &LabDir, config: &LabConfig, place: &str) -> Result<String> {
    let names = Names::new(&dir.name);
    let ns = if place == "client" {
        names.client()
    } else if config.cluster.nodes.iter().any(|n| n.name == place) {
        names.node(place)
    } else {
        let known: Vec<&str> = config
            .cluster
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        bail!(
            "no node {place:?} in lab {:?}; its nodes are {} (or `client`)",
            dir.name,
            known.join(", ")
        );
    };
    if !std::path::Path::new("/run/netns").join(&ns).exists() {
        bail!(
            "lab {:?} runs without kernel networking (userspace or API-only mode), so there is no {place} namespace; labs created as root with `--network kernel` have one (in userspace mode, `labctl curl` reaches Services from the host)",
            dir.name
        );
    }
    Ok(ns)
}

/// `http://IP[:PORT][/...]` to an address (port 80 when left out).
pub fn parse_url(url: &str) -> Result<SocketAddr> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host_port = rest.split('/').next().unwrap_or("");
    let with_port = if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:80")
    };
    with_port.parse().with_context(|| {
        format!("{url:?} is not http://IP[:PORT] (names are not resolved in the lab)")
    })
}
