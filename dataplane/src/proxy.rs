//! The userspace backend: a tokio TCP and UDP proxy that makes the same choices as the kernel
//! rules (a random endpoint, ClientIP affinity, refusal without endpoints) where no rules can
//! be programmed, for example without root.
//!
//! [`UserspaceProxy::sync`] takes the wanted [`Route`]s: new ones get a listener, changed
//! ones get their endpoints swapped in place (established connections keep their endpoint),
//! and gone ones stop accepting.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use crate::compile::ServicePlan;
use crate::model::{NodeConfig, Protocol, Snapshot};

/// How long a UDP client's session to its endpoint lives without traffic.
const UDP_IDLE: Duration = Duration::from_secs(60);

/// One address the proxy serves and where it sends connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where to listen (port 0 picks a free port; see [`UserspaceProxy::sync`]).
    pub listen: SocketAddr,
    /// TCP or UDP (SCTP is not proxied in userspace).
    pub protocol: Protocol,
    /// The endpoints; empty means connections are refused.
    pub endpoints: Vec<SocketAddr>,
    /// ClientIP affinity: the same client IP keeps its endpoint for this long.
    pub affinity: Option<Duration>,
}

/// The routes for `snapshot` on `node`: each ClusterIP port, external and LB IP port, and
/// each NodePort on the node's IPs and 127.0.0.1, with the endpoints the kernel rules would use.
/// `ip_for` maps a service IP to the address to listen on (identity when the IP exists here).
pub fn routes(
    snapshot: &Snapshot,
    node: &NodeConfig,
    ip_for: impl Fn(Ipv4Addr) -> Ipv4Addr,
) -> Vec<Route> {
    let mut routes = Vec::new();
    for entry in snapshot.services.values() {
        let Some(plan) = ServicePlan::new(entry, node) else {
            continue;
        };
        let svc = &entry.port;
        if svc.protocol == Protocol::Sctp {
            continue;
        }
        let addrs = |eps: &[&crate::model::Endpoint]| -> Vec<SocketAddr> {
            eps.iter()
                .map(|e| SocketAddr::new(IpAddr::V4(e.ip), e.port))
                .collect()
        };
        let internal = if plan.internal_local {
            addrs(&plan.local_eps)
        } else {
            addrs(&plan.cluster_eps)
        };
        let external = if plan.external_local {
            addrs(&plan.local_eps)
        } else {
            addrs(&plan.cluster_eps)
        };
        let affinity = svc.affinity_seconds.map(|s| Duration::from_secs(s.into()));
        let route = |ip: Ipv4Addr, port: u16, endpoints: &Vec<SocketAddr>| Route {
            listen: SocketAddr::new(IpAddr::V4(ip_for(ip)), port),
            protocol: svc.protocol,
            endpoints: endpoints.clone(),
            affinity,
        };
        routes.push(route(plan.cluster_ip, svc.port, &internal));
        for &ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
            routes.push(route(ip, svc.port, &external));
        }
        if let Some(np) = svc.node_port {
            for &ip in node
                .node_ips
                .iter()
                .chain(std::iter::once(&Ipv4Addr::LOCALHOST))
            {
                routes.push(Route {
                    listen: SocketAddr::new(IpAddr::V4(ip), np),
                    ..route(ip, np, &external)
                });
            }
        }
    }
    routes
}

/// A route's endpoints and affinity memory, swapped in place on sync.
#[derive(Debug, Default)]
struct Backends {
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
    sticky: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Backends {
    /// kube-proxy's choice: the client's affinity endpoint while it is fresh and still an
    /// endpoint, else a random one.
    fn choose(&mut self, client: IpAddr) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        if let Some(timeout) = self.affinity
            && let Some((ep, seen)) = self.sticky.get(&client)
            && now.duration_since(*seen) < timeout
            && self.endpoints.contains(ep)
        {
            let ep = *ep;
            self.sticky.insert(client, (ep, now));
            return Some(ep);
        }
        let ep = self.endpoints[fastrand::usize(..self.endpoints.len())];
        if self.affinity.is_some() {
            self.sticky.insert(client, (ep, now));
        }
        Some(ep)
    }
}

struct Served {
    route: Route,
    bound: SocketAddr,
    backends: Arc<RwLock<Backends>>,
    task: JoinHandle<()>,
}

/// Why a route could not be served.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen} ({protocol}): {source}")]
pub struct ProxyError {
    /// The address.
    pub listen: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The error.
    pub source: std::io::Error,
}

/// The userspace proxy. Cheap to clone; clones share routes.
#[derive(Clone, Default)]
pub struct UserspaceProxy {
    served: Arc<Mutex<HashMap<(SocketAddr, Protocol), Served>>>,
}

