//! The resolver end to end on 127.0.0.1: a container resolver on sockets the
//! test binds, an upstream stub (UDP and TCP on one port) that answers
//! `example.com`, truncates `big.example` over UDP and swallows `slow.example`.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hickory_proto::{
    op::{Edns, Message, MessageType, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
};

use super::{
    handler::tests::{addresses, query_message},
    server::MAX_FORWARDS,
    table::tests::sample,
    ContainerResolver, DnsShared, DnsTable,
};

const BIG_ANSWERS: u8 = 3;

struct Stub {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

/// UDP and TCP sockets on one 127.0.0.1 port.
fn bind_pair() -> (std::net::UdpSocket, std::net::TcpListener) {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) {
            return (udp, tcp);
        }
    }
    panic!("no free port pair on 127.0.0.1");
}

fn stub_answer(request: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_query(query.clone());
    if let Some(edns) = &request.edns {
        // Echo the client's payload size: proves the OPT came through.
        let mut echo = Edns::new();
        echo.set_max_payload(edns.max_payload());
        response.set_edns(echo);
    }
    let a = |last: u8| {
        Record::from_rdata(
            query.name().clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, last))),
        )
    };
    match query.name().to_ascii().to_ascii_lowercase().as_str() {
        "example.com." => {
            response.add_answer(a(1));
        }
        "big.example." if tcp => {
            for last in 0..BIG_ANSWERS {
                response.add_answer(a(10 + last));
            }
        }
        "big.example." => response.metadata.truncation = true,
        "slow.example." => return None,
        _ => response.metadata.response_code = ResponseCode::NXDomain,
    }
    response.to_vec().ok()
}

async fn upstream_stub() -> Stub {
    let (udp, tcp) = bind_pair();
    udp.set_nonblocking(true).unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::from_std(udp).unwrap();
    let tcp = TcpListener::from_std(tcp).unwrap();
    let addr = udp.local_addr().unwrap();
    let udp_queries = Arc::new(AtomicUsize::new(0));
    let udp_counter = udp_queries.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((len, peer)) = udp.recv_from(&mut buf).await {
            udp_counter.fetch_add(1, Ordering::SeqCst);
            if let Some(answer) = stub_answer(&buf[..len], false) {
                let _ = udp.send_to(&answer, peer).await;
            }
        }
    });
    let tcp_queries = Arc::new(AtomicUsize::new(0));
    let counter = tcp_queries.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let len = stream.read_u16().await.unwrap();
                let mut request = vec![0u8; usize::from(len)];
                stream.read_exact(&mut request).await.unwrap();
                if let Some(answer) = stub_answer(&request, true) {
                    stream.write_u16(answer.len() as u16).await.unwrap();
                    stream.write_all(&answer).await.unwrap();
                }
            });
        }
    });
    Stub {
        addr,
        udp_queries,
        tcp_queries,
    }
}

struct Resolver {
    addr: SocketAddr,
    shared: Arc<DnsShared>,
    scope: Arc<ArcSwap<Vec<String>>>,
    _resolver: ContainerResolver,
}

fn resolver(upstreams: Vec<SocketAddr>, budget: Duration) -> Resolver {
    let shared = DnsShared::new(upstreams, budget);
    let (services, endpoints, networks) = sample();
    shared.update(DnsTable::build(&services, &endpoints, &networks));
    resolver_on(shared)
}

/// Another container's resolver on the same shared state (the same UDP
/// resolver threads).
fn resolver_on(shared: Arc<DnsShared>) -> Resolver {
    let scope = Arc::new(ArcSwap::from_pointee(vec!["id-front".to_string()]));
    let (udp, tcp) = bind_pair();
    let addr = udp.local_addr().unwrap();
    let resolver = ContainerResolver::spawn(shared.clone(), udp, tcp, scope.clone()).unwrap();
    Resolver {
        addr,
        shared,
        scope,
        _resolver: resolver,
    }
}

async fn over_udp(server: SocketAddr, request: &Message) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&request.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
        .await
        .expect("no UDP answer")
        .unwrap();
    Message::from_vec(&buf[..len]).unwrap()
}

async fn over_tcp(server: SocketAddr, request: &Message) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let bytes = request.to_vec().unwrap();
    stream.write_u16(bytes.len() as u16).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(10), stream.read_u16())
        .await
        .expect("no TCP answer")
        .unwrap();
    let mut answer = vec![0u8; usize::from(len)];
    stream.read_exact(&mut answer).await.unwrap();
    Message::from_vec(&answer).unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[tokio::test]
