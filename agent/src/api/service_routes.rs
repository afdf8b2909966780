//! The service routes of the local API: `netctl service ...`. Services live
//! in the control plane; their tasks are the endpoints (from gossip, plus
//! this node's own) whose `service` is the service's name.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};

use netagent_api::{
    routes,
    types::{CreateService, ServiceDatapath, ServiceInspect, UpdateService},
};

use super::error::{runtime, ApiError};
use crate::{
    control::{service, ControlPlane},
    model::{Endpoint, Service},
    node::cluster::ClusterRuntime,
    node::state::AgentState,
};

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
        .route(routes::SERVICES, post(create_service).get(services))
        .route(routes::SERVICE, get(inspect_service).delete(remove_service))
        .route(
            routes::SERVICE_UPDATE,
            post(update_service).patch(update_service),
        )
        .route(routes::SERVICE_TASKS, get(service_tasks))
}

/// The service called `name` (or with that id).
async fn find(rt: &ClusterRuntime, name: &str) -> Result<Service, ApiError> {
    rt.control()
        .services()
        .await?
        .into_iter()
        .find(|s| service::matches(s, name))
        .ok_or_else(|| ApiError::not_found(format!("no service {name:?}: see `netctl service ls`")))
}

async fn create_service(
    State(state): State<Arc<AgentState>>,
    Json(request): Json<CreateService>,
) -> Result<(StatusCode, Json<Service>), ApiError> {
    let rt = runtime(&state).await?;
    let service = rt.control().create_service(request).await?;
    services_changed(&rt).await;
    Ok((StatusCode::CREATED, Json(service)))
}

async fn services(State(state): State<Arc<AgentState>>) -> Result<Json<Vec<Service>>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(rt.control().services().await?))
}

async fn inspect_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<ServiceInspect>, ApiError> {
    let rt = runtime(&state).await?;
    let service = find(&rt, &name).await?;
    // A node without a load balancer has no datapath to show.
    let datapath = rt.lb().map(|lb| {
        let vips: Vec<_> = service.vips.iter().map(|v| v.addr).collect();
        match lb.inspect(&vips) {
            Ok(state) => ServiceDatapath::Vips(state),
            Err(error) => ServiceDatapath::Unreadable(error.to_string()),
        }
    });
    Ok(Json(ServiceInspect { service, datapath }))
}

async fn remove_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<Service>, ApiError> {
    let rt = runtime(&state).await?;
    let service = rt.control().remove_service(&name).await?;
    services_changed(&rt).await;
    Ok(Json(service))
}

async fn update_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    Json(request): Json<UpdateService>,
) -> Result<Json<Service>, ApiError> {
    let rt = runtime(&state).await?;
    let service = rt.control().update_service(&name, request).await?;
    services_changed(&rt).await;
    Ok(Json(service))
}

/// The service's tasks, like `docker service ps`.
async fn service_tasks(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    let rt = runtime(&state).await?;
    let service = find(&rt, &name).await?;
    Ok(Json(tasks_of(&service.name, rt.all_endpoints().await)))
}

/// The endpoints that are tasks of the service `name` (DNS names: any case).
fn tasks_of(name: &str, endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints
        .into_iter()
        .filter(|ep| {
            ep.service
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(name))
        })
        .collect()
}

/// A change made through this node shows in its own DNS at once; other
/// nodes pick it up on their next refresh.
async fn services_changed(rt: &crate::node::cluster::ClusterRuntime) {
    if let Err(error) = rt.refresh_services().await {
        tracing::debug!(%error, "cannot refresh the services after a change");
    }
    rt.kick();
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn endpoint(id: &str, service: Option<&str>) -> Endpoint {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        Endpoint {
            service: service.map(str::to_owned),
            ..Endpoint::new(id, "web", "n1", "node1", ip)
        }
    }

    #[test]
    fn tasks_are_the_endpoints_of_the_service() {
        let endpoints = vec![
            endpoint("a", Some("api")),
            endpoint("b", Some("API")),
            endpoint("c", Some("web")),
            endpoint("d", None),
        ];
        let ids: Vec<String> = tasks_of("api", endpoints)
            .into_iter()
            .map(|ep| ep.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
