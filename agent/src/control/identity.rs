//! What a node keeps on disk once it is in a cluster: `<data_dir>/cluster.json`,
//! written atomically (temp file + fsync + rename) with mode 0600 because it
//! holds the node's private key and the gossip key.

use std::{
    fs,
    io::{ErrorKind, Write},
    net::{IpAddr, SocketAddr},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::error::ControlError;
use crate::model::Role;

/// What a node keeps on disk (in its data dir) once it is in a cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterIdentity {
    pub cluster_id: String,
    pub node_id: String,
    pub node_name: String,
    pub role: Role,
    /// This node's advertise address.
    pub addr: IpAddr,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Gossip AEAD key.
    pub cluster_key: [u8; 32],
    /// Control-plane addresses of the managers (port 2377).
    pub managers: Vec<SocketAddr>,
}

impl ClusterIdentity {
    /// The identity saved in `data_dir`, if this node is in a cluster.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, ControlError> {
        load(data_dir)
    }

    /// Saves atomically (write + rename), key material mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), ControlError> {
        save(self, data_dir)
    }

    /// Forgets the cluster (`cluster leave`): removes the saved identity.
    pub fn remove(data_dir: &Path) -> Result<(), ControlError> {
        remove(data_dir)
    }
}

pub const FILE_NAME: &str = "cluster.json";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

pub fn load(data_dir: &Path) -> Result<Option<ClusterIdentity>, ControlError> {
    let file = path(data_dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(ControlError::Other(format!(
            "cannot read {}: {error}: check that netagent runs as root and can read its --data-dir",
            file.display()
        )))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|error| {
        ControlError::Other(format!(
            "{} is damaged ({error}): restore it from a backup or run `netctl cluster leave --force` and join again",
            file.display()
        ))
    })
}

pub fn save(identity: &ClusterIdentity, data_dir: &Path) -> Result<(), ControlError> {
    let io = |what: &str, error: std::io::Error| {
        ControlError::Other(format!(
            "cannot {what} in {}: {error}: check that the --data-dir is writable and its disk not full",
            data_dir.display()
        ))
    };
    fs::create_dir_all(data_dir).map_err(|e| io("create the data directory", e))?;
    let json = serde_json::to_vec_pretty(identity)
        .map_err(|e| {
            ControlError::Other(format!(
                "cannot encode the cluster identity ({e}): report this bug with the agent's log (`journalctl -u netagent`)"
            ))
        })?;
    let target = path(data_dir);
    let temp = data_dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)?;
        // `mode` only applies when the file is created: a leftover temp file
        // could have other bits.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        // The rename is durable only once the directory is synced.
        fs::File::open(data_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        io("write cluster.json", e)
    })
}

/// Removes the identity (`cluster leave`). Missing is fine.
pub fn remove(data_dir: &Path) -> Result<(), ControlError> {
    match fs::remove_file(path(data_dir)) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) => Err(ControlError::Other(format!(
            "cannot remove {}: {error}: check that netagent runs as root and can write its --data-dir",
            path(data_dir).display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::testdir::TestDir, model::Role};

    #[test]
    fn round_trip_is_private_and_atomic() {
        let dir = TestDir::new("identity");
        assert!(load(dir.path()).unwrap().is_none());
        let identity = ClusterIdentity {
            cluster_id: "c1".into(),
            node_id: "n1".into(),
            node_name: "node-1".into(),
            role: Role::Worker,
            addr: "127.0.0.1".parse().unwrap(),
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
            cluster_key: [7; 32],
            managers: vec!["127.0.0.1:2377".parse().unwrap()],
        };
        save(&identity, dir.path()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.node_id, "n1");
        assert_eq!(loaded.cluster_key, [7; 32]);
        assert_eq!(loaded.managers, identity.managers);
        let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Only the final file is left.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        remove(dir.path()).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
        fs::write(path(dir.path()), "{").unwrap();
        let error = load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("damaged"), "{error}");
    }
}
