//! The cluster CA and the node certificates it signs. A node certificate
//! names the node (CN and a DNS SAN = node id), its role (OU), and the
//! cluster (O); a manager's also carries the DNS SAN `netagent-manager`,
//! the name clients verify, so a worker certificate cannot pose as a manager.
//! The node generates its own key and sends only the public key: private
//! keys never cross the network.

use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::error::ControlError;
use crate::model::Role;

/// The DNS name every manager certificate carries and clients verify.
pub const MANAGER_NAME: &str = "netagent-manager";

/// What to do about a damaged certificate or key (in `<data-dir>/cluster.json`
/// or the store).
const DAMAGED: &str =
    "restore the --data-dir from a backup, or stop netagent, remove its --data-dir and join again";

fn ca_error(what: &str) -> impl Fn(rcgen::Error) -> ControlError + '_ {
    move |error| {
        ControlError::Other(format!(
            "cannot {what} ({error}): if the --data-dir was damaged, restore it from a backup; else report this bug with the agent's log (`journalctl -u netagent`)"
        ))
    }
}

/// Hex SHA-256 of a certificate's DER, as join tokens carry it.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The DER certificates of a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, ControlError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ControlError::Other(format!(
                "a stored certificate is damaged (bad PEM: {e}): {DAMAGED}"
            ))
        })?;
    if certs.is_empty() {
        return Err(ControlError::Other(format!(
            "a stored certificate is missing (no certificate in its PEM): {DAMAGED}"
        )));
    }
    Ok(certs)
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, ControlError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| {
            ControlError::Other(format!(
                "a stored private key is damaged (bad PEM: {e}): {DAMAGED}"
            ))
        })?
        .ok_or_else(|| {
            ControlError::Other(format!(
                "a stored private key is missing (no key in its PEM): {DAMAGED}"
            ))
        })
}

pub fn fingerprint_pem(pem: &str) -> Result<String, ControlError> {
    let certs = certs_from_pem(pem)?;
    Ok(fingerprint(certs[0].as_ref()))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::rng().random();
    // Positive and non-zero, as RFC 5280 wants.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The CA's parameters, a pure function of the cluster id: rcgen (without
/// its x509 parser) cannot read them back from the certificate, and the
/// issuer name of every signed certificate must equal the CA's subject.
fn ca_params(cluster_id: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "netagent cluster CA");
    name.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A P-256 public key received from a joining node (raw uncompressed point).
pub struct RawPublicKey(Vec<u8>);

impl RawPublicKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, ControlError> {
        // SEC1 uncompressed point: 0x04 || X (32) || Y (32).
        if bytes.len() != 65 || bytes[0] != 0x04 {
            return Err(ControlError::Invalid(
                "the join request's public key is not a P-256 key: upgrade netagent on the joining node"
                    .into(),
            ));
        }
        Ok(RawPublicKey(bytes))
    }
}

impl PublicKeyData for RawPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A fresh P-256 key for a node.
pub fn new_node_key() -> Result<KeyPair, ControlError> {
    KeyPair::generate().map_err(ca_error("generate a key"))
}

pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    cluster_id: String,
}

impl ClusterCa {
    pub fn generate(cluster_id: &str) -> Result<Self, ControlError> {
        let key = KeyPair::generate().map_err(ca_error("generate the CA key"))?;
        let mut params = ca_params(cluster_id);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(ca_error("create the CA certificate"))?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(ca_params(cluster_id), key),
            cluster_id: cluster_id.to_owned(),
        })
    }

    pub fn load(cluster_id: &str, cert_pem: &str, key_pem: &str) -> Result<Self, ControlError> {
        let key = KeyPair::from_pem(key_pem).map_err(ca_error("read the CA key"))?;
        let cert_der = certs_from_pem(cert_pem)?.remove(0);
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            issuer: Issuer::new(ca_params(cluster_id), key),
            cluster_id: cluster_id.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(self.cert_der.as_ref())
    }

    /// Signs a certificate for `node_id` in `role` over `public_key`.
    /// Returns the PEM and the certificate's fingerprint.
    pub fn issue(
        &self,
        node_id: &str,
        role: Role,
        public_key: &impl PublicKeyData,
    ) -> Result<(String, String), ControlError> {
        let mut names = vec![node_id.to_owned()];
        if role == Role::Manager {
            names.push(MANAGER_NAME.to_owned());
        }
        let mut params =
            CertificateParams::new(names).map_err(ca_error("build a node certificate"))?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id);
        name.push(DnType::OrganizationalUnitName, role.to_string());
        name.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = name;
        params.serial_number = Some(random_serial());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(ca_error("sign a node certificate"))?;
        Ok((cert.pem(), fingerprint(cert.der().as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::{
        client::{danger::ServerCertVerifier, WebPkiServerVerifier},
        pki_types::{ServerName, UnixTime},
        RootCertStore,
    };

    use super::*;

    fn verifier(ca: &ClusterCa) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn node_certificates_chain_to_the_ca_and_carry_the_role() {
        let ca = ClusterCa::generate("cluster1").unwrap();
        assert_eq!(ca.fingerprint(), fingerprint_pem(ca.cert_pem()).unwrap());
        assert_eq!(ca.fingerprint().len(), 64);

        let manager_key = new_node_key().unwrap();
        let worker_key = new_node_key().unwrap();
        let public = RawPublicKey::new(worker_key.public_key_raw().to_vec()).unwrap();
        let (worker_pem, worker_fp) = ca.issue("worker1", Role::Worker, &public).unwrap();
        let (manager_pem, _) = ca.issue("manager1", Role::Manager, &manager_key).unwrap();
        assert_eq!(fingerprint_pem(&worker_pem).unwrap(), worker_fp);

        let checker = verifier(&ca);
        let check = |pem: &str, name: &'static str| {
            let cert = certs_from_pem(pem).unwrap().remove(0);
            checker.verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from(name).unwrap(),
                &[],
                UnixTime::now(),
            )
        };
        assert!(check(&manager_pem, MANAGER_NAME).is_ok());
        assert!(check(&manager_pem, "manager1").is_ok());
        assert!(check(&worker_pem, "worker1").is_ok());
        // A worker cannot pose as a manager.
        assert!(check(&worker_pem, MANAGER_NAME).is_err());

        // A reloaded CA signs certificates that still chain to it.
        let reloaded = ClusterCa::load("cluster1", ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(reloaded.fingerprint(), ca.fingerprint());
        let (again, _) = reloaded
            .issue("manager2", Role::Manager, &manager_key)
            .unwrap();
        assert!(check(&again, MANAGER_NAME).is_ok());

        // Another cluster's CA does not vouch for these.
        let other = verifier(&ClusterCa::generate("cluster2").unwrap());
        let cert = certs_from_pem(&manager_pem).unwrap().remove(0);
        assert!(other
            .verify_server_cert(
                &cert,
                &[],
                &ServerName::try_from(MANAGER_NAME).unwrap(),
                &[],
                UnixTime::now()
            )
            .is_err());
        assert!(RawPublicKey::new(vec![1, 2, 3]).is_err());
    }
}
