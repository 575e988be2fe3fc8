//! `hangar vector`: the vector database from the command line — create, list, info,
//! upsert (JSON lines), query, snapshots — and `bench`, which drives the index
//! in-process (no HTTP) for scripts/bench-vector.py. Wiring only; the work is
//! hangar-vector's.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hangar_vector::{
    CollectionConfig, Distance, Filter, HnswParams, Point, Quantization, SearchRequest, VectorDb,
    WithPayload,
};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Subcommand)]
pub enum VectorCmd {
    /// Create a collection.
    Create(CreateArgs),
    /// List collections.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a collection's size, config and payload indexes.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Upsert points from a JSON-lines file (`{"id": 1, "vector": [...], "payload": {...}}`
    /// per line; `-` reads stdin); durable when the command returns.
    Upsert {
        name: String,
        #[arg(long, default_value = "-")]
        file: String,
        #[arg(long)]
        json: bool,
    },
    /// Nearest neighbours of a vector.
    Query(QueryArgs),
    /// Snapshots: create, list, restore.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Benchmark the index in-process on .npy data (used by scripts/bench-vector.py).
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// Vector dimension.
    #[arg(long)]
    dim: usize,
    /// cosine, dot or euclid.
    #[arg(long, default_value = "cosine")]
    distance: String,
    /// HNSW links per node.
    #[arg(long, default_value_t = 16)]
    m: usize,
    /// HNSW candidate list size while building.
    #[arg(long, default_value_t = 100)]
    ef_construct: usize,
    /// Keep int8-quantised vectors for the graph search (re-scored in f32).
    #[arg(long)]
    int8: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct QueryArgs {
    name: String,
    /// The query vector as JSON, e.g. '[0.1, 0.2, 0.3]'.
    #[arg(long)]
    vector: String,
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// A Qdrant filter as JSON, e.g. '{"must": [{"key": "city", "match": {"value": "Paris"}}]}'.
    #[arg(long)]
    filter: Option<String>,
    /// Candidate list size of the graph search.
    #[arg(long)]
    ef: Option<usize>,
    /// Exact search (no graph).
    #[arg(long)]
    exact: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a collection; prints the snapshot's file.
    Create {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List a collection's snapshots.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace (or create) a collection from a snapshot file.
    Restore {
        name: String,
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct BenchArgs {
    /// Base vectors, float32 .npy (n x dim).
    #[arg(long)]
    data: PathBuf,
    /// Query vectors, float32 .npy (q x dim).
    #[arg(long)]
    queries: PathBuf,
    /// True nearest neighbours (row numbers), int .npy (q x >=k).
    #[arg(long)]
    truth: PathBuf,
    #[arg(long, default_value = "cosine")]
    distance: String,
    #[arg(long, default_value_t = 16)]
    m: usize,
    #[arg(long, default_value_t = 100)]
    ef_construct: usize,
    /// Comma-separated ef values to measure.
    #[arg(long, default_value = "10,20,40,80,160")]
    ef: String,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long)]
    int8: bool,
    /// Also measure a filter keeping 1% of points (payload `bucket` = row % 100 == 0,
    /// integer-indexed), with this .npy of the true filtered neighbours.
    #[arg(long)]
    filtered_truth: Option<PathBuf>,
}

fn open(home: Option<PathBuf>) -> Result<VectorDb> {
    let home = home.unwrap_or_else(hangar_registry::default_home);
    VectorDb::open_in_home(&home).with_context(|| format!("opening {}/vector", home.display()))
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn run_vector(cmd: VectorCmd, home: Option<PathBuf>) -> Result<()> {
    match cmd {
        VectorCmd::Create(a) => {
            let db = open(home)?;
            let mut cfg = CollectionConfig::new(a.dim, Distance::parse(&a.distance)?);
            cfg.hnsw = HnswParams {
                m: a.m,
                ef_construct: a.ef_construct,
            };
            if a.int8 {
                cfg.quantization = Quantization::Int8;
            }
            db.create(&a.name, cfg)?;
            if a.json {
                print_json(&serde_json::json!({"created": a.name}))
            } else {
                println!("created collection {:?}", a.name);
                Ok(())
            }
        }
        VectorCmd::List { json } => {
            let db = open(home)?;
            let names = db.list();
            if json {
                return print_json(&names);
            }
            for n in names {
                println!("{n}");
            }
            Ok(())
        }
        VectorCmd::Info { name, json } => {
            let db = open(home)?;
            let info = db
                .get(&name)?
                .read()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .info();
            if json {
                return print_json(&info);
            }
            println!(
                "{}: {} points, dim {}, {:?}, m {}, ef_construct {}, {:?}; {} deleted rows awaiting rebuild; indexes: {:?}",
                info.name,
                info.points_count,
                info.config.dim,
                info.config.distance,
                info.config.hnsw.m,
                info.config.hnsw.ef_construct,
                info.config.quantization,
                info.deleted_rows,
                info.payload_schema.keys().collect::<Vec<_>>()
            );
            Ok(())
        }
        VectorCmd::Upsert { name, file, json } => {
            let db = open(home)?;
            let reader: Box<dyn BufRead> = if file == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file).with_context(|| format!("opening {file}"))?,
                ))
            };
            let mut points = Vec::new();
            for (i, line) in reader.lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let p: Point = serde_json::from_str(&line).with_context(|| {
                    format!(
                        "{file}:{}: expected {{\"id\", \"vector\", \"payload\"}}",
                        i + 1
                    )
                })?;
                points.push(p);
            }
            let n = points.len();
            let c = db.get(&name)?;
            c.write()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .upsert(points, true)?;
            if json {
                print_json(&serde_json::json!({"upserted": n}))
            } else {
                println!("upserted {n} points into {name:?}");
                Ok(())
            }
        }
        VectorCmd::Query(a) => {
            let db = open(home)?;
            let vector: Vec<f32> = serde_json::from_str(&a.vector)
                .context("--vector must be a JSON list of numbers")?;
            let filter = a
                .filter
                .as_deref()
                .map(|f| -> Result<Filter> {
                    let v: serde_json::Value =
                        serde_json::from_str(f).context("--filter is not JSON")?;
                    Ok(Filter::from_json(&v)?)
                })
                .transpose()?;
            let c = db.get(&a.name)?;
            let g = c.read().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
            let (hits, plan) = g.search_planned(&SearchRequest {
                vector,
                limit: a.limit,
                filter,
                ef: a.ef,
                exact: a.exact,
                with_payload: WithPayload::All,
                ..Default::default()
            })?;
            if a.json {
                return print_json(&serde_json::json!({"plan": plan, "points": hits}));
            }
            for h in hits {
                println!(
                    "{}\t{:.6}\t{}",
                    h.id,
                    h.score,
                    serde_json::to_string(&h.payload)?
                );
            }
            Ok(())
        }
        VectorCmd::Snapshot(s) => run_snapshot(s, home),
        VectorCmd::Bench(a) => bench(a),
    }
}

