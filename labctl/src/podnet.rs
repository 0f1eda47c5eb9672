//! A Pod's network namespace, made in-process: `unshare(CLONE_NEWNET)` on a short-lived
//! thread, the namespace pinned at `/run/netns/<name>` with a bind mount (what `ip netns add`
//! does), a veth into the node's `cni0` bridge, and the Pod's address and default route, all
//! over rtnetlink (netlink-packet-route messages on a blocking netlink socket).
//!
//! The `ip` commands this replaces cost a process each (three per Pod, ~2 ms apiece, and
//! far more once the lab's process is large); one Pod now costs a few netlink round trips.
//! Node namespaces keep one netlink socket each, opened inside them once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const NETNS_DIR: &str = "/run/netns";

/// A blocking rtnetlink socket, bound to the network namespace of the thread that opened it.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in the calling thread's current network namespace.
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl { socket, seq: 0 })
    }

    /// Sends one request and waits for its acknowledgement (or, for a GET, its answer).
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut answer = None;
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < bytes.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| io::Error::other(format!("an rtnetlink answer: {e}")))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(answer),
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                            };
                        }
                        NetlinkPayload::InnerMessage(m) => answer = Some(m),
                        NetlinkPayload::Done(_) => return Ok(answer),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }

    /// The index of interface `name`.
    fn index(&mut self, name: &str) -> io::Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(RouteNetlinkMessage::GetLink(msg), 0)? {
            Some(RouteNetlinkMessage::NewLink(link)) => Ok(link.header.index),
            _ => Err(io::Error::other(format!("no interface {name}"))),
        }
    }

    /// Sets interface `index` up.
    fn up(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Keeps interface `index` (still down) from making IPv6 addresses: without a link-local
    /// address it sends no duplicate address detection, router solicitations or MLD reports.
    fn no_ipv6_addresses(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }
}

impl Rtnl {
    /// Lets bridge port `index` send a frame back out of the port it came in on, as the CNI
    /// bridge plugin's `hairpinMode` does: a Pod that reaches itself through a Service.
    fn hairpin(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                true,
            )])),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map(drop)
    }

    /// A static entry in a bridge's forwarding table: `mac` is behind port `index`, so that
    /// frames to it go there without being learned first (and never age out).
    fn static_forwarding(&mut self, index: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Bridge;
        msg.header.ifindex = index;
        // NOARP alone is a static entry; PERMANENT would mark the address as the bridge's own.
        msg.header.state = NeighbourState::Noarp;
        msg.header.flags = NeighbourFlags::Controller;
        self.set_neighbour(msg, mac)
    }

    /// Writes neighbour entry `msg` with link-layer address `mac`, replacing one there is.
    fn set_neighbour(&mut self, mut msg: NeighbourMessage, mac: [u8; 6]) -> io::Result<()> {
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// A permanent neighbour entry: `ip` is at `mac` on interface `index`.
    fn permanent_neighbour(&mut self, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = netlink_packet_route::AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.set_neighbour(msg, mac)
    }
}

/// The MAC address of a lab address, as the CNI bridge plugin makes them: `0a:58` and the
/// IPv4 address (10.244.1.5 is 0a:58:0a:f4:01:05). Pods and bridges get theirs this way, so
/// that neighbour entries can be written down instead of learned.
///
/// Why: the kernel's ARP table is shared by every network namespace and holds 1,024 learned
/// entries by default (`gc_thresh3`); 1,000 Pods each learning their gateway, and nodes
/// learning their Pods, overflow it and connections stall. Permanent entries do not count.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

/// `mac_of` as text, for `ip`.
pub fn mac_text(ip: Ipv4Addr) -> String {
    mac_of(ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A node's namespace as Pods see it: a netlink socket inside it and its bridge's index.
struct NodeLink {
    rtnl: Rtnl,
    bridge: u32,
}

fn nodes() -> &'static Mutex<HashMap<String, Arc<Mutex<NodeLink>>>> {
    static NODES: OnceLock<Mutex<HashMap<String, Arc<Mutex<NodeLink>>>>> = OnceLock::new();
    NODES.get_or_init(Mutex::default)
}

/// Forgets the netlink sockets of `lab`'s node namespaces (they are rebuilt).
pub fn forget_nodes(prefix: &str) {
    nodes()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|name, _| !name.starts_with(prefix));
}

