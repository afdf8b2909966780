//! One query in, one response out. The local pass ([`answer`]) is synchronous
//! and allocation-free once its buffers are warm: it parses the header with
//! hickory-proto and the question in place (one pass that also lowercases
//! the name), looks the name up once in the table and writes the response
//! bytes directly (the question copied from the request, answers
//! pointing at it by compression). Names the cluster does not know come back
//! as [`Action::Forward`]; the caller completes them from the cache or the
//! forwarder (`DnsShared::forward`).
//!
//! Cluster answers carry a TTL of [`TTL`] seconds: a task that dies or turns
//! unhealthy must leave client caches quickly (Docker's 600 s keeps dead
//! addresses around for ten minutes).

use std::net::Ipv4Addr;

use hickory_proto::{
    op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::{DNSClass, RecordType},
    serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder},
};
use rand::seq::SliceRandom;

use super::table::{in_scope, DnsTable, Known};

/// Seconds a cluster answer may be cached.
pub const TTL: u32 = 2;
/// The UDP payload size we advertise in our OPT record.
const OUR_PAYLOAD: u16 = 1232;
/// Largest UDP response, whatever the client advertises.
const MAX_UDP: usize = 4096;
/// Without EDNS, a UDP response is at most 512 bytes.
const PLAIN_UDP: usize = 512;
pub(super) const HEADER_LEN: usize = 12;
/// Root name, type, class, TTL, rdata length.
const OPT_LEN: usize = 11;
pub(super) const TYPE_OPT: u16 = 41;
/// Pointer to the question's name, right after the header.
const NAME_AT_QUESTION: [u8; 2] = [0xc0, 0x0c];

/// The request bits the cache key holds (see [`Forward::flags`]).
pub mod flags {
    pub const RD: u8 = 0x01;
    pub const AD: u8 = 0x02;
    pub const CD: u8 = 0x04;
    pub const EDNS: u8 = 0x08;
    pub const DO: u8 = 0x10;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query to forward, as the local pass parsed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// End of the question section in the request.
    pub question_end: usize,
    /// The most the client takes back on its transport.
    pub limit: usize,
    /// The client's EDNS UDP payload size (512 without EDNS).
    pub payload: u16,
    /// The request bits that change the upstream's answer ([`flags`]).
    pub flags: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The response is in `out`.
    Reply,
    /// Not a cluster name: forward the request.
    Forward(Forward),
    /// Nothing to answer (a response, or not even a header).
    Drop,
}

/// The client's OPT record.
#[derive(Clone, Copy)]
struct Edns {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
}

/// Buffers the local pass reuses from one query to the next.
#[derive(Default)]
pub struct Scratch {
    addrs: Vec<Ipv4Addr>,
    name: Vec<u8>,
}

