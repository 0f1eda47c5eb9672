//! Applying nftables rules: the rendered transaction through one `nft -f`, which replaces our
//! table atomically; other tables are never touched.

use super::{ApplyError, Netns};

/// Programs one nftables table into one network namespace.
#[derive(Debug, Clone)]
pub struct NftApplier {
    netns: Netns,
    table: &'static str,
}

impl NftApplier {
    /// An applier for the table `table` (see [`crate::render::nft::Layout::table`]) in `netns`.
    pub fn new(netns: Netns, table: &'static str) -> Self {
        Self { netns, table }
    }

    /// Runs the transaction `input` (from [`crate::render::nft::render`]) and sets
    /// `route_localnet` so NodePorts can answer on 127.0.0.1.
    pub fn apply(&self, input: &str) -> Result<(), ApplyError> {
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

    /// Deletes our table, if it exists.
    pub fn cleanup(&self) -> Result<(), ApplyError> {
        let input = format!("table ip {t}\ndelete table ip {t}\n", t = self.table);
        self.netns.run("nft", &["-f", "-"], Some(&input))?;
        Ok(())
    }
}
