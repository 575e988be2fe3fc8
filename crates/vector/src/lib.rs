//! hangar-vector: Hangar's vector database. Collections of points (id, f32 vector, JSON
//! payload) with a fixed dimension and distance, searched through an HNSW graph with
//! payload filters applied during the traversal, made durable by a write-ahead log and
//! checkpoints, copied by snapshots. Used by `hangar serve` (Qdrant's REST API, in the
//! serve crate) and `hangar vector`; knows nothing of HTTP.
//!
//! * [`VectorDb`]: the collections of a Hangar home (`<home>/vector/<name>/`), each
//!   behind a `RwLock`.
//! * [`Collection`]: upsert / delete / retrieve / scroll / count / search, payload
//!   indexes, checkpoint, rebuild, snapshots.
//! * [`Filter`]: Qdrant's filter language, parsed from JSON.
//!
//! ```no_run
//! use hangar_vector::{CollectionConfig, Distance, Point, PointId, SearchRequest, VectorDb};
//! let db = VectorDb::open("/tmp/vectors").unwrap();
//! let c = db.create("docs", CollectionConfig::new(3, Distance::Cosine)).unwrap();
//! let mut c = c.write().unwrap();
//! c.upsert(vec![Point { id: PointId::Num(1), vector: vec![1.0, 0.0, 0.0], payload: Default::default() }], true).unwrap();
//! let hits = c.search(&SearchRequest { vector: vec![1.0, 0.1, 0.0], limit: 5, ..Default::default() }).unwrap();
//! assert_eq!(hits[0].id, PointId::Num(1));
//! ```

mod collection;
mod error;
mod filter;
mod graph_file;
mod hnsw;
mod index;
pub mod npy;
mod point;
mod search;
mod snapshots;
mod storage;
mod store;
mod vectors;
mod wal;

pub use collection::{Collection, CollectionConfig, CollectionInfo, WithPayload};
pub use error::{Result, VectorError};
pub use filter::{Condition, FieldCondition, FieldTest, Filter, Range};
pub use hnsw::{Hnsw, HnswParams};
pub use index::IndexKind;
pub use point::{Distance, Payload, Point, PointId, Record, ScoredPoint};
pub use search::{Mmr, SearchPlan, SearchRequest};
pub use snapshots::{check_name as check_snapshot_name, SnapshotInfo};
pub use store::{check_collection_name, SharedCollection, VectorDb};
pub use vectors::Quantization;