/// Answers `request` from the table when the name is a cluster name of the
/// networks in `scope`; the response is appended to `out`.
pub fn answer(
    request: &[u8],
    table: &DnsTable,
    scope: &[String],
    transport: Transport,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
) -> Action {
    let mut decoder = BinDecoder::new(request);
    let Ok(header) = Header::read(&mut decoder) else {
        return Action::Drop;
    };
    let meta = header.metadata;
    if meta.message_type == MessageType::Response {
        return Action::Drop;
    }
    let reply = |out: &mut Vec<u8>, question: &[u8], edns: bool, rcode| {
        Response::new(&meta, rcode).write(out, question, edns, 0, false);
        Action::Reply
    };
    if meta.op_code != OpCode::Query {
        return reply(out, &[], false, ResponseCode::NotImp);
    }
    if header.counts.queries != 1 {
        return reply(out, &[], false, ResponseCode::FormErr);
    }
    let Some(query) = read_question(request, &mut scratch.name) else {
        return reply(out, &[], false, ResponseCode::FormErr);
    };
    let question_end = query.end;
    let question = &request[HEADER_LEN..question_end];
    let Some(edns) = read_edns(request, question_end, &header.counts) else {
        return reply(out, question, false, ResponseCode::FormErr);
    };
    if edns.is_some_and(|opt| opt.version != 0) {
        return reply(out, question, true, ResponseCode::BADVERS);
    }
    if query.class != DNSClass::IN {
        return reply(out, question, edns.is_some(), ResponseCode::Refused);
    }
    let payload = edns.map_or(PLAIN_UDP as u16, |opt| opt.payload.max(PLAIN_UDP as u16));
    let limit = match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => usize::from(payload).min(MAX_UDP),
    };
    let forward = Action::Forward(Forward {
        question_end,
        limit,
        payload,
        flags: cache_flags(&meta, edns),
    });
    let Some(name) = query
        .name
        .then(|| std::str::from_utf8(&scratch.name).ok())
        .flatten()
    else {
        return forward;
    };

    let qtype = query.rtype;
    let wants = |rtype| qtype == rtype || qtype == RecordType::ANY;
    let mut response = Response::new(&meta, ResponseCode::NoError);
    response.authoritative = true;
    let room = limit
        .saturating_sub(HEADER_LEN + question.len() + if edns.is_some() { OPT_LEN } else { 0 });
    match table.known(name, scope) {
        Known::No => forward,
        Known::NoPointer => {
            response.rcode = ResponseCode::NXDomain;
            response.write(out, question, edns.is_some(), 0, false);
            Action::Reply
        }
        Known::Name(sets) => {
            let addrs = &mut scratch.addrs;
            addrs.clear();
            if wants(RecordType::A) {
                let mut shuffle = false;
                for set in sets.iter().filter(|set| in_scope(&set.network_id, scope)) {
                    addrs.extend_from_slice(&set.addrs);
                    shuffle |= set.shuffle;
                }
                if shuffle {
                    addrs.shuffle(&mut rand::rng());
                }
            }
            let fit = addrs.len().min(room / record_len(4));
            let start = response.write(out, question, false, fit, fit < addrs.len());
            for addr in &addrs[..fit] {
                write_record(out, RecordType::A, &addr.octets());
            }
            finish(out, start, edns.is_some())
        }
        Known::Pointers(pointers) => {
            let mut fit = 0;
            let mut total = 0;
            let mut used = 0;
            let in_view = || {
                pointers
                    .iter()
                    .filter(|p| wants(RecordType::PTR) && in_scope(&p.network_id, scope))
            };
            for pointer in in_view() {
                total += 1;
                used += record_len(pointer.target.len());
                if used <= room {
                    fit += 1;
                }
            }
            let start = response.write(out, question, false, fit, fit < total);
            for pointer in in_view().take(fit) {
                write_record(out, RecordType::PTR, &pointer.target);
            }
            finish(out, start, edns.is_some())
        }
    }
}

/// The SERVFAIL answer to a query the local pass sent to the forwarder.
pub fn server_failure(request: &[u8], query: Forward, out: &mut Vec<u8>) {
    let mut decoder = BinDecoder::new(request);
    let Ok(header) = Header::read(&mut decoder) else {
        return;
    };
    let question = request
        .get(HEADER_LEN..query.question_end)
        .unwrap_or_default();
    Response::new(&header.metadata, ResponseCode::ServFail).write(out, question, false, 0, false);
}

/// The header of a response, as the request shapes it.
struct Response {
    meta: Metadata,
    rcode: ResponseCode,
    authoritative: bool,
}

impl Response {
    fn new(request: &Metadata, rcode: ResponseCode) -> Self {
        let mut meta = Metadata::response_from_request(request);
        meta.recursion_available = true;
        Response {
            meta,
            rcode,
            authoritative: false,
        }
    }

    /// Appends the header and the question (and the OPT record when `edns`)
    /// to `out`; `answers` records are to follow. Returns where the message
    /// starts in `out`.
    fn write(
        mut self,
        out: &mut Vec<u8>,
        question: &[u8],
        edns: bool,
        answers: usize,
        truncated: bool,
    ) -> usize {
        let start = out.len();
        self.meta.authoritative = self.authoritative;
        self.meta.truncation = truncated;
        self.meta.response_code = ResponseCode::from_low(self.rcode.low());
        let header = Header {
            metadata: self.meta,
            counts: HeaderCounts {
                queries: u16::from(!question.is_empty()),
                answers: answers as u16,
                authorities: 0,
                additionals: u16::from(edns),
            },
        };
        let mut encoder = BinEncoder::with_offset(out, start as u32);
        if header.emit(&mut encoder).is_err() {
            // Only past 64 KiB, which a header never reaches.
            out.truncate(start);
            return start;
        }
        out.extend_from_slice(question);
        if edns {
            write_opt(out, self.rcode.high());
        }
        start
    }
}

