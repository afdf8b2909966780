//! What can go wrong in one netctl invocation, each as one line that says
//! what to do.

use std::path::PathBuf;

use netagent_api::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--host {0:?} is not a unix socket address: use unix:///path/to/netagent.sock")]
    BadHost(String),
    /// A command-line value that is wrong; the message says what to give.
    #[error("{0}")]
    BadArgument(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot write the output: {0} (was the pipe closed, or is the disk full?)")]
    Output(std::io::Error),
    #[error("cannot handle JSON ({0}): are netctl and netagent the same version? If they are, report this bug with the agent's log (`journalctl -u netagent`)")]
    Json(serde_json::Error),
    #[error(transparent)]
    TraceFilter(#[from] netagent_api::trace_filter::FilterError),
    #[error("cannot write the pcap file {path}: {cause}: check that its directory exists and is writable and the disk is not full")]
    Pcap {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("netagent ended the trace (stopped or restarting?): run netctl trace again")]
    TraceEnded,
}

impl From<serde_json::Error> for CliError {
    fn from(cause: serde_json::Error) -> Self {
        Self::Json(cause)
    }
}

impl From<std::io::Error> for CliError {
    fn from(cause: std::io::Error) -> Self {
        Self::Output(cause)
    }
}
