//! The few JSON pieces the trace stream's event lines are made of, written
//! straight into a byte buffer: strings escaped exactly as `serde_json`
//! escapes them (so a line reads back as the same document, byte for
//! byte), decimal numbers and IPv4 addresses without going through
//! `fmt`. Pure; used by `names` (pre-rendered names) and `batch` (lines).

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
        let mut json = Vec::with_capacity(text.len() + 2);
        string(&mut json, &text);
        Self {
            // Escaping keeps UTF-8 valid: only ASCII bytes are added.
            json: String::from_utf8_lossy(&json).into(),
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

/// `"text"` with `"`, `\` and control characters escaped as `serde_json`
/// does (`\n`-style short forms where JSON has one, else `\u00XX`).
pub fn string(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let short = match byte {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(&[b'\\', short]);
        if short == b'u' {
            out.extend_from_slice(&[
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
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

    fn as_serde(text: &str) -> String {
        let mut out = Vec::new();
        string(&mut out, text);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut every_control: String = (0u8..0x20).map(char::from).collect();
        every_control.push_str("\u{7f} é 漢 🦀 \"quoted\" back\\slash /");
        for text in ["", "web.1", "a \"b\"", "tab\there", &every_control] {
            assert_eq!(
                as_serde(text),
                serde_json::to_string(text).expect("json"),
                "{text:?}"
            );
            assert_eq!(Name::new(text).json(), as_serde(text).as_bytes());
            assert_eq!(Name::new(text).text(), text);
        }
    }

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
