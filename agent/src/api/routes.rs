//! The cluster routes of the local API: membership, nodes, overlay networks
//! and endpoints. Each handler checks the node is in a cluster, then hands
//! over to `cluster`, `attach` or the control plane.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use netagent_api::{
    routes,
    types::{
        AttachRequest, ClusterInfo, CreateNetwork, HealthRequest, InitRequest, JoinRequest,
        NetworkFilter, TokenQuery, TokenResponse, UpdateNode,
    },
};

use super::error::{runtime, ApiError};
use crate::{
    control::{ControlPlane, NodeRecord},
    model::{Endpoint, Network, NodeInfo, NodeStatus},
    node::attach,
    node::cluster::ClusterRuntime,
    node::state::AgentState,
};

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
        .route(routes::CLUSTER, get(cluster_info))
        .route(routes::CLUSTER_INIT, post(cluster_init))
        .route(routes::CLUSTER_JOIN, post(cluster_join))
        .route(routes::JOIN_TOKEN, get(join_token))
        .route(routes::NODES, get(nodes))
        .route(routes::NODE, get(node).delete(remove_node))
        .route(routes::NODE_UPDATE, post(update_node).patch(update_node))
        .route(routes::NETWORKS, post(create_network).get(networks))
        .route(routes::NETWORK, get(network).delete(remove_network))
        .route(routes::ENDPOINTS, post(attach_endpoint).get(endpoints))
        .route(routes::ENDPOINT, axum::routing::delete(detach_endpoint))
        .route(routes::ENDPOINT_HEALTH, post(set_health))
}

fn info(rt: &ClusterRuntime) -> ClusterInfo {
    let identity = rt.identity();
    ClusterInfo {
        cluster_id: identity.cluster_id.clone(),
        node_id: identity.node_id.clone(),
        node_name: identity.node_name.clone(),
        role: identity.role,
        managers: identity.managers.clone(),
    }
}

async fn cluster_info(State(state): State<Arc<AgentState>>) -> Result<Json<ClusterInfo>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(info(&rt)))
}

async fn cluster_init(
    State(state): State<Arc<AgentState>>,
    Json(request): Json<InitRequest>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let own = state.config().advertise_addr;
    if let Some(asked) = request.advertise_addr.filter(|asked| *asked != own) {
        return Err(ApiError::with_status(
            StatusCode::BAD_REQUEST,
            format!("this agent advertises {own}, not {asked}: restart netagent with --advertise-addr {asked}"),
        ));
    }
    let rt = state.init_cluster(request.default_addr_pool).await?;
    Ok(Json(info(&rt)))
}

/// `MANAGER[:PORT]`, port 2377 by default.
fn manager_addr(text: &str) -> Result<SocketAddr, ApiError> {
    text.parse::<SocketAddr>()
        .or_else(|_| {
            text.parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, crate::config::defaults::CONTROL_PORT))
        })
        .map_err(|_| {
            ApiError::with_status(
                StatusCode::BAD_REQUEST,
                format!("manager address {text:?} is not IP or IP:PORT (e.g. 192.0.2.10:2377)"),
            )
        })
}

async fn cluster_join(
    State(state): State<Arc<AgentState>>,
    Json(request): Json<JoinRequest>,
) -> Result<Json<ClusterInfo>, ApiError> {
    let manager = manager_addr(&request.manager)?;
    let rt = state.join_cluster(&request.token, manager).await?;
    Ok(Json(info(&rt)))
}

async fn join_token(
    State(state): State<Arc<AgentState>>,
    Query(query): Query<TokenQuery>,
) -> Result<Json<TokenResponse>, ApiError> {
    let rt = runtime(&state).await?;
    let token = rt.control().join_token(query.role, query.rotate).await?;
    Ok(Json(TokenResponse { token }))
}

/// A node record with its status from this node's gossip view.
fn node_info(view: &crate::gossip::GossipView, record: NodeRecord) -> NodeInfo {
    NodeInfo {
        status: if view.nodes.contains_key(&record.name) {
            NodeStatus::Ready
        } else {
            NodeStatus::Down
        },
        name: record.name,
        id: record.id,
        role: record.role,
        availability: record.availability,
        addr: record.addr,
        labels: record.labels,
    }
}

async fn nodes(State(state): State<Arc<AgentState>>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    let rt = runtime(&state).await?;
    let view = rt.view();
    let records = rt.control().nodes().await?;
    Ok(Json(
        records
            .into_iter()
            .map(|record| node_info(&view, record))
            .collect(),
    ))
}

