//! The control plane's server: TLS on TCP 2377 (client certificates asked
//! for, anonymous joiners let in), HTTP/1 on top, and each request
//! authorised (join token, or a recorded certificate and its role) before
//! it is dispatched to the `Core`.

use std::{
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use netagent_api::types::{CreateNetwork, CreateService, UpdateNode, UpdateService};

use super::{
    core::{blocking, Core},
    records::{encode, CertRecord},
};
use crate::control::{
    ca::{self},
    error::ControlError,
    wire::{self, BlockRequest, JoinRequest, ReserveRequest},
};
use crate::model::Role;

const MAX_BODY: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Accepts connections on `listener` until dropped, each served on its
/// own task and cut after `CONNECTION_TIMEOUT`.
pub(super) async fn serve(core: Arc<Core>, listener: TcpListener) -> Result<(), ControlError> {
    let acceptor = TlsAcceptor::from(core.tls.clone());
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: back off, keep serving.
                warn!(%error, "control plane accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let core = core.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(
                CONNECTION_TIMEOUT,
                connection(core, acceptor, stream, remote),
            )
            .await
            .is_err()
            {
                debug!(%remote, "control connection timed out");
            }
        });
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
pub(super) enum Peer {
    Anonymous,
    /// Signed by the CA but no longer recorded (node removed).
    Unknown,
    Node(CertRecord),
}

pub(super) async fn connection(
    core: Arc<Core>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    remote: SocketAddr,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%remote, %error, "control TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!(%remote, "control TLS handshake timed out");
            return;
        }
    };
    let fingerprint = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| ca::fingerprint(cert.as_ref()));
    let peer = match fingerprint {
        None => Peer::Anonymous,
        Some(fingerprint) => {
            let lookup = core.clone();
            match blocking(move || lookup.cert_record(&fingerprint)).await {
                Ok(Some(record)) => Peer::Node(record),
                Ok(None) => Peer::Unknown,
                Err(error) => {
                    warn!(%remote, %error, "cannot look up a client certificate");
                    return;
                }
            }
        }
    };
    let service = service_fn(move |request| route(core.clone(), peer.clone(), request));
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        debug!(%remote, %error, "control connection ended with an error");
    }
}

pub(super) fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

pub(super) async fn route(
    core: Arc<Core>,
    peer: Peer,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => dispatch(core, peer, &method, &path, body.to_bytes()).await,
        Err(error) => Err(ControlError::Invalid(format!(
            "cannot read the request body ({error}): requests are limited to 1 MiB"
        ))),
    };
    Ok(match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(error) => {
            debug!(%method, %path, %error, "control request refused");
            let body = serde_json::to_vec(&wire::body_of(&error)).unwrap_or_default();
            json_response(wire::status_of(&error), body)
        }
    })
}

pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| {
        ControlError::Invalid(format!(
            "malformed request ({e}): check that netagent versions match"
        ))
    })
}

pub(super) fn reply<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    encode(value)
}

pub(super) fn manager_only(node: &CertRecord) -> Result<(), ControlError> {
    if node.role == Role::Manager {
        Ok(())
    } else {
        Err(ControlError::Invalid(
            "this node is a worker: run this command on a manager (`netctl node ls` shows them)"
                .into(),
        ))
    }
}

pub(super) fn self_or_manager(node: &CertRecord, node_id: &str) -> Result<(), ControlError> {
    if node.role == Role::Manager || node.node_id == node_id {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "a worker may allocate addresses only for itself, not for node {node_id}: check that every node runs the same netagent version"
        )))
    }
}

pub(super) fn parse_role(text: &str) -> Result<Role, ControlError> {
    match text {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        _ => Err(ControlError::Invalid(format!(
            "unknown role {text:?}: use worker or manager"
        ))),
    }
}

