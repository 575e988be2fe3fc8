//! Tenants: the managed API keys a server accepts (`hangar keys`), their limits and
//! usage. Keys are cached from the registry's key store and re-read every second, so a
//! revocation applies to a running server within about a second; usage is written
//! back on the same tick. Decides admission (429s); the engine decides fair sharing.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | GET | `/v1/usage` | a managed key (its own usage); an admin key, or operators (no keys configured, a registry admin token): every key |

use crate::auth::Caller;
use crate::error::{ApiError, ApiFormat};
use crate::AppState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hangar_registry::keys::{same_digest, utc_day};
use hangar_registry::{ActiveKey, ApiKeyInfo, KeyLimits, KeyRole, KeyStore, KeyUsage, Role};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How often keys are re-read and usage written back.
pub const REFRESH: Duration = Duration::from_secs(1);
/// The rate-limit window.
const MINUTE: Duration = Duration::from_secs(60);

/// Why a request was refused; the label of `hangar_key_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RequestsPerMinute {
        retry_after: u64,
    },
    TokensPerMinute {
        retry_after: u64,
    },
    /// The request alone asks for more tokens than a minute allows.
    LargerThanTokensPerMinute {
        asked: u64,
        limit: u64,
    },
    Concurrency {
        limit: u64,
    },
    DailyBudget {
        retry_after: u64,
        limit: u64,
    },
}

pub const REASONS: [&str; 4] = [
    "requests_per_minute",
    "tokens_per_minute",
    "concurrency",
    "daily_budget",
];

impl Refusal {
    fn reason(&self) -> usize {
        match self {
            Refusal::RequestsPerMinute { .. } => 0,
            Refusal::TokensPerMinute { .. } | Refusal::LargerThanTokensPerMinute { .. } => 1,
            Refusal::Concurrency { .. } => 2,
            Refusal::DailyBudget { .. } => 3,
        }
    }

    /// The 429 answered to the client (OpenAI's error shape, `Retry-After` in seconds).
    pub fn to_api_error(self, key: &str, limits: &KeyLimits) -> ApiError {
        let (kind, code, retry, msg) = match self {
            Refusal::RequestsPerMinute { retry_after } => (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                retry_after,
                format!(
                    "API key {key:?} is limited to {} requests per minute; retry in {retry_after} s",
                    limits.rpm.unwrap_or(0)
                ),
            ),
            Refusal::TokensPerMinute { retry_after } => (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                retry_after,
                format!(
                    "API key {key:?} is limited to {} tokens per minute (prompt + max_tokens are reserved at admission); retry in {retry_after} s",
                    limits.tpm.unwrap_or(0)
                ),
            ),
            Refusal::LargerThanTokensPerMinute { asked, limit } => (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                60,
                format!(
                    "this request needs up to {asked} tokens (prompt + max_tokens) but API key {key:?} may use {limit} per minute; lower max_tokens or shorten the prompt"
                ),
            ),
            Refusal::Concurrency { limit } => (
                "rate_limit_exceeded",
                "rate_limit_exceeded",
                1,
                format!(
                    "API key {key:?} may have {limit} requests in flight at once; wait for one to finish"
                ),
            ),
            Refusal::DailyBudget { retry_after, limit } => (
                "insufficient_quota",
                "insufficient_quota",
                retry_after,
                format!(
                    "API key {key:?} has used its daily budget of {limit} tokens; it renews at 00:00 UTC (in {retry_after} s), or ask an admin to raise --daily-tokens"
                ),
            ),
        };
        ApiError {
            code: Some(code),
            retry_after: Some(retry.max(1)),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, kind, msg)
        }
    }
}

/// One key's windows, in-flight count and usage.
#[derive(Debug, Default)]
pub struct Meter {
    /// Admission times within the last minute.
    requests: VecDeque<Instant>,
    /// Token charges within the last minute: (when, charge id, tokens). A charge is
    /// the reservation until the request settles, then what it really used.
    tokens: VecDeque<(Instant, u64, u64)>,
    in_flight: u64,
    /// Reservations of requests in flight (counted against the daily budget).
    reserved: u64,
    day: String,
    today: KeyUsage,
    total: KeyUsage,
    rejected: [u64; 4],
}

