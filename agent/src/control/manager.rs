//! The manager role: the control-plane logic over the [`Store`], and the
//! TCP 2377 server (HTTP/JSON over TLS) in front of it.
//!
//! Every change is an optimistic transaction: read what the rule needs,
//! decide with the pure [`allocator`] functions, then commit only if the
//! guard keys read are unchanged (else read again). A guard key is rewritten
//! by every change of what it protects: `guard/networks` for the set of
//! networks, `guard/alloc/<network>` for that network's blocks and
//! reservations. So two racing allocations can never both commit the same
//! address, whatever process or manager they run in.
//!
//! Authentication: TLS asks for a client certificate but also accepts
//! anonymous clients, because a joining node has none yet. Each request is
//! then authorised: `POST /v1/join` by its token; everything else needs a
//! certificate signed by the cluster CA *and* still recorded in the store
//! (a removed node's certificate stops working). Workers may read, and
//! allocate or reserve for themselves only; the rest needs a manager.

use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
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
use ipnet::Ipv4Net;
use rand::Rng;
use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use netagent_api::types::{CreateNetwork, CreateService, UpdateNode, UpdateService};

use super::{
    allocator,
    ca::{self, ClusterCa, RawPublicKey},
    error::ControlError,
    identity,
    identity::ClusterIdentity,
    node,
    node::NodeRecord,
    plane::ControlPlane,
    store::{Compare, Op, RedbStore, Store, Versioned},
    token::{self, Secrets},
    wire::{self, BlockRequest, JoinRequest, JoinResponse, ReserveRequest},
};
use crate::model::{Network, Role, Service};

/// The control-plane port.
pub const CONTROL_PORT: u16 = 2377;
/// Length of cluster, node and network ids (Docker's length).
pub const ID_LEN: usize = 25;
const MAX_ATTEMPTS: usize = 64;
const MAX_BODY: usize = 1 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

mod keys {
    use std::net::Ipv4Addr;

    use ipnet::Ipv4Net;

    pub const INFO: &str = "cluster/info";
    pub const CA: &str = "cluster/ca";
    pub const TOKENS: &str = "cluster/tokens";
    pub const NODES: &str = "nodes/";
    pub const MANAGERS: &str = "managers/";
    pub const NETWORKS: &str = "networks/";
    pub const BLOCKS: &str = "blocks/";
    pub const GUARD_NETWORKS: &str = "guard/networks";
    pub const SERVICES: &str = "services/";
    pub const GUARD_SERVICES: &str = "guard/services";

    pub fn node(id: &str) -> String {
        format!("{NODES}{id}")
    }
    pub fn cert(fingerprint: &str) -> String {
        format!("certs/{fingerprint}")
    }
    pub fn manager(id: &str) -> String {
        format!("{MANAGERS}{id}")
    }
    pub fn network(id: &str) -> String {
        format!("{NETWORKS}{id}")
    }
    pub fn blocks(network: &str) -> String {
        format!("{BLOCKS}{network}/")
    }
    pub fn block(network: &str, block: Ipv4Net) -> String {
        format!("{BLOCKS}{network}/{}", block.network())
    }
    pub fn reservations(network: &str) -> String {
        format!("reservations/{network}/")
    }
    pub fn reservation(network: &str, ip: Ipv4Addr) -> String {
        format!("reservations/{network}/{ip}")
    }
    pub fn guard_alloc(network: &str) -> String {
        format!("guard/alloc/{network}")
    }
    pub fn service(id: &str) -> String {
        format!("{SERVICES}{id}")
    }
    pub fn vips(network: &str) -> String {
        format!("vips/{network}/")
    }
    pub fn vip(network: &str, ip: Ipv4Addr) -> String {
        format!("vips/{network}/{ip}")
    }
}

mod services;

#[derive(Debug, Serialize, Deserialize)]
struct ClusterInfo {
    cluster_id: String,
    default_pool: Ipv4Net,
    /// Gossip key, hex.
    cluster_key: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CaRecord {
    cert_pem: String,
    key_pem: String,
}

/// Who a certificate (by fingerprint) was issued to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertRecord {
    pub node_id: String,
    pub role: Role,
}

