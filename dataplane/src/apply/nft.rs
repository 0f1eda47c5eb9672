//! Applying nftables rules: the rendered transaction through one `nft -f`, which replaces our
//! table atomically, or a partial sync made only of endpoint elements as netlink messages
//! ([`super::nfnetlink`]); a first full sync writes the table through `nft` and its elements
//! over netlink ([`NftApplier::apply_table`]). Other tables are never touched.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use super::{ApplyError, Netns, nfnetlink};
use crate::render::nft::{ElementChange, NftTable};

/// Elements per netlink batch when a first sync sends them (see [`NftApplier::apply_table`]).
const ELEMENTS_PER_BATCH: usize = 50_000;

/// How [`NftApplier::apply_table`] wrote a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableWrite {
    /// One `nft -f` transaction of the whole text.
    Nft,
    /// The table without its endpoint and hairpin elements through `nft`, then those
    /// elements as netlink batches.
    NftAndNetlink,
}

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

    /// Writes the whole `table` (from [`crate::render::nft::NftSync::table`] or
    /// [`crate::render::nft::table`]) and sets `route_localnet`, as [`NftApplier::apply`]
    /// of its text does. Where our table does not exist yet, the table without its endpoint
    /// and hairpin elements goes through `nft` and those elements follow as netlink batches:
    /// `nft` spends seconds parsing hundreds of thousands of elements that the kernel adds
    /// in a fraction of that, and until they arrive a service matches no endpoint, as before
    /// the table existed. A table that exists is replaced in one `nft` transaction, so no
    /// packet ever sees it half written. Says which way it went.
    pub fn apply_table(&self, table: &NftTable) -> Result<TableWrite, ApplyError> {
        let split = match self.exists()? {
            true => None,
            false => table.without_elements(),
        };
        let Some((rest, elements)) = split else {
            self.apply(&table.full())?;
            return Ok(TableWrite::Nft);
        };
        self.apply(&rest.full())?;
        // Each batch is one kernel transaction held in memory until it commits; a first
        // sync needs no single transaction, so batches stay a few megabytes.
        for add in elements.add.chunks(ELEMENTS_PER_BATCH) {
            let part = ElementChange {
                table: elements.table,
                add: add.to_vec(),
                ..ElementChange::default()
            };
            if let Err(e) = self.apply_elements(&part) {
                // Netlink may fail where `nft` works (a send buffer that cannot be grown in
                // a user namespace, say): the whole text replaces whatever arrived.
                tracing::warn!(error = %e, "netlink elements failed; writing the table through nft");
                self.apply(&table.full())?;
                return Ok(TableWrite::Nft);
            }
        }
        Ok(TableWrite::NftAndNetlink)
    }

    /// Whether our table exists (`nft list tables` reads the names only).
    fn exists(&self) -> Result<bool, ApplyError> {
        let out = self.netns.run("nft", &["list", "tables", "ip"], None)?;
        let wanted = format!("table ip {}", self.table);
        Ok(out.lines().any(|l| l.trim() == wanted))
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
    /// modulus replaces the chain's draw rule (`ct mark set numgen ...`), which the kernel
    /// commits without validating the table, so it costs about as much.
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