fn node_link(node_ns: &str) -> io::Result<Arc<Mutex<NodeLink>>> {
    let mut map = nodes().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(link) = map.get(node_ns) {
        return Ok(link.clone());
    }
    let link = crate::network::in_namespace(node_ns, || {
        let mut rtnl = Rtnl::open()?;
        let bridge = rtnl.index("cni0")?;
        Ok((rtnl, bridge))
    })?;
    let link = Arc::new(Mutex::new(NodeLink {
        rtnl: link.0,
        bridge: link.1,
    }));
    map.insert(node_ns.to_string(), link.clone());
    Ok(link)
}

/// What a Pod's network is made of.
pub struct PodNet<'a> {
    /// The Pod's namespace name (`slab-<lab>-pod-<hash>`).
    pub netns: &'a str,
    /// Its node's namespace name.
    pub node_netns: &'a str,
    /// The veth end on the node's bridge.
    pub host_link: &'a str,
    /// The node's pod CIDR (the Pod's prefix and gateway).
    pub pod_cidr: Ipv4Net,
    /// The Pod's IP.
    pub ip: Ipv4Addr,
    /// The port to listen on inside the namespace (0.0.0.0:port).
    pub port: u16,
}

fn context(step: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{step}: {e}"))
}

/// Where the namespace named `name` is pinned.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Makes an empty network namespace pinned as `name` (what `ip netns add` does, except that
/// the thread that makes it ends there instead of switching back: in a lab user namespace,
/// switching back to the host's namespace is not permitted).
pub fn create(name: &str) -> io::Result<()> {
    let path = Path::new(NETNS_DIR).join(name);
    std::thread::spawn(move || new_pinned_netns(&path))
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Makes the Pod's namespace and network, and a listening socket inside it.
pub fn add(pod: &PodNet<'_>) -> io::Result<TcpListener> {
    let path = Path::new(NETNS_DIR).join(pod.netns);
    if path.exists() {
        remove(pod.netns);
    }
    let node = node_link(pod.node_netns)?;
    let (path2, ip, cidr, port) = (path.clone(), pod.ip, pod.pod_cidr, pod.port);
    let host_link = pod.host_link.to_string();
    // The new namespace belongs to a fresh thread, which ends when the Pod is set up; the
    // bind mount and the listening socket keep the namespace alive.
    let result = std::thread::spawn(move || -> io::Result<TcpListener> {
        new_pinned_netns(&path2)?;
        let own = File::open("/proc/thread-self/ns/net")?;
        {
            let mut node = node.lock().unwrap_or_else(|e| e.into_inner());
            let bridge = node.bridge;
            // The veth is made from inside the node (its end joins cni0, up) with its peer
            // created directly in the Pod's namespace as eth0.
            let mut peer = LinkMessage::default();
            peer.attributes.push(LinkAttribute::IfName("eth0".into()));
            peer.attributes
                .push(LinkAttribute::Address(mac_of(ip).to_vec()));
            peer.attributes
                .push(LinkAttribute::NetNsFd(own.as_raw_fd()));
            let mut veth = LinkMessage::default();
            veth.header.flags = LinkFlags::Up;
            veth.header.change_mask = LinkFlags::Up;
            veth.attributes
                .push(LinkAttribute::IfName(host_link.clone()));
            veth.attributes.push(LinkAttribute::Controller(bridge));
            veth.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]));
            node.rtnl
                .request(
                    RouteNetlinkMessage::NewLink(veth),
                    NLM_F_CREATE | NLM_F_EXCL,
                )
                .map_err(context(&format!("adding veth {host_link} on cni0")))?;
            // The entry stays right after the Pod is gone: the next Pod with this IP has the
            // same MAC.
            node.rtnl
                .permanent_neighbour(bridge, ip, mac_of(ip))
                .map_err(context(&format!(
                    "adding the neighbour entry of {ip} on cni0"
                )))?;
            // The bridge knows the Pod's port from the start: a Pod sends nothing before its
            // first answer (its neighbours are written down, it has no IPv6), so the first
            // frame to it was flooded to every port of the node (with 200 Pods a node, each
            // first request cost 0.6-0.7 ms more than later ones). Learning it from a frame
            // the Pod sent at once raced the port's carrier coming up, and sometimes lost.
            let port = node.rtnl.index(&host_link)?;
            // With bridge-nf-call-iptables on, a connection a Pod makes to a Service that is
            // DNATed to the Pod itself is bridged back to the port it came from, which a
            // bridge drops unless the port is in hairpin mode (the masquerade rule that
            // kube-proxy adds for it then makes the answer come back the same way).
            node.rtnl
                .hairpin(port)
                .map_err(context(&format!("setting hairpin mode on {host_link}")))?;
            node.rtnl
                .static_forwarding(port, mac_of(ip))
                .map_err(context(&format!(
                    "adding the forwarding entry of {ip} on cni0"
                )))?;
        }
        let mut rtnl = Rtnl::open()?;
        rtnl.up(1).map_err(context("setting lo up"))?;
        let eth0 = rtnl.index("eth0")?;
        // The lab is IPv4 only. Were eth0 to make a link-local address, it would send IPv6
        // DAD, MLD and router solicitations, which the bridge floods to every other Pod of the
        // node: quadratic work as a node fills up. Not `disable_ipv6`: each path looked up in
        // /proc/sys is compared with every namespace's entries of that name, so writing it
        // costs more with every Pod (a tenth of all the time 1,000 Pods took to start).
        rtnl.no_ipv6_addresses(eth0)
            .map_err(context("turning off IPv6 addresses on eth0"))?;
        let mut addr = AddressMessage::default();
        addr.header.family = netlink_packet_route::AddressFamily::Inet;
        addr.header.prefix_len = cidr.prefix_len();
        addr.header.index = eth0;
        addr.attributes
            .push(AddressAttribute::Local(IpAddr::V4(ip)));
        addr.attributes
            .push(AddressAttribute::Address(IpAddr::V4(ip)));
        rtnl.request(
            RouteNetlinkMessage::NewAddress(addr),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(context(&format!("adding {ip}/{}", cidr.prefix_len())))?;
        rtnl.up(eth0).map_err(context("setting eth0 up"))?;
        let gateway = crate::network::bridge_ip(cidr);
        rtnl.permanent_neighbour(eth0, gateway, mac_of(gateway))
            .map_err(context(&format!("adding the neighbour entry of {gateway}")))?;
        let mut route = RouteMessage::default();
        route.header = RouteHeader {
            address_family: netlink_packet_route::AddressFamily::Inet,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        route.attributes.push(RouteAttribute::Oif(eth0));
        rtnl.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map_err(context(&format!("adding the default route via {gateway}")))?;
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            .map_err(context(&format!("listening on port {port}")))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .map_err(|_| io::Error::other("the Pod network thread panicked"))?;
    if result.is_err() {
        remove(pod.netns);
    }
    result
}

/// Gives the calling thread a new network namespace, pinned at `path`.
fn new_pinned_netns(path: &PathBuf) -> io::Result<()> {
    new_netns().map_err(context("creating a network namespace"))?;
    pin(path).map_err(context("pinning the namespace"))
}

/// Gives the calling thread a new network namespace.
#[allow(unsafe_code)]
fn new_netns() -> io::Result<()> {
    // SAFETY: only the network namespace is unshared, never the file descriptor table, so
    // no thread can observe descriptors it does not share (the hazard `unshare_unsafe`
    // documents). The thread is ours and ends once the Pod is set up.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(io::Error::from)
}

/// Turns IPv6 off in the calling thread's network namespace, for interfaces made from now on
/// too (`/proc/sys/net` is the namespace of the thread that opens it). For the lab's few
/// node namespaces; Pods use [`Rtnl::no_ipv6_addresses`].
pub fn disable_ipv6() -> io::Result<()> {
    for conf in ["default", "all"] {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1")?;
    }
    Ok(())
}

/// Pins the calling thread's network namespace at `path` (as `ip netns add` does).
fn pin(path: &PathBuf) -> io::Result<()> {
    std::fs::create_dir_all(NETNS_DIR)?;
    File::create(path)?;
    rustix::mount::mount_bind("/proc/thread-self/ns/net", path).map_err(io::Error::from)
}

/// Unpins and deletes namespace `name` (the kernel frees it, and its veth, once nothing
/// holds it).
pub fn remove(name: &str) {
    let path = Path::new(NETNS_DIR).join(name);
    let _ = rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(&path);
}
