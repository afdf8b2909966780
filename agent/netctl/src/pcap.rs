//! A classic libpcap file (LINKTYPE_ETHERNET, microsecond timestamps) of
//! the headers the datapath captured: what `netctl trace --pcap` writes,
//! for tcpdump and Wireshark.

use std::io::{self, Write};

const MAGIC_MICROSECONDS: u32 = 0xa1b2_c3d4;
const LINKTYPE_ETHERNET: u32 = 1;

pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header; `snaplen` is the most any record holds.
    pub fn new(mut out: W, snaplen: u32) -> io::Result<Self> {
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&MAGIC_MICROSECONDS.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        header.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        header.extend_from_slice(&snaplen.to_le_bytes());
        header.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self { out })
    }

    /// One packet seen at `time_ns` (Unix epoch), `original_len` bytes long
    /// on the wire, of which `captured` are kept.
    pub fn packet(&mut self, time_ns: u64, original_len: u32, captured: &[u8]) -> io::Result<()> {
        let incl = u32::try_from(captured.len()).unwrap_or(u32::MAX);
        let mut record = Vec::with_capacity(16 + captured.len());
        record.extend_from_slice(&((time_ns / 1_000_000_000) as u32).to_le_bytes());
        record.extend_from_slice(&((time_ns % 1_000_000_000 / 1_000) as u32).to_le_bytes());
        record.extend_from_slice(&incl.to_le_bytes());
        record.extend_from_slice(&original_len.max(incl).to_le_bytes());
        record.extend_from_slice(captured);
        self.out.write_all(&record)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_record_follow_the_format() {
        let mut writer = PcapWriter::new(Vec::new(), 128).unwrap();
        writer
            .packet(1_700_000_000_123_456_789, 74, &[1, 2, 3])
            .unwrap();
        let bytes = writer.out;
        assert_eq!(bytes.len(), 24 + 16 + 3);
        assert_eq!(&bytes[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), 128);
        assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 1);
        let field = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!(field(24), 1_700_000_000);
        assert_eq!(field(28), 123_456);
        assert_eq!(field(32), 3);
        assert_eq!(field(36), 74);
        assert_eq!(&bytes[40..], &[1, 2, 3]);
    }
}
