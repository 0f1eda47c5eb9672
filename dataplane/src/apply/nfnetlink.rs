//! nf_tables netlink messages for an [`ElementChange`]: one batch (one kernel transaction)
//! of set element deletions and additions, plus, for each chain whose draw modulus changes,
//! its draw rule read back from the kernel and replaced with the new modulus patched in.
//!
//! Building the messages is pure ([`Batch`]); [`send`] talks to the kernel. Only what a
//! partial sync of endpoints needs is here; everything else goes through `nft -f`.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};
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
const NLM_F_DUMP_INTR: u16 = 0x10;
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
/// Elements per message: each takes at most 32 bytes of its message's element list, whose
/// length must fit in 16 bits.
const ELEMENTS_PER_MESSAGE: usize = 1000;
/// How long the kernel may take to answer before the change is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the kernel did not take a change, and whether it is known to have left the table as
/// it was ([`NetlinkError::undone`]).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Nothing was sent: the socket could not be used, or the table could not be read.
    #[error("netlink: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused a message of the batch, so it undid the whole batch.
    #[error("the kernel refused {what}: {source}")]
    Refused {
        /// Which message.
        what: String,
        /// The kernel's error number.
        source: std::io::Error,
    },
    /// Nothing was sent: a chain's draw rule was not as the last sync left it.
    #[error("chain {chain} of table {table} has no draw rule with modulus {modulus}")]
    NoDrawRule {
        /// The table.
        table: String,
        /// The chain.
        chain: String,
        /// The modulus looked for.
        modulus: u32,
    },
    /// The batch was sent but its answer could not be read: it may or may not have been
    /// committed.
    #[error("no answer to the batch ({0}); whether the kernel took it is unknown")]
    Unanswered(String),
}

impl NetlinkError {
    /// Whether the kernel's table is known to be as it was before (nothing sent, or the
    /// batch refused and undone), so the same change may be sent again another way.
    pub fn undone(&self) -> bool {
        !matches!(self, NetlinkError::Unanswered(_))
    }
}

/// Sequence numbers for requests, never reused by a process: an answer that arrives late
/// (after an error, on a kept socket) is not taken for another request's.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// Netlink messages being assembled into one batch. Only the last message asks for an
/// acknowledgement: the kernel reports every failed message anyway and answers in order, so
/// that acknowledgement (or an error before it) settles the batch, and the answers stay few
/// however large the batch.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first: u32,
    /// Where the last message starts, to ask it for the acknowledgement.
    last: Option<usize>,
    /// What each message does, for error messages; index = seq - first.
    what: Vec<String>,
}