/// Appends the OPT record of a message whose answers are written (the
/// additional count already includes it).
fn finish(out: &mut Vec<u8>, start: usize, edns: bool) -> Action {
    if edns {
        write_opt(out, 0);
        let additionals = start + 10;
        out[additionals..additionals + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Action::Reply
}

fn write_opt(out: &mut Vec<u8>, rcode_high: u8) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&OUR_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[rcode_high, 0, 0, 0, 0, 0]);
}

fn record_len(rdata: usize) -> usize {
    NAME_AT_QUESTION.len() + 10 + rdata
}

fn write_record(out: &mut Vec<u8>, rtype: RecordType, rdata: &[u8]) {
    out.extend_from_slice(&NAME_AT_QUESTION);
    out.extend_from_slice(&u16::from(rtype).to_be_bytes());
    out.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
    out.extend_from_slice(&TTL.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// The question of a request, read in place.
struct Question {
    /// Where the question ends in the request.
    end: usize,
    rtype: RecordType,
    class: DNSClass,
    /// Whether the name (in the caller's buffer) can be a cluster name: no
    /// label holds a dot.
    name: bool,
}

/// Reads the question right after the header, its name into `name`:
/// lowercase, dotted, without the trailing dot (one pass, no allocation once
/// `name` is warm). `None` when malformed: a compression pointer or an
/// extended label type (a question has nothing before it to point at), or a
/// name longer than 255 bytes.
fn read_question(request: &[u8], name: &mut Vec<u8>) -> Option<Question> {
    name.clear();
    let mut dotless = true;
    let mut at = HEADER_LEN;
    loop {
        let len = usize::from(*request.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 || at + 1 + len - HEADER_LEN >= 255 {
            return None;
        }
        let label = request.get(at + 1..at + 1 + len)?;
        if !name.is_empty() {
            name.push(b'.');
        }
        dotless &= !label.contains(&b'.');
        name.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
    }
    let fixed = request.get(at..at + 4)?;
    Some(Question {
        end: at + 4,
        rtype: RecordType::from(u16::from_be_bytes([fixed[0], fixed[1]])),
        class: DNSClass::from(u16::from_be_bytes([fixed[2], fixed[3]])),
        name: dotless,
    })
}

/// The OPT record among the records after the question: `None` when they do
/// not parse or hold two OPT records, `Some(None)` without one.
fn read_edns(message: &[u8], mut at: usize, counts: &HeaderCounts) -> Option<Option<Edns>> {
    let records = usize::from(counts.answers) + usize::from(counts.authorities);
    let mut edns = None;
    for index in 0..records + usize::from(counts.additionals) {
        let name_end = skip_name(message, at)?;
        let fixed = message.get(name_end..name_end + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdata_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        if rtype == TYPE_OPT && index >= records {
            if edns.is_some() || name_end != at + 1 {
                return None;
            }
            edns = Some(Edns {
                payload: u16::from_be_bytes([fixed[2], fixed[3]]),
                version: fixed[5],
                dnssec_ok: fixed[6] & 0x80 != 0,
            });
        }
        at = name_end + 10 + rdata_len;
        if at > message.len() {
            return None;
        }
    }
    Some(edns)
}

/// The request bits that change the upstream's answer.
fn cache_flags(meta: &Metadata, edns: Option<Edns>) -> u8 {
    [
        (meta.recursion_desired, flags::RD),
        (meta.authentic_data, flags::AD),
        (meta.checking_disabled, flags::CD),
        (edns.is_some(), flags::EDNS),
        (edns.is_some_and(|opt| opt.dnssec_ok), flags::DO),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .fold(0, |bits, (_, bit)| bits | bit)
}

/// Where the (possibly compressed) name at `at` ends.
pub(super) fn skip_name(message: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *message.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + usize::from(len),
            0xc0 => return (at + 2 <= message.len()).then_some(at + 2),
            _ => return None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{net::SocketAddr, time::Duration};

    use hickory_proto::{
        op::{Edns, Message, Query},
        rr::{rdata::A, Name, RData},
    };

    use super::*;
    use crate::{
        dns::{
            forward::Forwarder,
            table::tests::{endpoint, network, sample, sample_table, service},
        },
        model::EndpointMode,
    };

    /// Answers `request` from the table, or else through the forwarder; `None`
    /// when there is nothing to send back.
    async fn resolve(
        request: &[u8],
        table: &DnsTable,
        scope: &[String],
        transport: Transport,
        forwarder: &Forwarder,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        match answer(
            request,
            table,
            scope,
            transport,
            &mut out,
            &mut Scratch::default(),
        ) {
            Action::Reply => Some(out),
            Action::Drop => None,
            Action::Forward(query) => Some(forwarder.forward(request, query).await),
        }
    }

    pub fn query_message(name: &str, rtype: RecordType) -> Message {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        message.metadata.recursion_desired = true;
        message
    }

    pub fn addresses(message: &Message) -> Vec<Ipv4Addr> {
        let mut addrs: Vec<Ipv4Addr> = message
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(A(addr)) => Some(*addr),
                _ => None,
            })
            .collect();
        addrs.sort();
        addrs
    }

    fn scope(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    /// The local pass over `request`, its response parsed.
    fn local(
        table: &DnsTable,
        request: &[u8],
        ids: &[&str],
        transport: Transport,
    ) -> (Action, Option<Message>) {
        let mut out = Vec::new();
        let action = answer(
            request,
            table,
            &scope(ids),
            transport,
            &mut out,
            &mut Scratch::default(),
        );
        let response = (action == Action::Reply).then(|| Message::from_vec(&out).unwrap());
        (action, response)
    }

    fn ask(name: &str, rtype: RecordType, ids: &[&str]) -> Message {
        let request = query_message(name, rtype);
        let (action, response) = local(
            &sample_table(),
            &request.to_vec().unwrap(),
            ids,
            Transport::Udp,
        );
        assert_eq!(action, Action::Reply, "{name} {rtype}");
        let response = response.unwrap();
        assert_eq!(response.metadata.id, request.metadata.id);
        response
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn service_vip_with_header_bits_and_short_ttl() {
        let response = ask("web", RecordType::A, &["id-front"]);
        let meta = &response.metadata;
        assert_eq!(meta.message_type, MessageType::Response);
        assert_eq!(meta.response_code, ResponseCode::NoError);
        assert!(meta.authoritative && meta.recursion_available && meta.recursion_desired);
        assert_eq!(addresses(&response), [ip("10.1.0.100")]);
        assert_eq!(response.answers[0].ttl, TTL);
        assert_eq!(response.answers[0].name.to_string(), "web.");
        assert_eq!(response.queries.len(), 1);
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        for name in ["WEB.front.", "Web.Front", "web.front"] {
            assert_eq!(
                addresses(&ask(name, RecordType::A, &["id-front"])),
                [ip("10.1.0.100")]
            );
        }
        let response = ask("TASKS.web", RecordType::A, &["id-front"]);
        assert_eq!(addresses(&response), [ip("10.1.0.2"), ip("10.1.0.3")]);
    }

    #[test]
    fn dnsrr_answers_tasks_in_random_order() {
        let mut orders = std::collections::HashSet::new();
        for _ in 0..64 {
            let response = ask("db", RecordType::A, &["id-back"]);
            let order: Vec<_> = response.answers.iter().map(|r| r.data.clone()).collect();
            assert_eq!(order.len(), 2);
            orders.insert(format!("{order:?}"));
        }
        assert_eq!(orders.len(), 2);
    }

    #[test]
    fn known_name_without_aaaa_is_nodata_not_forwarded() {
        for rtype in [RecordType::AAAA, RecordType::MX, RecordType::TXT] {
            let response = ask("tool", rtype, &["id-front"]);
            assert_eq!(response.metadata.response_code, ResponseCode::NoError);
            assert!(response.metadata.authoritative);
            assert!(response.answers.is_empty());
        }
    }

    #[test]
    fn unknown_and_out_of_scope_names_are_forwarded() {
        let table = sample_table();
        for name in ["example.com", "db.1", "web.back", "8.8.8.8.in-addr.arpa"] {
            let request = query_message(name, RecordType::A).to_vec().unwrap();
            let (action, _) = local(&table, &request, &["id-front"], Transport::Udp);
            assert!(matches!(action, Action::Forward(_)), "{name}");
        }
    }

    #[test]
    fn reverse_names() {
        let response = ask("2.0.1.10.in-addr.arpa.", RecordType::PTR, &["id-front"]);
        let targets: Vec<String> = response
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(targets, ["web.1.front."]);
        let response = ask("100.0.2.10.in-addr.arpa", RecordType::PTR, &["id-back"]);
        assert_eq!(response.answers[0].data.to_string(), "Web.");
        // An overlay address nobody holds (or an unhealthy one).
        for name in ["77.0.1.10.in-addr.arpa", "4.0.1.10.in-addr.arpa"] {
            let response = ask(name, RecordType::PTR, &["id-front"]);
            assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
            assert!(response.metadata.authoritative);
        }
    }

    #[test]
    fn bad_queries() {
        let table = sample_table();
        let code = |request: &[u8]| {
            let (_, response) = local(&table, request, &["id-front"], Transport::Udp);
            response.map(|message| message.metadata.response_code)
        };
        let mut status = query_message("web", RecordType::A);
        status.metadata.op_code = OpCode::Status;
        assert_eq!(code(&status.to_vec().unwrap()), Some(ResponseCode::NotImp));

        let mut chaos = query_message("version.bind", RecordType::TXT);
        chaos.queries[0].set_query_class(DNSClass::CH);
        assert_eq!(code(&chaos.to_vec().unwrap()), Some(ResponseCode::Refused));

        let mut two = query_message("web", RecordType::A);
        two.add_query(Query::query(Name::from_ascii("db").unwrap(), RecordType::A));
        assert_eq!(code(&two.to_vec().unwrap()), Some(ResponseCode::FormErr));
        let none = Message::query().to_vec().unwrap();
        assert_eq!(code(&none), Some(ResponseCode::FormErr));

        let mut response = query_message("web", RecordType::A);
        response.metadata.message_type = MessageType::Response;
        assert_eq!(code(&response.to_vec().unwrap()), None);
        assert_eq!(code(&[0x12, 0x34, 0x01]), None);

        // A header and then garbage; a name longer than 255 bytes; a record
        // count larger than what follows.
        let header = &query_message("web", RecordType::A).to_vec().unwrap()[..12];
        let garbage = [header, &[0xff, 0x13, 0x00]].concat();
        assert_eq!(code(&garbage), Some(ResponseCode::FormErr));
        let mut long = header.to_vec();
        for _ in 0..5 {
            long.push(63);
            long.extend_from_slice(&[b'a'; 63]);
        }
        long.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(code(&long), Some(ResponseCode::FormErr));
        let mut short = query_message("web", RecordType::A).to_vec().unwrap();
        short[11] = 3;
        assert_eq!(code(&short), Some(ResponseCode::FormErr));
    }

    #[test]
    fn question_read_in_place() {
        let table = sample_table();
        let header = &query_message("web", RecordType::A).to_vec().unwrap()[..12];
        let with_name = |name: &[u8]| [header, name, &[0, 1, 0, 1]].concat();
        // A label holding a dot is no cluster name, whatever it spells.
        let dotted = with_name(b"\x09web.front\x00");
        let (action, _) = local(&table, &dotted, &["id-front"], Transport::Udp);
        assert!(matches!(action, Action::Forward(_)));
        // A compression pointer in the question is malformed.
        let pointer = with_name(&[0xc0, 0x0c]);
        let (_, response) = local(&table, &pointer, &["id-front"], Transport::Udp);
        assert_eq!(
            response.map(|message| message.metadata.response_code),
            Some(ResponseCode::FormErr)
        );
        // The longest name (255 bytes) is read, one more byte is not.
        let name = |last: u8| {
            let mut wire = Vec::new();
            for len in [63, 63, 63, last] {
                wire.push(len);
                wire.extend(std::iter::repeat_n(b'a', usize::from(len)));
            }
            wire.push(0);
            wire
        };
        assert_eq!(name(61).len(), 255);
        let (action, _) = local(&table, &with_name(&name(61)), &["id-front"], Transport::Udp);
        assert!(matches!(action, Action::Forward(_)));
        let (_, response) = local(&table, &with_name(&name(62)), &["id-front"], Transport::Udp);
        assert_eq!(
            response.map(|message| message.metadata.response_code),
            Some(ResponseCode::FormErr)
        );
    }

    #[test]
    fn edns_is_answered_with_opt_and_bad_version_refused() {
        let mut request = query_message("web", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        request.set_edns(edns.clone());
        let (_, response) = local(
            &sample_table(),
            &request.to_vec().unwrap(),
            &["id-front"],
            Transport::Udp,
        );
        let response = response.unwrap();
        assert_eq!(
            response.edns.as_ref().map(Edns::max_payload),
            Some(OUR_PAYLOAD)
        );
        assert_eq!(addresses(&response), [ip("10.1.0.100")]);

        edns.set_version(1);
        request.set_edns(edns);
        let (_, response) = local(
            &sample_table(),
            &request.to_vec().unwrap(),
            &["id-front"],
            Transport::Udp,
        );
        // BADVERS and BADSIG share code 16.
        assert_eq!(u16::from(response.unwrap().metadata.response_code), 16);
    }

    #[test]
    fn udp_answers_are_truncated_to_fit_tcp_ones_are_not() {
        let net = network("big", "id-big", "10.9.0.0/16");
        let mut svc = service("many", EndpointMode::Dnsrr, &[]);
        svc.networks = vec!["big".into()];
        let endpoints: Vec<_> = (0..200u8)
            .map(|i| endpoint(&format!("many.{i}"), Some("many"), &net, [10, 9, 1, i]))
            .collect();
        let table = DnsTable::build(&[svc], &endpoints, &[net]);
        let request = query_message("many", RecordType::A).to_vec().unwrap();
        let mut out = Vec::new();
        let action = answer(
            &request,
            &table,
            &scope(&["id-big"]),
            Transport::Udp,
            &mut out,
            &mut Scratch::default(),
        );
        assert_eq!(action, Action::Reply);
        assert!(out.len() <= PLAIN_UDP);
        let udp = Message::from_vec(&out).unwrap();
        assert!(udp.metadata.truncation);
        assert!(!udp.answers.is_empty());
        let (_, tcp) = local(&table, &request, &["id-big"], Transport::Tcp);
        let tcp = tcp.unwrap();
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 200);
    }

    #[test]
    fn unhealthy_and_other_networks_left_out() {
        let (services, endpoints, networks) = sample();
        let table = DnsTable::build(&services, &endpoints, &networks);
        let request = query_message("web.3", RecordType::A).to_vec().unwrap();
        let (action, _) = local(&table, &request, &["id-front", "id-back"], Transport::Udp);
        assert!(matches!(action, Action::Forward(_)));
        let response = ask("web.1", RecordType::A, &["id-front", "id-back"]);
        assert_eq!(addresses(&response), [ip("10.1.0.2"), ip("10.2.0.2")]);
    }

    #[tokio::test]
    async fn dead_upstreams_give_servfail_within_the_budget() {
        // One that swallows queries, one where nothing listens.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let closed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let closed_addr: SocketAddr = closed.local_addr().unwrap();
        drop(closed);
        let budget = Duration::from_millis(300);
        let forwarder = Forwarder::new(vec![silent.local_addr().unwrap(), closed_addr], budget);
        let request = query_message("example.com", RecordType::A);
        let bytes = request.to_vec().unwrap();
        // Tests never time things: the budget is what ends the wait, or the
        // test would hang (and cargo's runner would report it).
        let response = resolve(
            &bytes,
            &sample_table(),
            &scope(&["id-front"]),
            Transport::Udp,
            &forwarder,
        )
        .await
        .unwrap();
        let response = Message::from_vec(&response).unwrap();
        assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.queries[0].name().to_string(), "example.com.");
    }
}
