//! Stored prompts over a real socket: the registry's prompt routes with its roles (no
//! model), and chat / completions requests rendered from a stored prompt on the
//! default model (`"prompt": "name@ref"` with `"variables"`).

mod common;

use common::Server;
use hangar_engine::{Engine, EngineConfig, LoadedModel};
use hangar_registry::{NewPrompt, Registry, Role};
use hangar_serve::{AppState, ServeConfig, Services};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_routes_create_show_alias_and_render_with_roles() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Some(dir.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let reader = reg.create_token(&boot, "reader", Role::Reader).unwrap();
    let writer = reg.create_token(&boot, "writer", Role::Writer).unwrap();
    let promoter = reg.create_token(&boot, "promoter", Role::Promoter).unwrap();
    let state = AppState::new(
        Services::default().with_registry(reg),
        ServeConfig::default(),
    );
    let srv = Server::start(state).await;

    let body = r#"{"system": "Answer in {{ lang }}.", "user": "Q: {{ q }}", "description": "qa"}"#;
    let r = srv
        .post("/v1/registry/prompts/qa/versions", Some(&reader), body)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = srv
        .post("/v1/registry/prompts/qa/versions", None, body)
        .await;
    assert_eq!(r.status, 401, "{}", r.text());
    let r = srv
        .post("/v1/registry/prompts/qa/versions", Some(&writer), body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["reference"], "qa@1");
    assert_eq!(r.json()["variables"], json!(["lang", "q"]));
    let r = srv
        .post(
            "/v1/registry/prompts/qa/versions",
            Some(&writer),
            r#"{"user": "Question: {{ q }}", "alias": "candidate"}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["aliases"], json!(["candidate"]));

    // Production is a stage: the promoter role moves it.
    let alias = r#"{"alias": "production", "version": 1}"#;
    let r = srv
        .post("/v1/registry/prompts/qa/aliases", Some(&writer), alias)
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = srv
        .post("/v1/registry/prompts/qa/aliases", Some(&promoter), alias)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stage"], "production");

    let r = srv.get("/v1/registry/prompts", Some(&reader)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let p = &r.json()["prompts"][0];
    assert_eq!(
        (p["name"].clone(), p["production"].clone()),
        (json!("qa"), json!(1))
    );
    assert_eq!(p["aliases"]["candidate"], 2);
    let r = srv.get("/v1/registry/prompts/qa", Some(&reader)).await;
    assert_eq!(r.json()["versions"].as_array().unwrap().len(), 2);
    let r = srv
        .get("/v1/registry/prompts/qa/versions/candidate", Some(&reader))
        .await;
    assert_eq!(r.json()["template"]["user"], "Question: {{ q }}");

    let r = srv
        .post(
            "/v1/registry/prompts/qa/versions/production/render",
            Some(&reader),
            r#"{"variables": {"lang": "French", "q": "Why?"}}"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"prompt": "qa@1", "system": "Answer in French.", "user": "Q: Why?"})
    );
    let r = srv
        .post(
            "/v1/registry/prompts/qa/versions/1/render",
            Some(&reader),
            r#"{"variables": {"q": "Why?"}}"#,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("lang"));

    // Bad input is a 4xx with a sentence, never a 500.
    for (path, body, status) in [
        (
            "/v1/registry/prompts/qa/versions",
            r#"{"user": "{{ x"}"#,
            400,
        ),
        (
            "/v1/registry/prompts/qa/versions",
            r#"{"system": "x"}"#,
            400,
        ),
        (
            "/v1/registry/prompts/..%2Fx/versions",
            r#"{"user": "x"}"#,
            400,
        ),
        (
            "/v1/registry/prompts/qa/aliases",
            r#"{"alias": "x", "version": 9}"#,
            404,
        ),
        (
            "/v1/registry/prompts/qa/aliases",
            r#"{"alias": "latest", "version": 1}"#,
            400,
        ),
    ] {
        let r = srv.post(path, Some(&writer), body).await;
        assert_eq!(r.status, status, "{path} {body}: {}", r.text());
        assert!(r.json()["error"]["message"].is_string(), "{}", r.text());
    }
    let r = srv.get("/v1/registry/prompts/nope", Some(&reader)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    srv.shutdown().await;
}

/// A server on the default model with a registry holding prompt `qa`; `None` without
/// the model.
async fn model_server(dir: &std::path::Path) -> Option<Server> {
    let path = hangar_testkit::model_path()?;
    let mut reg = Registry::open(Some(dir.join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    reg.create_prompt(
        &who,
        &NewPrompt {
            name: "qa".into(),
            system: Some("You answer in one word.".into()),
            user: "What colour is {{ thing }}?".into(),
            ..Default::default()
        },
    )
    .unwrap();
    reg.create_prompt(
        &who,
        &NewPrompt {
            name: "qa".into(),
            user: "Name a colour of {{ thing }}.".into(),
            ..Default::default()
        },
    )
    .unwrap();
    reg.set_prompt_alias(&who, "qa@1", "production").unwrap();
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let state = AppState::new(
        Services::default()
            .with_inference(engine, "m")
            .with_registry(reg),
        ServeConfig::default(),
    );
    Some(Server::start(state).await)
}

fn greedy(extra: Value) -> String {
    let mut v = json!({"max_tokens": 8, "temperature": 0});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_render_a_stored_prompt_and_name_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let Some(srv) = model_server(dir.path()).await else {
        return;
    };
    // The stored prompt gives the same answer as the same messages sent by hand.
    let stored = srv
        .post(
            "/v1/chat/completions",
            None,
            &greedy(json!({"prompt": "qa@production", "variables": {"thing": "the sky"}})),
        )
        .await;
    assert_eq!(stored.status, 200, "{}", stored.text());
    let by_hand = srv
        .post(
            "/v1/chat/completions",
            None,
            &greedy(json!({"messages": [
                {"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What colour is the sky?"}
            ]})),
        )
        .await;
    assert_eq!(by_hand.status, 200, "{}", by_hand.text());
    let (s, h) = (stored.json(), by_hand.json());
    assert_eq!(
        s["choices"][0]["message"]["content"],
        h["choices"][0]["message"]["content"]
    );
    assert_eq!(s["usage"]["prompt_tokens"], h["usage"]["prompt_tokens"]);
    assert_eq!(
        s["prompt"],
        json!({"name": "qa", "version": 1, "reference": "qa@1"})
    );
    assert!(h.get("prompt").is_none(), "{h}");

    // `qa` alone is production; `qa@2` is that version; request messages follow.
    let r = srv
        .post(
            "/v1/chat/completions",
            None,
            &greedy(json!({"prompt": "qa@2", "variables": {"thing": "grass"},
                           "messages": [{"role": "assistant", "content": "Green."},
                                        {"role": "user", "content": "And another?"}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["prompt"]["reference"], "qa@2");

    // Completions: `prompt_template` renders to the text prompt.
    let r = srv
        .post(
            "/v1/completions",
            None,
            &greedy(json!({"prompt_template": "qa", "variables": {"thing": "snow"}, "echo": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("You answer in one word.\n\nWhat colour is snow?"),
        "{text}"
    );
    assert_eq!(r.json()["prompt"]["reference"], "qa@1");

    // Streams carry the version too.
    let r = srv
        .post(
            "/v1/chat/completions",
            None,
            &greedy(json!({"prompt": "qa", "variables": {"thing": "coal"}, "stream": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains(r#""reference":"qa@1""#), "{}", r.text());

    // Errors name the field and what to do.
    for (path, body, status, param, needle) in [
        (
            "/v1/chat/completions",
            json!({"prompt": "qa"}),
            400,
            "variables",
            "thing",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "qa", "variables": {"thing": "x", "thnig": "y"}}),
            400,
            "variables",
            "thnig",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "nope", "variables": {}}),
            404,
            "prompt",
            "nope",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "qa@9"}),
            404,
            "prompt",
            "qa@9",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "../x"}),
            400,
            "prompt",
            "invalid name",
        ),
        (
            "/v1/chat/completions",
            json!({"prompt": "m"}),
            404,
            "prompt",
            "m",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "variables": {"a": 1}}),
            400,
            "variables",
            "stored prompt",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "prompt_template": "qa"}),
            400,
            "prompt_template",
            "not both",
        ),
        ("/v1/completions", json!({}), 400, "prompt", "required"),
    ] {
        let r = srv.post(path, None, &greedy(body.clone())).await;
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["param"], param, "{body}: {}", r.text());
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {}",
            r.text()
        );
    }
    srv.shutdown().await;
}
