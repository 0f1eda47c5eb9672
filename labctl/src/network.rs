//! The lab's network in the kernel: one network namespace per node with a `cni0` bridge for
//! its pod CIDR, an isolated underlay namespace that joins the nodes (their InternalIPs), a
//! client namespace outside the cluster, and one namespace per Pod.
//!
//! Nothing is ever linked to the host's own namespace: every veth is created with both ends
//! inside lab namespaces, so no packet of the lab can leave the machine.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use sha2::Digest;

use crate::cluster::ClusterConfig;

/// A failed network step: the command and what it printed.
#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {detail}")]
pub struct NetError {
    /// The command line.
    pub command: String,
    /// Its stderr, or why it could not run.
    pub detail: String,
}

/// The client namespace's address on the underlay (outside the cluster, like a laptop's
/// browser on kind's docker network).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 100);

/// Names of a lab's namespaces; all start with `slab-<lab>-`, which is how `down` finds them.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// The names of lab `lab`.
    pub fn new(lab: &str) -> Names {
        Names {
            prefix: format!("slab-{lab}-"),
        }
    }

    /// The underlay namespace.
    pub fn underlay(&self) -> String {
        format!("{}underlay", self.prefix)
    }

    /// The client namespace.
    pub fn client(&self) -> String {
        format!("{}client", self.prefix)
    }

    /// A node's namespace.
    pub fn node(&self, node: &str) -> String {
        format!("{}node-{node}", self.prefix)
    }

    /// A Pod's namespace (by uid, so a new Pod with an old name never meets stale state).
    pub fn pod(&self, uid: &str) -> String {
        format!("{}pod-{}", self.prefix, short_hash(uid))
    }
}

