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

use super::{
    routes::{all_endpoints, runtime},
    server::ApiError,
};
use crate::{
    agent::AgentState,
    cluster::ClusterRuntime,
    control::{service, ControlPlane, CreateService, UpdateService},
    model::{Endpoint, Service},
};

pub fn router() -> Router<Arc<AgentState>> {
    Router::new()
        .route("/v1/services", post(create_service).get(services))
        .route(
            "/v1/services/{name}",
            get(inspect_service).delete(remove_service),
        )
        .route(
            "/v1/services/{name}/update",
            post(update_service).patch(update_service),
        )
        .route("/v1/services/{name}/tasks", get(service_tasks))
}

/// The service called `name` (or with that id).
async fn find(rt: &ClusterRuntime, name: &str) -> Result<Service, ApiError> {
    rt.control
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
    let service = rt.control.create_service(request).await?;
    services_changed(&rt).await;
    Ok((StatusCode::CREATED, Json(service)))
}

async fn services(State(state): State<Arc<AgentState>>) -> Result<Json<Vec<Service>>, ApiError> {
    let rt = runtime(&state).await?;
    Ok(Json(rt.control.services().await?))
}

async fn inspect_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rt = runtime(&state).await?;
    let service = find(&rt, &name).await?;
    let mut value = serde_json::to_value(&service).map_err(ApiError::internal)?;
    if let (Some(lb), Some(object)) = (&rt.lb, value.as_object_mut()) {
        let vips: Vec<_> = service.vips.iter().map(|v| v.addr).collect();
        let datapath = match lb.inspect(&vips) {
            Ok(state) => serde_json::to_value(state).map_err(ApiError::internal)?,
            Err(error) => serde_json::Value::String(error.to_string()),
        };
        object.insert("datapath".into(), datapath);
    }
    Ok(Json(value))
}

async fn remove_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
) -> Result<Json<Service>, ApiError> {
    let rt = runtime(&state).await?;
    let service = rt.control.remove_service(&name).await?;
    services_changed(&rt).await;
    Ok(Json(service))
}

async fn update_service(
    State(state): State<Arc<AgentState>>,
    Path(name): Path<String>,
    Json(request): Json<UpdateService>,
) -> Result<Json<Service>, ApiError> {
    let rt = runtime(&state).await?;
    let service = rt.control.update_service(&name, request).await?;
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
    Ok(Json(tasks_of(&service.name, all_endpoints(&rt).await)))
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
async fn services_changed(rt: &crate::cluster::ClusterRuntime) {
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