impl UserspaceProxy {
    /// A proxy serving nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the served routes equal `routes`; returns where each route listens, in order.
    /// On error, the routes before the failing one are in place and nothing was removed.
    pub async fn sync(&self, routes: &[Route]) -> Result<Vec<SocketAddr>, ProxyError> {
        let mut bound = Vec::with_capacity(routes.len());
        for route in routes {
            let key = (route.listen, route.protocol);
            let existing = self
                .served
                .lock()
                .expect("routes")
                .get(&key)
                .map(|s| (s.bound, s.backends.clone()));
            if let Some((addr, backends)) = existing {
                let mut b = backends.write().expect("backends");
                b.endpoints.clone_from(&route.endpoints);
                b.affinity = route.affinity;
                b.sticky.retain(|_, (ep, _)| route.endpoints.contains(ep));
                bound.push(addr);
                continue;
            }
            let backends = Arc::new(RwLock::new(Backends {
                endpoints: route.endpoints.clone(),
                affinity: route.affinity,
                sticky: HashMap::new(),
            }));
            let err = |source| ProxyError {
                listen: route.listen,
                protocol: route.protocol,
                source,
            };
            let (addr, task) = match route.protocol {
                Protocol::Udp => {
                    let socket = UdpSocket::bind(route.listen).await.map_err(err)?;
                    let addr = socket.local_addr().map_err(err)?;
                    (
                        addr,
                        tokio::spawn(serve_udp(Arc::new(socket), backends.clone())),
                    )
                }
                _ => {
                    let listener = TcpListener::bind(route.listen).await.map_err(err)?;
                    let addr = listener.local_addr().map_err(err)?;
                    (addr, tokio::spawn(serve_tcp(listener, backends.clone())))
                }
            };
            // Keyed by the bound address, so that a route asked for on port 0 is found again
            // by the address it got.
            self.served.lock().expect("routes").insert(
                (addr, route.protocol),
                Served {
                    route: route.clone(),
                    bound: addr,
                    backends,
                    task,
                },
            );
            bound.push(addr);
        }
        let wanted: Vec<(SocketAddr, Protocol)> = bound
            .iter()
            .zip(routes)
            .map(|(addr, r)| (*addr, r.protocol))
            .collect();
        self.served.lock().expect("routes").retain(|key, served| {
            let keep = wanted.contains(key);
            if !keep {
                tracing::debug!(listen = %served.route.listen, "route removed");
                served.task.abort();
            }
            keep
        });
        Ok(bound)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_tcp(listener: TcpListener, backends: Arc<RwLock<Backends>>) {
    loop {
        let Ok((client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let chosen = backends.write().expect("backends").choose(peer.ip());
        let Some(endpoint) = chosen else {
            // No endpoint: refuse with a reset, as the kernel rules REJECT.
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        };
        // Each connection is its own task: swapping endpoints or removing the route later
        // leaves it alone.
        tokio::spawn(async move {
            let mut client = client;
            match TcpStream::connect(endpoint).await {
                Ok(mut upstream) => {
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "endpoint unreachable");
                    let _ = client.set_zero_linger();
                }
            }
        });
    }
}

/// UDP clients' sessions: the socket connected to the client's endpoint, and when the
/// client was last heard from.
type UdpSessions = Arc<Mutex<HashMap<SocketAddr, (Arc<UdpSocket>, Instant)>>>;

async fn serve_udp(socket: Arc<UdpSocket>, backends: Arc<RwLock<Backends>>) {
    let sessions: UdpSessions = Arc::default();
    let mut buf = vec![0u8; 65_535];
    loop {
        let Ok((n, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let existing = sessions
            .lock()
            .expect("sessions")
            .get(&client)
            .map(|(s, _)| s.clone());
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let chosen = backends.write().expect("backends").choose(client.ip());
                let Some(endpoint) = chosen else { continue };
                let Ok(upstream) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await else {
                    continue;
                };
                if upstream.connect(endpoint).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                tokio::spawn(udp_replies(
                    upstream.clone(),
                    socket.clone(),
                    client,
                    sessions.clone(),
                ));
                upstream
            }
        };
        sessions
            .lock()
            .expect("sessions")
            .insert(client, (upstream.clone(), Instant::now()));
        let _ = upstream.send(&buf[..n]).await;
    }
}

/// Carries an endpoint's replies back to `client` until the session idles out.
async fn udp_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: UdpSessions,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let _ = socket.send_to(&buf[..n], client).await;
            }
            Ok(Err(_)) => {}
            Err(_) => {
                let mut map = sessions.lock().expect("sessions");
                if map
                    .get(&client)
                    .is_some_and(|(_, seen)| seen.elapsed() >= UDP_IDLE)
                {
                    map.remove(&client);
                    return;
                }
            }
        }
    }
}
