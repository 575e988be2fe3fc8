//! The vector database of a Hangar home: the collections under `<home>/vector/`, each
//! behind its own `RwLock` (many readers, one writer), plus create / delete / restore
//! and the periodic checkpoint. Knows directories and locks, not HTTP.

use crate::collection::{Collection, CollectionConfig, DATA_FILE, WAL_FILE};
use crate::error::{Result, VectorError};
use crate::storage::{read_data, write_atomic};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

/// A collection shared between threads.
pub type SharedCollection = Arc<RwLock<Collection>>;

pub struct VectorDb {
    root: PathBuf,
    collections: RwLock<BTreeMap<String, SharedCollection>>,
    /// An exclusive lock on `<root>/.lock`, held while this is open: two processes
    /// replaying and appending the same logs would each lose the other's writes.
    _lock: std::fs::File,
}

const LOCK_FILE: &str = ".lock";

/// Collection names: 1-255 of `[A-Za-z0-9_.-]`, not starting with a dot.
pub fn check_collection_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::BadName(name.to_string()))
    }
}

impl VectorDb {
    /// Opens (creating) `root` and every collection in it, replaying their logs.
    pub fn open(root: impl Into<PathBuf>) -> Result<VectorDb> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| VectorError::io(&root, e))?;
        let lock_path = root.join(LOCK_FILE);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| VectorError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(VectorError::InUse(root.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(VectorError::io(&lock_path, e)),
        }
        let mut map = BTreeMap::new();
        let rd = std::fs::read_dir(&root).map_err(|e| VectorError::io(&root, e))?;
        for e in rd.filter_map(|e| e.ok()) {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_collection_name(&name).is_err() || !e.path().join(DATA_FILE).is_file() {
                continue;
            }
            let c = Collection::open(&e.path(), &name)?;
            map.insert(name, Arc::new(RwLock::new(c)));
        }
        Ok(VectorDb {
            root,
            collections: RwLock::new(map),
            _lock: lock,
        })
    }

    /// `<home>/vector`.
    pub fn open_in_home(home: &Path) -> Result<VectorDb> {
        VectorDb::open(home.join("vector"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, SharedCollection>> {
        self.collections.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, SharedCollection>> {
        self.collections.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    pub fn exists(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<SharedCollection> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| VectorError::CollectionNotFound(name.to_string()))
    }

    pub fn create(&self, name: &str, config: CollectionConfig) -> Result<SharedCollection> {
        check_collection_name(name)?;
        let mut map = self.map_mut();
        if map.contains_key(name) {
            return Err(VectorError::CollectionExists(name.to_string()));
        }
        let dir = self.root.join(name);
        if dir.exists() {
            // Leftovers of a collection deleted mid-way.
            std::fs::remove_dir_all(&dir).map_err(|e| VectorError::io(&dir, e))?;
        }
        let c = Arc::new(RwLock::new(Collection::create(&dir, name, config)?));
        map.insert(name.to_string(), c.clone());
        Ok(c)
    }

    /// Deletes a collection and its files; false when it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool> {
        let Some(c) = self.map_mut().remove(name) else {
            return Ok(false);
        };
        let _guard = c.write().unwrap_or_else(|e| e.into_inner());
        let dir = self.root.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| VectorError::io(&dir, e))?;
        Ok(true)
    }

    /// Replaces a collection's content with a snapshot file (creating the collection
    /// when it does not exist). Existing snapshots of the collection are kept.
    pub fn restore(&self, name: &str, snapshot: &Path) -> Result<()> {
        check_collection_name(name)?;
        let bytes = std::fs::read(snapshot).map_err(|e| VectorError::io(snapshot, e))?;
        read_data(snapshot)?; // checks the format and checksum before touching anything
        let dir = self.root.join(name);
        let existing = self.map().get(name).cloned();
        match existing {
            Some(c) => {
                let mut guard = c.write().unwrap_or_else(|e| e.into_inner());
                write_atomic(&dir.join(DATA_FILE), &bytes)?;
                std::fs::write(dir.join(WAL_FILE), b"").map_err(|e| VectorError::io(&dir, e))?;
                *guard = Collection::open(&dir, name)?;
            }
            None => {
                let mut map = self.map_mut();
                std::fs::create_dir_all(&dir).map_err(|e| VectorError::io(&dir, e))?;
                write_atomic(&dir.join(DATA_FILE), &bytes)?;
                let _ = std::fs::remove_file(dir.join(WAL_FILE));
                let c = Collection::open(&dir, name)?;
                map.insert(name.to_string(), Arc::new(RwLock::new(c)));
            }
        }
        Ok(())
    }

    /// Checkpoints every collection with a non-empty log.
    pub fn checkpoint_all(&self) -> Result<()> {
        let all: Vec<SharedCollection> = self.map().values().cloned().collect();
        for c in all {
            let mut g = c.write().unwrap_or_else(|e| e.into_inner());
            if g.info().wal_bytes > 0 {
                g.checkpoint()?;
            }
        }
        Ok(())
    }

    /// Starts a thread that checkpoints (and rebuilds graphs with many tombstones)
    /// every `every`, until the database is dropped.
    pub fn start_checkpoints(self: &Arc<Self>, every: Duration) {
        let weak: Weak<VectorDb> = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("hangar-vector-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(db) = weak.upgrade() else { return };
                if let Err(e) = db.checkpoint_all() {
                    eprintln!("hangar vector: checkpoint failed: {e}");
                }
            });
    }
}
