//! The managers' client: mutual TLS with the node's certificate, trying each
//! manager in order until one answers; and `join`, which has no certificate
//! yet and instead pins the manager's CA by the fingerprint in the token.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::debug;

use netagent_api::types::{CreateNetwork, CreateService, UpdateNode, UpdateService};

use super::{
    ca::{self, MANAGER_NAME},
    error::ControlError,
    identity::ClusterIdentity,
    node::NodeRecord,
    plane::ControlPlane,
    token,
    wire::{self, BlockRequest, JoinRequest, JoinResponse, ReserveRequest},
};
use crate::model::{Network, Role, Service};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(e: rustls::Error) -> ControlError {
    ControlError::Other(format!(
        "cannot set up TLS to the managers ({e}): <data-dir>/cluster.json may be damaged; restore it from a backup, or stop netagent, remove its --data-dir and join again"
    ))
}

/// How one attempt on one manager failed.
enum Failure {
    /// Could not talk to this manager: try the next one.
    Unreachable(String),
    /// The manager answered: this is the answer.
    Answered(ControlError),
}

struct Inner {
    config: Arc<ClientConfig>,
    managers: Vec<SocketAddr>,
}

impl Inner {
    fn new(config: ClientConfig, managers: Vec<SocketAddr>) -> Result<Self, ControlError> {
        if managers.is_empty() {
            return Err(ControlError::Invalid(
                "no manager address is known: join the cluster again (`netctl cluster join`)"
                    .into(),
            ));
        }
        Ok(Inner {
            config: Arc::new(config),
            managers,
        })
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlError> {
        let mut failures = Vec::new();
        for manager in &self.managers {
            match send(&self.config, *manager, method.clone(), path, body.clone()).await {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        ControlError::Other(format!(
                            "the manager at {manager} sent an unreadable answer ({e}): check that netagent versions match"
                        ))
                    })
                }
                Err(Failure::Answered(error)) => return Err(error),
                Err(Failure::Unreachable(reason)) => {
                    debug!(%manager, %reason, "manager unreachable, trying the next");
                    failures.push(format!("{manager}: {reason}"));
                }
            }
        }
        Err(ControlError::Unavailable(format!(
            "no manager reachable ({}): check that a manager runs and that TCP {} is open",
            failures.join("; "),
            super::manager::CONTROL_PORT
        )))
    }
}

/// One request on a fresh connection (control calls are rare).
async fn send(
    config: &Arc<ClientConfig>,
    manager: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Bytes, Failure> {
    let unreachable =
        |what: &str, e: &dyn std::fmt::Display| Failure::Unreachable(format!("{what}: {e}"));
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(manager))
        .await
        .map_err(|_| Failure::Unreachable("connect timed out".into()))?
        .map_err(|e| unreachable("connect", &e))?;
    let name = ServerName::try_from(MANAGER_NAME)
        .map_err(|e| unreachable("server name", &e))?
        .to_owned();
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| Failure::Unreachable("TLS handshake timed out".into()))?
    .map_err(|e| unreachable("TLS", &e))?;
    let exchange = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| unreachable("HTTP", &e))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(%error, "control connection closed with an error");
            }
        });
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, MANAGER_NAME)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| {
                Failure::Answered(ControlError::Other(format!(
                    "cannot build a request to the managers ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
                )))
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable("HTTP", &e))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable("HTTP body", &e))?
            .to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(Failure::Answered(wire::error_from(status, &bytes)))
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| Failure::Unreachable("no answer in time".into()))?
}

fn roots(ca_pem: &str) -> Result<RootCertStore, ControlError> {
    let mut roots = RootCertStore::empty();
    for cert in ca::certs_from_pem(ca_pem)? {
        roots.add(cert).map_err(tls_error)?;
    }
    Ok(roots)
}

/// The mTLS client of the managers, for any node in the cluster.
pub struct ManagerClient {
    inner: Inner,
}

impl ManagerClient {
    pub fn new(identity: &ClusterIdentity) -> Result<Self, ControlError> {
        let chain = ca::certs_from_pem(&identity.cert_pem)?;
        let key = ca::key_from_pem(&identity.key_pem)?;
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots(&identity.ca_pem)?)
            .with_client_auth_cert(chain, key)
            .map_err(tls_error)?;
        Ok(ManagerClient {
            inner: Inner::new(config, identity.managers.clone())?,
        })
    }

    /// A client that verifies the managers but shows no certificate: only
    /// `join` works for it (tests check that everything else is refused).
    pub fn anonymous(ca_pem: &str, managers: Vec<SocketAddr>) -> Result<Self, ControlError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        Ok(ManagerClient {
            inner: Inner::new(config, managers)?,
        })
    }

    /// The managers this client tries, in order.
    pub fn managers(&self) -> &[SocketAddr] {
        &self.inner.managers
    }
}

fn json<T: Serialize>(value: &T) -> Result<Option<Vec<u8>>, ControlError> {
    serde_json::to_vec(value)
        .map(Some)
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot encode a request to the managers ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })
}

