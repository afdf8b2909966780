//! The control plane's one error type: each variant is the kind of failure
//! (the API maps it to an HTTP status), its text one line saying what to do.

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request was wrong; the message says what to do (one line).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
}
