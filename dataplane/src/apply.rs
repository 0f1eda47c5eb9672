//! Appliers: program a real kernel with a [`crate::ruleset::RuleSet`], inside a network
//! namespace or the current one. This is the only part of the crate that runs tools.

pub mod iptables;
pub mod nfnetlink;
pub mod nft;
mod run;

pub use run::{ApplyError, Netns};