#[derive(Debug, Serialize, Deserialize)]
struct BlockRecord {
    node_id: String,
    block: Ipv4Net,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reservation {
    node_id: String,
    ip: Ipv4Addr,
}

/// A service's VIP, kept under the network's allocation guard so that block
/// and reservation allocations see it (`vips/<network>/<ip>`).
#[derive(Debug, Serialize, Deserialize)]
struct VipRecord {
    service_id: String,
    ip: Ipv4Addr,
}

/// Everything allocated in one network, read after its guard's revision: a
/// transaction comparing `guard` commits only if none of it changed.
struct Allocations {
    guard_key: String,
    guard: u64,
    blocks: Vec<BlockRecord>,
    reservations: Vec<Reservation>,
    vips: Vec<Ipv4Addr>,
}

impl Allocations {
    fn compare(&self) -> Compare {
        compare(self.guard_key.clone(), self.guard)
    }
}

/// Prefixes an allocator error with the network it is about.
fn in_network(network: &Network) -> impl Fn(ControlError) -> ControlError + '_ {
    move |error| match error {
        ControlError::Conflict(m) => {
            ControlError::Conflict(format!("network {}: {m}", network.name))
        }
        ControlError::Invalid(m) => ControlError::Invalid(format!("network {}: {m}", network.name)),
        other => other,
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value)
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot encode a store record ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })
}

fn decode<T: DeserializeOwned>(key: &str, value: &Versioned) -> Result<T, ControlError> {
    serde_json::from_slice(&value.value).map_err(|e| {
        ControlError::Other(format!(
            "store record {key} is damaged ({e}): restore the store from a backup"
        ))
    })
}

fn put<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Op, ControlError> {
    Ok(Op::Put {
        key: key.into(),
        value: encode(value)?,
    })
}

/// Rewrites a guard key: its new revision tells racing writers to re-read.
fn bump(key: impl Into<String>) -> Op {
    Op::Put {
        key: key.into(),
        value: Vec::new(),
    }
}

fn delete(key: impl Into<String>) -> Op {
    Op::Delete { key: key.into() }
}

