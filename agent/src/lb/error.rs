//! The load balancer's errors: each one line saying what to do.

use crate::dataplane::{bpf::MapFailure, netns::NetnsError, DatapathError};

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(transparent)]
    Datapath(Box<DatapathError>),
    #[error("load balancer map {0} (if the map is full, raise the [lb] sizes in the config file; else report it with the agent's log, `journalctl -u netagent`)")]
    Map(MapFailure),
    #[error(transparent)]
    Maglev(#[from] super::maglev::MaglevError),
    #[error("no free backend id: raise lb.backends in the config file")]
    NoBackendId,
    #[error("no free Maglev table: raise lb.services in the config file")]
    NoTable,
    #[error(
        "the pinned Maglev map has {pinned} entries, the configuration asks for {configured}: \
         restore the [lb] sizes in the config file, or remove <bpffs>/maps/LB_* and restart netagent \
         (drops open flows through VIPs)"
    )]
    PinnedSize { pinned: u32, configured: u32 },
    #[error(
        "the pinned map {map} holds {pinned}-byte values, this agent writes {expected} bytes \
         (an older agent's layout): remove the pinned LB_* and INGRESS_* maps under \
         <bpffs>/maps and restart (drops open flows through VIPs and published ports)"
    )]
    PinnedLayout {
        map: &'static str,
        pinned: u32,
        expected: u32,
    },
    #[error("cannot attach the load balancer in {}: {cause}: check that the namespace exists (`ip netns list`) and netagent runs as root", netns.display())]
    Netns {
        netns: std::path::PathBuf,
        cause: Box<NetnsError>,
    },
}

impl From<MapFailure> for LbError {
    fn from(cause: MapFailure) -> Self {
        Self::Map(cause)
    }
}

impl From<DatapathError> for LbError {
    fn from(error: DatapathError) -> Self {
        LbError::Datapath(Box::new(error))
    }
}
