//! Sealing of gossip datagrams: ChaCha20-Poly1305 with the cluster key, a
//! random 12-byte nonce per datagram (prepended) and the cluster id as
//! associated data, so that a packet from another cluster, or one altered on
//! the way, does not open.

use chacha20poly1305::{
    aead::{Aead, Payload},
    ChaCha20Poly1305, Key, KeyInit, Nonce,
};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed datagram carries on top of its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed packet too short ({0} bytes)")]
    TooShort(usize),
    #[error("packet does not open with the cluster key")]
    Inauthentic,
    #[error("plaintext too long to seal")]
    TooLong,
}

pub struct Sealer {
    cipher: ChaCha20Poly1305,
    aad: Vec<u8>,
}

impl Sealer {
    pub fn new(key: &[u8; 32], cluster_id: &str) -> Self {
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(*key)),
            aad: cluster_id.as_bytes().to_vec(),
        }
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        // A random 96-bit nonce per packet: the key is long-lived and shared
        // by every node, so a counter could not be kept unique across nodes.
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: plaintext,
                    aad: &self.aad,
                },
            )
            .map_err(|_| SealError::TooLong)?;
        let mut datagram = Vec::with_capacity(NONCE_LEN + sealed.len());
        datagram.extend_from_slice(&nonce_bytes);
        datagram.extend_from_slice(&sealed);
        Ok(datagram)
    }

    pub fn open(&self, datagram: &[u8]) -> Result<Vec<u8>, SealError> {
        if datagram.len() < OVERHEAD {
            return Err(SealError::TooShort(datagram.len()));
        }
        let (nonce_bytes, sealed) = datagram.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_from(nonce_bytes).map_err(|_| SealError::TooShort(datagram.len()))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: &self.aad,
                },
            )
            .map_err(|_| SealError::Inauthentic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip() {
        let sealer = Sealer::new(&KEY, "c1");
        let sealed = sealer.seal(b"hello gossip").unwrap();
        assert_eq!(sealed.len(), b"hello gossip".len() + OVERHEAD);
        assert_eq!(sealer.open(&sealed).unwrap(), b"hello gossip");
        // Fresh nonce each time.
        assert_ne!(sealer.seal(b"x").unwrap(), sealer.seal(b"x").unwrap());
        assert_eq!(sealer.open(&sealer.seal(b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn wrong_key_or_cluster_rejected() {
        let sealed = Sealer::new(&KEY, "c1").seal(b"hello").unwrap();
        assert_eq!(
            Sealer::new(&[8; 32], "c1").open(&sealed),
            Err(SealError::Inauthentic)
        );
        assert_eq!(
            Sealer::new(&KEY, "c2").open(&sealed),
            Err(SealError::Inauthentic)
        );
    }

    #[test]
    fn tampered_byte_rejected() {
        let sealer = Sealer::new(&KEY, "c1");
        let sealed = sealer.seal(b"hello gossip").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(sealer.open(&bad), Err(SealError::Inauthentic), "byte {i}");
        }
    }

    #[test]
    fn short_packet_rejected() {
        let sealer = Sealer::new(&KEY, "c1");
        assert_eq!(sealer.open(b""), Err(SealError::TooShort(0)));
        assert_eq!(sealer.open(&[0; 27]), Err(SealError::TooShort(27)));
        // Exactly the overhead, but not a valid tag.
        assert_eq!(sealer.open(&[0; 28]), Err(SealError::Inauthentic));
    }
}
