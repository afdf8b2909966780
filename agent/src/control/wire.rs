//! The HTTP/JSON messages between the managers and their clients (TCP 2377),
//! and how a `ControlError` travels as a status code + one-line message.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::ControlError;
use crate::model::Role;

pub const JOIN: &str = "/v1/join";

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    pub node_name: String,
    pub addr: IpAddr,
    /// The node's P-256 public key, raw uncompressed point, hex.
    pub public_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub node_id: String,
    pub role: Role,
    pub ca_pem: String,
    pub cert_pem: String,
    /// Gossip key, hex.
    pub cluster_key: String,
    pub managers: Vec<SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BlockRequest {
    pub node_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReserveRequest {
    pub node_id: String,
    pub ip: Ipv4Addr,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
}

pub fn status_of(error: &ControlError) -> StatusCode {
    match error {
        ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Conflict(_) => StatusCode::CONFLICT,
        ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        ControlError::Other(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub fn body_of(error: &ControlError) -> ErrorBody {
    let kind = match error {
        ControlError::Invalid(_) => "invalid",
        ControlError::NotFound(_) => "not_found",
        ControlError::Conflict(_) => "conflict",
        ControlError::Unavailable(_) => "unavailable",
        ControlError::Other(_) => "other",
    };
    ErrorBody {
        kind: kind.into(),
        message: error.to_string(),
    }
}

pub fn error_from(status: StatusCode, body: &[u8]) -> ControlError {
    let Ok(body) = serde_json::from_slice::<ErrorBody>(body) else {
        return ControlError::Other(format!(
            "the manager answered {status} without a readable error: check that its netagent version matches"
        ));
    };
    match body.kind.as_str() {
        "invalid" => ControlError::Invalid(body.message),
        "not_found" => ControlError::NotFound(body.message),
        "conflict" => ControlError::Conflict(body.message),
        "unavailable" => ControlError::Unavailable(body.message),
        _ => ControlError::Other(body.message),
    }
}

/// Path segments that carry ids or addresses are kept simple enough that
/// they need no escaping; anything else is refused before it is sent.
pub fn segment(text: &str) -> Result<&str, ControlError> {
    let ok = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(text)
    } else {
        Err(ControlError::Invalid(format!(
            "{text:?} is not a valid name or id: use letters, digits, '-', '_' and '.'"
        )))
    }
}
