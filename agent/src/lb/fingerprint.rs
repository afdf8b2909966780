//! Fingerprints of the planner's inputs: a fast, non-cryptographic 64-bit
//! hash (one rotate, xor and multiply per 8-byte word), so that comparing
//! a pass's inputs with the last ones costs a few nanoseconds per service
//! and endpoint. Each step is a bijection of the state for a given word
//! and of the word for a given state, so inputs that differ in one word
//! (one field of one endpoint) never share a fingerprint; unrelated inputs
//! collide with a chance of about 2^-64.

use std::hash::{BuildHasherDefault, Hasher};

/// An odd constant with well-spread bits (the golden ratio's fraction).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Clone, Copy, Debug, Default)]
pub struct Fingerprint(u64);

/// For the planner's maps: their keys are fingerprints or short ids.
pub type BuildFingerprint = BuildHasherDefault<Fingerprint>;

impl Fingerprint {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(K);
    }

    /// `text` lower-cased (ASCII), without copying it.
    pub fn write_lower(&mut self, text: &str) {
        self.words(text.bytes().map(|b| b.to_ascii_lowercase()));
        self.add(text.len() as u64);
    }

    fn words(&mut self, bytes: impl Iterator<Item = u8>) {
        let mut word = [0u8; 8];
        let mut len = 0;
        for byte in bytes {
            word[len] = byte;
            len += 1;
            if len == 8 {
                self.add(u64::from_le_bytes(word));
                len = 0;
            }
        }
        if len > 0 {
            word[len..].fill(0);
            self.add(u64::from_le_bytes(word));
        }
    }
}

impl Hasher for Fingerprint {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        self.words(chunks.remainder().iter().copied());
        // The padding of the last word must not hide trailing zeros.
        self.add(bytes.len() as u64);
    }

    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Appends `hash` to a running fingerprint, order counting.
pub fn mix(fingerprint: u64, hash: u64) -> u64 {
    let mut f = Fingerprint(fingerprint);
    f.add(hash);
    f.0
}

#[cfg(test)]
mod tests {
    use std::hash::Hash;

    use super::*;

    fn of(value: impl Hash) -> u64 {
        let mut f = Fingerprint::default();
        value.hash(&mut f);
        f.finish()
    }

    #[test]
    fn one_changed_field_changes_the_fingerprint() {
        let base = ("task-1", Some("web"), "node-2", 0x0a0a_0002u32, true);
        assert_eq!(of(base), of(base));
        assert_ne!(
            of(base),
            of(("task-1", Some("web"), "node-2", 0x0a0a_0002u32, false))
        );
        assert_ne!(
            of(base),
            of(("task-1", Some("web"), "node-3", 0x0a0a_0002u32, true))
        );
        assert_ne!(
            of(base),
            of(("task-1", Some("web"), "node-2", 0x0a0a_0003u32, true))
        );
        assert_ne!(
            of(base),
            of(("task-1", None::<&str>, "node-2", 0x0a0a_0002u32, true))
        );
        // Where one string ends counts.
        assert_ne!(of(("ab", "c")), of(("a", "bc")));
        assert_ne!(of("web"), of("web\0"));
    }

    #[test]
    fn lower_casing_ignores_case_only() {
        let lower = |text: &str| {
            let mut f = Fingerprint::default();
            f.write_lower(text);
            f.finish()
        };
        assert_eq!(lower("Web-Frontend.1"), lower("web-frontend.1"));
        assert_ne!(lower("web-frontend.1"), lower("web-frontend.2"));
        assert_ne!(lower("web"), lower("web\0"));
    }

    #[test]
    fn mixing_counts_order() {
        assert_ne!(mix(mix(0, 1), 2), mix(mix(0, 2), 1));
        assert_ne!(mix(0, 1), mix(mix(0, 1), 1));
    }
}