async fn cluster_names_over_udp_and_tcp() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(2));
    let request = query_message("Web", RecordType::A);
    for response in [
        over_udp(dns.addr, &request).await,
        over_tcp(dns.addr, &request).await,
    ] {
        assert_eq!(response.metadata.id, request.metadata.id);
        assert!(response.metadata.authoritative);
        assert_eq!(addresses(&response), [ip("10.1.0.100")]);
    }
}

#[tokio::test]
async fn forwarded_names_keep_id_and_edns() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(2));
    let mut request = query_message("example.com", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1400);
    request.set_edns(edns);
    for response in [
        over_udp(dns.addr, &request).await,
        over_tcp(dns.addr, &request).await,
    ] {
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert!(!response.metadata.authoritative);
        assert_eq!(addresses(&response), [ip("192.0.2.1")]);
        assert_eq!(response.edns.as_ref().map(Edns::max_payload), Some(1400));
    }
    let response = over_udp(dns.addr, &query_message("nothing.example", RecordType::A)).await;
    assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn forwarded_answers_are_cached_cluster_names_never() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(2));
    let first = query_message("example.com", RecordType::A);
    let mut second = query_message("EXAMPLE.com", RecordType::A);
    second.metadata.id = first.metadata.id.wrapping_add(7);
    for request in [&first, &second] {
        let response = over_udp(dns.addr, request).await;
        assert_eq!(response.metadata.id, request.metadata.id);
        assert_eq!(addresses(&response), [ip("192.0.2.1")]);
    }
    assert_eq!(over_tcp(dns.addr, &first).await.answers.len(), 1);
    assert_eq!(stub.udp_queries.load(Ordering::SeqCst), 1);

    // The name turns into a cluster name: the table answers at once.
    let (services, mut endpoints, networks) = sample();
    for ep in &mut endpoints {
        if ep.name == "tool" {
            ep.aliases.push("example.com".into());
        }
    }
    dns.shared
        .update(DnsTable::build(&services, &endpoints, &networks));
    let response = over_udp(dns.addr, &first).await;
    assert_eq!(addresses(&response), [ip("10.1.0.9")]);
    assert_eq!(stub.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn truncated_upstream_answer_is_retried_over_tcp() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(2));
    let response = over_udp(dns.addr, &query_message("big.example", RecordType::A)).await;
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), usize::from(BIG_ANSWERS));
    assert_eq!(stub.tcp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn silent_upstream_gives_servfail_within_budget_and_others_still_answered() {
    let stub = upstream_stub().await;
    let budget = Duration::from_millis(400);
    let dns = resolver(vec![stub.addr], budget);
    let slow = query_message("slow.example", RecordType::A);
    let addr = dns.addr;
    let slow_query = slow.clone();
    let pending = tokio::spawn(async move { over_udp(addr, &slow_query).await });
    // Meanwhile the UDP loop keeps answering: the cluster name comes back
    // while the forwarded query is still waiting for its silent upstream.
    let cluster = over_udp(dns.addr, &query_message("tool", RecordType::A)).await;
    assert_eq!(addresses(&cluster), [ip("10.1.0.9")]);
    assert!(
        !pending.is_finished(),
        "the cluster answer waited for the forward"
    );
    // The budget ends the wait with SERVFAIL (never a client timeout).
    let slow_response = pending.await.unwrap();
    assert_eq!(slow_response.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(slow_response.metadata.id, slow.metadata.id);
}

#[tokio::test]
async fn updates_and_scope_changes_show_on_the_next_query() {
    let dns = resolver(Vec::new(), Duration::from_millis(200));
    let request = query_message("tool", RecordType::A);
    assert_eq!(
        addresses(&over_udp(dns.addr, &request).await),
        [ip("10.1.0.9")]
    );

    let (services, mut endpoints, networks) = sample();
    for ep in &mut endpoints {
        if ep.name == "tool" {
            ep.ip = ip("10.1.0.42");
        }
    }
    dns.shared
        .update(DnsTable::build(&services, &endpoints, &networks));
    assert_eq!(
        addresses(&over_tcp(dns.addr, &request).await),
        [ip("10.1.0.42")]
    );

    // Off the network: no longer a cluster name, forwarded (no upstream).
    dns.scope.store(Arc::new(vec!["id-back".to_string()]));
    let response = over_udp(dns.addr, &request).await;
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        addresses(&over_udp(dns.addr, &query_message("db", RecordType::A)).await).len(),
        2
    );
}

#[tokio::test]
async fn junk_and_idle_connections_do_not_block_anyone() {
    let dns = resolver(Vec::new(), Duration::from_millis(200));
    let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    junk.send_to(&[1, 2, 3], dns.addr).await.unwrap();
    junk.send_to(&[0xab; 40], dns.addr).await.unwrap();
    // A TCP client that connects and sends half a length prefix.
    let mut idle = TcpStream::connect(dns.addr).await.unwrap();
    idle.write_all(&[0]).await.unwrap();
    // An oversized TCP query is refused by closing the connection.
    let mut large = TcpStream::connect(dns.addr).await.unwrap();
    large.write_u16(u16::MAX).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), large.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    let request = query_message("tool", RecordType::A);
    assert_eq!(
        addresses(&over_udp(dns.addr, &request).await),
        [ip("10.1.0.9")]
    );
    assert_eq!(
        addresses(&over_tcp(dns.addr, &request).await),
        [ip("10.1.0.9")]
    );
    let reverse = query_message("9.0.1.10.in-addr.arpa", RecordType::PTR);
    let response = over_tcp(dns.addr, &reverse).await;
    assert_eq!(response.answers[0].data.to_string(), "tool.front.");
}

