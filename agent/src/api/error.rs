//! How the API answers a failure: an HTTP status and a one-line message
//! (`ErrorBody`), chosen from the typed errors of the parts it calls.

use std::sync::Arc;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use netagent_api::types::ErrorBody;

use crate::{
    control::ControlError,
    node::attach::AttachError,
    node::cluster::{ClusterError, ClusterRuntime},
    node::state::{AgentState, MembershipError},
};

/// An error response: a status and a one-line message.
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_string(),
        }
    }

    pub fn not_found(message: impl std::fmt::Display) -> Self {
        Self::with_status(StatusCode::NOT_FOUND, message)
    }

    pub fn with_status(status: StatusCode, message: impl std::fmt::Display) -> Self {
        Self {
            status,
            message: message.to_string(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> Self {
        let status = match &error {
            ControlError::Invalid(_) => StatusCode::BAD_REQUEST,
            ControlError::NotFound(_) => StatusCode::NOT_FOUND,
            ControlError::Conflict(_) => StatusCode::CONFLICT,
            ControlError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::with_status(status, error)
    }
}

impl From<AttachError> for ApiError {
    fn from(error: AttachError) -> Self {
        match error {
            AttachError::Control(control) => control.into(),
            AttachError::NoEndpoint(_)
            | AttachError::UnknownNetwork(_)
            | AttachError::UnknownService(_) => Self::with_status(StatusCode::NOT_FOUND, error),
            AttachError::Overlay(_) | AttachError::Store(_) | AttachError::Lb(_) => {
                Self::internal(error)
            }
            _ => Self::with_status(StatusCode::BAD_REQUEST, error),
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(error: ClusterError) -> Self {
        match error {
            ClusterError::Control(control) => control.into(),
            other => Self::internal(other),
        }
    }
}

impl From<MembershipError> for ApiError {
    fn from(error: MembershipError) -> Self {
        match error {
            MembershipError::AlreadyIn { .. } => Self::with_status(StatusCode::CONFLICT, error),
            MembershipError::Cluster(cluster) => cluster.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

fn not_in_cluster() -> ApiError {
    ApiError::with_status(
        StatusCode::CONFLICT,
        "this node is not in a cluster: run `netctl cluster init` or `netctl cluster join` first",
    )
}

/// The cluster a cluster route works on, or the answer that there is none.
pub(super) async fn runtime(state: &AgentState) -> Result<Arc<ClusterRuntime>, ApiError> {
    state.cluster().await.ok_or_else(not_in_cluster)
}
