//! One collection: its config, points (ids, payloads, vectors, tombstones), the HNSW
//! graph, payload indexes and write-ahead log, with point operations and reads.
//! Search is in `search.rs`, snapshots in `snapshots.rs`. Callers hold it behind a
//! lock (the store's `RwLock` per collection); nothing here knows HTTP.

use crate::error::{Result, VectorError};
use crate::filter::Filter;
use crate::graph_file::{self, RowSource, GRAPH_FILE};
use crate::hnsw::{Hnsw, HnswParams};
use crate::index::{IndexKind, PayloadIndex};
use crate::point::{Distance, Payload, Point, PointId, Record};
use crate::storage::{read_data, write_data};
use crate::vectors::{Quantization, VectorRows};
use crate::wal::{Wal, WalOp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) const DATA_FILE: &str = "data.bin";
pub(crate) const WAL_FILE: &str = "wal.log";
/// A log larger than this is folded into a checkpoint after the next write.
const CHECKPOINT_WAL_BYTES: u64 = 64 << 20;
/// Tombstones beyond this share of rows make a checkpoint rebuild the graph.
const REBUILD_DELETED_SHARE: f64 = 0.2;

fn default_full_scan() -> usize {
    10_000
}

/// What a collection is, fixed at creation (indexes may be added later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionConfig {
    pub dim: usize,
    pub distance: Distance,
    #[serde(default)]
    pub hnsw: HnswParams,
    #[serde(default)]
    pub quantization: Quantization,
    /// Filters expected to leave at most this many points are answered by exact
    /// search over them instead of the graph.
    #[serde(default = "default_full_scan")]
    pub full_scan_threshold: usize,
    #[serde(default)]
    pub payload_indexes: BTreeMap<String, IndexKind>,
}

impl CollectionConfig {
    pub fn new(dim: usize, distance: Distance) -> Self {
        CollectionConfig {
            dim,
            distance,
            hnsw: HnswParams::default(),
            quantization: Quantization::None,
            full_scan_threshold: default_full_scan(),
            payload_indexes: BTreeMap::new(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.dim > 65_536 {
            return Err(VectorError::Invalid(format!(
                "vector size {} is out of range; use 1..=65536",
                self.dim
            )));
        }
        if self.hnsw.m < 2 || self.hnsw.m > 128 {
            return Err(VectorError::Invalid(format!(
                "hnsw m = {} is out of range; use 2..=128",
                self.hnsw.m
            )));
        }
        if self.hnsw.ef_construct == 0 || self.hnsw.ef_construct > 4096 {
            return Err(VectorError::Invalid(format!(
                "hnsw ef_construct = {} is out of range; use 1..=4096",
                self.hnsw.ef_construct
            )));
        }
        Ok(())
    }
}

/// Which payload to return with a point.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum WithPayload {
    #[default]
    None,
    All,
    Include(Vec<String>),
    Exclude(Vec<String>),
}

impl WithPayload {
    pub(crate) fn apply(&self, p: &Payload) -> Option<Payload> {
        match self {
            WithPayload::None => None,
            WithPayload::All => Some(p.clone()),
            WithPayload::Include(keys) => Some(
                p.iter()
                    .filter(|(k, _)| keys.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            WithPayload::Exclude(keys) => Some(
                p.iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        }
    }
}

/// A collection's state, for `GET /collections/{name}` and `hangar vector info`.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionInfo {
    pub name: String,
    pub points_count: usize,
    /// Rows in the graph, deleted ones included until a rebuild.
    pub graph_rows: usize,
    pub deleted_rows: usize,
    pub config: CollectionConfig,
    /// Indexed key -> (kind, points with an indexed value).
    pub payload_schema: BTreeMap<String, (IndexKind, usize)>,
    pub memory_bytes: usize,
    pub wal_bytes: u64,
    /// Whether the graph was read from the last checkpoint's graph file on open
    /// (false: it was rebuilt from the points, or the collection is new).
    pub graph_restored: bool,
}

pub struct Collection {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) config: CollectionConfig,
    pub(crate) ids: Vec<PointId>,
    pub(crate) payloads: Vec<Payload>,
    pub(crate) deleted: Vec<bool>,
    pub(crate) live: usize,
    pub(crate) by_id: BTreeMap<PointId, u32>,
    pub(crate) rows: VectorRows,
    pub(crate) graph: Hnsw,
    pub(crate) indexes: BTreeMap<String, PayloadIndex>,
    wal: Wal,
    graph_restored: bool,
}

impl Collection {
    /// Creates the collection's directory and empty data file, then opens it.
    pub fn create(dir: &Path, name: &str, config: CollectionConfig) -> Result<Collection> {
        config.validate()?;
        std::fs::create_dir_all(dir).map_err(|e| VectorError::io(dir, e))?;
        write_data(&dir.join(DATA_FILE), &config, 0, std::iter::empty())?;
        Collection::open(dir, name)
    }

