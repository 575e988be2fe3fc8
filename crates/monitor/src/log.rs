//! The durable request log: every request's prompt, answer, token counts, timings,
//! model, key and cost, appended to SQLite (WAL) by a writer thread so that the request
//! path never waits on disk. Sampling, redaction and retention happen here; search and
//! export read through their own connection.

use crate::redact::redact;
use crate::MonitorError;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One finished request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    /// Row id (0 before it is stored).
    #[serde(default)]
    pub id: i64,
    /// Unix time in milliseconds when the request arrived.
    pub ts_ms: i64,
    pub request_id: String,
    pub route: String,
    pub model: String,
    /// Registry version (`name@3`), when the model came from the registry.
    #[serde(default)]
    pub model_version: Option<String>,
    /// A short non-reversible id of the API key (never the key).
    #[serde(default)]
    pub key_id: Option<String>,
    pub prompt: String,
    pub response: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub decode_ms: f64,
    pub e2e_ms: f64,
    pub finish_reason: String,
    pub status: u16,
    pub cost: f64,
}

/// How much is kept, and how.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Share of requests stored (0..=1), decided per request.
    pub sample_rate: f64,
    /// Replace emails, phone and card numbers and secrets before storing.
    pub redact: bool,
    /// Keep at most this many rows (oldest deleted first); 0 = no limit.
    pub max_rows: u64,
    /// Delete rows older than this; None = keep.
    pub max_age: Option<Duration>,
    /// Records waiting for the writer beyond which new ones are dropped (and counted).
    pub queue: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            sample_rate: 1.0,
            redact: false,
            max_rows: 1_000_000,
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            queue: 10_000,
        }
    }
}

/// Counters of what the log did (for /metrics).
#[derive(Debug, Default)]
pub struct LogCounters {
    pub written: AtomicU64,
    pub sampled_out: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// A search over the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogQuery {
    /// Substring of the prompt or response (case-insensitive for ASCII).
    pub text: Option<String>,
    pub model: Option<String>,
    pub key_id: Option<String>,
    pub finish_reason: Option<String>,
    /// Only requests at or after this Unix time in ms.
    pub since_ms: Option<i64>,
    /// Only rows with an id below this (paging backwards from the newest).
    pub before_id: Option<i64>,
    /// Only rows with an id above this (paging forwards from the oldest).
    pub after_id: Option<i64>,
    pub limit: usize,
}

enum Msg {
    Record(Box<RequestRecord>),
    Flush(SyncSender<()>),
}

/// The log: cheap to clone the handle around; `record` never blocks.
pub struct RequestLog {
    path: PathBuf,
    cfg: LogConfig,
    tx: Mutex<Option<SyncSender<Msg>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    pub counters: Arc<LogCounters>,
    sample_state: AtomicU64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts_ms INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  route TEXT NOT NULL,
  model TEXT NOT NULL,
  model_version TEXT,
  key_id TEXT,
  prompt TEXT NOT NULL,
  response TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  queue_ms REAL NOT NULL,
  ttft_ms REAL NOT NULL,
  decode_ms REAL NOT NULL,
  e2e_ms REAL NOT NULL,
  finish_reason TEXT NOT NULL,
  status INTEGER NOT NULL,
  cost REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts_ms);
CREATE INDEX IF NOT EXISTS requests_model ON requests(model, ts_ms);
CREATE INDEX IF NOT EXISTS requests_key ON requests(key_id, ts_ms);
";

