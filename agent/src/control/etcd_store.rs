//! The control-plane store on etcd, for clusters with several managers:
//! the [`Store`] trait over etcd's v3 API. Revisions are etcd's; a
//! transaction's compares are `mod_revision` compares (a key that does not
//! exist has 0, as in the embedded store); `list` is one prefix range, so
//! one revision; the watch resumes from the revision after the last one it
//! delivered when its stream breaks, so no change is missed or delivered
//! twice. Every key lives under a prefix of the cluster's own.
//!
//! `Store` is synchronous (the managers call it from blocking threads):
//! the client lives on a small runtime of its own, and each call is handed
//! to it and waited for.

use std::{future::Future, time::Duration};

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    Identity, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tokio::{runtime::Runtime, sync::broadcast};
use tracing::{debug, warn};

use super::store::{Compare, Event, Op, Store, StoreError, Versioned};

/// What to check when etcd fails.
const ETCD_HINT: &str = "check that a majority of the etcd members given with --store answer (`etcdctl endpoint health`) and that this node reaches them";
/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a broken watch is opened again, doubled after each failure
/// to open it, up to `WATCH_RETRY_MAX`.
const WATCH_RETRY: Duration = Duration::from_millis(200);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

fn failed(op: &'static str) -> impl Fn(etcd_client::Error) -> StoreError {
    move |error| StoreError {
        op,
        message: error.to_string(),
        hint: ETCD_HINT,
    }
}

/// TLS to etcd: the CA that signed the members' certificates, and this
/// client's certificate and key (etcd's `--client-cert-auth`), all PEM.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// `None` only while dropping (a runtime must not be dropped where
    /// blocking is not allowed: it is shut down in the background).
    runtime: Option<Runtime>,
    events: broadcast::Sender<Event>,
}

impl EtcdStore {
    /// Connects to `endpoints` (etcd's client fails over between them),
    /// over TLS when `tls` is given (`https://` endpoints), and keeps every
    /// key under `prefix`.
    pub fn connect(
        endpoints: &[String],
        prefix: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|error| StoreError {
                op: "connect",
                message: error.to_string(),
                hint: "the node may be out of memory or threads",
            })?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some(tls) = tls {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                    .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
            );
        }
        let connect = Client::connect(endpoints.to_vec(), Some(options));
        let client = wait(&runtime, connect).map_err(failed("connect"))?;
        let (events, _) = broadcast::channel(1024);
        let store = EtcdStore {
            client,
            prefix: prefix.to_owned(),
            runtime: Some(runtime),
            events,
        };
        let from = store.revision()? + 1;
        let watch = watch_loop(
            store.client.clone(),
            store.prefix.clone(),
            from,
            store.events.clone(),
        );
        if let Some(runtime) = &store.runtime {
            runtime.spawn(watch);
        }
        Ok(store)
    }

    fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        request: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().ok_or_else(|| StoreError {
            op,
            message: "the store is closed".into(),
            hint: "report this bug with the agent's log (`journalctl -u netagent`)",
        })?;
        wait(runtime, request).map_err(failed(op))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Runs `request` on `runtime` and waits for it from this (blocking) thread.
fn wait<T: Send + 'static>(
    runtime: &Runtime,
    request: impl Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
) -> Result<T, etcd_client::Error> {
    futures::executor::block_on(runtime.spawn(request))
        .map_err(|error| etcd_client::Error::IoError(std::io::Error::other(error)))?
}

/// etcd's revisions are `i64`, never negative.
fn revision(value: i64) -> u64 {
    value.max(0) as u64
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    revision(header.map_or(0, |h| h.revision()))
}

impl Store for EtcdStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut client = self.client.clone();
        let key = self.key(key);
        let response = self.call("read", async move { client.get(key, None).await })?;
        Ok(response.kvs().first().map(|kv| Versioned {
            value: kv.value().to_vec(),
            mod_revision: revision(kv.mod_revision()),
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut client = self.client.clone();
        let key = self.key(prefix);
        let options = GetOptions::new().with_prefix();
        let response = self.call("list", async move { client.get(key, Some(options)).await })?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let key = key.strip_prefix(&self.prefix)?.to_owned();
                let versioned = Versioned {
                    value: kv.value().to_vec(),
                    mod_revision: revision(kv.mod_revision()),
                };
                Some((key, versioned))
            })
            .collect())
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let mut client = self.client.clone();
        let key = self.key("");
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self.call("read", async move { client.get(key, Some(options)).await })?;
        Ok(revision_of(response.header()))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError> {
        let compares: Vec<EtcdCompare> = compares
            .iter()
            .map(|c| {
                EtcdCompare::mod_revision(self.key(&c.key), CompareOp::Equal, c.mod_revision as i64)
            })
            .collect();
        let ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.key(key), value.clone(), None),
                Op::Delete { key } => TxnOp::delete(self.key(key), None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let mut client = self.client.clone();
        let response = self.call("write", async move { client.txn(txn).await })?;
        Ok(response.succeeded().then(|| revision_of(response.header())))
    }

    fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Forwards every change under `prefix` from revision `from` on to
/// `events`, opening the watch again from the next undelivered revision
/// whenever its stream ends or fails.
async fn watch_loop(
    mut client: Client,
    prefix: String,
    mut from: u64,
    events: broadcast::Sender<Event>,
) {
    let mut retry = WATCH_RETRY;
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from as i64);
        match client.watch(prefix.clone(), Some(options)).await {
            Ok(mut stream) => {
                retry = WATCH_RETRY;
                forward(&mut stream, &prefix, &mut from, &events).await;
            }
            Err(error) => {
                warn!(%error, retry_in = ?retry, "cannot watch etcd; trying again");
                retry = (retry * 2).min(WATCH_RETRY_MAX);
            }
        }
        tokio::time::sleep(retry).await;
    }
}

/// Sends the changes `stream` reports on to `events` until it ends or
/// breaks; `from` follows the revision after the last one sent.
async fn forward(
    stream: &mut WatchStream,
    prefix: &str,
    from: &mut u64,
    events: &broadcast::Sender<Event>,
) {
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return,
            Err(error) => {
                debug!(%error, "etcd watch broke; opening it again");
                return;
            }
        };
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let changed_at = revision(kv.mod_revision());
            let key = String::from_utf8_lossy(kv.key());
            let Some(key) = key.strip_prefix(prefix) else {
                continue;
            };
            // No receiver is fine: nobody watches yet.
            let _ = events.send(Event {
                revision: changed_at,
                key: key.to_owned(),
                deleted: event.event_type() == EventType::Delete,
            });
            *from = (*from).max(changed_at + 1);
        }
    }
}