async fn node(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let rt = runtime(&state).await?;
    let record = crate::control::node::find(rt.control().nodes().await?, &name)?;
    Ok(Json(node_info(&rt.view(), record)))
}

/// `netctl node update`: written by the managers (a worker's request is
/// sent to them like every control-plane write); this node applies it at
/// once, the others on their next refresh.
async fn update_node(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    Json(request): Json<UpdateNode>,
) -> Result<Json<NodeInfo>, ApiError> {
    let rt = runtime(&state).await?;
    let record = rt.control().update_node(&name, request).await?;
    rt.refresh_soon().await;
    Ok(Json(node_info(&rt.view(), record)))
}

/// `netctl node rm`: only a node that is down (gone from this node's
/// gossip view), as in Docker: a live node would go on gossiping its
/// endpoints. The managers forget it and refuse its certificate from then
/// on; they also refuse a worker's request and a manager removing itself,
/// so this node's own record goes to them unchecked (it is always live
/// here, and "not down" would be the wrong reason).
async fn remove_node(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let rt = runtime(&state).await?;
    let record = crate::control::node::find(rt.control().nodes().await?, &name)?;
    let view = rt.view();
    if record.id != rt.identity().node_id && view.nodes.contains_key(&record.name) {
        return Err(ApiError::with_status(
            StatusCode::CONFLICT,
            format!(
                "node {} is not down and can't be removed: stop its agent first (`systemctl stop netagent` there; `netctl node ls` shows it down within seconds)",
                record.name
            ),
        ));
    }
    let removed = rt.control().remove_node(&record.id).await?;
    rt.refresh_soon().await;
    Ok(Json(node_info(&view, removed)))
}

async fn create_network(
    State(state): State<Arc<AgentState>>,
    Json(request): Json<CreateNetwork>,
) -> Result<(StatusCode, Json<Network>), ApiError> {
    let rt = runtime(&state).await?;
    let network = rt.control().create_network(request).await?;
    rt.refresh_networks().await?;
    Ok((StatusCode::CREATED, Json(network)))
}

async fn networks(State(state): State<Arc<AgentState>>) -> Result<Json<Vec<Network>>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(rt.refresh_networks().await?))
}

async fn network(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<Network>, ApiError> {
    let rt = runtime(&state).await?;
    rt.refresh_networks()
        .await?
        .into_iter()
        .find(|network| network.name == name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no network {name:?}: see `netctl overlay ls`")))
}

async fn remove_network(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<Network>, ApiError> {
    let rt = runtime(&state).await?;
    let attached = rt
        .all_endpoints()
        .await
        .into_iter()
        .filter(|ep| ep.network == name)
        .count();
    if attached > 0 {
        return Err(ApiError::with_status(
            StatusCode::CONFLICT,
            format!("network {name:?} still has {attached} endpoint(s) attached: detach them first (`netctl endpoint ls --network {name}`)"),
        ));
    }
    let network = rt.control().remove_network(&name).await?;
    rt.refresh_networks().await?;
    Ok(Json(network))
}

async fn attach_endpoint(
    State(state): State<Arc<AgentState>>,
    Json(request): Json<AttachRequest>,
) -> Result<(StatusCode, Json<Endpoint>), ApiError> {
    let rt = runtime(&state).await?;
    let endpoint = attach::attach(&rt, request).await?;
    Ok((StatusCode::CREATED, Json(endpoint)))
}

async fn endpoints(
    State(state): State<Arc<AgentState>>,
    Query(filter): Query<NetworkFilter>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    let rt = runtime(&state).await?;
    let mut endpoints = rt.all_endpoints().await;
    // Nodes' ingress addresses are plumbing, not containers.
    endpoints.retain(|ep| !crate::ingress::is_pseudo_endpoint(ep));
    if let Some(network) = filter.network {
        endpoints.retain(|ep| ep.network == network);
    }
    Ok(Json(endpoints))
}

async fn detach_endpoint(
    State(state): State<Arc<AgentState>>,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(attach::detach(&rt, &id).await?))
}

async fn set_health(
    State(state): State<Arc<AgentState>>,
    Path(id): Path<String>,
    Json(request): Json<HealthRequest>,
) -> Result<Json<Endpoint>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(attach::set_health(&rt, &id, request.health).await?))
}
