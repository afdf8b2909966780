//! Which events a tracer wants (`netctl trace --network --service --ip
//! --port --verdict --since`), as the query string of `GET /v1/trace`.

use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    routes::path_segment,
    trace::{TraceRecord, Tuple, VERDICTS},
};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A verdict, or its first word (`translate` also takes
    /// `translate-established`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Replay the events of this many last milliseconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Not a filter: have the datapath report every packet of a flow, not
    /// only what is new about it (`--all-packets`, `--pcap`), for every
    /// tracer while this one is connected.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_packets: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("unknown verdict {0:?}: use one of {list}", list = VERDICTS.join(", "))]
    Verdict(String),
    #[error("bad duration {0:?}: use a number and a unit, e.g. 500ms, 30s, 5m, 1h")]
    Duration(String),
}

impl TraceFilter {
    /// Rejects what can never match.
    pub fn check(&self) -> Result<(), FilterError> {
        if let Some(verdict) = &self.verdict {
            if !VERDICTS
                .iter()
                .any(|v| v == verdict || v.starts_with(&format!("{verdict}-")))
            {
                return Err(FilterError::Verdict(verdict.clone()));
            }
        }
        Ok(())
    }

    /// Whether every event matches (no filter set): the stream then
    /// passes the shared lines on as they are.
    pub fn takes_everything(&self) -> bool {
        self.network.is_none()
            && self.service.is_none()
            && self.ip.is_none()
            && self.port.is_none()
            && self.verdict.is_none()
    }

    pub fn matches(&self, record: &impl Filterable) -> bool {
        let network = self
            .network
            .as_deref()
            .is_none_or(|n| record.network() == Some(n));
        let service = self
            .service
            .as_deref()
            .is_none_or(|s| record.service() == Some(s));
        let (before, after) = record.tuples();
        let ip = self.ip.is_none_or(|ip| {
            [before.src, before.dst, after.src, after.dst].contains(&ip)
                || record.snat() == Some(ip)
        });
        let port = self
            .port
            .is_none_or(|p| [before.sport, before.dport, after.sport, after.dport].contains(&p));
        let verdict = self.verdict.as_ref().is_none_or(|v| {
            let verdict = record.verdict();
            verdict == v
                || verdict
                    .strip_prefix(v.as_str())
                    .is_some_and(|rest| rest.starts_with('-'))
        });
        network && service && ip && port && verdict
    }

    /// The query string for `GET /v1/trace` (empty if nothing is set).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        let mut add = |key: &str, value: String| {
            parts.push(format!("{key}={}", path_segment(&value)));
        };
        if let Some(v) = &self.network {
            add("network", v.clone());
        }
        if let Some(v) = &self.service {
            add("service", v.clone());
        }
        if let Some(v) = self.ip {
            add("ip", v.to_string());
        }
        if let Some(v) = self.port {
            add("port", v.to_string());
        }
        if let Some(v) = &self.verdict {
            add("verdict", v.clone());
        }
        if let Some(v) = self.since_ms {
            add("since_ms", v.to_string());
        }
        if self.all_packets {
            add("all_packets", "true".to_owned());
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// What a filter reads of an event: a record read back from the stream,
/// or an entry of the agent's batches (before any line is written for a
/// tracer).
pub trait Filterable {
    fn network(&self) -> Option<&str>;
    fn service(&self) -> Option<&str>;
    /// The verdict's word.
    fn verdict(&self) -> &str;
    /// Before and after.
    fn tuples(&self) -> (Tuple, Tuple);
    fn snat(&self) -> Option<Ipv4Addr>;
}

/// A record read back from the stream.
impl Filterable for TraceRecord {
    fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    fn verdict(&self) -> &str {
        &self.verdict
    }

    fn tuples(&self) -> (Tuple, Tuple) {
        (self.before, self.after)
    }

    fn snat(&self) -> Option<Ipv4Addr> {
        self.snat
    }
}

/// `500ms`, `30s`, `5m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, FilterError> {
    let bad = || FilterError::Duration(text.to_owned());
    let digits = text
        .trim()
        .trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text.trim()[digits.len()..];
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn record() -> TraceRecord {
        let tuple = |src: [u8; 4], sport, dst: [u8; 4], dport| Tuple {
            src: src.into(),
            sport,
            dst: dst.into(),
            dport,
        };
        TraceRecord {
            time_ns: 0,
            node: "n1".into(),
            interface: "ve-1".into(),
            endpoint: None,
            verdict: "translate-established".into(),
            reason: None,
            protocol: "tcp".into(),
            before: tuple([10, 0, 0, 2], 40000, [10, 0, 0, 250], 80),
            after: tuple([10, 0, 0, 2], 40000, [10, 0, 0, 3], 80),
            service: Some("web".into()),
            network: Some("appnet".into()),
            task: None,
            snat: None,
            names: BTreeMap::new(),
            packet_len: 60,
            headers: String::new(),
        }
    }

    #[test]
    fn every_filter_must_match() {
        let r = record();
        assert!(TraceFilter::default().matches(&r));
        let f = |f: TraceFilter| f.matches(&r);
        assert!(f(TraceFilter {
            service: Some("web".into()),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            service: Some("db".into()),
            ..Default::default()
        }));
        assert!(f(TraceFilter {
            network: Some("appnet".into()),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            network: Some("other".into()),
            ..Default::default()
        }));
        assert!(f(TraceFilter {
            ip: Some([10, 0, 0, 3].into()),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            ip: Some([10, 0, 0, 9].into()),
            ..Default::default()
        }));
        assert!(f(TraceFilter {
            port: Some(80),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            port: Some(443),
            ..Default::default()
        }));
        assert!(f(TraceFilter {
            verdict: Some("translate".into()),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            verdict: Some("drop".into()),
            ..Default::default()
        }));
        assert!(!f(TraceFilter {
            verdict: Some("trans".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn unknown_verdicts_are_refused() {
        let f = |v: &str| {
            TraceFilter {
                verdict: Some(v.into()),
                ..Default::default()
            }
            .check()
        };
        assert!(f("drop").is_ok());
        assert!(f("translate").is_ok());
        assert!(f("dropped").is_err());
    }

    #[test]
    fn the_query_round_trips() {
        let filter = TraceFilter {
            network: Some("app net".into()),
            port: Some(80),
            since_ms: Some(30_000),
            ..Default::default()
        };
        assert_eq!(filter.query(), "?network=app%20net&port=80&since_ms=30000");
        assert_eq!(TraceFilter::default().query(), "");
        let every = TraceFilter {
            all_packets: true,
            ..Default::default()
        };
        assert_eq!(every.query(), "?all_packets=true");
        assert!(every.matches(&record()));
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("").is_err());
    }
}