fn open_db(path: &Path) -> Result<Connection, MonitorError> {
    let conn = Connection::open(path).map_err(|e| MonitorError::db(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| MonitorError::db(path, e))?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        .map_err(|e| MonitorError::db(path, e))?;
    Ok(conn)
}

impl RequestLog {
    /// Opens (creating) the log at `path` and starts its writer thread.
    pub fn open(path: impl AsRef<Path>, cfg: LogConfig) -> Result<Self, MonitorError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| MonitorError::io(dir, e))?;
        }
        let conn = open_db(&path)?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| MonitorError::db(&path, e))?;
        let reader = open_db(&path)?;
        let (tx, rx) = sync_channel(cfg.queue.max(1));
        let counters = Arc::new(LogCounters::default());
        let writer = {
            let counters = counters.clone();
            let cfg = cfg.clone();
            let path = path.clone();
            std::thread::Builder::new()
                .name("hangar-request-log".into())
                .spawn(move || writer_loop(conn, rx, cfg, counters, path))
                .map_err(|e| MonitorError::io(Path::new("request-log thread"), e))?
        };
        Ok(RequestLog {
            path,
            cfg,
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(reader),
            counters,
            sample_state: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands a record to the writer; never waits. Returns false when it was sampled
    /// out or the queue was full (counted as dropped).
    pub fn record(&self, rec: RequestRecord) -> bool {
        if !self.keep_sample() {
            self.counters.sampled_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        match tx.try_send(Msg::Record(Box::new(rec))) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// A deterministic sampler (splitmix64 sequence): exact rates over many requests
    /// without a lock or a shared RNG.
    fn keep_sample(&self) -> bool {
        let rate = self.cfg.sample_rate;
        if rate >= 1.0 {
            return true;
        }
        if rate <= 0.0 {
            return false;
        }
        let mut z = self
            .sample_state
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 <= rate
    }

    /// Waits until everything recorded so far is on disk.
    pub fn flush(&self) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(tx) = tx {
            let (done_tx, done_rx) = sync_channel(1);
            if tx.send(Msg::Flush(done_tx)).is_ok() {
                let _ = done_rx.recv_timeout(Duration::from_secs(30));
            }
        }
    }

    /// Stops the writer after it has stored everything queued.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    /// The newest `n` records, newest first.
    pub fn tail(&self, n: usize) -> Result<Vec<RequestRecord>, MonitorError> {
        self.search(&LogQuery {
            limit: n,
            ..Default::default()
        })
    }

    /// Records matching `q`, newest first.
    pub fn search(&self, q: &LogQuery) -> Result<Vec<RequestRecord>, MonitorError> {
        self.query(q, false)
    }

    fn query(&self, q: &LogQuery, oldest_first: bool) -> Result<Vec<RequestRecord>, MonitorError> {
        let mut sql = String::from("SELECT id, ts_ms, request_id, route, model, model_version, key_id, prompt, response, prompt_tokens, completion_tokens, queue_ms, ttft_ms, decode_ms, e2e_ms, finish_reason, status, cost FROM requests WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = &q.text {
            sql.push_str(
                " AND (instr(lower(prompt), lower(?)) > 0 OR instr(lower(response), lower(?)) > 0)",
            );
            args.push(t.clone().into());
            args.push(t.clone().into());
        }
        for (col, v) in [
            ("model", &q.model),
            ("key_id", &q.key_id),
            ("finish_reason", &q.finish_reason),
        ] {
            if let Some(v) = v {
                sql.push_str(&format!(" AND {col} = ?"));
                args.push(v.clone().into());
            }
        }
        if let Some(s) = q.since_ms {
            sql.push_str(" AND ts_ms >= ?");
            args.push(s.into());
        }
        if let Some(b) = q.before_id {
            sql.push_str(" AND id < ?");
            args.push(b.into());
        }
        if let Some(a) = q.after_id {
            sql.push_str(" AND id > ?");
            args.push(a.into());
        }
        sql.push_str(if oldest_first {
            " ORDER BY id ASC LIMIT ?"
        } else {
            " ORDER BY id DESC LIMIT ?"
        });
        args.push((q.limit.clamp(1, 100_000) as i64).into());
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn
            .prepare(&sql)
            .map_err(|e| MonitorError::db(&self.path, e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), row_to_record)
            .map_err(|e| MonitorError::db(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| MonitorError::db(&self.path, e))
    }

    /// One record by id.
    pub fn get(&self, id: i64) -> Result<Option<RequestRecord>, MonitorError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("SELECT id, ts_ms, request_id, route, model, model_version, key_id, prompt, response, prompt_tokens, completion_tokens, queue_ms, ttft_ms, decode_ms, e2e_ms, finish_reason, status, cost FROM requests WHERE id = ?", [id], row_to_record)
            .optional()
            .map_err(|e| MonitorError::db(&self.path, e))
    }

    /// Number of stored records.
    pub fn count(&self) -> Result<u64, MonitorError> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row("SELECT count(*) FROM requests", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| MonitorError::db(&self.path, e))
    }

    /// Writes every record matching `q` (its `limit` ignored), oldest first, as JSON
    /// lines, a page at a time; returns the count.
    pub fn export_jsonl(
        &self,
        q: &LogQuery,
        out: &mut dyn std::io::Write,
    ) -> Result<usize, MonitorError> {
        let mut page = q.clone();
        page.limit = 10_000;
        let mut n = 0;
        loop {
            let rows = self.query(&page, true)?;
            for r in &rows {
                let line = serde_json::to_string(r).map_err(MonitorError::Json)?;
                writeln!(out, "{line}").map_err(|e| MonitorError::io(Path::new("export"), e))?;
            }
            n += rows.len();
            match rows.last() {
                Some(last) if rows.len() == page.limit => page.after_id = Some(last.id),
                _ => return Ok(n),
            }
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn row_to_record(r: &rusqlite::Row) -> rusqlite::Result<RequestRecord> {
    Ok(RequestRecord {
        id: r.get(0)?,
        ts_ms: r.get(1)?,
        request_id: r.get(2)?,
        route: r.get(3)?,
        model: r.get(4)?,
        model_version: r.get(5)?,
        key_id: r.get(6)?,
        prompt: r.get(7)?,
        response: r.get(8)?,
        prompt_tokens: r.get::<_, i64>(9)? as u64,
        completion_tokens: r.get::<_, i64>(10)? as u64,
        queue_ms: r.get(11)?,
        ttft_ms: r.get(12)?,
        decode_ms: r.get(13)?,
        e2e_ms: r.get(14)?,
        finish_reason: r.get(15)?,
        status: r.get::<_, i64>(16)? as u16,
        cost: r.get(17)?,
    })
}

fn writer_loop(
    mut conn: Connection,
    rx: Receiver<Msg>,
    cfg: LogConfig,
    counters: Arc<LogCounters>,
    path: PathBuf,
) {
    let mut since_retention = 0usize;
    let mut last_retention = Instant::now();
    loop {
        // Block for the first message, then take what else is queued (one transaction).
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            match insert_batch(&mut conn, &batch, cfg.redact) {
                Ok(()) => {
                    counters
                        .written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    since_retention += batch.len();
                }
                Err(e) => {
                    counters
                        .write_errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    tracing_warn(&path, &e);
                }
            }
        }
        if since_retention >= 1000 || last_retention.elapsed() > Duration::from_secs(60) {
            if let Err(e) = apply_retention(&conn, &cfg) {
                tracing_warn(&path, &e);
            }
            since_retention = 0;
            last_retention = Instant::now();
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

fn tracing_warn(path: &Path, e: &rusqlite::Error) {
    eprintln!("request log {}: {e}", path.display());
}

fn insert_batch(
    conn: &mut Connection,
    batch: &[Box<RequestRecord>],
    redact_text: bool,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("INSERT INTO requests (ts_ms, request_id, route, model, model_version, key_id, prompt, response, prompt_tokens, completion_tokens, queue_ms, ttft_ms, decode_ms, e2e_ms, finish_reason, status, cost) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")?;
        for r in batch {
            let (prompt, response) = if redact_text {
                (redact(&r.prompt), redact(&r.response))
            } else {
                (r.prompt.clone(), r.response.clone())
            };
            stmt.execute(params![
                r.ts_ms,
                r.request_id,
                r.route,
                r.model,
                r.model_version,
                r.key_id,
                prompt,
                response,
                r.prompt_tokens as i64,
                r.completion_tokens as i64,
                r.queue_ms,
                r.ttft_ms,
                r.decode_ms,
                r.e2e_ms,
                r.finish_reason,
                r.status as i64,
                r.cost,
            ])?;
        }
    }
    tx.commit()
}

/// Deletes rows past the age limit, then the oldest beyond the row limit.
fn apply_retention(conn: &Connection, cfg: &LogConfig) -> rusqlite::Result<()> {
    if let Some(age) = cfg.max_age {
        let cutoff = crate::now_ms() - age.as_millis() as i64;
        conn.execute("DELETE FROM requests WHERE ts_ms < ?", [cutoff])?;
    }
    if cfg.max_rows > 0 {
        conn.execute(
            "DELETE FROM requests WHERE id <= (SELECT max(id) FROM requests) - ?",
            [cfg.max_rows as i64],
        )?;
    }
    Ok(())
}

/// Runs retention now (used by `hangar logs` and tests).
pub fn enforce_retention(path: &Path, cfg: &LogConfig) -> Result<(), MonitorError> {
    let conn = open_db(path)?;
    apply_retention(&conn, cfg).map_err(|e| MonitorError::db(path, e))
}
