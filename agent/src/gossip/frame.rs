//! Framing inside a sealed datagram. chitchat fills a message up to the
//! largest UDP payload (65 507 bytes); sealing adds 28 bytes, so the rare
//! message that no longer fits is cut into fragments and put back together on
//! the other side. Frames are inside the seal: only cluster members can
//! create reassembly state.

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::sealed::OVERHEAD;

/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest plaintext one sealed datagram carries.
pub const MAX_PLAINTEXT: usize = MAX_DATAGRAM - OVERHEAD;

const WHOLE: u8 = 0;
const FRAGMENT: u8 = 1;
/// kind, message id (u32), index, count.
const FRAGMENT_HEADER: usize = 1 + 4 + 1 + 1;
const MAX_CHUNK: usize = MAX_PLAINTEXT - FRAGMENT_HEADER;
/// A message whose fragments did not all arrive by then is forgotten.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on messages being reassembled at once.
const MAX_PARTIAL: usize = 64;

/// Cuts a message into the plaintexts of one or more datagrams.
pub fn split(message: &[u8], message_id: u32) -> Vec<Vec<u8>> {
    if message.len() < MAX_PLAINTEXT {
        let mut frame = Vec::with_capacity(1 + message.len());
        frame.push(WHOLE);
        frame.extend_from_slice(message);
        return vec![frame];
    }
    let chunks: Vec<&[u8]> = message.chunks(MAX_CHUNK).collect();
    let count = chunks.len() as u8;
    chunks
        .iter()
        .enumerate()
        .map(|(index, chunk)| {
            let mut frame = Vec::with_capacity(FRAGMENT_HEADER + chunk.len());
            frame.push(FRAGMENT);
            frame.extend_from_slice(&message_id.to_be_bytes());
            frame.push(index as u8);
            frame.push(count);
            frame.extend_from_slice(chunk);
            frame
        })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("bad fragment header")]
    BadFragment,
}

struct Partial {
    started: Instant,
    chunks: Vec<Option<Vec<u8>>>,
}

/// Puts fragmented messages back together, per sender.
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(SocketAddr, u32), Partial>,
}

impl Reassembler {
    /// Returns the message once complete.
    pub fn push(&mut self, from: SocketAddr, frame: &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (&kind, rest) = frame.split_first().ok_or(FrameError::Empty)?;
        match kind {
            WHOLE => Ok(Some(rest.to_vec())),
            FRAGMENT => self.push_fragment(from, rest),
            other => Err(FrameError::UnknownKind(other)),
        }
    }

    fn push_fragment(
        &mut self,
        from: SocketAddr,
        rest: &[u8],
    ) -> Result<Option<Vec<u8>>, FrameError> {
        if rest.len() < FRAGMENT_HEADER - 1 {
            return Err(FrameError::BadFragment);
        }
        let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let (index, count) = (rest[4] as usize, rest[5] as usize);
        if count == 0 || index >= count {
            return Err(FrameError::BadFragment);
        }
        let now = Instant::now();
        self.partial
            .retain(|_, partial| now.duration_since(partial.started) < REASSEMBLY_TIMEOUT);
        if self.partial.len() >= MAX_PARTIAL && !self.partial.contains_key(&(from, id)) {
            // Drop the oldest: a lost fragment must not block reassembly.
            if let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, partial)| partial.started)
                .map(|(key, _)| *key)
            {
                self.partial.remove(&oldest);
            }
        }
        let partial = self.partial.entry((from, id)).or_insert_with(|| Partial {
            started: now,
            chunks: vec![None; count],
        });
        if partial.chunks.len() != count {
            self.partial.remove(&(from, id));
            return Err(FrameError::BadFragment);
        }
        partial.chunks[index] = Some(rest[6..].to_vec());
        if partial.chunks.iter().any(Option::is_none) {
            return Ok(None);
        }
        let message = self
            .partial
            .remove(&(from, id))
            .map(|partial| partial.chunks.into_iter().flatten().flatten().collect());
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn small_message_is_one_frame() {
        let frames = split(b"abc", 1);
        assert_eq!(frames.len(), 1);
        let mut r = Reassembler::default();
        assert_eq!(r.push(addr(), &frames[0]).unwrap().unwrap(), b"abc");
    }

    #[test]
    fn largest_message_is_fragmented_and_reassembled() {
        let message: Vec<u8> = (0..MAX_DATAGRAM).map(|i| i as u8).collect();
        let frames = split(&message, 9);
        assert_eq!(frames.len(), 2);
        assert!(frames.iter().all(|f| f.len() <= MAX_PLAINTEXT));
        let mut r = Reassembler::default();
        // Out of order on purpose.
        assert_eq!(r.push(addr(), &frames[1]).unwrap(), None);
        assert_eq!(r.push(addr(), &frames[0]).unwrap().unwrap(), message);
        assert!(r.partial.is_empty());
    }

    #[test]
    fn bad_frames_rejected() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(addr(), b""), Err(FrameError::Empty));
        assert_eq!(r.push(addr(), &[7]), Err(FrameError::UnknownKind(7)));
        assert_eq!(r.push(addr(), &[1, 0, 0]), Err(FrameError::BadFragment));
        assert_eq!(
            r.push(addr(), &[1, 0, 0, 0, 1, 2, 1, 9]),
            Err(FrameError::BadFragment)
        );
    }
}
