//! nf_tables over netlink, built by hand: no `nft` binary, no libnftnl, no
//! fork. Just what the agent needs: tables, base chains, rules made of a
//! few expressions (meta, payload, bitwise, cmp, counter, masq, immediate,
//! verdict), rule listing and deletion by handle, all in batched
//! transactions. (Why by hand: `docs/architecture.md`, "Built by hand, on
//! purpose".)
//!
//! An `Nft` is a blocking `NETLINK_NETFILTER` socket. It must be opened on a
//! thread that is inside the target namespace (`netns::run_in`), and is used
//! and dropped there: nothing here is async.
//!
//! Wire format: `nlmsghdr` (host order) + `nfgenmsg` (family, version 0,
//! resource id big-endian) + attributes (`nlattr` headers in host order;
//! nf_tables integer values in network order).

// The kernel boundary: the receive timeout set on the nf_tables socket (setsockopt).
#![allow(unsafe_code)]

use std::{io, os::fd::AsRawFd, time::Duration};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// What an nf_tables request failed with.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The kernel refused the request.
    #[error("the kernel refused it: {0}")]
    Kernel(io::Error),
    #[error("netfilter netlink socket: {0}")]
    Io(io::Error),
    #[error("unexpected netfilter netlink answer: {0}")]
    Protocol(String),
}

impl NftError {
    pub fn is(&self, errno: i32) -> bool {
        matches!(self, NftError::Kernel(error) if error.raw_os_error() == Some(errno))
    }
}

pub type Result<T> = std::result::Result<T, NftError>;

// <linux/netlink.h>
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
// <linux/netfilter/nfnetlink.h>
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const AF_UNSPEC: u8 = 0;
/// NFPROTO_IPV4: the `ip` family.
pub const FAMILY_IP: u8 = 2;

// <linux/netfilter/nf_tables.h>: message types.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
// Attributes.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// NFT_PAYLOAD_NETWORK_HEADER.
const PAYLOAD_NETWORK: u32 = 1;
/// The verdict register and the first 16-byte data register.
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
/// libnftnl's rule comment, so that `nft list` shows ours.
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// Netfilter hooks of the inet families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Forward = 2,
    PostRouting = 4,
}

/// `meta` keys used here.
#[derive(Clone, Copy, Debug)]
pub enum MetaKey {
    IifName = 6,
    OifName = 7,
}

#[derive(Clone, Copy, Debug)]
pub enum CmpOp {
    Eq = 0,
    Neq = 1,
}

/// Verdict codes (NF_DROP, NF_ACCEPT).
#[derive(Clone, Copy, Debug)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// A base chain.
#[derive(Clone, Debug)]
pub struct Chain {
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    pub hook: Hook,
    pub priority: i32,
}

/// One expression of a rule: its name and its NFTA_EXPR_DATA attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    name: &'static str,
    data: Vec<u8>,
}