impl Meter {
    fn new(day: String, today: KeyUsage, total: KeyUsage) -> Self {
        Meter {
            day,
            today,
            total,
            ..Default::default()
        }
    }

    fn prune(&mut self, now: Instant) {
        while self
            .requests
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            self.requests.pop_front();
        }
        while self
            .tokens
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= MINUTE)
        {
            self.tokens.pop_front();
        }
    }

    fn roll_day(&mut self, day: &str) {
        if self.day != day {
            self.day = day.to_string();
            self.today = KeyUsage::default();
        }
    }

    /// Admits a request that may use up to `reserve` tokens, or says why not. Checks
    /// in order: concurrency, requests/min, daily budget, tokens/min.
    pub fn admit(
        &mut self,
        limits: &KeyLimits,
        now: Instant,
        unix: i64,
        reserve: u64,
        charge: u64,
    ) -> Result<(), Refusal> {
        self.prune(now);
        self.roll_day(&utc_day(unix));
        let secs_left = |t: Instant| (MINUTE.saturating_sub(now.duration_since(t))).as_secs() + 1;
        let refusal = if limits.max_concurrent.is_some_and(|c| self.in_flight >= c) {
            Some(Refusal::Concurrency {
                limit: limits.max_concurrent.unwrap_or(0),
            })
        } else if limits.rpm.is_some_and(|r| self.requests.len() as u64 >= r) {
            Some(Refusal::RequestsPerMinute {
                retry_after: self.requests.front().map(|t| secs_left(*t)).unwrap_or(1),
            })
        } else if limits
            .daily_tokens
            .is_some_and(|d| self.today.tokens() + self.reserved >= d)
        {
            Some(Refusal::DailyBudget {
                retry_after: (86_400 - unix.rem_euclid(86_400)) as u64,
                limit: limits.daily_tokens.unwrap_or(0),
            })
        } else if let Some(tpm) = limits.tpm {
            if reserve > tpm {
                Some(Refusal::LargerThanTokensPerMinute {
                    asked: reserve,
                    limit: tpm,
                })
            } else {
                // Wait until enough of the oldest charges leave the window.
                let used: u64 = self.tokens.iter().map(|c| c.2).sum();
                let mut excess = (used + reserve).saturating_sub(tpm);
                let mut retry = 0;
                for (t, _, n) in &self.tokens {
                    if excess == 0 {
                        break;
                    }
                    excess = excess.saturating_sub(*n);
                    retry = secs_left(*t);
                }
                (retry > 0).then_some(Refusal::TokensPerMinute { retry_after: retry })
            }
        } else {
            None
        };
        if let Some(r) = refusal {
            self.rejected[r.reason()] += 1;
            return Err(r);
        }
        self.requests.push_back(now);
        self.tokens.push_back((now, charge, reserve));
        self.in_flight += 1;
        self.reserved += reserve;
        Ok(())
    }

    /// Replaces a request's reservation with what it used.
    pub fn settle(&mut self, charge: u64, reserve: u64, used: &KeyUsage, unix: i64) {
        if let Some(c) = self.tokens.iter_mut().find(|c| c.1 == charge) {
            c.2 = used.tokens();
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.reserved = self.reserved.saturating_sub(reserve);
        self.roll_day(&utc_day(unix));
        self.today.add(used);
        self.total.add(used);
    }
}

