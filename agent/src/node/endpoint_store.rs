//! The endpoints attached on this node, kept in `<data-dir>/endpoints.json`
//! so that a restarted agent knows what it owns, publishes it again and can
//! detach it.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::Endpoint;

const FILE: &str = "endpoints.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot read {path}: {cause}: check that netagent runs as root and can read its --data-dir"
    )]
    Read { path: PathBuf, cause: io::Error },
    #[error("{path} is damaged ({message}): move it away to start without local endpoints")]
    Parse { path: PathBuf, message: String },
    #[error(
        "cannot write {path}: {cause}: check that the --data-dir is writable and its disk not full"
    )]
    Write { path: PathBuf, cause: io::Error },
}

/// One endpoint of this node, with what only this node needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    pub endpoint: Endpoint,
    /// The container's namespace as given at attach.
    pub container_netns: PathBuf,
    pub ifname: String,
    /// Whether the address was asked for (`--ip`): it is a reservation to
    /// release at detach, not an address of this node's blocks.
    #[serde(default)]
    pub explicit_ip: bool,
}

pub struct EndpointStore {
    path: PathBuf,
    entries: Vec<LocalEndpoint>,
}

impl EndpointStore {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| StoreError::Parse {
                path: path.clone(),
                message: error.to_string(),
            })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path,
                    cause: source,
                })
            }
        };
        Ok(Self { path, entries })
    }

    pub fn all(&self) -> &[LocalEndpoint] {
        &self.entries
    }

    pub fn endpoints(&self) -> Vec<crate::model::Endpoint> {
        self.entries.iter().map(|e| e.endpoint.clone()).collect()
    }

    /// The endpoint whose id starts with `id_or_prefix`, or whose name is it.
    pub fn find(&self, id_or_prefix: &str) -> Vec<&LocalEndpoint> {
        let exact: Vec<&LocalEndpoint> = self
            .entries
            .iter()
            .filter(|e| e.endpoint.id == id_or_prefix || e.endpoint.name == id_or_prefix)
            .collect();
        if !exact.is_empty() || id_or_prefix.is_empty() {
            return exact;
        }
        self.entries
            .iter()
            .filter(|e| e.endpoint.id.starts_with(id_or_prefix))
            .collect()
    }

    pub fn insert(&mut self, entry: LocalEndpoint) -> Result<(), StoreError> {
        self.entries.retain(|e| e.endpoint.id != entry.endpoint.id);
        self.entries.push(entry);
        self.save()
    }

    pub fn remove(&mut self, id: &str) -> Result<Option<LocalEndpoint>, StoreError> {
        let Some(at) = self.entries.iter().position(|e| e.endpoint.id == id) else {
            return Ok(None);
        };
        let removed = self.entries.remove(at);
        self.save()?;
        Ok(Some(removed))
    }

    /// Writes atomically: a crash leaves the old file or the new one.
    fn save(&self) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            cause: source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(&self.entries)
            .map_err(io::Error::other)
            .map_err(write_error)?;
        std::fs::write(&tmp, bytes).map_err(write_error)?;
        std::fs::rename(&tmp, &self.path).map_err(write_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str) -> LocalEndpoint {
        let ip = "10.10.0.2".parse().unwrap();
        LocalEndpoint {
            endpoint: Endpoint {
                name: name.into(),
                ..Endpoint::new(id, "appnet", "net1", "n1", ip)
            },
            container_netns: "/run/netns/c1".into(),
            ifname: "eth0".into(),
            explicit_ip: false,
        }
    }

    #[test]
    fn survives_a_reopen_and_finds_by_prefix_or_name() {
        let dir = std::env::temp_dir().join(format!("netagent-epstore-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = EndpointStore::open(&dir).unwrap();
        store.insert(entry("abcdef0123", "web.1")).unwrap();
        store.insert(entry("abc9990000", "web.2")).unwrap();
        let store = EndpointStore::open(&dir).unwrap();
        assert_eq!(store.all().len(), 2);
        assert_eq!(store.find("web.2")[0].endpoint.id, "abc9990000");
        assert_eq!(store.find("abcd").len(), 1);
        assert_eq!(store.find("abc").len(), 2);
        let mut store = store;
        assert!(store.remove("abcdef0123").unwrap().is_some());
        assert!(store.remove("abcdef0123").unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
