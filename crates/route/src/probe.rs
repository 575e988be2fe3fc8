//! Background tasks that keep the replica set current: health probes (ejection and
//! re-admission), `/metrics` and `/v1/models` scrapes, and DNS re-resolution.
//! Writes only [`Backend`] state; never routes or relays a request.

use crate::backend::{Backend, Load, Pool};
use crate::policy::Picker;
use crate::RouterConfig;
use std::sync::Arc;
use std::time::Duration;

/// Reads `hangar serve`'s load gauges from a Prometheus text exposition (the first
/// sample of each; a replica serves one model).
pub fn parse_load(text: &str) -> Load {
    let mut load = Load::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        match name {
            "hangar_queue_depth" => load.waiting = v,
            "hangar_running_sequences" => load.running = v,
            "hangar_kv_usage_ratio" => load.kv_usage = v,
            "hangar_prefix_cache_hits_total" => load.prefix_hit_tokens = v,
            _ => {}
        }
    }
    load
}

#[derive(serde::Deserialize)]
struct ModelList {
    data: Vec<ModelCard>,
}

#[derive(serde::Deserialize)]
struct ModelCard {
    id: String,
}

/// The client the probes use.
pub fn probe_client(cfg: &RouterConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.probe_timeout)
        .build()
        .unwrap_or_default()
}

async fn get_text(
    client: &reqwest::Client,
    url: String,
    key: Option<&str>,
) -> Result<String, String> {
    let mut req = client.get(&url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("GET {url}: status {status}"));
    }
    resp.text().await.map_err(|e| format!("GET {url}: {e}"))
}

/// Probes one replica once: readiness, then load and models.
pub async fn probe(client: &reqwest::Client, b: &Backend, cfg: &RouterConfig, picker: &Picker) {
    let key = cfg.backend_api_key.as_deref();
    match get_text(client, format!("{}/v2/health/ready", b.url), key).await {
        Ok(_) => {
            let load = get_text(client, format!("{}/metrics", b.url), key)
                .await
                .ok()
                .map(|t| parse_load(&t));
            let models = get_text(client, format!("{}/v1/models", b.url), key)
                .await
                .ok()
                .and_then(|t| serde_json::from_str::<ModelList>(&t).ok())
                .map(|l| l.data.into_iter().map(|m| m.id).collect());
            if b.probe_ok(load, models, cfg.healthy_after) {
                tracing::info!("replica {} is healthy: admitted", b.url);
            }
        }
        Err(e) => {
            if b.probe_failed(e.clone(), cfg.unhealthy_after) {
                picker.forget(b);
                tracing::warn!("replica {} ejected: {e}", b.url);
            }
        }
    }
}

/// Probes every replica every `cfg.probe_interval`, forever.
pub async fn run_probes(pool: Arc<Pool>, picker: Arc<Picker>, cfg: Arc<RouterConfig>) {
    let client = probe_client(&cfg);
    let mut tick = tokio::time::interval(cfg.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        probe_all(&client, &pool, &picker, &cfg).await;
    }
}

/// One round of probes over every replica, concurrently.
pub async fn probe_all(client: &reqwest::Client, pool: &Pool, picker: &Picker, cfg: &RouterConfig) {
    let all = pool.all();
    futures_util::future::join_all(all.iter().map(|b| probe(client, b, cfg, picker))).await;
}

/// The replica URLs `NAME:PORT` resolves to now.
pub async fn resolve(name_port: &str) -> Result<Vec<String>, std::io::Error> {
    let mut urls: Vec<String> = tokio::net::lookup_host(name_port)
        .await?
        .map(|addr| format!("http://{addr}"))
        .collect();
    urls.sort();
    urls.dedup();
    Ok(urls)
}

/// Re-resolves every `--backend-dns` name every `cfg.dns_interval`, forever.
pub async fn run_dns(pool: Arc<Pool>, cfg: Arc<RouterConfig>) {
    let mut tick = tokio::time::interval(cfg.dns_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sync_dns(&pool, &cfg).await;
    }
}

/// One round of DNS resolution. A failed lookup keeps the replicas known so far (a
/// DNS hiccup must not empty the pool).
pub async fn sync_dns(pool: &Pool, cfg: &RouterConfig) {
    for name in &cfg.backend_dns {
        match tokio::time::timeout(Duration::from_secs(5), resolve(name)).await {
            Ok(Ok(urls)) => {
                let (added, removed) = pool.sync_dns(name, &urls);
                for u in added {
                    tracing::info!("{name}: new replica {u}");
                }
                for u in removed {
                    tracing::info!("{name}: replica {u} is gone from DNS");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("{name}: DNS lookup failed: {e}; keeping the replicas known")
            }
            Err(_) => tracing::warn!("{name}: DNS lookup timed out; keeping the replicas known"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hangar_load_gauges() {
        let text = "# HELP hangar_queue_depth x\n# TYPE hangar_queue_depth gauge\n\
            hangar_queue_depth{model=\"m\"} 3\nhangar_running_sequences{model=\"m\"} 2\n\
            hangar_kv_usage_ratio{model=\"m\"} 0.25\nhangar_prefix_cache_hits_total{model=\"m\"} 640\n\
            garbage line\nhangar_queue_depth_other 9\n";
        let l = parse_load(text);
        assert_eq!(
            l,
            Load {
                waiting: 3.0,
                running: 2.0,
                kv_usage: 0.25,
                prefix_hit_tokens: 640.0
            }
        );
    }

    #[tokio::test]
    async fn resolves_localhost_to_urls() {
        let urls = resolve("localhost:8080").await.unwrap();
        assert!(
            urls.iter().any(|u| u == "http://127.0.0.1:8080"),
            "{urls:?}"
        );
    }
}