/// Every managed key the server knows, their meters, and usage not yet written back.
pub struct Tenants {
    store: Option<Mutex<KeyStore>>,
    keys: RwLock<Arc<Vec<ActiveKey>>>,
    meters: Mutex<HashMap<i64, Meter>>,
    /// Names of keys ever seen, for metrics after a revocation.
    names: Mutex<HashMap<i64, String>>,
    pending: Mutex<Vec<(i64, String, KeyUsage)>>,
    /// Set once the store held a key: auth stays on even if the last key is revoked.
    seen_keys: AtomicBool,
    next_charge: AtomicU64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tenants {
    /// Tenants over `store` (none: no managed keys), keys read once now.
    pub fn new(store: Option<KeyStore>) -> Self {
        let t = Tenants {
            store: store.map(Mutex::new),
            keys: RwLock::new(Arc::new(Vec::new())),
            meters: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            pending: Mutex::new(Vec::new()),
            seen_keys: AtomicBool::new(false),
            next_charge: AtomicU64::new(1),
        };
        if let Err(e) = t.refresh() {
            tracing::warn!("API keys could not be read: {e}");
        }
        t
    }

    /// Whether managed keys are in force (the store holds or held a key).
    pub fn enabled(&self) -> bool {
        self.seen_keys.load(Ordering::Relaxed)
    }

    /// Writes pending usage back and re-reads the keys (blocking: SQLite).
    pub fn refresh(&self) -> Result<(), hangar_registry::RegistryError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut store = lock(store);
        let pending = std::mem::take(&mut *lock(&self.pending));
        if !pending.is_empty() {
            if let Err(e) = store.add_usage(&pending) {
                // Keep the deltas for the next tick rather than lose them.
                lock(&self.pending).extend(pending);
                return Err(e);
            }
        }
        let keys = store.active()?;
        let day = utc_day(unix_now());
        for k in &keys {
            let known = lock(&self.meters).contains_key(&k.info.id);
            if !known {
                let (today, total) = store.usage(k.info.id, &day)?;
                lock(&self.meters).insert(k.info.id, Meter::new(day.clone(), today, total));
                lock(&self.names).insert(k.info.id, k.info.name.clone());
            }
        }
        if !keys.is_empty() {
            self.seen_keys.store(true, Ordering::Relaxed);
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(())
    }

    /// The managed key a secret belongs to (constant-time against every digest).
    pub fn verify(&self, secret: &str) -> Option<ApiKeyInfo> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let d = hangar_registry::keys::key_digest(secret);
        let mut found = None;
        for k in keys.iter() {
            if same_digest(&k.digest, &d) {
                found = Some(k.info.clone());
            }
        }
        found
    }

    /// Admits a request of `key` reserving `reserve` tokens, or refuses it with a 429.
    pub fn admit(self: &Arc<Self>, key: &ApiKeyInfo, reserve: u64) -> Result<KeyCharge, ApiError> {
        let charge = self.next_charge.fetch_add(1, Ordering::Relaxed);
        let mut meters = lock(&self.meters);
        let meter = meters.entry(key.id).or_insert_with(|| {
            Meter::new(
                utc_day(unix_now()),
                KeyUsage::default(),
                KeyUsage::default(),
            )
        });
        meter
            .admit(&key.limits, Instant::now(), unix_now(), reserve, charge)
            .map_err(|r| r.to_api_error(&key.name, &key.limits))?;
        Ok(KeyCharge {
            tenants: self.clone(),
            key: key.id,
            charge,
            reserve,
            used: Mutex::new(KeyUsage {
                requests: 1,
                ..Default::default()
            }),
            cost: Mutex::new(None),
        })
    }

    fn settle(&self, key: i64, charge: u64, reserve: u64, used: KeyUsage) {
        let unix = unix_now();
        if let Some(m) = lock(&self.meters).get_mut(&key) {
            m.settle(charge, reserve, &used, unix);
        }
        lock(&self.pending).push((key, utc_day(unix), used));
    }

