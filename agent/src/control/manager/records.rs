//! The records the managers keep in the store, and their encoding (JSON).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::control::{error::ControlError, store::Versioned};
use crate::model::Role;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ClusterInfo {
    pub(super) cluster_id: String,
    pub(super) default_pool: Ipv4Net,
    /// Gossip key, hex.
    pub(super) cluster_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct CaRecord {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
}

/// Who a certificate (by fingerprint) was issued to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub node_id: String,
    pub role: Role,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct BlockRecord {
    pub(super) node_id: String,
    pub(super) block: Ipv4Net,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reservation {
    pub(super) node_id: String,
    pub(super) ip: Ipv4Addr,
}

/// A service's VIP, kept under the network's allocation guard so that block
/// and reservation allocations see it (`vips/<network>/<ip>`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct VipRecord {
    pub(super) service_id: String,
    pub(super) ip: Ipv4Addr,
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value)
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot encode a store record ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })
}

pub(super) fn decode<T: DeserializeOwned>(key: &str, value: &Versioned) -> Result<T, ControlError> {
    serde_json::from_slice(&value.value).map_err(|e| {
        ControlError::Other(format!(
            "store record {key} is damaged ({e}): restore the store from a backup"
        ))
    })
}
