//! Kernel mode without root: the lab's server runs as root of an unprivileged user namespace
//! that the user owns, with a mount namespace of its own in which `/run/netns` is a private
//! tmpfs. Network namespaces made there belong to that user namespace, so the server may
//! create them, wire them with veths and bridges, set their sysctls and program iptables or
//! nftables in them, all without privileges on the host; the host's own namespace, mounts
//! and rules are never touched.
//!
//! Every `labctl` command that works on a running lab joins the server's user and mount
//! namespaces before it starts any thread (`setns` into a user namespace requires a process
//! with one thread), so `labctl exec`, `curl`, `rules`, `down` and the tutorial see the lab's
//! namespaces exactly as root does. Processes started from there (`ip`, `iptables`, `nft`,
//! `kubectl`) inherit them. When the kernel refuses unprivileged user namespaces (for
//! example `kernel.apparmor_restrict_unprivileged_userns=1` on Ubuntu 24.04) the lab runs in
//! userspace mode and says why.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::thread::{LinkNameSpaceType, UnshareFlags};

static REFUSED: OnceLock<String> = OnceLock::new();

/// The uid on the host when this process is root of a lab user namespace (its uid map sends 0
/// to one host uid), else `None` (the host's own user namespace maps every uid to itself).
pub fn outside_uid() -> Option<u32> {
    let map = std::fs::read_to_string("/proc/self/uid_map").ok()?;
    outside_uid_in(&map)
}

fn outside_uid_in(map: &str) -> Option<u32> {
    let fields: Vec<u32> = map
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    match fields.as_slice() {
        [0, outside, 1] => Some(*outside),
        _ => None,
    }
}

/// Whether this process is root of a lab user namespace rather than root of the host.
pub fn inside() -> bool {
    outside_uid().is_some()
}

/// What a user without root should know about a kernel-mode lab in a user namespace of uid
/// `uid` (`labctl up` and the tutorial print it).
pub fn note(uid: u32) -> String {
    format!(
        "Kernel mode without root: the lab is root of an unprivileged user namespace of uid {uid}, so its network namespaces are private to it (`ip netns list` on the host does not show them); `labctl exec`, `labctl curl` and `labctl rules` join it."
    )
}

/// Why no user namespace could be made for this command's lab, if one was tried and refused.
pub fn refused() -> Option<&'static str> {
    REFUSED.get().map(String::as_str)
}

/// Makes this process root of a new user namespace with its own mount namespace, and mounts a
/// private tmpfs for the lab's named network namespaces (over `/run/netns` when the host has
/// that directory, else over `/run`, where an unprivileged user could not create it).
/// Processes started afterwards, the lab's server among them, inherit both namespaces.
///
/// Call it while the process has a single thread. On failure the reason is kept for
/// [`refused`] and the process is unchanged as far as it matters: still the user it was.
#[allow(unsafe_code)]
pub fn enter_new() -> io::Result<()> {
    let result = (|| {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        // SAFETY: the file descriptor table is not unshared (the hazard `unshare_unsafe`
        // documents), and the caller has only one thread, as a new user namespace requires.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS) }
            .map_err(|e| io::Error::other(format!("unshare(CLONE_NEWUSER): {e}")))?;
        std::fs::write("/proc/self/setgroups", "deny")?;
        std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
        std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
        // Mounts made from here on stay in this namespace.
        rustix::mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )?;
        let target = if Path::new("/run/netns").is_dir() {
            "/run/netns"
        } else {
            "/run"
        };
        rustix::mount::mount("tmpfs", target, "tmpfs", MountFlags::empty(), c"mode=0755")
            .map_err(|e| io::Error::other(format!("mounting a tmpfs on {target}: {e}")))?;
        std::fs::create_dir_all("/run/netns")
    })();
    if let Err(e) = &result {
        let _ = REFUSED.set(format!(
            "an unprivileged user namespace could not be made ({e})"
        ));
    }
    result
}

/// Joins the user and mount namespaces of process `pid` (a lab's server), unless this process
/// is in them already. Call it while the process has a single thread.
pub fn join(pid: i32) -> io::Result<()> {
    let ns = |kind: &str| format!("/proc/{pid}/ns/{kind}");
    if std::fs::read_link(ns("user"))? == std::fs::read_link("/proc/self/ns/user")? {
        return Ok(());
    }
    let user = File::open(ns("user"))?;
    let mount = File::open(ns("mnt"))?;
    // Entering a mount namespace moves the working directory to its root; the same path is
    // there (only /run differs), so go back to it.
    let cwd = std::env::current_dir().ok();
    rustix::thread::move_into_link_name_space(user.as_fd(), Some(LinkNameSpaceType::User))
        .map_err(|e| io::Error::other(format!("joining the lab's user namespace: {e}")))?;
    rustix::thread::move_into_link_name_space(mount.as_fd(), Some(LinkNameSpaceType::Mount))
        .map_err(|e| io::Error::other(format!("joining the lab's mount namespace: {e}")))?;
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_map_is_not_a_lab_namespace_and_a_one_uid_map_is() {
        assert_eq!(outside_uid_in("         0          0 4294967295\n"), None);
        assert_eq!(
            outside_uid_in("         0       1000          1\n"),
            Some(1000)
        );
        assert_eq!(outside_uid_in("0 1000 1\n1 100000 65536\n"), None);
        assert_eq!(outside_uid_in(""), None);
    }
}
