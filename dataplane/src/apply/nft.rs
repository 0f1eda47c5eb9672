//! Applying nftables rules: the rendered transaction through one `nft -f`, which replaces our
//! table atomically, or a partial sync made only of endpoint elements as netlink messages
//! ([`super::nfnetlink`]); other tables are never touched.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use super::{ApplyError, Netns, nfnetlink};
use crate::render::nft::ElementChange;

/// Programs one nftables table into one network namespace.
#[derive(Debug, Clone)]
pub struct NftApplier {
    netns: Netns,
    table: &'static str,
    /// The netlink socket of the last element change and the namespace it belongs to.
    socket: Arc<Mutex<Option<(u64, OwnedFd)>>>,
}

impl NftApplier {
    /// An applier for the table `table` (see [`crate::render::nft::Layout::table`]) in `netns`.
    pub fn new(netns: Netns, table: &'static str) -> Self {
        Self {
            netns,
            table,
            socket: Arc::default(),
        }
    }

    /// Runs the transaction `input` (from [`crate::render::nft::render`]) and sets
    /// `route_localnet` so NodePorts can answer on 127.0.0.1.
    pub fn apply(&self, input: &str) -> Result<(), ApplyError> {
        // A kept netlink socket holds its namespace alive; a full sync (after a failure, or
        // of a namespace made again) starts afresh.
        self.socket.lock().expect("socket cache").take();
        self.apply_change(input)?;
        self.netns.enable_localhost_nodeports()
    }

    /// Runs the transaction `input` (from [`crate::render::nft::diff`] or
    /// [`crate::render::nft::NftSync::update`]) against a table that [`NftApplier::apply`]
    /// made, leaving the sysctls alone: a partial sync is one `nft` process, nothing else.
    pub fn apply_change(&self, input: &str) -> Result<(), ApplyError> {
        self.netns.run("nft", &["-f", "-"], Some(input))?;
        Ok(())
    }

    /// Sends `change` (from [`crate::render::nft::NftSync::update_change`]) to the kernel as
    /// one netlink transaction, without `nft`, which reads the whole table back first. Moving
    /// endpoints costs about a millisecond whatever the size of the table; a changed
    /// modulus replaces a rule, after which the kernel checks the whole table at commit
    /// (about 20 ms at 10,000 services).
    pub fn apply_elements(&self, change: &ElementChange) -> Result<(), ApplyError> {
        if change.is_empty() {
            return Ok(());
        }
        // The socket is kept: closing a netlink socket right after a commit waits for the
        // kernel to finish releasing that commit's objects (an RCU grace period, about 10 ms
        // here), which is most of what a change costs. It is tied to the namespace it was
        // made in, so a namespace made again under the same name gets a new one.
        let netns = self.netns.identity()?;
        let mut cached = self.socket.lock().expect("socket cache");
        let socket = match cached.take() {
            Some((id, socket)) if id == netns => socket,
            _ => self.netns.within("netlink", nfnetlink::socket)??,
        };
        // After a failure the socket may hold answers nobody read; it is not reused then.
        nfnetlink::send(&socket, change).map_err(|e| match e {
            nfnetlink::NetlinkError::Refused { source, .. } if source.raw_os_error() == Some(1) => {
                ApplyError::NotPermitted {
                    tool: "netlink",
                    stderr: source.to_string(),
                }
            }
            e => e.into(),
        })?;
        *cached = Some((netns, socket));
        Ok(())
    }

    /// Deletes our table, if it exists.
    pub fn cleanup(&self) -> Result<(), ApplyError> {
        self.socket.lock().expect("socket cache").take();
        let input = format!("table ip {t}\ndelete table ip {t}\n", t = self.table);
        self.netns.run("nft", &["-f", "-"], Some(&input))?;
        Ok(())
    }
}
