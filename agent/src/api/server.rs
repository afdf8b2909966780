//! Serves the local API on the agent's unix socket.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{extract::State, routing::get, Json, Router};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use netagent_api::{
    routes,
    types::{InterfaceCounters, Status},
};

use super::error::ApiError;
use crate::node::state::AgentState;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("another netagent is already serving {0}: stop it first, or give this one another --run-dir")]
    InUse(PathBuf),
    #[error("cannot create the run directory {path}: {cause}: run netagent as root, or give it another --run-dir")]
    RunDir { path: PathBuf, cause: io::Error },
    #[error("cannot listen on {path}: {cause}: check that netagent runs as root and can write its --run-dir, or give it another --run-dir")]
    Bind { path: PathBuf, cause: io::Error },
}

/// Binds the API socket, root only. A socket file left by a dead agent is
/// replaced; one a live agent answers on is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::RunDir {
            path: dir.to_owned(),
            cause: source,
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServeError::InUse(path.to_owned()));
        }
        warn!(socket = %path.display(), "removing a stale API socket");
        let _ = std::fs::remove_file(path);
    }
    let bind_error = |source| ServeError::Bind {
        path: path.to_owned(),
        cause: source,
    };
    let listener = UnixListener::bind(path).map_err(bind_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_error)?;
    info!(socket = %path.display(), "local API listening");
    Ok(listener)
}

/// The answer to a path the API does not have.
const NO_SUCH_ENDPOINT: &str = "no such API endpoint: are netctl and netagent the same version? (`netctl --version`, `netagent --version`)";

/// The API's routes.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route(routes::STATUS, get(status))
        .route(routes::COUNTERS, get(counters))
        .merge(super::routes::router())
        .merge(super::service_routes::router())
        .merge(super::trace_routes::router())
        .fallback(|| async { ApiError::not_found(NO_SUCH_ENDPOINT) })
        .with_state(state)
}

async fn status(State(state): State<Arc<AgentState>>) -> Result<Json<Status>, ApiError> {
    state.status().await.map(Json).map_err(ApiError::internal)
}

async fn counters(
    State(state): State<Arc<AgentState>>,
) -> Result<Json<Vec<InterfaceCounters>>, ApiError> {
    state.counters().map(Json).map_err(ApiError::internal)
}
