//! nf_tables netlink messages for an [`ElementChange`]: one batch (one kernel transaction)
//! of set element deletions and additions, plus, for each chain whose dispatch modulus
//! changes, that rule read back from the kernel and replaced with the new modulus patched in.
//!
//! Building the messages is pure ([`Batch`]); [`send`] talks to the kernel. Only what a
//! partial sync of endpoints needs is here; everything else goes through `nft -f`.

use std::os::fd::OwnedFd;
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};

use crate::render::nft::{Element, ElementChange};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFPROTO_IPV4: u8 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_NG_MODULUS: u16 = 2;

const HEADER: usize = 16 + 4;
/// Elements per message: each takes at most 44 bytes of its message's element list, whose
/// length must fit in 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 1000;
/// How long the kernel may take to answer before the change is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the kernel did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be used.
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused one message of the batch (the whole batch is then undone).
    #[error("the kernel refused {what}: {source}")]
    Refused {
        /// Which message.
        what: String,
        /// The kernel's error number.
        source: std::io::Error,
    },
    /// A chain's dispatch rule was not as the last sync left it.
    #[error("chain {chain} of table {table} has no dispatch rule with modulus {modulus}")]
    NoDispatchRule {
        /// The table.
        table: String,
        /// The chain.
        chain: String,
        /// The modulus looked for.
        modulus: u32,
    },
    /// The kernel's answer could not be read.
    #[error("unexpected netlink answer: {0}")]
    Malformed(&'static str),
}

/// Netlink messages being assembled into one batch; each but the batch markers asks for an
/// acknowledgement, so that every one is accounted for.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first: u32,
    /// What each acknowledged message does, for error messages; index = seq - first.
    what: Vec<String>,
}

impl Batch {
    /// An open batch whose messages are numbered from `seq`.
    pub fn new(seq: u32) -> Self {
        let mut batch = Self {
            buf: Vec::with_capacity(4096),
            seq,
            first: seq + 1,
            what: Vec::new(),
        };
        batch.marker(NFNL_MSG_BATCH_BEGIN);
        batch
    }

    fn marker(&mut self, kind: u16) {
        let start = header(&mut self.buf, kind, NLM_F_REQUEST, self.seq, 0);
        // The markers name the subsystem the batch is for.
        self.buf[start + 18..start + 20].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
        finish(&mut self.buf, start);
        self.seq += 1;
    }

    fn message(&mut self, kind: u16, flags: u16, what: String, attrs: impl FnOnce(&mut Vec<u8>)) {
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        let start = header(
            &mut self.buf,
            kind,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            self.seq,
            NFPROTO_IPV4,
        );
        attrs(&mut self.buf);
        finish(&mut self.buf, start);
        self.what.push(what);
        self.seq += 1;
    }

    /// Adds (`add`) or deletes the `elements` of set or map `set` in `table`.
    pub fn elements(&mut self, add: bool, table: &str, set: &str, elements: &[Element]) {
        if elements.is_empty() {
            return;
        }
        let (kind, flags, verb) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "adding")
        } else {
            (NFT_MSG_DELSETELEM, 0, "deleting")
        };
        // An attribute's length is 16 bits: a nested list must stay under 64 KiB.
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            let what = format!("{verb} {} element(s) of {table}/{set}", chunk.len());
            self.message(kind, flags, what, |buf| {
                attr(buf, NFTA_SET_ELEM_LIST_TABLE, &strz(table));
                attr(buf, NFTA_SET_ELEM_LIST_SET, &strz(set));
                nest(buf, NFTA_SET_ELEM_LIST_ELEMENTS, |buf| {
                    for element in chunk {
                        nest(buf, NFTA_LIST_ELEM, |buf| element_attrs(buf, add, element));
                    }
                });
            });
        }
    }

    /// Replaces rule `rule` (as the kernel dumped it) of `table`/`chain` with its expressions
    /// `expressions`.
    fn replace_rule(&mut self, table: &str, chain: &str, rule: &DumpedRule, expressions: &[u8]) {
        let what = format!("replacing the dispatch rule of {table}/{chain}");
        self.message(NFT_MSG_NEWRULE, NLM_F_REPLACE, what, |buf| {
            attr(buf, NFTA_RULE_TABLE, &strz(table));
            attr(buf, NFTA_RULE_CHAIN, &strz(chain));
            attr(buf, NFTA_RULE_HANDLE, &rule.handle);
            attr(buf, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, expressions);
            if let Some(userdata) = &rule.userdata {
                attr(buf, NFTA_RULE_USERDATA, userdata);
            }
        });
    }

    /// The closed batch, what each acknowledged message does, and the first one's number.
    pub fn finish(mut self) -> (Vec<u8>, Vec<String>, u32) {
        self.marker(NFNL_MSG_BATCH_END);
        (self.buf, self.what, self.first)
    }
}