/// Sends every request from one socket before reading any answer; returns
/// the answers in the order they came.
async fn burst(server: SocketAddr, requests: &[Message], answers: usize) -> Vec<Message> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for request in requests {
        socket
            .send_to(&request.to_vec().unwrap(), server)
            .await
            .unwrap();
    }
    let mut buf = vec![0u8; 4096];
    let mut received = Vec::new();
    while received.len() < answers {
        let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("answers missing")
            .unwrap();
        received.push(Message::from_vec(&buf[..len]).unwrap());
    }
    received
}

fn with_id(mut message: Message, id: usize) -> Message {
    message.metadata.id = id as u16;
    message
}

#[tokio::test]
async fn a_burst_of_queries_is_answered_in_full() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(2));
    // Warm the cache, so that the burst is answered inline.
    over_udp(dns.addr, &query_message("example.com", RecordType::A)).await;
    let requests: Vec<Message> = (0..200)
        .map(|id| {
            let name = ["tool", "web", "example.com", "tasks.web"][id % 4];
            with_id(query_message(name, RecordType::A), id)
        })
        .collect();
    let mut answers = burst(dns.addr, &requests, requests.len()).await;
    answers.sort_by_key(|answer| answer.metadata.id);
    for (id, answer) in answers.iter().enumerate() {
        assert_eq!(usize::from(answer.metadata.id), id);
        let expected = match id % 4 {
            0 => vec![ip("10.1.0.9")],
            1 => vec![ip("10.1.0.100")],
            2 => vec![ip("192.0.2.1")],
            _ => {
                assert_eq!(addresses(answer).len(), 2);
                continue;
            }
        };
        assert_eq!(addresses(answer), expected, "query {id}");
    }
    assert_eq!(stub.udp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn forwards_beyond_the_bound_get_servfail_at_once() {
    let stub = upstream_stub().await;
    let dns = resolver(vec![stub.addr], Duration::from_secs(5));
    let extra = 8;
    let requests: Vec<Message> = (0..MAX_FORWARDS + extra)
        .map(|id| with_id(query_message("slow.example", RecordType::A), id))
        .collect();
    // The queries in flight wait for their silent upstream until the 5 s
    // budget ends: answers within 2 s can only be the SERVFAILs of the
    // queries over the bound. Which queries those are depends on which
    // resolver thread took which batch first, so only their number counts.
    let answers = tokio::time::timeout(Duration::from_secs(2), burst(dns.addr, &requests, extra))
        .await
        .expect("no SERVFAIL at once for the queries over the bound");
    let mut refused = BTreeSet::new();
    for answer in answers {
        assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
        refused.insert(answer.metadata.id);
    }
    assert_eq!(refused.len(), extra, "the same query refused twice");
}

#[tokio::test]
async fn a_dropped_resolver_closes_its_socket_and_the_others_go_on() {
    let first = resolver(Vec::new(), Duration::from_millis(200));
    let second = resolver_on(first.shared.clone());
    let request = query_message("tool", RecordType::A);
    for dns in [&first, &second] {
        assert_eq!(
            addresses(&over_udp(dns.addr, &request).await),
            [ip("10.1.0.9")]
        );
    }
    let gone = second.addr;
    drop(second);
    // Its port is free again once the socket has left the loop and closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::net::UdpSocket::bind(gone).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped resolver's socket is still open"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(
        addresses(&over_udp(first.addr, &request).await),
        [ip("10.1.0.9")]
    );
}