impl ControlPlane for ManagerClient {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        self.inner.request(Method::GET, "/v1/nodes", None).await
    }
    async fn update_node(
        &self,
        id_or_name: &str,
        request: UpdateNode,
    ) -> Result<NodeRecord, ControlError> {
        let path = format!("/v1/nodes/{}/update", wire::segment(id_or_name)?);
        self.inner
            .request(Method::POST, &path, json(&request)?)
            .await
    }
    async fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError> {
        let path = format!("/v1/nodes/{}", wire::segment(id_or_name)?);
        self.inner.request(Method::DELETE, &path, None).await
    }
    async fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError> {
        self.inner
            .request(Method::POST, "/v1/networks", json(&request)?)
            .await
    }
    async fn networks(&self) -> Result<Vec<Network>, ControlError> {
        self.inner.request(Method::GET, "/v1/networks", None).await
    }
    async fn remove_network(&self, name: &str) -> Result<Network, ControlError> {
        let path = format!("/v1/networks/{}", wire::segment(name)?);
        self.inner.request(Method::DELETE, &path, None).await
    }
    async fn allocate_block(
        &self,
        network_id: &str,
        node_id: &str,
    ) -> Result<Ipv4Net, ControlError> {
        let path = format!("/v1/networks/{}/blocks", wire::segment(network_id)?);
        let body = BlockRequest {
            node_id: node_id.to_owned(),
        };
        self.inner.request(Method::POST, &path, json(&body)?).await
    }
    async fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        let path = format!("/v1/nodes/{}/blocks", wire::segment(node_id)?);
        self.inner.request(Method::GET, &path, None).await
    }
    async fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        let path = format!("/v1/networks/{}/reservations", wire::segment(network_id)?);
        let body = ReserveRequest {
            node_id: node_id.to_owned(),
            ip,
        };
        self.inner.request(Method::POST, &path, json(&body)?).await
    }
    async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<(), ControlError> {
        let path = format!(
            "/v1/networks/{}/reservations/{ip}",
            wire::segment(network_id)?
        );
        self.inner.request(Method::DELETE, &path, None).await
    }
    async fn create_service(&self, request: CreateService) -> Result<Service, ControlError> {
        self.inner
            .request(Method::POST, "/v1/services", json(&request)?)
            .await
    }
    async fn services(&self) -> Result<Vec<Service>, ControlError> {
        self.inner.request(Method::GET, "/v1/services", None).await
    }
    async fn remove_service(&self, name: &str) -> Result<Service, ControlError> {
        let path = format!("/v1/services/{}", wire::segment(name)?);
        self.inner.request(Method::DELETE, &path, None).await
    }
    async fn update_service(
        &self,
        name: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError> {
        let path = format!("/v1/services/{}/update", wire::segment(name)?);
        self.inner
            .request(Method::POST, &path, json(&request)?)
            .await
    }
    async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError> {
        let path = if rotate {
            format!("/v1/join-tokens/{role}/rotate")
        } else {
            format!("/v1/join-tokens/{role}")
        };
        let method = if rotate { Method::POST } else { Method::GET };
        self.inner.request(method, &path, None).await
    }
}

/// Accepts the manager only if its chain holds a CA with the token's
/// fingerprint and its certificate is a manager certificate of that CA.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|cert| token::ct_eq(&ca::fingerprint(cert.as_ref()), &self.fingerprint))
            .ok_or_else(|| {
                rustls::Error::General(
                    "the manager's CA does not match the fingerprint in the join token".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `cluster join`: contacts the manager at `manager` with `token`, verifies
/// the manager against the CA fingerprint inside the token, and returns the
/// node's new identity (certificate issued by the cluster CA, gossip key,
/// manager list). A wrong or rotated-out token is refused with a one-line
/// error. The caller saves the identity.
pub async fn join(
    manager: SocketAddr,
    join_token: &str,
    node_name: &str,
    advertise_addr: IpAddr,
) -> Result<ClusterIdentity, ControlError> {
    let parsed = token::parse(join_token)?;
    let key = ca::new_node_key()?;
    let provider = provider();
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            fingerprint: parsed.fingerprint.clone(),
            provider,
        }))
        .with_no_client_auth();
    let request = JoinRequest {
        token: join_token.trim().to_owned(),
        node_name: node_name.to_owned(),
        addr: advertise_addr,
        public_key: hex::encode(key.public_key_raw()),
    };
    let body = json(&request)?;
    let config = Arc::new(config);
    let bytes = match send(&config, manager, Method::POST, wire::JOIN, body).await {
        Ok(bytes) => bytes,
        Err(Failure::Answered(error)) => return Err(error),
        Err(Failure::Unreachable(reason)) => {
            return Err(ControlError::Unavailable(format!(
                "cannot join through the manager at {manager} ({reason}): check the address, the token and that TCP {} is open",
                super::manager::CONTROL_PORT
            )))
        }
    };
    let response: JoinResponse = serde_json::from_slice(&bytes).map_err(|e| {
        ControlError::Other(format!(
            "the manager at {manager} sent an unreadable join answer ({e}): check that netagent versions match"
        ))
    })?;
    // The TLS pin already covered this; refuse a CA swapped in the body too.
    if ca::fingerprint_pem(&response.ca_pem)? != parsed.fingerprint {
        return Err(ControlError::Invalid(format!(
            "the manager at {manager} sent a CA that does not match the join token: check the token"
        )));
    }
    let cluster_key: [u8; 32] = hex::decode(&response.cluster_key)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            ControlError::Other(format!(
                "the manager at {manager} sent a malformed cluster key: check that netagent versions match"
            ))
        })?;
    let mut managers = vec![manager];
    managers.extend(response.managers.into_iter().filter(|m| *m != manager));
    Ok(ClusterIdentity {
        cluster_id: response.cluster_id,
        node_id: response.node_id,
        node_name: node_name.to_owned(),
        role: response.role,
        addr: advertise_addr,
        ca_pem: response.ca_pem,
        cert_pem: response.cert_pem,
        key_pem: key.serialize_pem(),
        cluster_key,
        managers,
    })
}

impl std::fmt::Debug for ManagerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerClient")
            .field("managers", &self.inner.managers)
            .finish()
    }
}
