//! The managers' TLS: the server certificate chain (this manager's
//! certificate and the CA, which a joining node pins by fingerprint) and
//! client verification that also lets anonymous joiners in.

use std::sync::Arc;

use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};

use crate::control::{
    ca::{self, ClusterCa},
    error::ControlError,
    identity::ClusterIdentity,
};

/// The TLS configuration of this manager's control-plane server.
pub(super) fn server_config(
    ca: &ClusterCa,
    identity: &ClusterIdentity,
) -> Result<Arc<ServerConfig>, ControlError> {
    let tls = |e: rustls::Error| {
        ControlError::Other(format!(
            "cannot set up TLS for the control plane ({e}): this manager's <data-dir>/cluster.json or its store may be damaged; restore the --data-dir from a backup"
        ))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der().clone()).map_err(tls)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        // A joining node has no certificate yet; requests are authorised one by one.
        .allow_unauthenticated()
        .build()
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot set up TLS client verification ({e}): the cluster CA in this manager's store may be damaged; restore the --data-dir from a backup"
            ))
        })?;
    let mut chain = ca::certs_from_pem(&identity.cert_pem)?;
    // Send the CA too: a joining node pins it by fingerprint.
    chain.push(ca.cert_der().clone());
    let key = ca::key_from_pem(&identity.key_pem)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls)?;
    Ok(Arc::new(config))
}
