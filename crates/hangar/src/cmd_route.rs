//! `hangar route`: the flags of the router in front of `hangar serve` replicas, turned
//! into a [`hangar_route::RouterConfig`]; the crate does the rest.

use anyhow::{Context, Result};
use clap::Args;
use hangar_route::{BlockConfig, Policy, RouterConfig};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct RouteArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A replica's base URL, e.g. http://10.0.0.7:8080 (repeatable).
    #[arg(long = "backend")]
    pub backends: Vec<String>,
    /// NAME:PORT whose addresses are the replicas (a Kubernetes headless Service),
    /// resolved again every --dns-interval (repeatable).
    #[arg(long = "backend-dns")]
    pub backend_dns: Vec<String>,
    /// Seconds between DNS re-resolutions.
    #[arg(long, default_value_t = 5.0)]
    pub dns_interval: f64,
    /// round-robin, least-loaded, session (by --session-header) or prefix
    /// (prefix-cache-aware with bounded load).
    #[arg(long, default_value = "prefix")]
    pub policy: Policy,
    /// Header whose value keeps a session on one replica (--policy session).
    #[arg(long, default_value = "x-session-id")]
    pub session_header: String,
    /// Characters per prompt block hashed for prefix routing.
    #[arg(long, default_value_t = 128)]
    pub prefix_block_chars: usize,
    /// A replica may hold this many times the mean in-flight requests before prefix
    /// routing sends its prompts elsewhere (>= 1).
    #[arg(long, default_value_t = 1.5)]
    pub load_factor: f64,
    /// Milliseconds between health probes and /metrics scrapes of each replica.
    #[arg(long, default_value_t = 500)]
    pub probe_interval_ms: u64,
    /// Consecutive failed probes that eject a replica.
    #[arg(long, default_value_t = 2)]
    pub unhealthy_after: u32,
    /// Consecutive passing probes that re-admit an ejected replica.
    #[arg(long, default_value_t = 2)]
    pub healthy_after: u32,
    /// Seconds to wait for a replica's first response byte before trying another.
    #[arg(long, default_value_t = 300.0)]
    pub first_byte_timeout: f64,
    /// Seconds a response may pause between two chunks before it is cut.
    #[arg(long, default_value_t = 120.0)]
    pub idle_timeout: f64,
    /// Further replicas tried when one fails before its response starts.
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
    /// Largest request body, in bytes (buffered so it can be retried).
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bearer token for the probes' /v1/models (replicas started with --api-key).
    #[arg(long, env = "HANGAR_ROUTE_BACKEND_API_KEY", hide_env_values = true)]
    pub backend_api_key: Option<String>,
}

fn secs(name: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--{name} {v} is not a positive number of seconds"))
}

pub fn run_route(a: RouteArgs) -> Result<()> {
    let cfg = RouterConfig {
        backends: a.backends,
        backend_dns: a.backend_dns,
        dns_interval: secs("dns-interval", a.dns_interval)?,
        policy: a.policy,
        session_header: a.session_header.to_ascii_lowercase(),
        blocks: BlockConfig {
            block_chars: a.prefix_block_chars.max(1),
            ..BlockConfig::default()
        },
        load_factor: a.load_factor,
        probe_interval: Duration::from_millis(a.probe_interval_ms.max(10)),
        unhealthy_after: a.unhealthy_after,
        healthy_after: a.healthy_after,
        first_byte_timeout: secs("first-byte-timeout", a.first_byte_timeout)?,
        idle_timeout: secs("idle-timeout", a.idle_timeout)?,
        retries: a.retries,
        max_body_bytes: a.max_body_bytes,
        backend_api_key: a.backend_api_key,
        ..RouterConfig::default()
    };
    let policy = cfg.policy;
    let addr = format!("{}:{}", a.host, a.port);
    hangar_route::serve_blocking(cfg, &addr, |bound| {
        // Scripts read this line to find the port.
        eprintln!("hangar route: listening on http://{bound} (policy {policy:?})");
    })
    .with_context(|| format!("hangar route on {addr}"))
}
