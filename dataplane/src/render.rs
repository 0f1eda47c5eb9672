//! Rule sets rendered as text for the kernel's tools.

pub mod iptables;
pub mod nft;