pub(super) async fn dispatch(
    core: Arc<Core>,
    peer: Peer,
    method: &Method,
    path: &str,
    body: Bytes,
) -> Result<Vec<u8>, ControlError> {
    if method == Method::POST && path == wire::JOIN {
        let request: JoinRequest = parse(&body)?;
        let response = blocking(move || core.join(request)).await?;
        return reply(&response);
    }
    let node = match peer {
        Peer::Node(node) => node,
        Peer::Anonymous => {
            return Err(ControlError::Invalid(
                "this request needs the certificate of a cluster node: join the cluster first (`netctl cluster join`)".into(),
            ))
        }
        Peer::Unknown => {
            return Err(ControlError::Invalid(
                "this node's certificate is no longer known to the cluster (removed with `netctl node rm`?): stop its agent, remove its --data-dir and join again".into(),
            ))
        }
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let owned: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["v1", "nodes"]) => reply(&blocking(move || core.nodes()).await?),
        (Method::POST, ["v1", "nodes", _, "update"]) => {
            manager_only(&node)?;
            let request: UpdateNode = parse(&body)?;
            let id = owned[2].clone();
            reply(&blocking(move || core.update_node(&id, &request)).await?)
        }
        (Method::DELETE, ["v1", "nodes", _]) => {
            manager_only(&node)?;
            let id = owned[2].clone();
            reply(&blocking(move || core.remove_node(&id)).await?)
        }
        (Method::GET, ["v1", "nodes", _, "blocks"]) => {
            let id = owned[2].clone();
            reply(&blocking(move || core.node_blocks(&id)).await?)
        }
        (Method::GET, ["v1", "networks"]) => reply(&blocking(move || core.networks()).await?),
        (Method::POST, ["v1", "networks"]) => {
            manager_only(&node)?;
            let request: CreateNetwork = parse(&body)?;
            reply(&blocking(move || core.create_network(request)).await?)
        }
        (Method::DELETE, ["v1", "networks", _]) => {
            manager_only(&node)?;
            let name = owned[2].clone();
            reply(&blocking(move || core.remove_network(&name)).await?)
        }
        (Method::POST, ["v1", "networks", _, "blocks"]) => {
            let request: BlockRequest = parse(&body)?;
            self_or_manager(&node, &request.node_id)?;
            let network = owned[2].clone();
            reply(&blocking(move || core.allocate_block(&network, &request.node_id)).await?)
        }
        (Method::POST, ["v1", "networks", _, "reservations"]) => {
            let request: ReserveRequest = parse(&body)?;
            self_or_manager(&node, &request.node_id)?;
            let network = owned[2].clone();
            blocking(move || core.reserve_ip(&network, &request.node_id, request.ip)).await?;
            reply(&())
        }
        (Method::DELETE, ["v1", "networks", _, "reservations", _]) => {
            let network = owned[2].clone();
            let ip: Ipv4Addr = owned[4].parse().map_err(|_| {
                ControlError::Invalid(format!(
                    "{:?} is not an IPv4 address: check that every node runs the same netagent version",
                    owned[4]
                ))
            })?;
            let requester = (node.role != Role::Manager).then(|| node.node_id.clone());
            blocking(move || core.release_ip(&network, ip, requester.as_deref())).await?;
            reply(&())
        }
        (Method::GET, ["v1", "services"]) => reply(&blocking(move || core.services()).await?),
        (Method::POST, ["v1", "services"]) => {
            manager_only(&node)?;
            let request: CreateService = parse(&body)?;
            reply(&blocking(move || core.create_service(request)).await?)
        }
        (Method::DELETE, ["v1", "services", _]) => {
            manager_only(&node)?;
            let name = owned[2].clone();
            reply(&blocking(move || core.remove_service(&name)).await?)
        }
        (Method::POST, ["v1", "services", _, "update"]) => {
            manager_only(&node)?;
            let request: UpdateService = parse(&body)?;
            let name = owned[2].clone();
            reply(&blocking(move || core.update_service(&name, request)).await?)
        }
        (Method::GET, ["v1", "join-tokens", role]) => {
            manager_only(&node)?;
            let role = parse_role(role)?;
            reply(&blocking(move || core.join_token(role, false)).await?)
        }
        (Method::POST, ["v1", "join-tokens", role, "rotate"]) => {
            manager_only(&node)?;
            let role = parse_role(role)?;
            reply(&blocking(move || core.join_token(role, true)).await?)
        }
        _ => Err(ControlError::NotFound(format!(
            "no control endpoint {method} {path}: check that every node runs the same netagent version"
        ))),
    }
}