impl Expr {
    /// `meta KEY` into register 1.
    pub fn meta(key: MetaKey) -> Self {
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_META_KEY, key as u32);
        put_be32(&mut data, NFTA_META_DREG, NFT_REG_1);
        Self { name: "meta", data }
    }

    /// The network header bytes `offset..offset+len` into register 1.
    pub fn network_header(offset: u32, len: u32) -> Self {
        Self::payload(PAYLOAD_NETWORK, offset, len)
    }

    fn payload(base: u32, offset: u32, len: u32) -> Self {
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_PAYLOAD_DREG, NFT_REG_1);
        put_be32(&mut data, NFTA_PAYLOAD_BASE, base);
        put_be32(&mut data, NFTA_PAYLOAD_OFFSET, offset);
        put_be32(&mut data, NFTA_PAYLOAD_LEN, len);
        Self {
            name: "payload",
            data,
        }
    }

    /// Register 1 = (register 1 & mask) ^ 0.
    pub fn and(mask: &[u8]) -> Self {
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_BITWISE_SREG, NFT_REG_1);
        put_be32(&mut data, NFTA_BITWISE_DREG, NFT_REG_1);
        put_be32(&mut data, NFTA_BITWISE_LEN, mask.len() as u32);
        nest(&mut data, NFTA_BITWISE_MASK, |a| {
            put(a, NFTA_DATA_VALUE, mask)
        });
        nest(&mut data, NFTA_BITWISE_XOR, |a| {
            put(a, NFTA_DATA_VALUE, &vec![0; mask.len()])
        });
        Self {
            name: "bitwise",
            data,
        }
    }

    /// Compares the first `value.len()` bytes of register 1 (a shorter value
    /// than the register is a prefix match: `oifname "nagw*"`).
    pub fn cmp(op: CmpOp, value: &[u8]) -> Self {
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_CMP_SREG, NFT_REG_1);
        put_be32(&mut data, NFTA_CMP_OP, op as u32);
        nest(&mut data, NFTA_CMP_DATA, |a| put(a, NFTA_DATA_VALUE, value));
        Self { name: "cmp", data }
    }

    pub fn counter() -> Self {
        Self {
            name: "counter",
            data: Vec::new(),
        }
    }

    pub fn masquerade() -> Self {
        Self {
            name: "masq",
            data: Vec::new(),
        }
    }

    pub fn verdict(verdict: Verdict) -> Self {
        Self::immediate(NFT_REG_VERDICT, |d| {
            nest(d, NFTA_DATA_VERDICT, |v| {
                put_be32(v, NFTA_VERDICT_CODE, verdict as u32)
            })
        })
    }

    /// Loads a constant (`fill` writes its NFTA_DATA_*) into `register`.
    fn immediate(register: u32, fill: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut data = Vec::new();
        put_be32(&mut data, NFTA_IMMEDIATE_DREG, register);
        nest(&mut data, NFTA_IMMEDIATE_DATA, fill);
        Self {
            name: "immediate",
            data,
        }
    }
}

/// A rule as the kernel lists it: enough to find ours and delete it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub handle: u64,
    /// The comment (libnftnl's user data), if any.
    pub comment: Option<String>,
}

/// One change in a transaction.
#[derive(Clone, Debug)]
pub enum Change {
    AddTable,
    /// Creates the base chain unless it exists (no NLM_F_EXCL).
    AddChain(Chain),
    /// Appends a rule to `chain`.
    AddRule {
        chain: &'static str,
        exprs: Vec<Expr>,
        comment: String,
    },
    DeleteRule {
        chain: String,
        handle: u64,
    },
    /// Deletes the table with its chains and rules.
    DeleteTable,
}

/// One message: type (NFT_MSG_*), extra flags, family, attributes.
struct Message {
    kind: u16,
    flags: u16,
    family: u8,
    attrs: Vec<u8>,
}

/// A netfilter netlink socket in the namespace of the thread that opened it.
pub struct Nft {
    socket: Socket,
    seq: u32,
    family: u8,
    table: String,
}

/// How long the kernel gets to answer one request.
const ANSWER_DEADLINE: Duration = Duration::from_secs(5);
const RECV_BUFFER: usize = 1 << 17;