/// One element's key, and its data when it is added to a map.
fn element_attrs(buf: &mut Vec<u8>, add: bool, element: &Element) {
    let (key, data) = element_bytes(element);
    nest(buf, NFTA_SET_ELEM_KEY, |buf| {
        attr(buf, NFTA_DATA_VALUE, &key)
    });
    if add && let Some(data) = data {
        nest(buf, NFTA_SET_ELEM_DATA, |buf| {
            attr(buf, NFTA_DATA_VALUE, &data)
        });
    }
}

/// Key and (for map slots) data of an element, as nftables stores them: a slot is the
/// `numgen` value in host order; addresses and ports in network order, each field of a
/// concatenation padded to four bytes.
fn element_bytes(element: &Element) -> (Vec<u8>, Option<Vec<u8>>) {
    match *element {
        Element::Slot { slot, addr, port } => {
            let mut data = addr.octets().to_vec();
            data.extend(port.to_be_bytes());
            data.extend([0, 0]);
            (slot.to_ne_bytes().to_vec(), Some(data))
        }
        Element::Pair(a, b) => {
            let mut key = a.octets().to_vec();
            key.extend(b.octets());
            (key, None)
        }
    }
}

/// Sends `change` to the kernel through `socket` (a netlink socket of the target namespace)
/// as one transaction: all of it takes effect, or none.
pub fn send(socket: &OwnedFd, change: &ElementChange) -> Result<(), NetlinkError> {
    let table = change.table;
    let mut batch = Batch::new(1);
    for (add, list) in [(false, &change.delete), (true, &change.add)] {
        // One message per set, in first-seen order.
        let mut sets: Vec<(&str, Vec<Element>)> = Vec::new();
        for (set, element) in list {
            match sets.iter_mut().find(|(s, _)| s == set) {
                Some((_, elements)) => elements.push(*element),
                None => sets.push((set, vec![*element])),
            }
        }
        for (set, elements) in &sets {
            batch.elements(add, table, set, elements);
        }
    }
    let mut dump_seq = 1_000_000;
    for (chain, from, to) in &change.modulus {
        dump_seq += 1;
        let rules = dump_rules(socket, table, chain, dump_seq)?;
        let (rule, expressions) = rules
            .iter()
            .find_map(|rule| patch_modulus(&rule.expressions, *from, *to).map(|e| (rule, e)))
            .ok_or_else(|| NetlinkError::NoDispatchRule {
                table: table.to_owned(),
                chain: chain.clone(),
                modulus: *from,
            })?;
        batch.replace_rule(table, chain, rule, &expressions);
    }
    let (buf, what, first) = batch.finish();
    // The whole batch is one datagram, which must fit in the socket's send buffer (208 KiB
    // by default): a Service gaining thousands of endpoints at once needs more. Forcing the
    // size needs CAP_NET_ADMIN, which programming nftables needs anyway.
    if buf.len() > 128 << 10 {
        rustix::net::sockopt::set_socket_send_buffer_size_force(socket, 2 * buf.len())
            .map_err(std::io::Error::from)?;
    }
    rustix::net::send(socket, &buf, SendFlags::empty()).map_err(std::io::Error::from)?;
    let mut acked = 0;
    while acked < what.len() {
        for (kind, payload) in receive(socket)? {
            if kind != NLMSG_ERROR {
                continue;
            }
            let (code, seq) = error_answer(&payload)?;
            if code != 0 {
                let what = seq
                    .checked_sub(first)
                    .and_then(|i| what.get(i as usize))
                    .cloned()
                    .unwrap_or_else(|| format!("message {seq}"));
                return Err(NetlinkError::Refused {
                    what,
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
            acked += 1;
        }
    }
    Ok(())
}

/// A netlink socket for nf_tables in the calling thread's network namespace; it stays in
/// that namespace whichever thread uses it later.
pub fn socket() -> Result<OwnedFd, NetlinkError> {
    let fd = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::RAW,
        Some(netlink::NETFILTER),
    )
    .map_err(std::io::Error::from)?;
    rustix::net::bind(&fd, &netlink::SocketAddrNetlink::new(0, 0)).map_err(std::io::Error::from)?;
    rustix::net::sockopt::set_socket_timeout(
        &fd,
        rustix::net::sockopt::Timeout::Recv,
        Some(ANSWER_TIMEOUT),
    )
    .map_err(std::io::Error::from)?;
    Ok(fd)
}

/// A rule as the kernel lists it: its handle and expressions (attribute payloads, unparsed).
#[derive(Debug)]
struct DumpedRule {
    handle: Vec<u8>,
    expressions: Vec<u8>,
    userdata: Option<Vec<u8>>,
}

fn dump_rules(
    socket: &OwnedFd,
    table: &str,
    chain: &str,
    seq: u32,
) -> Result<Vec<DumpedRule>, NetlinkError> {
    let mut buf = Vec::new();
    let start = header(
        &mut buf,
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETRULE,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        NFPROTO_IPV4,
    );
    attr(&mut buf, NFTA_RULE_TABLE, &strz(table));
    attr(&mut buf, NFTA_RULE_CHAIN, &strz(chain));
    finish(&mut buf, start);
    rustix::net::send(socket, &buf, SendFlags::empty()).map_err(std::io::Error::from)?;
    let mut rules = Vec::new();
    loop {
        for (kind, payload) in receive(socket)? {
            match kind {
                NLMSG_DONE => return Ok(rules),
                NLMSG_ERROR => {
                    let (code, _) = error_answer(&payload)?;
                    return Err(NetlinkError::Refused {
                        what: format!("listing chain {table}/{chain}"),
                        source: std::io::Error::from_raw_os_error(-code),
                    });
                }
                _ => {
                    let mut rule = DumpedRule {
                        handle: Vec::new(),
                        expressions: Vec::new(),
                        userdata: None,
                    };
                    for (ty, value) in attrs(payload.get(4..).unwrap_or_default()) {
                        match ty {
                            NFTA_RULE_HANDLE => rule.handle = value.to_vec(),
                            NFTA_RULE_EXPRESSIONS => rule.expressions = value.to_vec(),
                            NFTA_RULE_USERDATA => rule.userdata = Some(value.to_vec()),
                            _ => {}
                        }
                    }
                    rules.push(rule);
                }
            }
        }
    }
}

/// `expressions` with its `numgen` modulus changed from `from` to `to`, if it has one set to
/// `from`.
fn patch_modulus(expressions: &[u8], from: u32, to: u32) -> Option<Vec<u8>> {
    let mut patched = expressions.to_vec();
    let mut found = false;
    for (_, expr, expr_at) in attrs_at(expressions) {
        let is_numgen =
            attrs(expr).any(|(ty, value)| ty == NFTA_EXPR_NAME && value.starts_with(b"numgen\0"));
        if !is_numgen {
            continue;
        }
        for (ty, data, data_at) in attrs_at(expr) {
            if ty != NFTA_EXPR_DATA {
                continue;
            }
            for (ty, value, at) in attrs_at(data) {
                if ty == NFTA_NG_MODULUS && value == from.to_be_bytes() {
                    let at = expr_at + data_at + at;
                    patched[at..at + 4].copy_from_slice(&to.to_be_bytes());
                    found = true;
                }
            }
        }
    }
    found.then_some(patched)
}

/// Reads one datagram of answers: (message type, payload after the netlink header).
fn receive(socket: &OwnedFd) -> Result<Vec<(u16, Vec<u8>)>, NetlinkError> {
    let mut buf = vec![0u8; 1 << 16];
    let (n, _) = rustix::net::recv(socket, &mut buf[..], RecvFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    let mut rest = &buf[..n];
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            return Err(NetlinkError::Malformed(
                "a message longer than its datagram",
            ));
        }
        let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
        out.push((kind, rest[16..len].to_vec()));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// An error answer's code (0 for an acknowledgement) and the sequence number it answers.
fn error_answer(payload: &[u8]) -> Result<(i32, u32), NetlinkError> {
    if payload.len() < 4 + 16 {
        return Err(NetlinkError::Malformed("a short error message"));
    }
    let code = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
    let seq = u32::from_ne_bytes(payload[12..16].try_into().expect("4 bytes"));
    Ok((code, seq))
}

/// The attributes in `buf`: (type without flags, value).
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attrs_at(buf).map(|(ty, value, _)| (ty, value))
}

/// [`attrs`], with each value's offset in `buf`.
fn attrs_at(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 4 > buf.len() {
            return None;
        }
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & NLA_TYPE_MASK;
        if len < 4 || at + len > buf.len() {
            return None;
        }
        let item = (ty, &buf[at + 4..at + len], at + 4);
        at += align(len);
        Some(item)
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Starts a message: netlink header, then nfgenmsg (family, version 0, resource id 0).
fn header(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, family: u8) -> usize {
    let start = buf.len();
    buf.extend(0u32.to_ne_bytes());
    buf.extend(kind.to_ne_bytes());
    buf.extend(flags.to_ne_bytes());
    buf.extend(seq.to_ne_bytes());
    buf.extend(0u32.to_ne_bytes());
    buf.extend([family, 0, 0, 0]);
    debug_assert_eq!(buf.len() - start, HEADER);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn attr(buf: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend((len as u16).to_ne_bytes());
    buf.extend(ty.to_ne_bytes());
    buf.extend(value);
    buf.resize(buf.len() + align(len) - len, 0);
}

fn nest(buf: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend([0, 0]);
    buf.extend((ty | NLA_F_NESTED).to_ne_bytes());
    inner(buf);
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

fn strz(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_slot_is_stored_as_nft_stores_it() {
        // `nft --debug=netlink add element ... { 2 : 10.244.3.4 . 8080 }` prints
        // `element 00000002 : 0403f40a 0000901f` (32-bit words in host order).
        let (key, data) = element_bytes(&Element::Slot {
            slot: 2,
            addr: "10.244.3.4".parse().unwrap(),
            port: 8080,
        });
        assert_eq!(key, 2u32.to_ne_bytes());
        assert_eq!(data.unwrap(), [10, 244, 3, 4, 0x1f, 0x90, 0, 0]);
        let (key, data) = element_bytes(&Element::Pair(
            "10.244.3.4".parse().unwrap(),
            "10.244.3.5".parse().unwrap(),
        ));
        assert_eq!(key, [10, 244, 3, 4, 10, 244, 3, 5]);
        assert_eq!(data, None);
    }

    #[test]
    fn a_batch_is_framed_by_markers_and_every_message_asks_for_an_answer() {
        let mut batch = Batch::new(7);
        let slot = Element::Slot {
            slot: 0,
            addr: "10.0.0.1".parse().unwrap(),
            port: 80,
        };
        batch.elements(false, "t", "m", &[slot]);
        batch.elements(true, "t", "m", &[slot]);
        batch.elements(true, "t", "m", &[]);
        let (buf, what, first) = batch.finish();
        assert_eq!(first, 8);
        assert_eq!(what.len(), 2);
        let mut kinds = Vec::new();
        let mut rest = &buf[..];
        while !rest.is_empty() {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let flags = u16::from_ne_bytes(rest[6..8].try_into().unwrap());
            kinds.push((kind, flags & NLM_F_ACK != 0));
            rest = &rest[len..];
        }
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, false),
                ((10 << 8) | NFT_MSG_DELSETELEM, true),
                ((10 << 8) | NFT_MSG_NEWSETELEM, true),
                (NFNL_MSG_BATCH_END, false),
            ]
        );
    }

    #[test]
    fn only_a_numgen_modulus_with_the_old_value_is_patched() {
        let mut numgen = Vec::new();
        nest(&mut numgen, NFTA_LIST_ELEM, |buf| {
            attr(buf, NFTA_EXPR_NAME, &strz("numgen"));
            nest(buf, NFTA_EXPR_DATA, |buf| {
                attr(buf, 1, &1u32.to_be_bytes());
                attr(buf, NFTA_NG_MODULUS, &3u32.to_be_bytes());
            });
        });
        let mut meta = Vec::new();
        nest(&mut meta, NFTA_LIST_ELEM, |buf| {
            attr(buf, NFTA_EXPR_NAME, &strz("meta"));
            nest(buf, NFTA_EXPR_DATA, |buf| {
                attr(buf, NFTA_NG_MODULUS, &3u32.to_be_bytes());
            });
        });
        let expressions = [meta.clone(), numgen.clone()].concat();
        let patched = patch_modulus(&expressions, 3, 2).expect("has numgen mod 3");
        assert_eq!(&patched[..meta.len()], &meta[..], "other expressions stay");
        assert_eq!(&patched[patched.len() - 4..], 2u32.to_be_bytes());
        assert_eq!(patch_modulus(&expressions, 4, 2), None);
    }
}
