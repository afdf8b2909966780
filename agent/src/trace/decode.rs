//! From the bytes of a ring buffer entry to a `TraceEvent`, and the words
//! its codes stand for.

// The kernel boundary: ring buffer entries read as the #[repr(C)] events the programs write.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;

use netagent_common::{
    TraceEvent, TraceTuple, TRACE_CAPTURE_BYTES, TRACE_KIND_ARP_REPLY, TRACE_KIND_DROP,
    TRACE_KIND_FORWARD, TRACE_KIND_FORWARD_ESTABLISHED, TRACE_KIND_PASS, TRACE_KIND_REVERSE,
    TRACE_KIND_TRANSLATE, TRACE_KIND_TRANSLATE_ESTABLISHED, TRACE_REASON_MALFORMED,
    TRACE_REASON_NO_BACKEND, TRACE_REASON_NO_CONNTRACK, TRACE_REASON_POLICY,
    TRACE_REASON_UNSUPPORTED,
};

use netagent_api::trace::Tuple;

/// The event in `bytes`, or `None` if they are too short to hold one (an
/// object from another build).
pub fn event(bytes: &[u8]) -> Option<TraceEvent> {
    if bytes.len() < std::mem::size_of::<TraceEvent>() {
        return None;
    }
    // SAFETY: the length is checked above; TraceEvent is plain #[repr(C)]
    // data valid for any bit pattern, and read_unaligned has no alignment
    // requirement.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TraceEvent>()) })
}

/// The captured bytes of `event` (never more than the array holds).
pub fn headers(event: &TraceEvent) -> &[u8] {
    let len = (event.captured_len as usize).min(TRACE_CAPTURE_BYTES);
    &event.headers[..len]
}

/// The word for a verdict code, if it is one this build knows.
pub fn verdict_word(kind: u8) -> Option<&'static str> {
    Some(match kind {
        TRACE_KIND_TRANSLATE => "translate",
        TRACE_KIND_TRANSLATE_ESTABLISHED => "translate-established",
        TRACE_KIND_REVERSE => "reverse",
        TRACE_KIND_DROP => "drop",
        TRACE_KIND_ARP_REPLY => "arp-reply",
        TRACE_KIND_PASS => "pass",
        TRACE_KIND_FORWARD => "forward",
        TRACE_KIND_FORWARD_ESTABLISHED => "forward-established",
        _ => return None,
    })
}

/// The word for a reason code: `Ok(None)` for none, `Err(code)` for one
/// this build does not know.
pub fn reason_word(reason: u8) -> Result<Option<&'static str>, u8> {
    Ok(Some(match reason {
        0 => return Ok(None),
        TRACE_REASON_NO_BACKEND => "no-backend",
        TRACE_REASON_NO_CONNTRACK => "no-conntrack",
        TRACE_REASON_MALFORMED => "malformed",
        TRACE_REASON_UNSUPPORTED => "unsupported",
        TRACE_REASON_POLICY => "policy",
        other => return Err(other),
    }))
}

/// The protocol's word, or `Err(number)` for another IP protocol.
pub fn protocol_word(event: &TraceEvent) -> Result<&'static str, u8> {
    Ok(match (event.kind, event.proto) {
        (TRACE_KIND_ARP_REPLY, _) => "arp",
        (_, 6) => "tcp",
        (_, 17) => "udp",
        (_, 1) => "icmp",
        (_, 0) => "-",
        (_, other) => return Err(other),
    })
}

/// Addresses and ports come as they sat in the packet (network order).
pub fn tuple(t: &TraceTuple) -> Tuple {
    Tuple {
        src: Ipv4Addr::from(t.saddr.to_ne_bytes()),
        sport: u16::from_be_bytes(t.sport.to_ne_bytes()),
        dst: Ipv4Addr::from(t.daddr.to_ne_bytes()),
        dport: u16::from_be_bytes(t.dport.to_ne_bytes()),
    }
}

/// Whether the packet came from the local container (else it goes to it);
/// for a published port, whether it came from the client (else it is a
/// task's reply).
pub fn from_container(kind: u8) -> bool {
    kind != TRACE_KIND_REVERSE
}

/// Whether a published-port flow was sent on to a task.
pub fn is_forward(kind: u8) -> bool {
    kind == TRACE_KIND_FORWARD || kind == TRACE_KIND_FORWARD_ESTABLISHED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::fixtures::{protocol, reason, verdict};

    fn sample() -> TraceEvent {
        TraceEvent {
            timestamp_ns: 42,
            ifindex: 7,
            kind: TRACE_KIND_TRANSLATE,
            reason: 0,
            proto: 6,
            flags: 0,
            before: TraceTuple {
                saddr: u32::from_ne_bytes([10, 0, 0, 2]),
                daddr: u32::from_ne_bytes([10, 0, 0, 250]),
                sport: u16::from_ne_bytes(40000u16.to_be_bytes()),
                dport: u16::from_ne_bytes(80u16.to_be_bytes()),
            },
            after: TraceTuple::default(),
            service_id: 3,
            packet_len: 74,
            captured_len: 500,
            pad2: 0,
            headers: [0xab; TRACE_CAPTURE_BYTES],
        }
    }

    #[test]
    fn an_entry_decodes_byte_for_byte() {
        let event = sample();
        // SAFETY: plain data, viewed as bytes for the test.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&event as *const TraceEvent).cast::<u8>(),
                std::mem::size_of::<TraceEvent>(),
            )
        };
        assert_eq!(super::event(bytes), Some(event));
        assert_eq!(super::event(&bytes[..10]), None);
    }

    #[test]
    fn tuples_come_out_in_host_order() {
        let t = tuple(&sample().before);
        assert_eq!(t.src, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(t.dst, Ipv4Addr::new(10, 0, 0, 250));
        assert_eq!((t.sport, t.dport), (40000, 80));
    }

    #[test]
    fn a_bogus_captured_length_is_clamped() {
        assert_eq!(headers(&sample()).len(), TRACE_CAPTURE_BYTES);
    }

    #[test]
    fn codes_have_words() {
        assert_eq!(verdict(TRACE_KIND_DROP), "drop");
        assert_eq!(
            reason(TRACE_REASON_NO_BACKEND).as_deref(),
            Some("no-backend")
        );
        assert_eq!(reason(0), None);
        assert_eq!(protocol(&sample()), "tcp");
        for kind in 1..=8 {
            assert!(netagent_api::trace::VERDICTS.contains(&verdict(kind).as_str()));
        }
    }
}