impl Nft {
    /// Opens a socket for table `table` of `family`, in the calling thread's
    /// namespace.
    pub fn open(family: u8, table: &str) -> Result<Self> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NftError::Io)?;
        socket.bind_auto().map_err(NftError::Io)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Io)?;
        set_receive_timeout(&socket, ANSWER_DEADLINE)?;
        Ok(Self {
            socket,
            seq: 0,
            family,
            table: table.to_owned(),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether the table exists.
    pub fn table_exists(&mut self) -> Result<bool> {
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_TABLE_NAME, &self.table);
        self.exists(NFT_MSG_GETTABLE, attrs)
    }

    /// Whether chain `name` exists in the table.
    pub fn chain_exists(&mut self, name: &str) -> Result<bool> {
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_CHAIN_TABLE, &self.table);
        put_str(&mut attrs, NFTA_CHAIN_NAME, name);
        self.exists(NFT_MSG_GETCHAIN, attrs)
    }

    fn exists(&mut self, kind: u16, attrs: Vec<u8>) -> Result<bool> {
        let message = Message {
            kind,
            flags: NLM_F_ACK,
            family: self.family,
            attrs,
        };
        match self.request(&message) {
            Ok(_) => Ok(true),
            Err(error) if error.is(libc::ENOENT) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The rules of the table (empty when the table does not exist).
    pub fn rules(&mut self) -> Result<Vec<Rule>> {
        let mut attrs = Vec::new();
        put_str(&mut attrs, NFTA_RULE_TABLE, &self.table);
        let message = Message {
            kind: NFT_MSG_GETRULE,
            flags: NLM_F_DUMP,
            family: self.family,
            attrs,
        };
        let replies = match self.request(&message) {
            Ok(replies) => replies,
            Err(error) if error.is(libc::ENOENT) => return Ok(Vec::new()),
            Err(error) => return Err(error),
        };
        let mut rules = Vec::new();
        for attrs in replies {
            let mut table = None;
            let mut rule = Rule {
                chain: String::new(),
                handle: 0,
                comment: None,
            };
            for (kind, value) in Attrs(&attrs) {
                match kind {
                    NFTA_RULE_TABLE => table = Some(c_string(value)),
                    NFTA_RULE_CHAIN => rule.chain = c_string(value),
                    NFTA_RULE_HANDLE => {
                        rule.handle = <[u8; 8]>::try_from(value)
                            .map(u64::from_be_bytes)
                            .map_err(|_| NftError::Protocol("a rule handle of wrong size".into()))?
                    }
                    NFTA_RULE_USERDATA => rule.comment = comment_of(value),
                    _ => {}
                }
            }
            // Older kernels ignore the table filter of a dump.
            if table.as_deref() == Some(self.table.as_str()) {
                rules.push(rule);
            }
        }
        Ok(rules)
    }

    /// Applies `changes` in one transaction: all or nothing.
    pub fn commit(&mut self, changes: &[Change]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let messages: Vec<Message> = changes.iter().map(|c| self.message(c)).collect();
        let mut buffer = Vec::new();
        let begin = self.next_seq();
        push_header(
            &mut buffer,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            begin,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let mut seqs = Vec::new();
        for message in &messages {
            let seq = self.next_seq();
            seqs.push(seq);
            push_message(&mut buffer, message, seq);
        }
        let end = self.next_seq();
        push_header(
            &mut buffer,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            AF_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.socket.send(&buffer, 0).map_err(NftError::Io)?;
        // Every message asked for an acknowledgement; an error stops the
        // whole batch (the kernel aborts the transaction).
        let mut acked = 0;
        while acked < seqs.len() {
            for reply in self.receive()? {
                match reply {
                    Reply::Error { seq, code } if seq >= begin && seq <= end => {
                        if code != 0 {
                            return Err(NftError::Kernel(io::Error::from_raw_os_error(-code)));
                        }
                        acked += 1;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn message(&self, change: &Change) -> Message {
        let mut attrs = Vec::new();
        let (kind, flags) = match change {
            Change::AddTable => {
                put_str(&mut attrs, NFTA_TABLE_NAME, &self.table);
                (NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_ACK)
            }
            Change::DeleteTable => {
                put_str(&mut attrs, NFTA_TABLE_NAME, &self.table);
                (NFT_MSG_DELTABLE, NLM_F_ACK)
            }
            Change::AddChain(chain) => {
                put_str(&mut attrs, NFTA_CHAIN_TABLE, &self.table);
                put_str(&mut attrs, NFTA_CHAIN_NAME, chain.name);
                nest(&mut attrs, NFTA_CHAIN_HOOK, |a| {
                    put_be32(a, NFTA_HOOK_HOOKNUM, chain.hook as u32);
                    put(a, NFTA_HOOK_PRIORITY, &chain.priority.to_be_bytes());
                });
                put_be32(&mut attrs, NFTA_CHAIN_POLICY, Verdict::Accept as u32);
                put_str(&mut attrs, NFTA_CHAIN_TYPE, chain.kind);
                (NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_ACK)
            }
            Change::AddRule {
                chain,
                exprs,
                comment,
            } => {
                put_str(&mut attrs, NFTA_RULE_TABLE, &self.table);
                put_str(&mut attrs, NFTA_RULE_CHAIN, chain);
                nest(&mut attrs, NFTA_RULE_EXPRESSIONS, |list| {
                    for expr in exprs {
                        nest(list, NFTA_LIST_ELEM, |e| {
                            put_str(e, NFTA_EXPR_NAME, expr.name);
                            if !expr.data.is_empty() {
                                nest(e, NFTA_EXPR_DATA, |d| d.extend_from_slice(&expr.data));
                            }
                        });
                    }
                });
                put(&mut attrs, NFTA_RULE_USERDATA, &comment_userdata(comment));
                (NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK)
            }
            Change::DeleteRule { chain, handle } => {
                put_str(&mut attrs, NFTA_RULE_TABLE, &self.table);
                put_str(&mut attrs, NFTA_RULE_CHAIN, chain);
                put(&mut attrs, NFTA_RULE_HANDLE, &handle.to_be_bytes());
                (NFT_MSG_DELRULE, NLM_F_ACK)
            }
        };
        Message {
            kind,
            flags,
            family: self.family,
            attrs,
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends a GET request (or dump) and collects the attributes of every
    /// answer until the acknowledgement or NLMSG_DONE.
    fn request(&mut self, message: &Message) -> Result<Vec<Vec<u8>>> {
        let seq = self.next_seq();
        let mut buffer = Vec::new();
        push_message(&mut buffer, message, seq);
        self.socket.send(&buffer, 0).map_err(NftError::Io)?;
        let dump = message.flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            for reply in self.receive()? {
                match reply {
                    Reply::Data { seq: s, attrs } if s == seq => {
                        answers.push(attrs);
                        // A GET without dump answers once, then acks.
                    }
                    Reply::Error { seq: s, code } if s == seq => {
                        if code != 0 {
                            return Err(NftError::Kernel(io::Error::from_raw_os_error(-code)));
                        }
                        return Ok(answers);
                    }
                    Reply::Done { seq: s } if s == seq && dump => return Ok(answers),
                    _ => {}
                }
            }
        }
    }

    fn receive(&mut self) -> Result<Vec<Reply>> {
        let mut buffer = Vec::with_capacity(RECV_BUFFER);
        match self.socket.recv(&mut buffer, 0) {
            Ok(_) => parse_replies(&buffer),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Err(NftError::Protocol(
                format!("no answer within {}s", ANSWER_DEADLINE.as_secs()),
            )),
            Err(error) => Err(NftError::Io(error)),
        }
    }
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> Result<()> {
    let value = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: a valid fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(NftError::Io(io::Error::last_os_error()))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// An nf_tables message: its attributes (after the nfgenmsg).
    Data {
        seq: u32,
        attrs: Vec<u8>,
    },
    /// NLMSG_ERROR: 0 is an acknowledgement, else minus the errno.
    Error {
        seq: u32,
        code: i32,
    },
    Done {
        seq: u32,
    },
}

fn parse_replies(mut bytes: &[u8]) -> Result<Vec<Reply>> {
    let mut replies = Vec::new();
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            return Err(NftError::Protocol(format!(
                "a message of length {len} in {} bytes",
                bytes.len()
            )));
        }
        let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
        let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let payload = &bytes[16..len];
        replies.push(match kind {
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| NftError::Protocol("a short error message".into()))?;
                Reply::Error { seq, code }
            }
            NLMSG_DONE => Reply::Done { seq },
            _ => Reply::Data {
                seq,
                attrs: payload.get(4..).unwrap_or_default().to_vec(),
            },
        });
        bytes = &bytes[align(len).min(bytes.len())..];
    }
    Ok(replies)
}

/// Iterates over the attributes (type without flags, value) of a buffer.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.0;
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            self.0 = &[];
            return None;
        }
        self.0 = &bytes[align(len).min(bytes.len())..];
        Some((kind, &bytes[4..len]))
    }
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn c_string(value: &[u8]) -> String {
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// libnftnl's user data holding a comment: TLV (type, length, NUL-terminated
/// string). Comments longer than 127 bytes are cut.
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut text: Vec<u8> = comment.bytes().take(127).collect();
    text.push(0);
    let mut data = vec![NFTNL_UDATA_RULE_COMMENT, text.len() as u8];
    data.extend_from_slice(&text);
    data
}

fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while rest.len() >= 2 {
        let (kind, len) = (rest[0], rest[1] as usize);
        let value = rest.get(2..2 + len)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return Some(c_string(value));
        }
        rest = &rest[2 + len..];
    }
    None
}

fn put(buffer: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buffer.extend_from_slice(&(len as u16).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(value);
    buffer.resize(align(buffer.len()), 0);
}

fn put_str(buffer: &mut Vec<u8>, kind: u16, value: &str) {
    let mut bytes = value.as_bytes().to_vec();
    bytes.push(0);
    put(buffer, kind, &bytes);
}

fn put_be32(buffer: &mut Vec<u8>, kind: u16, value: u32) {
    put(buffer, kind, &value.to_be_bytes());
}

fn nest(buffer: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    put(buffer, kind | NLA_F_NESTED, &inner);
}

fn push_message(buffer: &mut Vec<u8>, message: &Message, seq: u32) {
    push_header(
        buffer,
        (NFNL_SUBSYS_NFTABLES << 8) | message.kind,
        NLM_F_REQUEST | message.flags,
        seq,
        message.family,
        0,
        &message.attrs,
    );
}

/// nlmsghdr + nfgenmsg + attributes.
fn push_header(
    buffer: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    buffer.extend_from_slice(&(len as u32).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(&flags.to_ne_bytes());
    buffer.extend_from_slice(&seq.to_ne_bytes());
    buffer.extend_from_slice(&0u32.to_ne_bytes());
    buffer.push(family);
    buffer.push(0); // NFNETLINK_V0
    buffer.extend_from_slice(&res_id.to_be_bytes());
    buffer.extend_from_slice(attrs);
    buffer.resize(align(buffer.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_through_user_data() {
        let data = comment_userdata("netagent vni 4096");
        assert_eq!(&data[..2], &[0, 18]);
        assert_eq!(comment_of(&data).as_deref(), Some("netagent vni 4096"));
        assert_eq!(comment_of(&[1, 1, 0]), None);
        assert_eq!(comment_of(&[0, 9, b'x']), None);
    }

    #[test]
    fn attributes_are_padded_and_parsed_back() {
        let mut buffer = Vec::new();
        put_str(&mut buffer, 3, "abcde");
        nest(&mut buffer, 4, |a| put_be32(a, 1, 7));
        assert_eq!(buffer.len(), 12 + 12);
        let attrs: Vec<_> = Attrs(&buffer).collect();
        assert_eq!(attrs[0], (3, &b"abcde\0"[..]));
        assert_eq!(attrs[1].0, 4);
        assert_eq!(Attrs(attrs[1].1).next(), Some((1, &[0, 0, 0, 7][..])));
    }

    #[test]
    fn a_masquerade_cmp_is_what_nft_sends() {
        // `oifname != "nagw*"`: a 4-byte prefix compare, op NEQ.
        let expr = Expr::cmp(CmpOp::Neq, b"nagw");
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            8, 0, 1, 0, 0, 0, 0, 1, // sreg 1
            8, 0, 2, 0, 0, 0, 0, 1, // op NEQ
            12, 0, 3, 0x80, 8, 0, 1, 0, b'n', b'a', b'g', b'w', // data
        ];
        assert_eq!(expr.data, want);
    }

    #[test]
    fn replies_are_split_and_errors_read() {
        let mut bytes = Vec::new();
        push_header(
            &mut bytes,
            0x0a06,
            0,
            7,
            FAMILY_IP,
            0,
            &[8, 0, 2, 0, b'f', 0, 0, 0],
        );
        // NLMSG_ERROR, seq 8, code -2 (ENOENT) + the original header.
        let mut error = Vec::new();
        error.extend_from_slice(&36u32.to_ne_bytes());
        error.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error.extend_from_slice(&0u16.to_ne_bytes());
        error.extend_from_slice(&8u32.to_ne_bytes());
        error.extend_from_slice(&0u32.to_ne_bytes());
        error.extend_from_slice(&(-2i32).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        bytes.extend_from_slice(&error);
        let replies = parse_replies(&bytes).expect("parse");
        assert_eq!(
            replies,
            vec![
                Reply::Data {
                    seq: 7,
                    attrs: vec![8, 0, 2, 0, b'f', 0, 0, 0]
                },
                Reply::Error { seq: 8, code: -2 },
            ]
        );
    }
}
