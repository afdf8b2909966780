//! A bounded cache of forwarded answers (never of cluster names: those are
//! answered by the local pass before a query gets here, and change within a
//! second).
//!
//! * Key: the question (name lowercased, type, class) and the request bits
//!   that change the answer: RD, AD, CD, whether the client sent EDNS, DO.
//! * Value: the upstream's response bytes, kept for the smallest TTL of its
//!   records (for a negative answer, at most the SOA MINIMUM, RFC 2308; a
//!   negative answer without SOA is not kept), at most [`MAX_LIFETIME`].
//!   Only NOERROR and NXDOMAIN answers that are not truncated are kept;
//!   SERVFAIL, REFUSED and the rest always go upstream again. The options of
//!   the OPT record (a cookie meant for one client) are dropped.
//! * A hit is the stored response under the client's id and question (its
//!   case), every TTL lowered by the whole seconds it has been stored, so no
//!   client keeps a record past its upstream expiry by more than a second.
//!   A stored response larger than what the client takes back is a miss.
//! * Bound: [`SHARDS`] mutexes, each holding its share of the capacity; a
//!   full shard drops its expired entries, then an arbitrary one. A lookup
//!   hashes the key once, locks one shard and copies the bytes out.
//!
//! Time is passed in (`now`), so that tests choose it.

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::handler::{skip_name, Forward, HEADER_LEN, TYPE_OPT};

/// The longest a forwarded answer is served from the cache.
pub const MAX_LIFETIME: u32 = 60;
/// Entries across all shards.
pub const CAPACITY: usize = 10_000;
const SHARDS: usize = 16;
/// Flag byte, then the question: name (at most 255 bytes), type, class.
const MAX_KEY: usize = 1 + 255 + 4;

const TRUNCATED: u8 = 0x02;
const RCODE_NOERROR: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;
const TYPE_SOA: u16 = 6;

struct Entry {
    key: Box<[u8]>,
    response: Box<[u8]>,
    /// Where the TTL of each record (but OPT) sits in `response`.
    ttls: Box<[u16]>,
    stored: Instant,
    expires: Instant,
}

/// The shards' maps are keyed by the key's hash, computed once per lookup;
/// the entry holds the key itself to tell collisions apart.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else anyway.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

type Shard = HashMap<u64, Entry, BuildHasherDefault<Prehashed>>;

pub struct ForwardCache {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: RandomState,
}

