//! `ControlPlane`: what every node asks of the managers, the same whether
//! this node is a manager (`Manager`) or talks to one (`ManagerClient`).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netagent_api::types::{CreateNetwork, CreateService, UpdateNode, UpdateService};

use super::{error::ControlError, node::NodeRecord};
use crate::model::{Network, Role, Service};

/// The operations every node needs from the managers. Implemented by the
/// local manager (on managers) and by the mTLS client (everywhere).
#[allow(async_fn_in_trait)]
pub trait ControlPlane {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError>;
    /// Changes the availability and labels of the node `id_or_name` (one
    /// revisioned write of its record). Refuses an unknown or ambiguous
    /// node and a bad label, changing nothing.
    async fn update_node(
        &self,
        id_or_name: &str,
        request: UpdateNode,
    ) -> Result<NodeRecord, ControlError>;
    /// Forgets the node `id_or_name` (`node rm`): its record, its
    /// certificates (its agent is refused at once), its address blocks and
    /// reservations. Refuses the manager that serves the request.
    async fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError>;
    /// Validates and records a network: VNI from 4096 up unless given, subnet
    /// from the default pool (10.0.0.0/8 in /24s) unless given, gateway = first
    /// host unless given. Refuses a duplicate name, an overlapping subnet, a
    /// taken VNI, a gateway outside the subnet.
    async fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError>;
    async fn networks(&self) -> Result<Vec<Network>, ControlError>;
    /// Removes a network and every block and reservation in it.
    async fn remove_network(&self, name: &str) -> Result<Network, ControlError>;
    /// Hands `node_id` a fresh address block of `network_id` (disjoint from
    /// every other block, reservation and the gateway).
    async fn allocate_block(
        &self,
        network_id: &str,
        node_id: &str,
    ) -> Result<Ipv4Net, ControlError>;
    /// The blocks `node_id` holds, by network id.
    async fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError>;
    /// Reserves one explicit address for `node_id` (`--ip`). Refuses one
    /// outside the subnet, the gateway, or one already reserved or inside
    /// another node's block.
    async fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError>;
    async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<(), ControlError>;
    /// The current join token for `role`, a new one with `rotate` (the old one
    /// stops working).
    async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError>;
    /// Records a service. In `vip` mode allocates one VIP per network from
    /// that network's subnet (never inside a node's block, never reserved,
    /// never the gateway); `dnsrr` allocates none. Refuses a duplicate name,
    /// an unknown network, no network at all.
    async fn create_service(&self, request: CreateService) -> Result<Service, ControlError>;
    async fn services(&self) -> Result<Vec<Service>, ControlError>;
    /// Removes a service and releases its VIPs.
    async fn remove_service(&self, name: &str) -> Result<Service, ControlError>;
    /// Changes what exists so far: networks added (VIPs allocated in `vip`
    /// mode) or removed (VIPs released).
    async fn update_service(
        &self,
        name: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError>;
}