fn compare(key: impl Into<String>, mod_revision: u64) -> Compare {
    Compare {
        key: key.into(),
        mod_revision,
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "{kind} name {name:?} is not valid: use up to 64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

/// The control-plane state machine over a store (no I/O besides the store).
pub struct Core {
    store: Arc<dyn Store>,
    ca: ClusterCa,
    cluster_id: String,
    default_pool: Ipv4Net,
    cluster_key: String,
    node_id: String,
    addr: IpAddr,
    tls: Arc<ServerConfig>,
}

impl Core {
    fn new(store: Arc<dyn Store>, identity: &ClusterIdentity) -> Result<Self, ControlError> {
        let not_manager = || {
            ControlError::Invalid(format!(
                "the control-plane store has no cluster {}: this node is not its manager (run `netctl cluster leave` and init or join again)",
                identity.cluster_id
            ))
        };
        let info_value = store.get(keys::INFO)?.ok_or_else(not_manager)?;
        let info: ClusterInfo = decode(keys::INFO, &info_value)?;
        if info.cluster_id != identity.cluster_id {
            return Err(not_manager());
        }
        let ca_value = store.get(keys::CA)?.ok_or_else(|| {
            ControlError::Other("the store has no cluster CA: restore it from a backup".into())
        })?;
        let ca_record: CaRecord = decode(keys::CA, &ca_value)?;
        let ca = ClusterCa::load(&info.cluster_id, &ca_record.cert_pem, &ca_record.key_pem)?;
        let tls = server_config(&ca, identity)?;
        Ok(Core {
            store,
            ca,
            cluster_id: info.cluster_id,
            default_pool: info.default_pool,
            cluster_key: info.cluster_key,
            node_id: identity.node_id.clone(),
            addr: identity.addr,
            tls,
        })
    }

    /// Runs `attempt` until its transaction commits (`Some`), re-reading
    /// after each lost race.
    fn optimistic<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<Option<T>, ControlError>,
    ) -> Result<T, ControlError> {
        for _ in 0..MAX_ATTEMPTS {
            if let Some(done) = attempt()? {
                return Ok(done);
            }
        }
        Err(ControlError::Unavailable(format!(
            "too many concurrent changes to {what}: try again"
        )))
    }

    fn mod_revision(&self, key: &str) -> Result<u64, ControlError> {
        Ok(self.store.get(key)?.map(|v| v.mod_revision).unwrap_or(0))
    }

    fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, ControlError> {
        self.store
            .list(prefix)?
            .iter()
            .map(|(key, value)| Ok((key.clone(), decode(key, value)?)))
            .collect()
    }

    fn network_by_id(&self, id: &str) -> Result<(Network, u64), ControlError> {
        let key = keys::network(id);
        let value = self.store.get(&key)?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no network with id {id}: it may have been removed; see `netctl overlay ls`"
            ))
        })?;
        Ok((decode(&key, &value)?, value.mod_revision))
    }

    fn allocations(&self, network_id: &str) -> Result<Allocations, ControlError> {
        let guard_key = keys::guard_alloc(network_id);
        let guard = self.mod_revision(&guard_key)?;
        Ok(Allocations {
            guard_key,
            guard,
            blocks: self.values(&keys::blocks(network_id))?,
            reservations: self.values(&keys::reservations(network_id))?,
            vips: self
                .values::<VipRecord>(&keys::vips(network_id))?
                .into_iter()
                .map(|v| v.ip)
                .collect(),
        })
    }

    /// The records under `prefix`, without their keys.
    fn values<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, ControlError> {
        Ok(self.list(prefix)?.into_iter().map(|(_, v)| v).collect())
    }

    fn node_revision(&self, node_id: &str) -> Result<u64, ControlError> {
        match self.store.get(&keys::node(node_id))? {
            Some(value) => Ok(value.mod_revision),
            None => Err(ControlError::NotFound(format!(
                "no node {node_id} in the cluster: join it first (`netctl cluster join`)"
            ))),
        }
    }

    pub fn cert_record(&self, fingerprint: &str) -> Result<Option<CertRecord>, ControlError> {
        let key = keys::cert(fingerprint);
        self.store.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    fn managers(&self) -> Result<Vec<SocketAddr>, ControlError> {
        Ok(self
            .list::<SocketAddr>(keys::MANAGERS)?
            .into_iter()
            .map(|(_, addr)| addr)
            .collect())
    }

    fn record_manager(&self, addr: SocketAddr) -> Result<(), ControlError> {
        let key = keys::manager(&self.node_id);
        let current: Option<SocketAddr> = self
            .store
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()?;
        if current != Some(addr) {
            self.store.txn(&[], &[put(key, &addr)?])?;
        }
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        let mut nodes: Vec<NodeRecord> = self.values(keys::NODES)?;
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(nodes)
    }

    pub fn networks(&self) -> Result<Vec<Network>, ControlError> {
        let mut networks: Vec<Network> = self.values(keys::NETWORKS)?;
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(networks)
    }

    pub fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError> {
        check_name("network", &request.name)?;
        if let Some(mtu) = request.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(ControlError::Invalid(format!(
                    "MTU {mtu} is out of range: give --mtu between 68 and 65535"
                )));
            }
        }
        self.optimistic("networks", || {
            let guard = self.mod_revision(keys::GUARD_NETWORKS)?;
            let networks = self.networks()?;
            if networks.iter().any(|n| n.name == request.name) {
                return Err(ControlError::Conflict(format!(
                    "network {} already exists: choose another name or remove it first (`netctl overlay rm {}`)",
                    request.name, request.name
                )));
            }
            let taken: Vec<u32> = networks.iter().map(|n| n.vni).collect();
            let vni = match request.vni {
                Some(vni) => {
                    allocator::check_vni(vni, &taken)?;
                    vni
                }
                None => allocator::next_vni(&taken)?,
            };
            let subnet = match request.subnet {
                Some(subnet) => {
                    let existing: Vec<(String, Ipv4Net)> =
                        networks.iter().map(|n| (n.name.clone(), n.subnet)).collect();
                    allocator::check_subnet(subnet, &existing)?
                }
                None => {
                    let existing: Vec<Ipv4Net> = networks.iter().map(|n| n.subnet).collect();
                    allocator::next_subnet(self.default_pool, &existing)?
                }
            };
            let gateway = match request.gateway {
                Some(gateway) => {
                    allocator::check_gateway(subnet, gateway)?;
                    gateway
                }
                None => allocator::default_gateway(subnet),
            };
            let network = Network {
                name: request.name.clone(),
                id: token::random_string(ID_LEN),
                vni,
                subnet,
                gateway,
                internal: request.internal,
                mtu: request.mtu,
            };
            let committed = self.store.txn(
                &[compare(keys::GUARD_NETWORKS, guard)],
                &[put(keys::network(&network.id), &network)?, bump(keys::GUARD_NETWORKS)],
            )?;
            if committed.is_some() {
                info!(name = %network.name, id = %network.id, vni, %subnet, "network created");
            }
            Ok(committed.map(|_| network))
        })
    }

    pub fn remove_network(&self, name: &str) -> Result<Network, ControlError> {
        self.optimistic("networks", || {
            let guard = self.mod_revision(keys::GUARD_NETWORKS)?;
            let network = self
                .networks()?
                .into_iter()
                .find(|n| n.name == name || n.id == name)
                .ok_or_else(|| {
                    ControlError::NotFound(format!("no network {name}: see `netctl overlay ls`"))
                })?;
            let services_guard = self.mod_revision(keys::GUARD_SERVICES)?;
            if let Some(user) = self
                .services()?
                .into_iter()
                .find(|s| s.networks.contains(&network.name))
            {
                return Err(ControlError::Conflict(format!(
                    "network {} is still used by service {}: remove the service or run `netctl service update {} --network-rm {}` first",
                    network.name, user.name, user.name, network.name
                )));
            }
            let alloc_guard = keys::guard_alloc(&network.id);
            let alloc = self.mod_revision(&alloc_guard)?;
            let mut ops = vec![
                delete(keys::network(&network.id)),
                delete(alloc_guard.clone()),
            ];
            for prefix in [
                keys::blocks(&network.id),
                keys::reservations(&network.id),
                keys::vips(&network.id),
            ] {
                ops.extend(
                    self.store
                        .list(&prefix)?
                        .into_iter()
                        .map(|(key, _)| delete(key)),
                );
            }
            ops.push(bump(keys::GUARD_NETWORKS));
            let committed = self.store.txn(
                &[
                    compare(keys::GUARD_NETWORKS, guard),
                    compare(alloc_guard, alloc),
                    compare(keys::GUARD_SERVICES, services_guard),
                ],
                &ops,
            )?;
            if committed.is_some() {
                info!(name = %network.name, id = %network.id, "network removed");
            }
            Ok(committed.map(|_| network.clone()))
        })
    }

    pub fn allocate_block(&self, network_id: &str, node_id: &str) -> Result<Ipv4Net, ControlError> {
        self.optimistic("address blocks", || {
            let node = self.node_revision(node_id)?;
            let (network, network_rev) = self.network_by_id(network_id)?;
            let taken = self.allocations(network_id)?;
            let blocks: Vec<Ipv4Net> = taken.blocks.iter().map(|b| b.block).collect();
            let foreign: Vec<Ipv4Addr> = taken
                .reservations
                .iter()
                .filter(|r| r.node_id != node_id)
                .map(|r| r.ip)
                .collect();
            let block = allocator::next_block(network.subnet, &blocks, &foreign, &taken.vips)
                .map_err(in_network(&network))?;
            let record = BlockRecord {
                node_id: node_id.to_owned(),
                block,
            };
            let committed = self.store.txn(
                &[
                    compare(keys::node(node_id), node),
                    compare(keys::network(network_id), network_rev),
                    taken.compare(),
                ],
                &[
                    put(keys::block(network_id, block), &record)?,
                    bump(taken.guard_key.clone()),
                ],
            )?;
            if committed.is_some() {
                debug!(network = %network.name, node = node_id, %block, "address block allocated");
            }
            Ok(committed.map(|_| block))
        })
    }

    pub fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        let mut blocks = Vec::new();
        for (key, record) in self.list::<BlockRecord>(keys::BLOCKS)? {
            if record.node_id != node_id {
                continue;
            }
            // Key: blocks/<network id>/<block address>.
            let network = key
                .strip_prefix(keys::BLOCKS)
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            blocks.push((network.to_owned(), record.block));
        }
        Ok(blocks)
    }

    pub fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        self.optimistic("address reservations", || {
            let node = self.node_revision(node_id)?;
            let (network, network_rev) = self.network_by_id(network_id)?;
            let taken = self.allocations(network_id)?;
            let other_blocks: Vec<Ipv4Net> = taken
                .blocks
                .iter()
                .filter(|b| b.node_id != node_id)
                .map(|b| b.block)
                .collect();
            let reserved: Vec<Ipv4Addr> = taken.reservations.iter().map(|r| r.ip).collect();
            allocator::check_reservation(
                network.subnet,
                network.gateway,
                ip,
                &other_blocks,
                &reserved,
                &taken.vips,
            )
            .map_err(in_network(&network))?;
            let record = Reservation {
                node_id: node_id.to_owned(),
                ip,
            };
            let committed = self.store.txn(
                &[
                    compare(keys::node(node_id), node),
                    compare(keys::network(network_id), network_rev),
                    taken.compare(),
                ],
                &[
                    put(keys::reservation(network_id, ip), &record)?,
                    bump(taken.guard_key.clone()),
                ],
            )?;
            Ok(committed.map(|_| ()))
        })
    }

    /// Idempotent: releasing an address that is not reserved succeeds.
    /// `requester`: a worker may release only its own reservations.
    pub fn release_ip(
        &self,
        network_id: &str,
        ip: Ipv4Addr,
        requester: Option<&str>,
    ) -> Result<(), ControlError> {
        self.optimistic("address reservations", || {
            let key = keys::reservation(network_id, ip);
            let Some(value) = self.store.get(&key)? else {
                return Ok(Some(()));
            };
            let record: Reservation = decode(&key, &value)?;
            if requester.is_some_and(|node| node != record.node_id) {
                return Err(ControlError::Invalid(format!(
                    "address {ip} is reserved by node {}: release it from that node or a manager",
                    record.node_id
                )));
            }
            let committed = self.store.txn(
                &[compare(key.clone(), value.mod_revision)],
                &[delete(key.clone()), bump(keys::guard_alloc(network_id))],
            )?;
            Ok(committed.map(|_| ()))
        })
    }

    /// Forgets a node (`node rm`): its record, its certificates (so it is
    /// refused at once), its address blocks and its reservations.
    pub fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError> {
        self.optimistic("nodes", || {
            let node = node::find(self.nodes()?, id_or_name)?;
            if node.id == self.node_id {
                return Err(ControlError::Invalid(format!(
                    "node {} is the manager serving this request: a manager cannot remove itself (remove other nodes from it)",
                    node.name
                )));
            }
            let node_key = keys::node(&node.id);
            let revision = self.mod_revision(&node_key)?;
            let mut ops = vec![delete(node_key.clone()), delete(keys::manager(&node.id))];
            for (key, cert) in self.list::<CertRecord>("certs/")? {
                if cert.node_id == node.id {
                    ops.push(delete(key));
                }
            }
            let mut networks = Vec::new();
            for (key, block) in self.list::<BlockRecord>(keys::BLOCKS)? {
                if block.node_id == node.id {
                    networks.push(key.split('/').nth(1).unwrap_or_default().to_owned());
                    ops.push(delete(key));
                }
            }
            for (key, reservation) in self.list::<Reservation>("reservations/")? {
                if reservation.node_id == node.id {
                    networks.push(key.split('/').nth(1).unwrap_or_default().to_owned());
                    ops.push(delete(key));
                }
            }
            networks.sort();
            networks.dedup();
            ops.extend(networks.iter().map(|n| bump(keys::guard_alloc(n))));
            let committed = self.store.txn(&[compare(node_key, revision)], &ops)?;
            if committed.is_some() {
                info!(node = %node.name, id = %node.id, "node removed");
            }
            Ok(committed.map(|_| node.clone()))
        })
    }

    /// `node update`: one write of the node's record, compared against the
    /// revision it was read at.
    pub fn update_node(
        &self,
        id_or_name: &str,
        request: &UpdateNode,
    ) -> Result<NodeRecord, ControlError> {
        self.optimistic("nodes", || {
            let current = node::find(self.nodes()?, id_or_name)?;
            let key = keys::node(&current.id);
            let revision = self.mod_revision(&key)?;
            let updated = node::apply(current.clone(), request)?;
            if updated == current {
                return Ok(Some(updated));
            }
            let committed = self
                .store
                .txn(&[compare(key.clone(), revision)], &[put(key, &updated)?])?;
            if let Some(revision) = committed {
                info!(
                    node = %updated.name,
                    availability = %updated.availability,
                    labels = updated.labels.len(),
                    revision,
                    "node updated"
                );
            }
            Ok(committed.map(|_| updated.clone()))
        })
    }

    pub fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError> {
        self.optimistic("join tokens", || {
            let value = self.store.get(keys::TOKENS)?.ok_or_else(|| {
                ControlError::Other("the store has no join tokens: restore it from a backup".into())
            })?;
            let mut secrets: Secrets = decode(keys::TOKENS, &value)?;
            if rotate {
                secrets.rotate(role);
                let committed = self.store.txn(
                    &[compare(keys::TOKENS, value.mod_revision)],
                    &[put(keys::TOKENS, &secrets)?],
                )?;
                if committed.is_none() {
                    return Ok(None);
                }
                info!(%role, "join token rotated");
            }
            Ok(Some(token::format(
                &self.ca.fingerprint(),
                secrets.get(role),
            )))
        })
    }

    /// Admits a node that presented `request.token`.
    pub fn join(&self, request: JoinRequest) -> Result<JoinResponse, ControlError> {
        let parsed = token::parse(&request.token)?;
        if !token::ct_eq(&parsed.fingerprint, &self.ca.fingerprint()) {
            return Err(ControlError::Invalid(
                "this join token belongs to another cluster: get one with `netctl cluster join-token worker` on a manager of this cluster".into(),
            ));
        }
        check_name("node", &request.node_name)?;
        let raw = hex::decode(&request.public_key).map_err(|_| {
            ControlError::Invalid(
                "the join request's public key is not hex: upgrade netagent on the joining node"
                    .into(),
            )
        })?;
        let public_key = RawPublicKey::new(raw)?;
        let response = self.optimistic("nodes", || {
            let value = self
                .store
                .get(keys::TOKENS)?
                .ok_or_else(|| ControlError::Other("the store has no join tokens: restore it from a backup".into()))?;
            let secrets: Secrets = decode(keys::TOKENS, &value)?;
            let role = secrets.role_of(&parsed.secret).ok_or_else(|| {
                ControlError::Invalid(
                    "invalid join token (wrong, or rotated out): get the current one with `netctl cluster join-token worker` (or `manager`) on a manager".into(),
                )
            })?;
            let node_id = token::random_string(ID_LEN);
            let (cert_pem, fingerprint) = self.ca.issue(&node_id, role, &public_key)?;
            let node = NodeRecord {
                id: node_id.clone(),
                name: request.node_name.clone(),
                role,
                addr: request.addr,
                availability: Default::default(),
                labels: Default::default(),
            };
            let cert = CertRecord {
                node_id: node_id.clone(),
                role,
            };
            // Compare the tokens: a rotation that commits first makes this
            // join fail instead of admitting a node with a revoked token.
            let committed = self.store.txn(
                &[compare(keys::TOKENS, value.mod_revision), compare(keys::node(&node_id), 0)],
                &[put(keys::node(&node_id), &node)?, put(keys::cert(&fingerprint), &cert)?],
            )?;
            Ok(committed.map(|_| (node_id, role, cert_pem)))
        })?;
        let (node_id, role, cert_pem) = response;
        info!(node = %request.node_name, id = %node_id, %role, addr = %request.addr, "node joined");
        Ok(JoinResponse {
            cluster_id: self.cluster_id.clone(),
            node_id,
            role,
            ca_pem: self.ca.cert_pem().to_owned(),
            cert_pem,
            cluster_key: self.cluster_key.clone(),
            managers: self.managers()?,
        })
    }
}