fn short_hash(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `ip` (or another tool) and says what failed.
fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -n <ns> -batch -` with `lines`, one process for many steps.
fn ip_batch(ns: &str, lines: &[String]) -> Result<(), NetError> {
    use std::io::Write;
    let command = format!("ip -n {ns} -batch - <<< {:?}", lines.join("; "));
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(lines.join("\n").as_bytes())
        .map_err(|e| NetError {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    let out = child.wait_with_output().map_err(|e| NetError {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether this process can build the kernel network (root, `ip` present, namespaces work).
pub fn kernel_mode_available(tools: &[KernelTool]) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err(match crate::userns::refused() {
            Some(why) => format!("not running as root, and {why}"),
            None => "not running as root, so no network namespaces can be made".into(),
        });
    }
    run("ip", &["-V"])
        .map_err(|e| format!("iproute2's `ip` is missing ({e}); install iproute2"))?;
    for tool in tools {
        if which(tool.program).is_some() {
            continue;
        }
        // Installed where root's PATH has it, but not on this PATH: say so rather than
        // send the user to install it again.
        let installed = ["/usr/sbin", "/sbin", "/usr/local/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool.program))
            .find(|p| p.is_file());
        return Err(match installed {
            Some(path) => format!(
                "`{}` is not on PATH (it is installed at {}; add {} to PATH)",
                tool.program,
                path.display(),
                path.parent()
                    .map_or(String::new(), |d| d.display().to_string())
            ),
            None => format!(
                "`{}` is not on PATH; install the {} package: `apt-get install {}`",
                tool.program, tool.package, tool.package
            ),
        });
    }
    Ok(())
}

/// A program a kernel dataplane runs, and the package that has it.
#[derive(Debug, Clone, Copy)]
pub struct KernelTool {
    /// The program, found on PATH.
    pub program: &'static str,
    /// The Debian package to install when it is missing.
    pub package: &'static str,
}

/// Where `program` is on PATH, if anywhere.
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Every namespace of lab `lab` that exists now.
pub fn existing(lab: &str) -> Vec<String> {
    let prefix = Names::new(lab).prefix;
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Deletes every namespace of lab `lab` (their veths go with them). Returns how many.
pub fn teardown(lab: &str) -> usize {
    let names = existing(lab);
    for ns in &names {
        crate::podnet::remove(ns);
    }
    crate::podnet::forget_nodes(&Names::new(lab).prefix);
    names.len()
}

fn link_name(prefix: &str, key: &str) -> String {
    // Interface names have at most 15 characters.
    format!("{prefix}{}", short_hash(key))
}

/// Builds the nodes, the underlay and the client namespace, from scratch (stale namespaces of
/// an earlier run are removed first).
pub fn build(names: &Names, cluster: &ClusterConfig, lab: &str) -> Result<(), NetError> {
    teardown(lab);
    let underlay = names.underlay();
    create(&underlay)?;
    let gw = Ipv4Addr::new(172, 18, 0, 1);
    ip_batch(
        &underlay,
        &[
            "link set lo up".into(),
            "link add br0 type bridge".into(),
            format!("addr add {gw}/16 dev br0"),
            "link set br0 up".into(),
        ],
    )?;
    let attach = |ns: &str, ip: Ipv4Addr, key: &str| -> Result<(), NetError> {
        create(ns)?;
        // IPv4 only: the veths a node gets for its Pods would otherwise each send IPv6 DAD,
        // MLD and router solicitations, which its bridge floods to every Pod.
        in_namespace(ns, crate::podnet::disable_ipv6).map_err(|e| NetError {
            command: format!("disabling IPv6 in {ns}"),
            detail: e.to_string(),
        })?;
        let outer = link_name("vu", key);
        ip_batch(
            &underlay,
            &[
                format!("link add {outer} type veth peer name eth0 netns {ns}"),
                format!("link set {outer} master br0 up"),
            ],
        )?;
        ip_batch(
            ns,
            &[
                "link set lo up".into(),
                format!("addr add {ip}/16 dev eth0"),
                "link set eth0 up".into(),
            ],
        )
    };
    for node in &cluster.nodes {
        let ns = names.node(&node.name);
        attach(&ns, node.internal_ip, &node.name)?;
        let gateway = bridge_ip(node.pod_cidr);
        let mut lines = vec![
            // Traffic to ClusterIPs needs a route before the OUTPUT hook can DNAT it; the
            // underlay's bridge is the default gateway, and it leads nowhere else.
            format!("route add default via {gw}"),
            // A fixed MAC, so that Pods can have a permanent neighbour entry for their
            // gateway (see `podnet::mac_of`).
            format!(
                "link add cni0 address {} type bridge",
                crate::podnet::mac_text(gateway)
            ),
            format!("addr add {gateway}/{} dev cni0", node.pod_cidr.prefix_len()),
            "link set cni0 up".to_string(),
        ];
        for other in cluster.nodes.iter().filter(|o| o.name != node.name) {
            lines.push(format!(
                "route add {} via {}",
                other.pod_cidr, other.internal_ip
            ));
        }
        ip_batch(&ns, &lines)?;
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        )?;
    }
    let client = names.client();
    attach(&client, CLIENT_IP, "client")?;
    // LoadBalancer addresses are reached through a worker, as cloud-provider-kind's proxy
    // forwards to the nodes.
    if let Some(worker) = cluster.nodes.iter().find(|n| !n.control_plane) {
        let (first, last) = cluster.load_balancer_pool;
        let mut lines = Vec::new();
        for ip in u32::from(first)..=u32::from(last) {
            lines.push(format!(
                "route add {}/32 via {}",
                Ipv4Addr::from(ip),
                worker.internal_ip
            ));
        }
        ip_batch(&client, &lines)?;
    }
    Ok(())
}

/// Makes namespace `ns`, in-process (see [`crate::podnet::create`]).
fn create(ns: &str) -> Result<(), NetError> {
    crate::podnet::create(ns).map_err(|e| NetError {
        command: format!("creating network namespace {ns}"),
        detail: e.to_string(),
    })
}

/// The bridge's address in a pod CIDR (the Pods' gateway): the first host.
pub fn bridge_ip(cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(cidr.network()) + 1)
}

/// Makes a Pod's namespace with `ip` on its node's bridge and a listening socket on `port`
/// inside it; returns the namespace's name and the socket.
pub fn add_pod(
    names: &Names,
    node: &str,
    pod_cidr: Ipv4Net,
    uid: &str,
    ip: Ipv4Addr,
    port: u16,
) -> Result<(String, TcpListener), NetError> {
    let ns = names.pod(uid);
    let listener = crate::podnet::add(&crate::podnet::PodNet {
        netns: &ns,
        node_netns: &names.node(node),
        host_link: &link_name("vp", uid),
        pod_cidr,
        ip,
        port,
    })
    .map_err(|e| NetError {
        command: format!("setting up {ns} ({ip} on {node})"),
        detail: e.to_string(),
    })?;
    Ok((ns, listener))
}

/// Removes a Pod's namespace.
pub fn remove_pod(names: &Names, uid: &str) {
    crate::podnet::remove(&names.pod(uid));
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it makes live there.
pub fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let path = std::path::Path::new("/run/netns").join(ns);
    let file = File::open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| std::io::Error::other(format!("entering the network namespace: {e}")))?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// A listening socket on `0.0.0.0:port` inside namespace `ns`.
pub fn listen_in(ns: &str, port: u16) -> std::io::Result<TcpListener> {
    in_namespace(ns, move || {
        let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// One HTTP GET from inside namespace `ns`, with a bounded wait; returns the body.
pub fn http_get(ns: &str, target: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let stream = in_namespace(ns, move || TcpStream::connect_timeout(&target, timeout))?;
    http_exchange(stream, &target.to_string(), timeout)
}

/// Sends `GET /` on a connected stream and reads the whole answer; returns the body.
pub fn http_exchange(
    mut stream: TcpStream,
    host: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: labctl\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_string())
}