impl ForwardCache {
    /// At most `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let shards = SHARDS.min(capacity.max(1));
        ForwardCache {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard: (capacity / shards).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Appends the cached answer to `request` to `out`; `false` (and `out`
    /// untouched) on a miss.
    pub fn get(&self, request: &[u8], query: Forward, now: Instant, out: &mut Vec<u8>) -> bool {
        let mut buf = [0u8; MAX_KEY];
        let Some(key) = key(request, query, &mut buf) else {
            return false;
        };
        let (hash, mut shard) = self.shard(key);
        let Some(entry) = shard.get(&hash) else {
            return false;
        };
        if *entry.key != *key || entry.response.len() > query.limit {
            return false;
        }
        if entry.expires <= now {
            shard.remove(&hash);
            return false;
        }
        let start = out.len();
        out.extend_from_slice(&entry.response);
        let age = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let message = &mut out[start..];
        for &at in &*entry.ttls {
            let at = usize::from(at);
            let field = &mut message[at..at + 4];
            let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
        drop(shard);
        message[..2].copy_from_slice(&request[..2]);
        message[HEADER_LEN..query.question_end]
            .copy_from_slice(&request[HEADER_LEN..query.question_end]);
        true
    }

    /// Keeps the upstream's `response` to `request` when it may be cached.
    pub fn insert(&self, request: &[u8], query: Forward, response: &[u8], now: Instant) {
        let mut buf = [0u8; MAX_KEY];
        let Some(key) = key(request, query, &mut buf) else {
            return;
        };
        let Some(cacheable) = cacheable(response, query.question_end) else {
            return;
        };
        let lifetime = Duration::from_secs(cacheable.lifetime.into());
        let entry = Entry {
            key: key.into(),
            response: cacheable.response.into(),
            ttls: cacheable.ttls.into(),
            stored: now,
            expires: now + lifetime,
        };
        let (hash, mut shard) = self.shard(key);
        if shard.len() >= self.per_shard && !shard.contains_key(&hash) {
            shard.retain(|_, entry| entry.expires > now);
            if shard.len() >= self.per_shard {
                if let Some(&victim) = shard.keys().next() {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(hash, entry);
    }

    /// Entries held, expired ones included.
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|index| self.lock(index).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let hash = self.hasher.hash_one(key);
        // The high bits pick the shard, the map uses the low ones.
        let index = (hash >> 32) as usize % self.shards.len();
        (hash, self.lock(index))
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard leaves a consistent map behind.
        crate::sync::lock(&self.shards[index])
    }
}

impl Default for ForwardCache {
    fn default() -> Self {
        ForwardCache::new(CAPACITY)
    }
}

/// The key of `request` in `buf`: flags, then the question with its name
/// lowercased (length octets are below 64, so lowercasing leaves them be).
fn key<'b>(request: &[u8], query: Forward, buf: &'b mut [u8; MAX_KEY]) -> Option<&'b [u8]> {
    let question = request.get(HEADER_LEN..query.question_end)?;
    let name_len = question.len().checked_sub(4)?;
    let key = buf.get_mut(..1 + question.len())?;
    key[0] = query.flags;
    for (to, from) in key[1..].iter_mut().zip(&question[..name_len]) {
        *to = from.to_ascii_lowercase();
    }
    key[1 + name_len..].copy_from_slice(&question[name_len..]);
    Some(key)
}

/// A response the cache may keep, as it keeps it.
#[derive(Debug, PartialEq, Eq)]
struct Cacheable {
    /// The response, its OPT record without options.
    response: Vec<u8>,
    ttls: Vec<u16>,
    lifetime: u32,
}

fn cacheable(response: &[u8], question_end: usize) -> Option<Cacheable> {
    if response.len() < question_end || question_end < HEADER_LEN || response.len() > 0xffff {
        return None;
    }
    let rcode = response[3] & 0x0f;
    if response[2] & TRUNCATED != 0 || !matches!(rcode, RCODE_NOERROR | RCODE_NXDOMAIN) {
        return None;
    }
    let count = |at: usize| usize::from(u16::from_be_bytes([response[at], response[at + 1]]));
    let (queries, answers, authorities, additionals) = (count(4), count(6), count(8), count(10));
    if queries != 1 {
        return None;
    }
    let records = answers + authorities + additionals;
    let mut ttls = Vec::with_capacity(records);
    let mut lifetime = MAX_LIFETIME;
    let mut soa_minimum = None;
    let mut kept = response.len();
    let mut at = question_end;
    for index in 0..records {
        let name_end = skip_name(response, at)?;
        let fixed = response.get(name_end..name_end + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdata_at = name_end + 10;
        let rdata_end = rdata_at + usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = response.get(rdata_at..rdata_end)?;
        if rtype == TYPE_OPT {
            // Only as the last record (after it could come a TSIG, which is
            // never to be replayed), and no extended error (BADCOOKIE...).
            if index + 1 != records || index < answers + authorities || fixed[4] != 0 {
                return None;
            }
            kept = rdata_at;
        } else {
            ttls.push(u16::try_from(name_end + 4).ok()?);
            lifetime = lifetime.min(ttl);
            if rtype == TYPE_SOA && (answers..answers + authorities).contains(&index) {
                let minimum = rdata.get(rdata.len().checked_sub(4)?..)?;
                soa_minimum = Some(u32::from_be_bytes([
                    minimum[0], minimum[1], minimum[2], minimum[3],
                ]));
            }
        }
        at = rdata_end;
    }
    if rcode == RCODE_NXDOMAIN || answers == 0 {
        lifetime = lifetime.min(soa_minimum?);
    }
    if lifetime == 0 {
        return None;
    }
    let mut response = response[..at.min(kept)].to_vec();
    if kept < at {
        // The OPT record's rdata length, right before where its rdata was.
        response[kept - 2..kept].fill(0);
    }
    Some(Cacheable {
        response,
        ttls,
        lifetime,
    })
}

#[cfg(test)]
mod tests {
    use hickory_proto::{
        op::{Edns, Message, ResponseCode},
        rr::{
            rdata::{A, SOA},
            Name, RData, Record, RecordType,
        },
    };

    use super::*;
    use crate::dns::handler::{self, tests::query_message, Action, Scratch, Transport};
    use crate::dns::DnsTable;

    /// The local pass's view of `request` (a name no table knows).
    fn forward(request: &[u8]) -> Forward {
        let mut out = Vec::new();
        match handler::answer(
            request,
            &DnsTable::default(),
            &[],
            Transport::Udp,
            &mut out,
            &mut Scratch::default(),
        ) {
            Action::Forward(query) => query,
            other => panic!("not forwarded: {other:?}"),
        }
    }

    fn upstream_answer(request: &Message, ttl: u32) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let query = request.queries[0].clone();
        response.add_answer(Record::from_rdata(
            query.name().clone(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        response.add_query(query);
        response
    }

    fn negative(request: &Message, soa_ttl: u32, minimum: u32) -> Message {
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.response_code = ResponseCode::NXDomain;
        response.add_query(request.queries[0].clone());
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 3600, 600, 86400, minimum);
        response.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
        response
    }

    struct Setup {
        cache: ForwardCache,
        t0: Instant,
    }

    impl Setup {
        fn new() -> Self {
            Setup {
                cache: ForwardCache::default(),
                t0: Instant::now(),
            }
        }

        fn at(&self, seconds: u64) -> Instant {
            self.t0 + Duration::from_secs(seconds)
        }

        fn store(&self, request: &Message, response: &Message, seconds: u64) {
            let request = request.to_vec().unwrap();
            let response = response.to_vec().unwrap();
            self.cache
                .insert(&request, forward(&request), &response, self.at(seconds));
        }

        fn lookup(&self, request: &Message, seconds: u64) -> Option<Message> {
            let request = request.to_vec().unwrap();
            let mut out = Vec::new();
            self.cache
                .get(&request, forward(&request), self.at(seconds), &mut out)
                .then(|| Message::from_vec(&out).unwrap())
        }
    }

    #[test]
    fn hit_under_the_clients_id_with_aged_ttls() {
        let setup = Setup::new();
        let first = query_message("example.org", RecordType::A);
        assert!(setup.lookup(&first, 0).is_none());
        setup.store(&first, &upstream_answer(&first, 30), 0);

        let mut again = query_message("example.org", RecordType::A);
        again.metadata.id = first.metadata.id.wrapping_add(1);
        let hit = setup.lookup(&again, 10).expect("a hit");
        assert_eq!(hit.metadata.id, again.metadata.id);
        assert_eq!(hit.answers.len(), 1);
        assert_eq!(hit.answers[0].ttl, 20);
        assert_eq!(hit.answers[0].data, RData::A(A::new(192, 0, 2, 1)));
        // Another type, or no RD, is another key.
        assert!(setup
            .lookup(&query_message("example.org", RecordType::AAAA), 10)
            .is_none());
        let mut no_rd = again.clone();
        no_rd.metadata.recursion_desired = false;
        assert!(setup.lookup(&no_rd, 10).is_none());
    }

    #[test]
    fn expiry_follows_the_smallest_ttl_capped() {
        let setup = Setup::new();
        let short = query_message("short.example", RecordType::A);
        setup.store(&short, &upstream_answer(&short, 5), 0);
        assert!(setup.lookup(&short, 4).is_some());
        assert!(setup.lookup(&short, 5).is_none());

        let long = query_message("long.example", RecordType::A);
        setup.store(&long, &upstream_answer(&long, 86400), 0);
        let hit = setup.lookup(&long, u64::from(MAX_LIFETIME) - 1).unwrap();
        assert_eq!(hit.answers[0].ttl, 86400 - (MAX_LIFETIME - 1));
        assert!(setup.lookup(&long, u64::from(MAX_LIFETIME)).is_none());

        let zero = query_message("zero.example", RecordType::A);
        setup.store(&zero, &upstream_answer(&zero, 0), 0);
        assert!(setup.lookup(&zero, 0).is_none());
    }

    #[test]
    fn case_insensitive_and_the_clients_case_comes_back() {
        let setup = Setup::new();
        let lower = query_message("example.org", RecordType::A);
        setup.store(&lower, &upstream_answer(&lower, 30), 0);
        let mixed = query_message("ExAmPle.ORG", RecordType::A);
        let hit = setup.lookup(&mixed, 1).expect("a hit");
        assert_eq!(hit.queries[0].name().to_ascii(), "ExAmPle.ORG.");
    }

    #[test]
    fn negative_answers_live_for_the_soa_minimum() {
        let setup = Setup::new();
        let request = query_message("nothing.example", RecordType::A);
        setup.store(&request, &negative(&request, 3600, 7), 0);
        let hit = setup.lookup(&request, 6).expect("a negative hit");
        assert_eq!(hit.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(hit.authorities[0].ttl, 3600 - 6);
        assert!(setup.lookup(&request, 7).is_none());

        // Without a SOA there is nothing to bound it: not kept.
        let mut bare = negative(&request, 3600, 7);
        bare.authorities.clear();
        let other = query_message("bare.example", RecordType::A);
        bare.queries = other.queries.clone();
        setup.store(&other, &bare, 0);
        assert!(setup.lookup(&other, 0).is_none());
    }

    #[test]
    fn servfail_refused_and_truncated_are_not_kept() {
        let setup = Setup::new();
        let request = query_message("example.org", RecordType::A);
        for rcode in [ResponseCode::ServFail, ResponseCode::Refused] {
            let mut failed = upstream_answer(&request, 30);
            failed.metadata.response_code = rcode;
            setup.store(&request, &failed, 0);
        }
        let mut truncated = upstream_answer(&request, 30);
        truncated.metadata.truncation = true;
        setup.store(&request, &truncated, 0);
        assert!(setup.cache.is_empty());
        assert!(setup.lookup(&request, 0).is_none());
    }

    #[test]
    fn edns_do_and_size_matter_and_options_are_dropped() {
        let setup = Setup::new();
        let mut request = query_message("example.org", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns.clone());
        let mut response = upstream_answer(&request, 30);
        let mut answer_edns = Edns::new();
        answer_edns.set_max_payload(1232);
        answer_edns
            .options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                10,
                vec![7; 16],
            ));
        response.set_edns(answer_edns);
        setup.store(&request, &response, 0);

        let hit = setup.lookup(&request, 1).expect("a hit with EDNS");
        let opt = hit.edns.expect("the OPT record");
        assert_eq!(opt.max_payload(), 1232);
        assert!(opt.options().as_ref().is_empty());
        // No EDNS, or DO set: other keys.
        assert!(setup
            .lookup(&query_message("example.org", RecordType::A), 1)
            .is_none());
        let mut dnssec = request.clone();
        edns.set_dnssec_ok(true);
        dnssec.set_edns(edns);
        assert!(setup.lookup(&dnssec, 1).is_none());

        // A stored answer larger than the client takes back is a miss.
        let mut big = query_message("big.example", RecordType::A);
        let mut wide = Edns::new();
        wide.set_max_payload(4096);
        big.set_edns(wide);
        let mut big_answer = upstream_answer(&big, 30);
        for last in 0..40 {
            big_answer.add_answer(Record::from_rdata(
                big.queries[0].name().clone(),
                30,
                RData::A(A::new(192, 0, 2, last)),
            ));
        }
        big_answer.set_edns(Edns::new());
        setup.store(&big, &big_answer, 0);
        assert!(setup.lookup(&big, 1).is_some());
        let mut small = big.clone();
        let mut narrow = Edns::new();
        narrow.set_max_payload(512);
        small.set_edns(narrow);
        assert!(setup.lookup(&small, 1).is_none());
    }

    #[test]
    fn bounded_and_expired_entries_go_first() {
        let cache = ForwardCache::new(32);
        let t0 = Instant::now();
        let stored = |name: &str, ttl: u32, at: Instant| {
            let request = query_message(name, RecordType::A);
            let bytes = request.to_vec().unwrap();
            let response = upstream_answer(&request, ttl).to_vec().unwrap();
            cache.insert(&bytes, forward(&bytes), &response, at);
        };
        for index in 0..32 {
            stored(&format!("short{index}.example"), 1, t0);
        }
        assert!(cache.len() <= 32);
        // Past their expiry, the short ones make room for the new ones.
        let later = t0 + Duration::from_secs(2);
        for index in 0..500 {
            stored(&format!("name{index}.example"), 30, later);
            assert!(cache.len() <= 32);
        }
        let hits = (0..500)
            .filter(|index| {
                let request = query_message(&format!("name{index}.example"), RecordType::A);
                let bytes = request.to_vec().unwrap();
                cache.get(&bytes, forward(&bytes), later, &mut Vec::new())
            })
            .count();
        assert!(hits > 0 && hits <= 32, "{hits}");
    }
}