impl Batch {
    /// An open batch whose messages are numbered from `seq`.
    pub fn new(seq: u32) -> Self {
        let mut batch = Self {
            buf: Vec::with_capacity(4096),
            seq,
            first: seq + 1,
            last: None,
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
            NLM_F_REQUEST | flags,
            self.seq,
            NFPROTO_IPV4,
        );
        attrs(&mut self.buf);
        finish(&mut self.buf, start);
        self.last = Some(start);
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
        let what = format!("replacing the draw rule of {table}/{chain}");
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

    /// The closed batch, what each message does, and the first one's number.
    pub fn finish(mut self) -> (Vec<u8>, Vec<String>, u32) {
        if let Some(last) = self.last {
            let flags = u16::from_ne_bytes([self.buf[last + 6], self.buf[last + 7]]) | NLM_F_ACK;
            self.buf[last + 6..last + 8].copy_from_slice(&flags.to_ne_bytes());
        }
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
    // Sequence numbers for this change's dumps, then its batch: a block of 65,536, kept
    // under 2^31 so that no number in it wraps around.
    let base = SEQ.fetch_add(1 << 16, Ordering::Relaxed) & 0x7fff_0000;
    let mut answers = Answers::new(socket);
    let mut rules = Vec::new();
    for (i, (chain, from, to)) in change.modulus.iter().enumerate() {
        let dumped = dump_rules(&mut answers, table, chain, base + i as u32)?;
        let rule = dumped
            .into_iter()
            .find_map(|rule| patch_modulus(&rule.expressions, *from, *to).map(|e| (rule, e)))
            .ok_or_else(|| NetlinkError::NoDrawRule {
                table: table.to_owned(),
                chain: chain.clone(),
                modulus: *from,
            })?;
        rules.push((chain, rule));
    }
    let begin = base + change.modulus.len() as u32;
    let mut batch = Batch::new(begin);
    for (add, list) in [(false, &change.delete), (true, &change.add)] {
        // `element_change` lists each set's elements together: one run, one message.
        for run in list.chunk_by(|a, b| a.0 == b.0) {
            let elements: Vec<Element> = run.iter().map(|(_, e)| *e).collect();
            batch.elements(add, table, &run[0].0, &elements);
        }
    }
    for (chain, (rule, expressions)) in &rules {
        batch.replace_rule(table, chain, rule, expressions);
    }
    let (buf, what, first) = batch.finish();
    if what.is_empty() {
        return Ok(());
    }
    // The whole batch is one datagram, which must fit in the socket's send buffer: a Service
    // gaining thousands of endpoints at once needs more than the default. Forcing the size
    // needs CAP_NET_ADMIN, which programming nftables needs anyway.
    let room = rustix::net::sockopt::socket_send_buffer_size(socket).unwrap_or(0);
    if buf.len() + 1024 > room {
        rustix::net::sockopt::set_socket_send_buffer_size_force(socket, 2 * buf.len())
            .map_err(std::io::Error::from)?;
    }
    rustix::net::send(socket, &buf, SendFlags::empty()).map_err(std::io::Error::from)?;
    let last = first + what.len() as u32 - 1;
    let unanswered = |e: NetlinkError| NetlinkError::Unanswered(e.to_string());
    loop {
        for answer in answers.next().map_err(unanswered)? {
            if answer.kind != NLMSG_ERROR || !(begin..=last).contains(&answer.seq) {
                continue;
            }
            let (code, seq) = error_answer(&answer.payload).map_err(unanswered)?;
            if code != 0 {
                let what = match seq.checked_sub(first) {
                    Some(i) => what[i as usize].clone(),
                    None => "the batch".to_owned(),
                };
                return Err(NetlinkError::Refused {
                    what,
                    source: std::io::Error::from_raw_os_error(-code),
                });
            }
            if seq == last {
                return Ok(());
            }
        }
    }
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
    answers: &mut Answers<'_>,
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
    rustix::net::send(answers.socket, &buf, SendFlags::empty()).map_err(std::io::Error::from)?;
    let listing = || format!("listing chain {table}/{chain}");
    let mut rules = Vec::new();
    loop {
        for answer in answers.next()? {
            if answer.seq != seq {
                continue;
            }
            if answer.flags & NLM_F_DUMP_INTR != 0 {
                return Err(std::io::Error::other(format!(
                    "{}: the ruleset changed while it was read",
                    listing()
                ))
                .into());
            }
            match answer.kind {
                NLMSG_DONE => return Ok(rules),
                NLMSG_ERROR => {
                    let (code, _) = error_answer(&answer.payload)?;
                    return Err(std::io::Error::other(format!(
                        "{}: {}",
                        listing(),
                        std::io::Error::from_raw_os_error(-code)
                    ))
                    .into());
                }
                _ => {
                    let mut rule = DumpedRule {
                        handle: Vec::new(),
                        expressions: Vec::new(),
                        userdata: None,
                    };
                    let mut in_chain = false;
                    for (ty, value) in attrs(answer.payload.get(4..).unwrap_or_default()) {
                        match ty {
                            NFTA_RULE_CHAIN => in_chain = value == strz(chain),
                            NFTA_RULE_HANDLE => rule.handle = value.to_vec(),
                            NFTA_RULE_EXPRESSIONS => rule.expressions = value.to_vec(),
                            NFTA_RULE_USERDATA => rule.userdata = Some(value.to_vec()),
                            _ => {}
                        }
                    }
                    if in_chain {
                        rules.push(rule);
                    }
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

/// One message from the kernel.
struct Answer {
    kind: u16,
    flags: u16,
    seq: u32,
    /// What follows the netlink header.
    payload: Vec<u8>,
}

/// The kernel's answers on a socket, one datagram at a time, read into one buffer.
struct Answers<'a> {
    socket: &'a OwnedFd,
    buf: Vec<u8>,
}

impl<'a> Answers<'a> {
    fn new(socket: &'a OwnedFd) -> Self {
        Self {
            socket,
            buf: vec![0; 1 << 16],
        }
    }

    /// The messages of the next datagram.
    fn next(&mut self) -> Result<Vec<Answer>, NetlinkError> {
        let (n, _) = rustix::net::recv(self.socket, &mut self.buf[..], RecvFlags::empty())
            .map_err(std::io::Error::from)?;
        parse_answers(&self.buf[..n.min(self.buf.len())])
    }
}

/// The messages in one datagram.
fn parse_answers(mut rest: &[u8]) -> Result<Vec<Answer>, NetlinkError> {
    let mut out = Vec::new();
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > rest.len() {
            return Err(std::io::Error::other("a netlink message longer than its datagram").into());
        }
        out.push(Answer {
            kind: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes")),
            payload: rest[16..len].to_vec(),
        });
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

/// An error answer's code (0 for an acknowledgement) and the sequence number it answers.
fn error_answer(payload: &[u8]) -> Result<(i32, u32), NetlinkError> {
    if payload.len() < 4 + 16 {
        return Err(std::io::Error::other("a netlink error message too short to read").into());
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
    let len = u16::try_from(buf.len() - start).expect("a nested attribute under 64 KiB");
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
    fn a_batch_is_framed_by_markers_and_only_its_last_message_asks_for_an_answer() {
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
        let kinds: Vec<(u16, bool, u32)> = parse_answers(&buf)
            .unwrap()
            .iter()
            .map(|m| (m.kind, m.flags & NLM_F_ACK != 0, m.seq))
            .collect();
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, false, 7),
                ((10 << 8) | NFT_MSG_DELSETELEM, false, 8),
                ((10 << 8) | NFT_MSG_NEWSETELEM, true, 9),
                (NFNL_MSG_BATCH_END, false, 10),
            ]
        );
    }

    #[test]
    fn thousands_of_elements_are_split_into_messages_that_fit() {
        let pairs: Vec<Element> = (0..2500u32)
            .map(|i| Element::Pair(i.into(), i.into()))
            .collect();
        let mut batch = Batch::new(1);
        batch.elements(true, "t", "hairpin", &pairs);
        let (buf, what, _) = batch.finish();
        assert_eq!(what.len(), 3);
        let messages = parse_answers(&buf).unwrap();
        assert!(messages.iter().all(|m| m.payload.len() < 1 << 16));
    }

    #[test]
    fn a_datagram_holds_several_answers_and_a_cut_one_is_an_error() {
        let mut buf = Vec::new();
        for seq in [3, 4] {
            let start = header(&mut buf, NLMSG_ERROR, 0, seq, 0);
            buf.extend([0u8; 16]);
            finish(&mut buf, start);
        }
        let answers = parse_answers(&buf).unwrap();
        assert_eq!(answers.iter().map(|a| a.seq).collect::<Vec<_>>(), [3, 4]);
        assert!(parse_answers(&buf[..buf.len() - 4]).is_err());
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
