//! Which core owns which shard, kept in `DATA/shard-map.toml` so that shard
//! moves and rebalances survive a restart.
//!
//! The file is written after every move (write a temporary file, `fsync`,
//! rename, `fsync` the directory), always with the newest map. Placement is
//! only about where a shard is served, never about its data: a file that is
//! missing, unreadable or written for another `--cores` count is reported
//! and the node starts with the default placement (`shard % cores`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use reserva_engine::ids::ShardId;
use reserva_engine::limits::SHARD_COUNT;
use serde::{Deserialize, Serialize};

/// The shard map every core reads on each request; a shard move swaps in a
/// new version (lock-free for readers).
pub type SharedMap = std::sync::Arc<arc_swap::ArcSwap<reserva_protocol::ShardMap>>;

/// The placement file's name in the data directory.
pub const SHARD_MAP_FILE: &str = "shard-map.toml";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The shard map's version when written.
    pub version: u64,
    /// The node's core count the owners refer to.
    pub cores: u16,
    /// `owners[shard]`: the owning core; exactly `SHARD_COUNT` entries.
    pub owners: Vec<u16>,
}

impl Placement {
    /// The default placement of a node with `cores` cores (map version 1).
    pub fn default_for(cores: u16) -> Placement {
        Placement {
            version: 1,
            cores,
            owners: (0..SHARD_COUNT).map(|s| initial_owner(s, cores)).collect(),
        }
    }

    fn check(&self, cores: u16) -> Result<(), String> {
        if self.cores != cores {
            return Err(format!(
                "it was written for {} cores and the node runs {cores}",
                self.cores
            ));
        }
        if self.owners.len() != usize::from(SHARD_COUNT) {
            return Err(format!(
                "it lists {} owners, not {SHARD_COUNT}",
                self.owners.len()
            ));
        }
        if let Some((shard, core)) = self.owners.iter().enumerate().find(|(_, c)| **c >= cores) {
            return Err(format!(
                "shard {shard} is owned by core {core}, which does not exist"
            ));
        }
        if self.version == 0 {
            return Err("its version is 0".into());
        }
        Ok(())
    }
}

/// The core that owns `shard` on a fresh node of `cores` cores.
pub fn initial_owner(shard: ShardId, cores: u16) -> u16 {
    shard % cores
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SHARD_MAP_FILE)
}

/// The placement to start with: the stored one if it fits a node of `cores`
/// cores, else the default (with a warning saying why).
pub fn load(data_dir: &Path, cores: u16) -> Placement {
    let file = path(data_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Placement::default_for(cores),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read the stored shard placement; using the default");
            return Placement::default_for(cores);
        }
    };
    let stored = toml::from_str::<Placement>(&text)
        .map_err(|e| e.to_string())
        .and_then(|p| p.check(cores).map(|()| p));
    match stored {
        Ok(p) => {
            tracing::info!(
                version = p.version,
                "shard placement restored from {}",
                file.display()
            );
            p
        }
        Err(reason) => {
            tracing::warn!(file = %file.display(), %reason, "stored shard placement not used; using the default");
            Placement::default_for(cores)
        }
    }
}

/// Serializes writers, so an older map never overwrites a newer one.
static SAVE: Mutex<()> = Mutex::new(());

/// Writes the current map durably (the newest at the time of writing, so
/// concurrent moves on several cores end with the newest map on disk).
pub fn save(data_dir: &Path, map: &SharedMap, cores: u16) -> std::io::Result<()> {
    let _guard = SAVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let current = map.load();
    let placement = Placement {
        version: current.version,
        cores,
        owners: current.owners.clone(),
    };
    let text = toml::to_string(&placement).map_err(std::io::Error::other)?;
    let file = path(data_dir);
    let tmp = data_dir.join(format!("{SHARD_MAP_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(
            b"# Which core owns which shard; written by reserva-server after every shard move.\n",
        )?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reserva_protocol::ShardMap;
    use std::sync::Arc;

    fn shared(version: u64, owners: Vec<u16>) -> SharedMap {
        Arc::new(arc_swap::ArcSwap::from_pointee(ShardMap {
            version,
            owners,
            cores: Vec::new(),
        }))
    }

    #[test]
    fn a_saved_placement_loads_back_and_misfits_fall_back_to_the_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), 2), Placement::default_for(2));

        let mut owners = Placement::default_for(2).owners;
        owners[10] = 1;
        save(dir.path(), &shared(3, owners.clone()), 2).unwrap();
        let p = load(dir.path(), 2);
        assert_eq!((p.version, p.owners.clone()), (3, owners));

        // Another core count: the stored owners mean nothing.
        assert_eq!(load(dir.path(), 4), Placement::default_for(4));

        // Garbage, a short list, an owner out of range: the default.
        for text in [
            "nonsense",
            "version = 2\ncores = 2\nowners = [0, 1]\n",
            &format!("version = 2\ncores = 2\nowners = {:?}\n", vec![7u16; 256]),
            &format!(
                "version = 2\ncores = 2\nowners = {:?}\nextra = 1\n",
                vec![0u16; 256]
            ),
        ] {
            std::fs::write(path(dir.path()), text).unwrap();
            assert_eq!(load(dir.path(), 2), Placement::default_for(2), "{text}");
        }
    }
}