fn server_config(
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

/// Who is on the other end of a connection.
#[derive(Clone, Debug)]
enum Peer {
    Anonymous,
    /// Signed by the CA but no longer recorded (node removed).
    Unknown,
    Node(CertRecord),
}

/// The manager role, running in this agent.
pub struct Manager {
    core: Arc<Core>,
}

impl Manager {
    /// `cluster init`: a new cluster with this node as its first manager.
    /// Creates the CA, the tokens and the gossip key, records this node, and
    /// returns the node's identity (also saved in `data_dir`). Fails if
    /// `data_dir` already holds a cluster.
    pub async fn init(
        data_dir: &Path,
        node_name: &str,
        advertise_addr: IpAddr,
        default_pool: Option<Ipv4Net>,
    ) -> Result<(Manager, ClusterIdentity), ControlError> {
        let data_dir = data_dir.to_owned();
        let node_name = node_name.to_owned();
        blocking(move || init_sync(&data_dir, &node_name, advertise_addr, default_pool)).await
    }

    /// Opens the store of a manager that was initialised before (restart).
    pub async fn open(
        data_dir: &Path,
        identity: &ClusterIdentity,
    ) -> Result<Manager, ControlError> {
        if !RedbStore::exists(data_dir) {
            return Err(ControlError::Invalid(format!(
                "no control-plane store in {}: this node is not a manager of cluster {} (run `netctl cluster leave` and init or join again)",
                data_dir.display(),
                identity.cluster_id
            )));
        }
        let data_dir = data_dir.to_owned();
        let identity = identity.clone();
        blocking(move || {
            let store: Arc<dyn Store> = Arc::new(RedbStore::open(&data_dir)?);
            let core = Core::new(store, &identity)?;
            Ok(Manager {
                core: Arc::new(core),
            })
        })
        .await
    }

    /// The store, for watchers and other engineers' records.
    pub fn store(&self) -> Arc<dyn Store> {
        self.core.store.clone()
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Core) -> Result<T, ControlError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let core = self.core.clone();
        blocking(move || work(&core)).await
    }

    /// Serves the control plane on `listen` (TCP, mutual TLS; joining nodes
    /// authenticate with a token instead of a certificate) until dropped.
    pub async fn serve(&self, listen: SocketAddr) -> Result<(), ControlError> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            ControlError::Unavailable(format!(
                "cannot listen on {listen} for the control plane: {e}: free the port or pick another address"
            ))
        })?;
        let local = listener.local_addr().unwrap_or(listen);
        let advertised = if local.ip().is_unspecified() {
            SocketAddr::new(self.core.addr, local.port())
        } else {
            local
        };
        self.run(move |core| core.record_manager(advertised))
            .await?;
        info!(%local, "control plane listening");
        let acceptor = TlsAcceptor::from(self.core.tls.clone());
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
            let core = self.core.clone();
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
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| {
            ControlError::Other(format!(
                "a control-plane task failed ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })?
}

fn init_sync(
    data_dir: &Path,
    node_name: &str,
    advertise_addr: IpAddr,
    default_pool: Option<Ipv4Net>,
) -> Result<(Manager, ClusterIdentity), ControlError> {
    let already = |cluster: &str| {
        ControlError::Invalid(format!(
            "this node is already in cluster {cluster}: run `netctl cluster leave` first"
        ))
    };
    if let Some(identity) = identity::load(data_dir)? {
        return Err(already(&identity.cluster_id));
    }
    check_name("node", node_name)?;
    let default_pool = allocator::check_pool(default_pool.unwrap_or(allocator::DEFAULT_POOL))?;
    let store_existed = RedbStore::exists(data_dir);
    let store = Arc::new(RedbStore::open(data_dir)?);
    if let Some(value) = store.get(keys::INFO)? {
        let info: ClusterInfo = decode(keys::INFO, &value)?;
        return Err(already(&info.cluster_id));
    }
    let made = || -> Result<(Manager, ClusterIdentity), ControlError> {
        let cluster_id = token::random_string(ID_LEN);
        let node_id = token::random_string(ID_LEN);
        let ca = ClusterCa::generate(&cluster_id)?;
        let node_key = ca::new_node_key()?;
        let (cert_pem, fingerprint) = ca.issue(&node_id, Role::Manager, &node_key)?;
        let cluster_key: [u8; 32] = rand::rng().random();
        let identity = ClusterIdentity {
            cluster_id: cluster_id.clone(),
            node_id: node_id.clone(),
            node_name: node_name.to_owned(),
            role: Role::Manager,
            addr: advertise_addr,
            ca_pem: ca.cert_pem().to_owned(),
            cert_pem,
            key_pem: node_key.serialize_pem(),
            cluster_key,
            managers: vec![SocketAddr::new(advertise_addr, CONTROL_PORT)],
        };
        let info = ClusterInfo {
            cluster_id: cluster_id.clone(),
            default_pool,
            cluster_key: hex::encode(cluster_key),
        };
        let ca_record = CaRecord {
            cert_pem: ca.cert_pem().to_owned(),
            key_pem: ca.key_pem(),
        };
        let node = NodeRecord {
            id: node_id.clone(),
            name: node_name.to_owned(),
            role: Role::Manager,
            addr: advertise_addr,
            availability: Default::default(),
            labels: Default::default(),
        };
        let cert = CertRecord {
            node_id: node_id.clone(),
            role: Role::Manager,
        };
        let ops = [
            put(keys::INFO, &info)?,
            put(keys::CA, &ca_record)?,
            put(keys::TOKENS, &Secrets::generate())?,
            put(keys::node(&node_id), &node)?,
            put(keys::cert(&fingerprint), &cert)?,
        ];
        let committed = store.txn(&[compare(keys::INFO, 0)], &ops)?;
        if committed.is_none() {
            return Err(ControlError::Conflict(
                "another `cluster init` ran at the same time: run `netctl cluster leave` and try again".into(),
            ));
        }
        identity.save(data_dir)?;
        let core = Core::new(store.clone(), &identity)?;
        info!(cluster = %cluster_id, node = %node_id, "cluster initialised");
        Ok((
            Manager {
                core: Arc::new(core),
            },
            identity,
        ))
    };
    let result = made();
    if result.is_err() && !store_existed {
        // Nothing half-made: no store without an identity.
        drop(store);
        let _ = std::fs::remove_file(data_dir.join(super::store::FILE_NAME));
        let _ = identity::remove(data_dir);
    }
    result
}

async fn connection(core: Arc<Core>, acceptor: TlsAcceptor, stream: TcpStream, remote: SocketAddr) {
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

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

async fn route(
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

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ControlError> {
    serde_json::from_slice(body).map_err(|e| {
        ControlError::Invalid(format!(
            "malformed request ({e}): check that netagent versions match"
        ))
    })
}

fn reply<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    encode(value)
}

fn manager_only(node: &CertRecord) -> Result<(), ControlError> {
    if node.role == Role::Manager {
        Ok(())
    } else {
        Err(ControlError::Invalid(
            "this node is a worker: run this command on a manager (`netctl node ls` shows them)"
                .into(),
        ))
    }
}

fn self_or_manager(node: &CertRecord, node_id: &str) -> Result<(), ControlError> {
    if node.role == Role::Manager || node.node_id == node_id {
        Ok(())
    } else {
        Err(ControlError::Invalid(format!(
            "a worker may allocate addresses only for itself, not for node {node_id}: check that every node runs the same netagent version"
        )))
    }
}

fn parse_role(text: &str) -> Result<Role, ControlError> {
    match text {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        _ => Err(ControlError::Invalid(format!(
            "unknown role {text:?}: use worker or manager"
        ))),
    }
}

async fn dispatch(
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

impl ControlPlane for Manager {
    async fn nodes(&self) -> Result<Vec<NodeRecord>, ControlError> {
        self.run(|core| core.nodes()).await
    }
    async fn update_node(
        &self,
        id_or_name: &str,
        request: UpdateNode,
    ) -> Result<NodeRecord, ControlError> {
        let id_or_name = id_or_name.to_owned();
        self.run(move |core| core.update_node(&id_or_name, &request))
            .await
    }
    async fn remove_node(&self, id_or_name: &str) -> Result<NodeRecord, ControlError> {
        let id_or_name = id_or_name.to_owned();
        self.run(move |core| core.remove_node(&id_or_name)).await
    }
    async fn create_network(&self, request: CreateNetwork) -> Result<Network, ControlError> {
        self.run(move |core| core.create_network(request)).await
    }
    async fn networks(&self) -> Result<Vec<Network>, ControlError> {
        self.run(|core| core.networks()).await
    }
    async fn remove_network(&self, name: &str) -> Result<Network, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.remove_network(&name)).await
    }
    async fn allocate_block(
        &self,
        network_id: &str,
        node_id: &str,
    ) -> Result<Ipv4Net, ControlError> {
        let (network_id, node_id) = (network_id.to_owned(), node_id.to_owned());
        self.run(move |core| core.allocate_block(&network_id, &node_id))
            .await
    }
    async fn node_blocks(&self, node_id: &str) -> Result<Vec<(String, Ipv4Net)>, ControlError> {
        let node_id = node_id.to_owned();
        self.run(move |core| core.node_blocks(&node_id)).await
    }
    async fn reserve_ip(
        &self,
        network_id: &str,
        node_id: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ControlError> {
        let (network_id, node_id) = (network_id.to_owned(), node_id.to_owned());
        self.run(move |core| core.reserve_ip(&network_id, &node_id, ip))
            .await
    }
    async fn release_ip(&self, network_id: &str, ip: Ipv4Addr) -> Result<(), ControlError> {
        let network_id = network_id.to_owned();
        self.run(move |core| core.release_ip(&network_id, ip, None))
            .await
    }
    async fn create_service(&self, request: CreateService) -> Result<Service, ControlError> {
        self.run(move |core| core.create_service(request)).await
    }
    async fn services(&self) -> Result<Vec<Service>, ControlError> {
        self.run(|core| core.services()).await
    }
    async fn remove_service(&self, name: &str) -> Result<Service, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.remove_service(&name)).await
    }
    async fn update_service(
        &self,
        name: &str,
        request: UpdateService,
    ) -> Result<Service, ControlError> {
        let name = name.to_owned();
        self.run(move |core| core.update_service(&name, request))
            .await
    }
    async fn join_token(&self, role: Role, rotate: bool) -> Result<String, ControlError> {
        self.run(move |core| core.join_token(role, rotate)).await
    }
}
