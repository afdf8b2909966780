//! Where the managers keep desired state: a key-value store with revisions,
//! etcd-shaped so that an etcd backend can implement the same trait. Every
//! change bumps one global revision; each key remembers the revision that
//! last changed it (`mod_revision`), and a transaction applies its writes
//! only if the keys it compares still have the revisions the caller read.
//!
//! [`RedbStore`] is the embedded backend: one file, `<data_dir>/store.redb`.

use std::{fs, os::unix::fs::PermissionsExt, path::Path};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::error::ControlError;

pub const FILE_NAME: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
#[error("control-plane store {op} failed: {message}: {hint}")]
pub struct StoreError {
    pub op: &'static str,
    pub message: String,
    /// What to check, for the backend that failed.
    pub hint: &'static str,
}

/// What to check when the embedded store fails.
const REDB_HINT: &str = "check <data-dir>/store.redb (disk full? damaged: restore it from a backup; in use: stop the other netagent)";

impl From<StoreError> for ControlError {
    fn from(error: StoreError) -> Self {
        ControlError::Unavailable(error.to_string())
    }
}

fn failed(op: &'static str) -> impl Fn(&dyn std::fmt::Display) -> StoreError {
    move |error| StoreError {
        op,
        message: error.to_string(),
        hint: REDB_HINT,
    }
}

/// A value and the revision that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

/// A condition of a transaction: `key` was last changed at `mod_revision`
/// (0: the key does not exist).
#[derive(Clone, Debug)]
pub struct Compare {
    pub key: String,
    pub mod_revision: u64,
}

#[derive(Clone, Debug)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// One change, for watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub key: String,
    pub deleted: bool,
}

/// Synchronous on purpose: the manager runs its read-check-write loops on a
/// blocking thread, and a network backend can block on its own runtime.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// Every key starting with `prefix`, in key order, from one snapshot.
    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// The revision of the last change (0 for an empty store).
    fn revision(&self) -> Result<u64, StoreError>;
    /// Applies `ops` atomically if every compare holds. `Some(revision)` when
    /// committed, `None` when a compare failed (nothing was written).
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError>;
    /// Changes committed from now on.
    fn watch(&self) -> broadcast::Receiver<Event>;

    fn put(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
        };
        self.txn(&[], &[op])?
            .ok_or_else(|| failed("put")(&"unconditional write refused"))
    }

    /// Whether the key existed.
    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let Some(current) = self.get(key)? else {
            return Ok(false);
        };
        let compare = Compare {
            key: key.to_owned(),
            mod_revision: current.mod_revision,
        };
        let op = Op::Delete {
            key: key.to_owned(),
        };
        // Lost a race with another delete or put: retry from the new state.
        match self.txn(&[compare], &[op])? {
            Some(_) => Ok(true),
            None => self.delete(key),
        }
    }
}

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// Values are stored as 8 bytes of mod revision (big endian) + the value.
fn encode(revision: u64, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + value.len());
    bytes.extend_from_slice(&revision.to_be_bytes());
    bytes.extend_from_slice(value);
    bytes
}

fn decode(bytes: &[u8]) -> Versioned {
    let mut revision = [0u8; 8];
    let split = bytes.len().min(8);
    revision[..split].copy_from_slice(&bytes[..split]);
    Versioned {
        mod_revision: u64::from_be_bytes(revision),
        value: bytes[split..].to_vec(),
    }
}

pub struct RedbStore {
    db: Database,
    events: broadcast::Sender<Event>,
}

