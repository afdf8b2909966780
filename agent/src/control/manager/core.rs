//! The control-plane state machine over a store: every rule of the
//! managers, as optimistic transactions (see the `manager` module's doc).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use ipnet::Ipv4Net;
use rand::Rng;
use rustls::ServerConfig;
use serde::de::DeserializeOwned;
use tracing::{debug, info};

use netagent_api::types::{CreateNetwork, UpdateNode};

use super::{
    keys,
    records::{decode, BlockRecord, CaRecord, CertRecord, ClusterInfo, Reservation, VipRecord},
    tls::server_config,
    txn::{bump, compare, delete, put, Allocations, MAX_ATTEMPTS},
};
use crate::control::{
    allocator,
    ca::{self, ClusterCa, RawPublicKey},
    error::ControlError,
    identity,
    identity::ClusterIdentity,
    node,
    node::NodeRecord,
    store::{RedbStore, Store},
    token::{self, Secrets},
    wire::{JoinRequest, JoinResponse},
};
use crate::model::{Network, Role};

/// The control-plane port.
pub const CONTROL_PORT: u16 = 2377;
/// Length of cluster, node and network ids (Docker's length).
pub const ID_LEN: usize = 25;

/// Prefixes an allocator error with the network it is about.
pub(super) fn in_network(network: &Network) -> impl Fn(ControlError) -> ControlError + '_ {
    move |error| match error {
        ControlError::Conflict(m) => {
            ControlError::Conflict(format!("network {}: {m}", network.name))
        }
        ControlError::Invalid(m) => ControlError::Invalid(format!("network {}: {m}", network.name)),
        other => other,
    }
}

pub(super) fn check_name(kind: &str, name: &str) -> Result<(), ControlError> {
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
    pub(super) store: Arc<dyn Store>,
    pub(super) ca: ClusterCa,
    pub(super) cluster_id: String,
    pub(super) default_pool: Ipv4Net,
    pub(super) cluster_key: String,
    pub(super) node_id: String,
    pub(super) addr: IpAddr,
    pub(super) tls: Arc<ServerConfig>,
}

impl Core {
    pub(super) fn new(
        store: Arc<dyn Store>,
        identity: &ClusterIdentity,
    ) -> Result<Self, ControlError> {
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
    pub(super) fn optimistic<T>(
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

    pub(super) fn mod_revision(&self, key: &str) -> Result<u64, ControlError> {
        Ok(self.store.get(key)?.map(|v| v.mod_revision).unwrap_or(0))
    }

    pub(super) fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, ControlError> {
        self.store
            .list(prefix)?
            .iter()
            .map(|(key, value)| Ok((key.clone(), decode(key, value)?)))
            .collect()
    }

    pub(super) fn network_by_id(&self, id: &str) -> Result<(Network, u64), ControlError> {
        let key = keys::network(id);
        let value = self.store.get(&key)?.ok_or_else(|| {
            ControlError::NotFound(format!(
                "no network with id {id}: it may have been removed; see `netctl overlay ls`"
            ))
        })?;
        Ok((decode(&key, &value)?, value.mod_revision))
    }

    pub(super) fn allocations(&self, network_id: &str) -> Result<Allocations, ControlError> {
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
    pub(super) fn values<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, ControlError> {
        Ok(self.list(prefix)?.into_iter().map(|(_, v)| v).collect())
    }

    pub(super) fn node_revision(&self, node_id: &str) -> Result<u64, ControlError> {
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

    pub(super) fn managers(&self) -> Result<Vec<SocketAddr>, ControlError> {
        Ok(self
            .list::<SocketAddr>(keys::MANAGERS)?
            .into_iter()
            .map(|(_, addr)| addr)
            .collect())
    }

    pub(super) fn record_manager(&self, addr: SocketAddr) -> Result<(), ControlError> {
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

pub(super) async fn blocking<T: Send + 'static>(
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

/// `cluster init` on this node's store (see `Manager::init`).
pub(super) fn init(
    data_dir: &Path,
    node_name: &str,
    advertise_addr: IpAddr,
    default_pool: Option<Ipv4Net>,
) -> Result<(Core, ClusterIdentity), ControlError> {
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
    let made = || -> Result<(Core, ClusterIdentity), ControlError> {
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
        Ok((core, identity))
    };
    let result = made();
    if result.is_err() && !store_existed {
        // Nothing half-made: no store without an identity.
        drop(store);
        let _ = std::fs::remove_file(data_dir.join(crate::control::store::FILE_NAME));
        let _ = identity::remove(data_dir);
    }
    result
}
