//! A client for the local API, used by `netctl`.

use std::{
    io,
    path::{Path, PathBuf},
};

use http_body_util::{BodyExt, Full};
use hyper::{
    body::{Bytes, Incoming},
    Request, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::{net::UnixStream, task::JoinHandle};

use crate::types::ErrorBody;

/// The lines of a streamed response (`ApiClient::get_lines`).
pub struct Lines {
    body: Incoming,
    /// What came and is not read yet from `start` on.
    buffer: Vec<u8>,
    start: usize,
    /// No newline in `start..scanned` (a newline at `scanned` if one was
    /// found): what `has_line` searched is not searched again.
    scanned: usize,
    driver: JoinHandle<hyper::Result<()>>,
    socket: PathBuf,
}

impl Lines {
    /// Whether a whole line is already here (`next_line` will not wait).
    pub fn has_line(&mut self) -> bool {
        self.line_end().is_some()
    }

    /// Where the next line's newline is, if it came.
    fn line_end(&mut self) -> Option<usize> {
        match self.buffer[self.scanned..].iter().position(|b| *b == b'\n') {
            Some(at) => {
                self.scanned += at;
                Some(self.scanned)
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }

    /// The next line (without its newline), or `None` when the agent ends
    /// the response. The line is borrowed until the next call: lines are
    /// not copied out of what came.
    pub async fn next_line(&mut self) -> Result<Option<&[u8]>, ClientError> {
        let end = loop {
            if let Some(end) = self.line_end() {
                break end;
            }
            // Once per frame, not per line: what was read goes.
            self.buffer.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(error)) => {
                    return Err(ClientError::Protocol {
                        path: self.socket.clone(),
                        message: error.to_string(),
                    })
                }
                None => return Ok(None),
            }
        };
        let start = std::mem::replace(&mut self.start, end + 1);
        self.scanned = end + 1;
        Ok(Some(&self.buffer[start..end]))
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no netagent socket at {0}: is netagent running on this node? (pick another agent with --host or NETCTL_HOST)")]
    NoSocket(PathBuf),
    #[error("netagent is not running: nothing answers on {0} (start it, e.g. `systemctl start netagent`)")]
    NotRunning(PathBuf),
    #[error("permission denied on {0}: the netagent API is for root only (run `sudo netctl ...`)")]
    PermissionDenied(PathBuf),
    #[error("cannot reach netagent on {path}: {cause}: check that netagent runs (`systemctl status netagent`), or pick another agent with --host")]
    Connect { path: PathBuf, cause: io::Error },
    #[error("talking to netagent on {path} failed: {message}: check that netagent still runs (`systemctl status netagent`) and see its log (`journalctl -u netagent`)")]
    Protocol { path: PathBuf, message: String },
    #[error("{0}")]
    Api(String),
    #[error("netagent on {path} sent an answer netctl does not understand: {message} (are netctl and netagent the same version?)")]
    Decode { path: PathBuf, message: String },
}

/// Talks HTTP/1.1 to one agent over its unix socket, one request per
/// connection (the API is local and light; keeping connections buys nothing).
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request("GET", path, None).await?;
        self.decode(status, &body)
    }

    /// `POST path` with `body` as JSON, the answer decoded as `T`.
    pub async fn post<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let json = serde_json::to_vec(body).map_err(|error| ClientError::Protocol {
            path: self.socket.clone(),
            message: error.to_string(),
        })?;
        let (status, body) = self.request("POST", path, Some(json)).await?;
        self.decode(status, &body)
    }

    /// `DELETE path`, the answer decoded as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let (status, body) = self.request("DELETE", path, None).await?;
        self.decode(status, &body)
    }

    /// `GET path` for a response that goes on (newline-delimited JSON):
    /// its lines as they come. A refusal is an error as with `get`.
    pub async fn get_lines(&self, path: &str) -> Result<Lines, ClientError> {
        let (response, driver) = self.send("GET", path, None).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|error| self.protocol(error))?
                .to_bytes();
            driver.abort();
            return Err(refusal(status, &body));
        }
        Ok(Lines {
            body: response.into_body(),
            buffer: Vec::new(),
            start: 0,
            scanned: 0,
            driver,
            socket: self.socket.clone(),
        })
    }

    fn protocol(&self, error: hyper::Error) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            message: error.to_string(),
        }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (response, driver) = self.send(method, path, json).await?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| self.protocol(error))?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }

    /// Sends one request on a new connection; the connection is driven by
    /// the returned task until the caller aborts it.
    async fn send(
        &self,
        method: &str,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(hyper::Response<Incoming>, JoinHandle<hyper::Result<()>>), ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => ClientError::NoSocket(self.socket.clone()),
                    io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning(self.socket.clone())
                    }
                    io::ErrorKind::PermissionDenied => {
                        ClientError::PermissionDenied(self.socket.clone())
                    }
                    _ => ClientError::Connect {
                        path: self.socket.clone(),
                        cause: source,
                    },
                })?;
        let protocol = |error: hyper::Error| ClientError::Protocol {
            path: self.socket.clone(),
            message: error.to_string(),
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(protocol)?;
        let driver = tokio::spawn(connection);
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "netagent");
        if json.is_some() {
            builder = builder.header("content-type", "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|error| ClientError::Protocol {
                path: self.socket.clone(),
                message: error.to_string(),
            })?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, driver)),
            Err(error) => {
                driver.abort();
                Err(protocol(error))
            }
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, ClientError> {
        if !status.is_success() {
            return Err(refusal(status, body));
        }
        serde_json::from_slice(body).map_err(|error| ClientError::Decode {
            path: self.socket.clone(),
            message: error.to_string(),
        })
    }
}

/// The agent's one-line refusal.
fn refusal(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .map(|body| body.error)
        .unwrap_or_else(|_| {
            format!(
                "netagent answered {status} without a readable error: see its log (`journalctl -u netagent`); are netctl and netagent the same version?"
            )
        });
    ClientError::Api(message)
}