impl RedbStore {
    /// Opens (or creates) `<data_dir>/store.redb`, readable by root only: it
    /// holds the CA key and the join secrets.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(data_dir).map_err(|e| failed("open")(&e))?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| failed("open")(&e))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|e| failed("open")(&e))?;
        let (events, _) = broadcast::channel(1024);
        Ok(RedbStore { db, events })
    }

    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(FILE_NAME).exists()
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| failed("read")(&e))?;
        let table = match tx.open_table(KV) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(failed("read")(&e)),
        };
        let value = table.get(key).map_err(|e| failed("read")(&e))?;
        Ok(value.map(|v| decode(v.value())))
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| failed("list")(&e))?;
        let table = match tx.open_table(KV) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(failed("list")(&e)),
        };
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| failed("list")(&e))? {
            let (key, value) = entry.map_err(|e| failed("list")(&e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_owned(), decode(value.value())));
        }
        Ok(out)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(|e| failed("read")(&e))?;
        let table = match tx.open_table(META) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(failed("read")(&e)),
        };
        let revision = table.get(REVISION).map_err(|e| failed("read")(&e))?;
        Ok(revision.map(|v| v.value()).unwrap_or(0))
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<Option<u64>, StoreError> {
        let fail = failed("write");
        // redb allows one write transaction at a time: compares and writes
        // below see no interleaved change.
        let tx = self.db.begin_write().map_err(|e| fail(&e))?;
        let revision;
        {
            let mut kv = tx.open_table(KV).map_err(|e| fail(&e))?;
            for compare in compares {
                let current = kv
                    .get(compare.key.as_str())
                    .map_err(|e| fail(&e))?
                    .map(|v| decode(v.value()).mod_revision)
                    .unwrap_or(0);
                if current != compare.mod_revision {
                    drop(kv);
                    tx.abort().map_err(|e| fail(&e))?;
                    return Ok(None);
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| fail(&e))?;
            let previous = meta
                .get(REVISION)
                .map_err(|e| fail(&e))?
                .map(|v| v.value())
                .unwrap_or(0);
            revision = previous + 1;
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        kv.insert(key.as_str(), encode(revision, value).as_slice())
                            .map_err(|e| fail(&e))?;
                    }
                    Op::Delete { key } => {
                        kv.remove(key.as_str()).map_err(|e| fail(&e))?;
                    }
                }
            }
            meta.insert(REVISION, revision).map_err(|e| fail(&e))?;
        }
        tx.commit().map_err(|e| fail(&e))?;
        for op in ops {
            let (key, deleted) = match op {
                Op::Put { key, .. } => (key, false),
                Op::Delete { key } => (key, true),
            };
            // Nobody watching is fine.
            let _ = self.events.send(Event {
                revision,
                key: key.clone(),
                deleted,
            });
        }
        Ok(Some(revision))
    }

    fn watch(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::testdir::TestDir;

    #[test]
    fn revisions_prefixes_and_transactions() {
        let dir = TestDir::new("store");
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.revision().unwrap(), 0);
        assert!(store.get("a").unwrap().is_none());
        assert!(store.list("").unwrap().is_empty());
        let mut watch = store.watch();

        let r1 = store.put("networks/1", b"one").unwrap();
        let r2 = store.put("networks/2", b"two").unwrap();
        store.put("nodes/1", b"n").unwrap();
        assert!(r2 > r1);
        assert_eq!(store.get("networks/1").unwrap().unwrap().mod_revision, r1);
        let listed = store.list("networks/").unwrap();
        assert_eq!(
            listed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["networks/1", "networks/2"]
        );
        assert_eq!(listed[1].1.value, b"two");
        assert_eq!(watch.try_recv().unwrap().key, "networks/1");

        // A stale compare writes nothing.
        let stale = Compare {
            key: "networks/1".into(),
            mod_revision: r1 - 1,
        };
        let put = Op::Put {
            key: "networks/3".into(),
            value: b"three".to_vec(),
        };
        let before = store.revision().unwrap();
        assert_eq!(
            store.txn(&[stale], std::slice::from_ref(&put)).unwrap(),
            None
        );
        assert!(store.get("networks/3").unwrap().is_none());
        assert_eq!(store.revision().unwrap(), before);
        // "Absent" compare (0) for a create-if-missing.
        let absent = Compare {
            key: "networks/3".into(),
            mod_revision: 0,
        };
        assert!(store
            .txn(std::slice::from_ref(&absent), std::slice::from_ref(&put))
            .unwrap()
            .is_some());
        assert_eq!(store.txn(&[absent], &[put]).unwrap(), None);

        assert!(store.delete("networks/1").unwrap());
        assert!(!store.delete("networks/1").unwrap());
        let revision = store.revision().unwrap();
        drop(store);

        // Everything survives a reopen.
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.revision().unwrap(), revision);
        assert_eq!(store.list("networks/").unwrap().len(), 2);
        assert_eq!(store.get("nodes/1").unwrap().unwrap().value, b"n");
        let mode = fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