    /// Opens a collection: loads the last checkpoint and its saved graph (or rebuilds
    /// the graph when none matches), then replays the log.
    pub fn open(dir: &Path, name: &str) -> Result<Collection> {
        let (config, points, crc) = read_data(&dir.join(DATA_FILE))?;
        let (wal, ops) = Wal::open(&dir.join(WAL_FILE))?;
        let saved = graph_file::read(
            &dir.join(GRAPH_FILE),
            crc,
            points.len(),
            config.dim,
            config.hnsw,
        );
        let mut c = Collection::empty(dir, name, config, wal);
        match saved {
            Some((rows, graph)) => c.install(points, rows, graph),
            None => c.apply(WalOp::Upsert(points)),
        }
        for op in ops {
            c.apply(op);
        }
        Ok(c)
    }

    /// Loads checkpointed points in the saved graph's row order, with that graph
    /// (`graph_file::read` checked that each live point appears exactly once).
    fn install(&mut self, points: Vec<Point>, rows: Vec<RowSource>, graph: Hnsw) {
        let mut points: Vec<Option<Point>> = points.into_iter().map(Some).collect();
        for (row, src) in rows.into_iter().enumerate() {
            let row = row as u32;
            match src {
                RowSource::Live(i) => {
                    let Some(p) = points.get_mut(i as usize).and_then(Option::take) else {
                        continue;
                    };
                    self.rows.push(&p.vector);
                    for (key, ix) in self.indexes.iter_mut() {
                        ix.add(row, key, &p.payload);
                    }
                    self.ids.push(p.id);
                    self.payloads.push(p.payload);
                    self.deleted.push(false);
                    self.by_id.insert(p.id, row);
                    self.live += 1;
                }
                RowSource::Deleted(v) => {
                    self.rows.push(&v);
                    // A deleted row's id is never looked up (it is not in `by_id`).
                    self.ids.push(PointId::Num(u64::MAX));
                    self.payloads.push(Payload::new());
                    self.deleted.push(true);
                }
            }
        }
        self.graph = graph;
        self.graph_restored = true;
    }

