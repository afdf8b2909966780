//! Join tokens, Docker style: `NATKN-1-<sha256 of the CA certificate, hex>-<secret>`.
//! The fingerprint lets a joining node pin the manager's CA before it sends
//! anything; the secret says which role the node gets. One secret per role,
//! rotated independently; only the current one is accepted.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::error::ControlError;
use crate::model::Role;

pub const PREFIX: &str = "NATKN-1-";
const SECRET_LEN: usize = 32;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A token taken apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Hex SHA-256 of the cluster CA certificate (DER).
    pub fingerprint: String,
    pub secret: String,
}

/// A random string of `len` characters from `[a-z0-9]` (ids and secrets).
pub fn random_string(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

pub fn new_secret() -> String {
    random_string(SECRET_LEN)
}

pub fn format(fingerprint: &str, secret: &str) -> String {
    format!("{PREFIX}{fingerprint}-{secret}")
}

pub fn parse(token: &str) -> Result<JoinToken, ControlError> {
    let malformed = || {
        ControlError::Invalid(
            "malformed join token (want NATKN-1-<fingerprint>-<secret>): copy it again from `netctl cluster join-token worker` on a manager"
                .into(),
        )
    };
    let rest = token.trim().strip_prefix(PREFIX).ok_or_else(malformed)?;
    let (fingerprint, secret) = rest.split_once('-').ok_or_else(malformed)?;
    let hex_ok = fingerprint.len() == 64
        && fingerprint
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let secret_ok = secret.len() == SECRET_LEN && secret.bytes().all(|b| ALPHABET.contains(&b));
    if !hex_ok || !secret_ok {
        return Err(malformed());
    }
    Ok(JoinToken {
        fingerprint: fingerprint.to_owned(),
        secret: secret.to_owned(),
    })
}

/// Compares without leaking where the first difference is.
pub fn ct_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // The length of a secret is public (fixed); only the content is secret.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The current secret of each role, as the store keeps them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Secrets {
    pub worker: String,
    pub manager: String,
}

impl Secrets {
    pub fn generate() -> Self {
        Secrets {
            worker: new_secret(),
            manager: new_secret(),
        }
    }

    pub fn get(&self, role: Role) -> &str {
        match role {
            Role::Worker => &self.worker,
            Role::Manager => &self.manager,
        }
    }

    pub fn rotate(&mut self, role: Role) {
        match role {
            Role::Worker => self.worker = new_secret(),
            Role::Manager => self.manager = new_secret(),
        }
    }

    /// The role a secret grants, if it is a current one. Both comparisons
    /// always run, so timing does not tell which role matched.
    pub fn role_of(&self, secret: &str) -> Option<Role> {
        let worker = ct_eq(secret, &self.worker);
        let manager = ct_eq(secret, &self.manager);
        match (worker, manager) {
            (_, true) => Some(Role::Manager),
            (true, false) => Some(Role::Worker),
            (false, false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn format_parse_round_trip() {
        let secret = new_secret();
        let token = format(FP, &secret);
        assert!(token.starts_with("NATKN-1-0011"));
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.fingerprint, FP);
        assert_eq!(parsed.secret, secret);
        assert_eq!(parse(&format!(" {token}\n")).unwrap(), parsed);
    }

    #[test]
    fn malformed_tokens_are_refused_in_one_line() {
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            "NATKN-1-nohyphen",
            &format!("NATKN-1-{}-{}", &FP[..10], new_secret()),
            &format!("NATKN-1-{FP}-short"),
            &format!("NATKN-1-{}-{}", FP.to_uppercase(), new_secret()),
        ] {
            let error = parse(bad).unwrap_err().to_string();
            assert!(error.contains("malformed join token"), "{bad}: {error}");
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
        assert!(ct_eq("", ""));
    }

    #[test]
    fn secrets_give_roles_and_rotation_revokes() {
        let mut secrets = Secrets::generate();
        assert_ne!(secrets.worker, secrets.manager);
        let old = secrets.worker.clone();
        assert_eq!(secrets.role_of(&old), Some(Role::Worker));
        assert_eq!(
            secrets.role_of(&secrets.manager.clone()),
            Some(Role::Manager)
        );
        secrets.rotate(Role::Worker);
        assert_eq!(secrets.role_of(&old), None);
        assert_eq!(secrets.role_of(&secrets.worker.clone()), Some(Role::Worker));
        assert_eq!(secrets.role_of("x"), None);
    }
}
