//! Serves a model without the `hangar` binary (development aid):
//! `cargo run --release -p hangar-serve --example serve_model -- MODEL.gguf [PORT] [THREADS] [TOKENS_IN_FLIGHT]`

use hangar_engine::{Engine, EngineConfig, LoadedModel};
use hangar_serve::{AppState, ServeConfig, Services};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: serve_model MODEL.gguf [PORT] [THREADS] [TOKENS_IN_FLIGHT]");
    let port = args.get(2).map_or("8080", String::as_str);
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(2);
    let cfg = EngineConfig {
        max_tokens_in_flight: args.get(4).and_then(|t| t.parse().ok()),
        ..EngineConfig::default()
    };
    let engine =
        Engine::start(LoadedModel::load(path, threads).expect("load"), cfg).expect("engine");
    let api_keys = std::env::var("HANGAR_API_KEYS")
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let scfg = ServeConfig {
        api_keys,
        ..ServeConfig::default()
    };
    let services = Services::default().with_inference(engine, "gemma-3-270m-q4_k_m");
    let state = AppState::new(services, scfg);
    hangar_serve::serve_blocking(state, &format!("127.0.0.1:{port}"), |a| {
        eprintln!("listening on http://{a}")
    })
    .expect("serve");
}