    fn empty(dir: &Path, name: &str, config: CollectionConfig, wal: Wal) -> Collection {
        let mut indexes = BTreeMap::new();
        for (k, kind) in &config.payload_indexes {
            indexes.insert(k.clone(), PayloadIndex::new(*kind));
        }
        Collection {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            rows: VectorRows::new(config.dim, config.distance, config.quantization),
            graph: Hnsw::new(config.hnsw, seed_of(name)),
            config,
            ids: Vec::new(),
            payloads: Vec::new(),
            deleted: Vec::new(),
            live: 0,
            by_id: BTreeMap::new(),
            indexes,
            wal,
            graph_restored: false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Applies a logged operation to memory (never fails: it was validated before
    /// it was logged).
    fn apply(&mut self, op: WalOp) {
        match op {
            WalOp::Upsert(points) => {
                for p in points {
                    if p.vector.len() != self.config.dim {
                        continue;
                    }
                    self.remove(p.id);
                    let row = self.rows.push(&p.vector);
                    let rows = &self.rows;
                    self.graph
                        .insert(|a, b| rows.pair(a, b), |r| rows.prefetch(r));
                    for (key, ix) in self.indexes.iter_mut() {
                        ix.add(row, key, &p.payload);
                    }
                    self.ids.push(p.id);
                    self.payloads.push(p.payload);
                    self.deleted.push(false);
                    self.by_id.insert(p.id, row);
                    self.live += 1;
                }
            }
            WalOp::Delete(ids) => {
                for id in ids {
                    self.remove(id);
                }
            }
            WalOp::CreateIndex { key, kind } => {
                let mut ix = PayloadIndex::new(kind);
                for (row, p) in self.payloads.iter().enumerate() {
                    if !self.deleted[row] {
                        ix.add(row as u32, &key, p);
                    }
                }
                self.config.payload_indexes.insert(key.clone(), kind);
                self.indexes.insert(key, ix);
            }
            WalOp::DeleteIndex { key } => {
                self.config.payload_indexes.remove(&key);
                self.indexes.remove(&key);
            }
        }
    }

    fn remove(&mut self, id: PointId) {
        if let Some(row) = self.by_id.remove(&id) {
            self.deleted[row as usize] = true;
            self.payloads[row as usize] = Payload::new();
            self.live -= 1;
        }
    }

    /// Logs (fsynced when `wait`), then applies.
    fn commit(&mut self, op: WalOp, wait: bool) -> Result<()> {
        self.wal.append(&op, wait)?;
        self.apply(op);
        if self.wal.len() > CHECKPOINT_WAL_BYTES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Inserts or replaces points. With `wait` they are on disk when this returns.
    pub fn upsert(&mut self, points: Vec<Point>, wait: bool) -> Result<()> {
        for p in &points {
            if p.vector.len() != self.config.dim {
                return Err(VectorError::WrongDimension {
                    expected: self.config.dim,
                    got: p.vector.len(),
                });
            }
            if let Some(x) = p.vector.iter().find(|x| !x.is_finite()) {
                return Err(VectorError::Invalid(format!(
                    "point {}: vector holds {x}; only finite numbers are allowed",
                    p.id
                )));
            }
        }
        if points.is_empty() {
            return Ok(());
        }
        self.commit(WalOp::Upsert(points), wait)
    }

    /// Deletes points by id (unknown ids are ignored); returns how many existed.
    pub fn delete(&mut self, ids: Vec<PointId>, wait: bool) -> Result<usize> {
        let n = ids.iter().filter(|id| self.by_id.contains_key(id)).count();
        self.commit(WalOp::Delete(ids), wait)?;
        Ok(n)
    }

    /// Deletes the points a filter matches; returns how many.
    pub fn delete_where(&mut self, filter: &Filter, wait: bool) -> Result<usize> {
        let ids: Vec<PointId> = self
            .by_id
            .iter()
            .filter(|(id, &row)| filter.matches(**id, &self.payloads[row as usize]))
            .map(|(id, _)| *id)
            .collect();
        let n = ids.len();
        self.commit(WalOp::Delete(ids), wait)?;
        Ok(n)
    }

    /// Indexes a payload key (replacing an index of another kind).
    pub fn create_index(&mut self, key: &str, kind: IndexKind, wait: bool) -> Result<()> {
        if key.is_empty() {
            return Err(VectorError::Invalid("payload index key is empty".into()));
        }
        self.commit(
            WalOp::CreateIndex {
                key: key.to_string(),
                kind,
            },
            wait,
        )
    }

    pub fn delete_index(&mut self, key: &str, wait: bool) -> Result<()> {
        self.commit(
            WalOp::DeleteIndex {
                key: key.to_string(),
            },
            wait,
        )
    }

    pub(crate) fn record(&self, row: u32, with_payload: &WithPayload, with_vector: bool) -> Record {
        Record {
            id: self.ids[row as usize],
            payload: with_payload.apply(&self.payloads[row as usize]),
            vector: with_vector.then(|| self.rows.get(row).to_vec()),
        }
    }

    /// The points with these ids, in the order asked, missing ones left out.
    pub fn retrieve(
        &self,
        ids: &[PointId],
        with_payload: &WithPayload,
        with_vector: bool,
    ) -> Vec<Record> {
        ids.iter()
            .filter_map(|id| self.by_id.get(id))
            .map(|&row| self.record(row, with_payload, with_vector))
            .collect()
    }

    /// Points in id order from `offset` (inclusive), and the id the next page starts at.
    pub fn scroll(
        &self,
        filter: Option<&Filter>,
        offset: Option<PointId>,
        limit: usize,
        with_payload: &WithPayload,
        with_vector: bool,
    ) -> (Vec<Record>, Option<PointId>) {
        let start = offset.unwrap_or(PointId::Num(0));
        let mut out = Vec::new();
        let mut next = None;
        for (id, &row) in self.by_id.range(start..) {
            if !filter.is_none_or(|f| f.matches(*id, &self.payloads[row as usize])) {
                continue;
            }
            if out.len() == limit {
                next = Some(*id);
                break;
            }
            out.push(self.record(row, with_payload, with_vector));
        }
        (out, next)
    }

    /// Exact count of the points a filter matches (all points without one).
    pub fn count(&self, filter: Option<&Filter>) -> usize {
        match filter {
            None => self.live,
            Some(f) => self
                .by_id
                .iter()
                .filter(|(id, &row)| f.matches(**id, &self.payloads[row as usize]))
                .count(),
        }
    }

    pub fn info(&self) -> CollectionInfo {
        CollectionInfo {
            name: self.name.clone(),
            points_count: self.live,
            graph_rows: self.ids.len(),
            deleted_rows: self.ids.len() - self.live,
            config: self.config.clone(),
            payload_schema: self
                .indexes
                .iter()
                .map(|(k, ix)| (k.clone(), (ix.kind, ix.indexed_rows)))
                .collect(),
            memory_bytes: self.rows.memory_bytes() + self.graph.memory_bytes(),
            wal_bytes: self.wal.len(),
            graph_restored: self.graph_restored,
        }
    }

    /// The live points, in id order.
    pub(crate) fn live_points(&self) -> impl Iterator<Item = (PointId, &Payload, &[f32])> {
        self.by_id
            .iter()
            .map(|(id, &row)| (*id, &self.payloads[row as usize], self.rows.get(row)))
    }

    /// Writes every live point to the data file and empties the log. Rebuilds the
    /// graph first when tombstones exceed a fifth of its rows.
    pub fn checkpoint(&mut self) -> Result<()> {
        let rows = self.ids.len();
        if rows > 0 && (rows - self.live) as f64 > REBUILD_DELETED_SHARE * rows as f64 {
            self.rebuild();
        }
        let crc = write_data(
            &self.dir.join(DATA_FILE),
            &self.config,
            self.live,
            self.live_points(),
        )?;
        self.save_graph(crc);
        self.wal.truncate()
    }

    /// Saves the graph beside the data file just written (with CRC `data_crc`). A
    /// failure here costs only a rebuild on the next open, so it is reported, not
    /// returned.
    fn save_graph(&self, data_crc: u32) {
        // Live rows are numbered in the data file's order, which is id order.
        let mut order = vec![u32::MAX; self.ids.len()];
        for (n, &row) in self.by_id.values().enumerate() {
            order[row as usize] = n as u32;
        }
        let rows: Vec<RowSource> = (0..self.ids.len())
            .map(|r| {
                if self.deleted[r] {
                    RowSource::Deleted(self.rows.get(r as u32).to_vec())
                } else {
                    RowSource::Live(order[r])
                }
            })
            .collect();
        let path = self.dir.join(GRAPH_FILE);
        if let Err(e) = graph_file::write(&path, data_crc, &rows, &self.graph) {
            eprintln!("hangar vector: could not save the graph of {}: {e}; it will be rebuilt on the next open", self.name);
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Rebuilds the graph, vectors and indexes from the live points, dropping tombstones.
    pub fn rebuild(&mut self) {
        let points: Vec<Point> = self
            .live_points()
            .map(|(id, p, v)| Point {
                id,
                vector: v.to_vec(),
                payload: p.clone(),
            })
            .collect();
        self.reset();
        self.apply(WalOp::Upsert(points));
    }

    /// Empties memory (not the disk): no points, no graph, empty indexes.
    fn reset(&mut self) {
        self.rows = VectorRows::new(
            self.config.dim,
            self.config.distance,
            self.config.quantization,
        );
        self.graph = Hnsw::new(self.config.hnsw, seed_of(&self.name));
        self.ids.clear();
        self.payloads.clear();
        self.deleted.clear();
        self.live = 0;
        self.by_id.clear();
        self.indexes = self
            .config
            .payload_indexes
            .iter()
            .map(|(k, kind)| (k.clone(), PayloadIndex::new(*kind)))
            .collect();
    }

    pub(crate) fn sync_wal(&mut self) -> Result<()> {
        self.wal.sync()
    }
}

/// A per-collection seed, so graphs are reproducible.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