    /// Per-key counters for `/metrics`: (name, total usage, rejections by reason).
    pub fn counters(&self) -> Vec<(String, KeyUsage, [u64; 4])> {
        let names = lock(&self.names).clone();
        let meters = lock(&self.meters);
        let mut out: Vec<_> = meters
            .iter()
            .filter_map(|(id, m)| Some((names.get(id)?.clone(), m.total, m.rejected)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn report(&self, key: &ApiKeyInfo) -> KeyReport {
        let day = utc_day(unix_now());
        let mut meters = lock(&self.meters);
        let m = meters.entry(key.id).or_default();
        m.roll_day(&day);
        KeyReport {
            id: key.id,
            name: key.name.clone(),
            role: key.role,
            limits: key.limits,
            day,
            today: UsageBody::from(&m.today),
            total: UsageBody::from(&m.total),
            in_flight: m.in_flight,
            remaining_daily_tokens: key
                .limits
                .daily_tokens
                .map(|d| d.saturating_sub(m.today.tokens())),
        }
    }
}

/// A request admitted for a managed key: charged what it used when dropped (after
/// every choice has ended, cancelled ones included).
pub struct KeyCharge {
    tenants: Arc<Tenants>,
    key: i64,
    charge: u64,
    reserve: u64,
    used: Mutex<KeyUsage>,
    cost: Mutex<Option<(hangar_monitor::PriceTable, String)>>,
}

impl KeyCharge {
    /// Adds one choice's tokens.
    pub fn add(&self, prompt: u64, completion: u64) {
        let mut u = lock(&self.used);
        u.prompt_tokens += prompt;
        u.completion_tokens += completion;
    }

    /// Prices the request with the monitor's price table for `model`.
    pub fn priced(&self, prices: &hangar_monitor::PriceTable, model: &str) {
        *lock(&self.cost) = Some((prices.clone(), model.to_string()));
    }
}

impl Drop for KeyCharge {
    fn drop(&mut self) {
        let mut used = *lock(&self.used);
        if let Some((prices, model)) = lock(&self.cost).as_ref() {
            used.cost = prices.cost(model, used.prompt_tokens, used.completion_tokens);
        }
        self.tenants
            .settle(self.key, self.charge, self.reserve, used);
    }
}

/// Re-reads keys and writes usage back every [`REFRESH`] until the server stops.
pub async fn run_refresher(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tick.tick().await;
        flush(&state).await;
    }
}

/// One refresh on a blocking thread (also called at shutdown).
pub async fn flush(state: &Arc<AppState>) {
    let s = state.clone();
    let r = tokio::task::spawn_blocking(move || s.tenants.refresh()).await;
    if let Ok(Err(e)) = r {
        tracing::warn!("API keys: {e}");
    }
}

#[derive(Serialize)]
struct UsageBody {
    requests: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    cost: f64,
}

impl From<&KeyUsage> for UsageBody {
    fn from(u: &KeyUsage) -> Self {
        UsageBody {
            requests: u.requests,
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.tokens(),
            cost: u.cost,
        }
    }
}

#[derive(Serialize)]
struct KeyReport {
    id: i64,
    name: String,
    role: KeyRole,
    limits: KeyLimits,
    /// The UTC day `today` covers.
    day: String,
    today: UsageBody,
    total: UsageBody,
    in_flight: u64,
    remaining_daily_tokens: Option<u64>,
}

#[derive(Serialize)]
struct UsageList {
    object: &'static str,
    data: Vec<KeyReport>,
}

/// `GET /v1/usage`
async fn usage(
    Extension(state): Extension<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
) -> Response {
    let all = match caller.as_ref().map(|c| &c.0) {
        Some(Caller::Key(k)) if k.role < KeyRole::Admin => Some(k.clone()),
        Some(Caller::Key(_)) | Some(Caller::Open { .. }) | None => None,
        Some(Caller::RegistryToken(p)) if p.role >= Role::Admin => None,
        _ => {
            return ApiError::forbidden(
                "usage is kept per managed API key: call with a key from `hangar keys create`, or with an admin key to see every key",
            )
            .render(ApiFormat::OpenAi)
        }
    };
    let keys: Vec<ApiKeyInfo> = match all {
        Some(own) => vec![own],
        None => state
            .tenants
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|k| k.info.clone())
            .collect(),
    };
    let data = keys.iter().map(|k| state.tenants.report(k)).collect();
    Json(UsageList {
        object: "list",
        data,
    })
    .into_response()
}

pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/usage", get(usage))
        .layer(Extension(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY0: i64 = 1_796_256_000; // 2026-12-03 00:00 UTC

    fn limits() -> KeyLimits {
        KeyLimits::default()
    }

    #[test]
    fn requests_per_minute_slide_with_the_window() {
        let l = KeyLimits {
            rpm: Some(2),
            ..limits()
        };
        let mut m = Meter::default();
        let t0 = Instant::now();
        assert!(m.admit(&l, t0, DAY0, 1, 1).is_ok());
        assert!(m
            .admit(&l, t0 + Duration::from_secs(10), DAY0, 1, 2)
            .is_ok());
        let r = m.admit(&l, t0 + Duration::from_secs(20), DAY0, 1, 3);
        assert_eq!(r, Err(Refusal::RequestsPerMinute { retry_after: 41 }));
        assert!(m
            .admit(&l, t0 + Duration::from_secs(60), DAY0, 1, 4)
            .is_ok());
        assert_eq!(m.rejected, [1, 0, 0, 0]);
    }

    #[test]
    fn tokens_per_minute_reserve_then_settle() {
        let l = KeyLimits {
            tpm: Some(100),
            ..limits()
        };
        let mut m = Meter::default();
        let t0 = Instant::now();
        m.admit(&l, t0, DAY0, 80, 1).unwrap();
        // 80 reserved: 30 more do not fit.
        assert_eq!(
            m.admit(&l, t0, DAY0, 30, 2),
            Err(Refusal::TokensPerMinute { retry_after: 61 })
        );
        // The first request used only 20: now they fit.
        let used = KeyUsage {
            requests: 1,
            prompt_tokens: 5,
            completion_tokens: 15,
            cost: 0.0,
        };
        m.settle(1, 80, &used, DAY0);
        assert!(m.admit(&l, t0, DAY0, 30, 3).is_ok());
        assert_eq!(
            m.admit(&l, t0, DAY0, 101, 4),
            Err(Refusal::LargerThanTokensPerMinute {
                asked: 101,
                limit: 100
            })
        );
    }

    #[test]
    fn concurrency_counts_requests_in_flight() {
        let l = KeyLimits {
            max_concurrent: Some(1),
            ..limits()
        };
        let mut m = Meter::default();
        let t0 = Instant::now();
        m.admit(&l, t0, DAY0, 10, 1).unwrap();
        assert_eq!(
            m.admit(&l, t0, DAY0, 10, 2),
            Err(Refusal::Concurrency { limit: 1 })
        );
        m.settle(1, 10, &KeyUsage::default(), DAY0);
        assert!(m.admit(&l, t0, DAY0, 10, 3).is_ok());
    }

    #[test]
    fn the_daily_budget_renews_at_utc_midnight() {
        let l = KeyLimits {
            daily_tokens: Some(50),
            ..limits()
        };
        let mut m = Meter::default();
        let t0 = Instant::now();
        let noon = DAY0 + 43_200;
        m.admit(&l, t0, noon, 40, 1).unwrap();
        // In flight, its reservation counts; budget left 10: still admitted.
        m.admit(&l, t0, noon, 40, 2).unwrap();
        assert_eq!(
            m.admit(&l, t0, noon, 1, 3),
            Err(Refusal::DailyBudget {
                retry_after: 43_200,
                limit: 50
            })
        );
        let used = KeyUsage {
            requests: 1,
            prompt_tokens: 30,
            completion_tokens: 30,
            cost: 0.0,
        };
        m.settle(1, 40, &used, noon);
        m.settle(2, 40, &KeyUsage::default(), noon);
        assert!(m.admit(&l, t0, noon, 1, 4).is_err(), "60 of 50 used");
        assert!(m.admit(&l, t0, DAY0 + 86_400, 1, 5).is_ok(), "next day");
        assert_eq!(m.today.tokens(), 0);
        assert_eq!(m.total.tokens(), 60);
    }

    #[test]
    fn refusals_are_429_with_retry_after_and_openai_types() {
        let l = KeyLimits {
            daily_tokens: Some(5),
            ..limits()
        };
        let e = Refusal::DailyBudget {
            retry_after: 7,
            limit: 5,
        }
        .to_api_error("k", &l);
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (e.kind, e.code, e.retry_after),
            ("insufficient_quota", Some("insufficient_quota"), Some(7))
        );
        let r = e.render(ApiFormat::OpenAi);
        assert_eq!(r.headers()["retry-after"], "7");
        let e = Refusal::Concurrency { limit: 1 }.to_api_error("k", &l);
        assert_eq!(e.kind, "rate_limit_exceeded");
    }
}