fn run_snapshot(cmd: SnapshotCmd, home: Option<PathBuf>) -> Result<()> {
    let db = open(home)?;
    match cmd {
        SnapshotCmd::Create { name, json } => {
            let c = db.get(&name)?;
            let info = c
                .write()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .create_snapshot()?;
            let path = c
                .read()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .snapshot_path(&info.name)?;
            if json {
                return print_json(&serde_json::json!({"snapshot": info, "path": path}));
            }
            println!("{}", path.display());
            Ok(())
        }
        SnapshotCmd::List { name, json } => {
            let list = db
                .get(&name)?
                .read()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))?
                .list_snapshots()?;
            if json {
                return print_json(&list);
            }
            for s in list {
                println!("{}\t{} bytes", s.name, s.size);
            }
            Ok(())
        }
        SnapshotCmd::Restore { name, file } => {
            db.restore(&name, &file)?;
            println!("restored {name:?} from {}", file.display());
            Ok(())
        }
    }
}

/// Builds a collection from .npy data in a temporary home and measures recall@k and
/// queries/s (one thread) for each ef; prints one JSON object.
fn bench(a: BenchArgs) -> Result<()> {
    use hangar_vector::npy;
    let data = npy::read_f32(&a.data)?;
    let queries = npy::read_f32(&a.queries)?;
    let truth = npy::read_i64(&a.truth)?;
    if queries.cols != data.cols || truth.rows != queries.rows || truth.cols < a.k {
        bail!(
            "shapes do not fit: data {}x{}, queries {}x{}, truth {}x{} (k {})",
            data.rows,
            data.cols,
            queries.rows,
            queries.cols,
            truth.rows,
            truth.cols,
            a.k
        );
    }
    let tmp = std::env::temp_dir().join(format!("hangar-vector-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let db = VectorDb::open(&tmp)?;
    let mut cfg = CollectionConfig::new(data.cols, Distance::parse(&a.distance)?);
    cfg.hnsw = HnswParams {
        m: a.m,
        ef_construct: a.ef_construct,
    };
    if a.int8 {
        cfg.quantization = Quantization::Int8;
    }
    let c = db.create("bench", cfg)?;
    let mut g = c.write().map_err(|_| anyhow::anyhow!("lock poisoned"))?;
    let t0 = Instant::now();
    let batch = 10_000;
    for start in (0..data.rows).step_by(batch) {
        let points: Vec<Point> = (start..(start + batch).min(data.rows))
            .map(|i| {
                let mut payload = hangar_vector::Payload::new();
                payload.insert("bucket".into(), serde_json::json!((i % 100) as i64));
                Point {
                    id: hangar_vector::PointId::Num(i as u64),
                    vector: data.row(i).to_vec(),
                    payload,
                }
            })
            .collect();
        g.upsert(points, false)?;
    }
    let build_s = t0.elapsed().as_secs_f64();
    let info = g.info();
    let recall_of = |hits: &[hangar_vector::ScoredPoint], truth_row: &[i64]| -> usize {
        let t: std::collections::HashSet<i64> = truth_row[..a.k].iter().copied().collect();
        hits.iter()
            .filter(|h| matches!(h.id, hangar_vector::PointId::Num(n) if t.contains(&(n as i64))))
            .count()
    };
    let mut curve = Vec::new();
    for ef in a.ef.split(',').map(|s| s.trim().parse::<usize>()) {
        let ef = ef.context("--ef: comma-separated integers")?;
        let t = Instant::now();
        let mut found = 0;
        for qi in 0..queries.rows {
            let hits = g.search(&SearchRequest {
                vector: queries.row(qi).to_vec(),
                limit: a.k,
                ef: Some(ef),
                ..Default::default()
            })?;
            found += recall_of(&hits, truth.row(qi));
        }
        let secs = t.elapsed().as_secs_f64();
        curve.push(serde_json::json!({"ef": ef, "recall": found as f64 / (queries.rows * a.k) as f64, "qps": queries.rows as f64 / secs}));
    }
    let mut filtered = serde_json::Value::Null;
    if let Some(ft) = &a.filtered_truth {
        let ft = npy::read_i64(ft)?;
        // As a user would: an integer index on the filtered key (built after timing).
        g.create_index("bucket", hangar_vector::IndexKind::Integer, false)?;
        let f = Filter::from_json(
            &serde_json::json!({"must": [{"key": "bucket", "match": {"value": 0}}]}),
        )?;
        let t = Instant::now();
        let mut found = 0;
        for qi in 0..queries.rows {
            let hits = g.search(&SearchRequest {
                vector: queries.row(qi).to_vec(),
                limit: a.k,
                filter: Some(f.clone()),
                ..Default::default()
            })?;
            found += recall_of(&hits, ft.row(qi));
        }
        let secs = t.elapsed().as_secs_f64();
        filtered = serde_json::json!({"selectivity": 0.01, "recall": found as f64 / (queries.rows * a.k) as f64, "qps": queries.rows as f64 / secs});
    }
    // Restart cost: reopen from the checkpoint with its saved graph, then again with
    // the graph file removed (the rebuild every open did before graphs were saved).
    g.checkpoint()?;
    drop(g);
    drop(c);
    drop(db);
    let reopen = |label: &str| -> Result<(f64, bool)> {
        let t = Instant::now();
        let db = VectorDb::open(&tmp)?;
        let c = db.get("bench")?;
        let restored = c
            .read()
            .map_err(|_| anyhow::anyhow!("lock poisoned"))?
            .info()
            .graph_restored;
        let secs = t.elapsed().as_secs_f64();
        eprintln!("reopen ({label}): {secs:.2} s, graph restored: {restored}");
        Ok((secs, restored))
    };
    let (saved_s, restored) = reopen("saved graph")?;
    let _ = std::fs::remove_file(tmp.join("bench").join("graph.bin"));
    let (rebuild_s, _) = reopen("graph file removed")?;
    let out = serde_json::json!({
        "n": data.rows, "dim": data.cols, "m": a.m, "ef_construct": a.ef_construct, "int8": a.int8,
        "build_s": build_s, "index_bytes": info.memory_bytes,
        "bytes_per_vector": info.memory_bytes as f64 / data.rows as f64,
        "curve": curve, "filtered": filtered,
        "reopen": {"saved_graph_s": saved_s, "graph_restored": restored, "rebuild_s": rebuild_s},
    });
    let _ = std::fs::remove_dir_all(&tmp);
    print_json(&out)
}
