//! The few JSON pieces the trace stream's event lines are made of, written
//! straight into a byte buffer: names rendered once by `serde_json` (so a
//! line reads back as the same document, byte for byte), decimal numbers
//! and IPv4 addresses without going through `fmt`. Pure; used by `names`
//! (pre-rendered names) and `batch` (lines).

use std::{net::Ipv4Addr, sync::Arc};

/// A name and its JSON string form (quotes and escapes included), rendered
/// once when the address book is built and shared by every record that
/// mentions it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    text: Arc<str>,
    json: Arc<str>,
}

impl Name {
    pub fn new(text: impl Into<String>) -> Self {
        let text: String = text.into();
        Self {
            // Rendered by serde_json itself, so that a line reads back as
            // the same document, byte for byte.
            json: serde_json::Value::from(text.as_str()).to_string().into(),
            text: text.into(),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The shared text, for records that outlive the address book.
    pub fn shared(&self) -> Arc<str> {
        self.text.clone()
    }

    /// `"text"`, escaped.
    pub fn json(&self) -> &[u8] {
        self.json.as_bytes()
    }
}

/// A number in decimal, two digits at a time (ports and addresses are
/// written several times per line).
pub fn number(out: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `"a.b.c.d"`.
pub fn addr(out: &mut Vec<u8>, addr: Ipv4Addr) {
    out.push(b'"');
    addr_text(out, addr);
    out.push(b'"');
}

/// `a.b.c.d`, unquoted.
fn addr_text(out: &mut Vec<u8>, addr: Ipv4Addr) {
    for (i, octet) in addr.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        number(out, u64::from(octet));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_are_plain_decimal() {
        for n in [
            0,
            7,
            10,
            99,
            100,
            101,
            999,
            1_000,
            65_535,
            u64::from(u32::MAX),
            u64::MAX,
        ]
        .into_iter()
        .chain(0..1_000)
        {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for ip in [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 250),
            Ipv4Addr::new(255, 255, 255, 255),
        ] {
            let mut out = Vec::new();
            addr(&mut out, ip);
            assert_eq!(out, serde_json::to_vec(&ip).expect("json"));
        }
    }
}
