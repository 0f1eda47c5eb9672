//! The userspace proxy on loopback: spread over endpoints, live endpoint changes that leave
//! established connections alone, refusal without endpoints, ClientIP affinity, UDP, and
//! routes compiled from Services.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use dataplane::model::{NodeConfig, Protocol, Snapshot};
use dataplane::proxy::{Route, UserspaceProxy, routes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const PATIENCE: Duration = Duration::from_secs(5);

/// A TCP endpoint that writes its name, then echoes what it reads.
async fn tcp_endpoint(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Connects from `from` (a loopback address) to `addr` and reads the endpoint's name.
async fn who(addr: SocketAddr, from: Ipv4Addr) -> Option<String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    let mut s = tokio::time::timeout(PATIENCE, socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

async fn spread(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let name = who(addr, Ipv4Addr::LOCALHOST)
            .await
            .unwrap_or_else(|| "refused".into());
        *counts.entry(name).or_insert(0) += 1;
    }
    counts
}

fn tcp_route(listen: &str, endpoints: Vec<SocketAddr>) -> Route {
    Route {
        listen: listen.parse().unwrap(),
        protocol: Protocol::Tcp,
        endpoints,
        affinity: None,
    }
}

#[tokio::test]
async fn connections_spread_and_endpoint_changes_keep_established_ones() {
    let a = tcp_endpoint("pod-a").await;
    let b = tcp_endpoint("pod-b").await;
    let proxy = UserspaceProxy::new();
    let bound = proxy
        .sync(&[tcp_route("127.0.0.1:0", vec![a, b])])
        .await
        .unwrap();
    let front = bound[0];
    let counts = spread(front, 40).await;
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["pod-a", "pod-b"],
        "{counts:?}"
    );

    // An established connection to pod-a...
    let mut kept = loop {
        let mut s = TcpStream::connect(front).await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        if &buf == b"pod-a" {
            break s;
        }
    };
    // ...survives pod-a leaving the endpoints, while new connections go to pod-b.
    let mut same = tcp_route("127.0.0.1:0", vec![b]);
    same.listen = front;
    proxy.sync(&[same.clone()]).await.unwrap();
    assert_eq!(
        spread(front, 10).await,
        BTreeMap::from([("pod-b".into(), 10)])
    );
    kept.write_all(b"still here").await.unwrap();
    let mut echo = [0u8; 10];
    tokio::time::timeout(PATIENCE, kept.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"still here");

    // No endpoints: connections are refused (reset), not left hanging.
    same.endpoints.clear();
    proxy.sync(&[same]).await.unwrap();
    assert_eq!(who(front, Ipv4Addr::LOCALHOST).await, None);

    // Removing the route stops listening.
    proxy.sync(&[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(front).await.is_err());
}

#[tokio::test]
async fn client_ip_affinity_keeps_a_client_on_one_endpoint() {
    let eps = vec![
        tcp_endpoint("pod-a").await,
        tcp_endpoint("pod-b").await,
        tcp_endpoint("pod-c").await,
    ];
    let proxy = UserspaceProxy::new();
    let mut route = tcp_route("127.0.0.1:0", eps);
    route.affinity = Some(Duration::from_secs(600));
    let front = proxy.sync(&[route]).await.unwrap()[0];
    for client in [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)] {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            seen.insert(who(front, client).await.unwrap());
        }
        assert_eq!(seen.len(), 1, "client {client} saw {seen:?}");
    }
}

#[tokio::test]
async fn udp_datagrams_reach_an_endpoint_and_replies_come_back() {
    let endpoint = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ep_addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = endpoint.recv_from(&mut buf).await.unwrap();
            let mut reply = b"dns: ".to_vec();
            reply.extend_from_slice(&buf[..n]);
            endpoint.send_to(&reply, from).await.unwrap();
        }
    });
    let proxy = UserspaceProxy::new();
    let front = proxy
        .sync(&[Route {
            listen: "127.0.0.1:0".parse().unwrap(),
            protocol: Protocol::Udp,
            endpoints: vec![ep_addr],
            affinity: None,
        }])
        .await
        .unwrap()[0];
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for query in ["a", "bb"] {
        client.send_to(query.as_bytes(), front).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = tokio::time::timeout(PATIENCE, client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, front, "replies come from the service address");
        assert_eq!(&buf[..n], format!("dns: {query}").as_bytes());
    }
}

#[tokio::test]
async fn routes_follow_the_kernel_rules_choices() {
    let yaml = include_str!("fixtures/tutorial.yaml");
    let objects = dataplane::manifest::parse(yaml).unwrap();
    let snapshot = Snapshot::from_objects(&objects.services, &objects.endpoint_slices).unwrap();
    let node = NodeConfig {
        node_ips: vec!["172.18.0.3".parse().unwrap()],
        ..NodeConfig::new("lab-worker")
    };
    // Userspace mode listens on loopback stand-ins for the service IPs.
    let got = routes(&snapshot, &node, |_| Ipv4Addr::new(127, 0, 0, 10));
    let listens: Vec<String> = got.iter().map(|r| r.listen.to_string()).collect();
    assert_eq!(
        listens,
        ["127.0.0.10:8080", "172.18.0.3:30583", "127.0.0.1:30583"]
    );
    for route in &got {
        let eps: Vec<String> = route.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(eps, ["10.244.1.200:8080", "10.244.2.192:8080"]);
    }
}
