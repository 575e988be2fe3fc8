//! Prompt templates as registry objects, over a real registry in a temporary home:
//! versions, aliases and stages, rendering, missing variables, bad names, the shared
//! namespace with models, gc and verify.

mod common;

use hangar_registry::{ImportRequest, NewPrompt, Registry, RegistryError, Role};
use serde_json::json;

fn prompt(name: &str, user: &str) -> NewPrompt {
    NewPrompt {
        name: name.into(),
        user: user.into(),
        ..Default::default()
    }
}

fn vars(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap()
}

#[test]
fn versions_aliases_and_stages_resolve_like_models() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();

    let v1 = reg
        .create_prompt(
            &who,
            &NewPrompt {
                system: Some("You are terse.".into()),
                description: Some("question answering".into()),
                tags: vec!["qa".into()],
                ..prompt("qa", "Q: {{ question }}")
            },
        )
        .unwrap();
    assert_eq!((v1.version, v1.reference.as_str()), (1, "qa@1"));
    assert_eq!(v1.variables, ["question"]);
    assert_eq!(v1.description.as_deref(), Some("question answering"));
    assert_eq!(v1.tags, ["qa"]);

    // The same template again makes no new version.
    let again = reg
        .create_prompt(
            &who,
            &NewPrompt {
                system: Some("You are terse.".into()),
                description: Some("question answering".into()),
                ..prompt("qa", "Q: {{ question }}")
            },
        )
        .unwrap();
    assert!(again.already_present);
    assert_eq!(again.version, 1);

    let v2 = reg
        .create_prompt(
            &who,
            &prompt("qa", "Context: {{ context }}\nQ: {{ question }}"),
        )
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.variables, ["context", "question"]);
    assert_eq!(v2.template.system, None);

    // Without a selector: production if set, else the newest.
    assert_eq!(reg.prompt(&who, "qa").unwrap().version, 2);
    reg.set_prompt_alias(&who, "qa@1", "production").unwrap();
    assert_eq!(reg.prompt(&who, "qa").unwrap().version, 1);
    assert_eq!(reg.prompt(&who, "qa@production").unwrap().version, 1);
    assert_eq!(reg.prompt(&who, "qa@latest").unwrap().version, 2);
    let c = reg.set_prompt_alias(&who, "qa@2", "candidate").unwrap();
    assert_eq!(c.aliases, ["candidate"]);
    assert_eq!(reg.prompt(&who, "qa@candidate").unwrap().version, 2);
    // Moving production archives the old holder, as for models.
    reg.set_prompt_alias(&who, "qa@candidate", "production")
        .unwrap();
    assert_eq!(reg.prompt(&who, "qa@production").unwrap().version, 2);
    assert_eq!(
        reg.prompt(&who, "qa@1").unwrap().stage.as_deref(),
        Some("archived")
    );

    let list = reg.list_prompts(&who).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].versions, list[0].latest, list[0].production),
        (2, 2, Some(2))
    );
    assert_eq!(list[0].aliases.get("candidate"), Some(&2));
    assert_eq!(reg.prompt_versions(&who, "qa").unwrap().len(), 2);

    // Rendering through the registry reports the exact version used.
    let (p, r) = reg
        .render_prompt(
            &who,
            "qa@1",
            &vars(json!({"question": "Why is the sky blue?"})),
        )
        .unwrap();
    assert_eq!(p.reference, "qa@1");
    assert_eq!(r.system.as_deref(), Some("You are terse."));
    assert_eq!(r.user, "Q: Why is the sky blue?");

    // Prompts are not models: `list` and `resolve` leave them out.
    assert!(reg.list(&who).unwrap().is_empty());
    let e = reg.resolve(&who, "qa").unwrap_err().to_string();
    assert!(e.contains("is a prompt"), "{e}");

    // Everything survives a reopen.
    drop(reg);
    let reg = Registry::open(Some(d.path().join("home"))).unwrap();
    assert_eq!(
        reg.prompt(&who, "qa@candidate").unwrap().template.user,
        "Context: {{ context }}\nQ: {{ question }}"
    );
}

#[test]
fn rendering_without_a_variable_says_which_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    reg.create_prompt(&who, &prompt("greet", "Hello {{ name }}, from {{ team }}"))
        .unwrap();
    let e = reg
        .render_prompt(&who, "greet", &vars(json!({"name": "Ada"})))
        .unwrap_err();
    assert!(
        matches!(&e, RegistryError::MissingVariables { missing, .. } if missing == &["team"]),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("greet@1") && msg.contains("team"), "{msg}");
}

#[test]
fn refuses_bad_names_bad_templates_and_unknown_prompts() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    for bad in ["../evil", "a/b", ".hidden", "", "x y"] {
        let e = reg.create_prompt(&who, &prompt(bad, "hi")).unwrap_err();
        assert!(matches!(e, RegistryError::InvalidName { .. }), "{bad}: {e}");
    }
    let e = reg
        .create_prompt(&who, &prompt("p", "{% if %}"))
        .unwrap_err();
    assert!(matches!(e, RegistryError::Template { .. }), "{e}");
    let e = reg.create_prompt(&who, &prompt("p", "")).unwrap_err();
    assert!(matches!(e, RegistryError::Template { .. }), "{e}");
    let e = reg
        .create_prompt(
            &who,
            &NewPrompt {
                tags: vec!["Bad Tag".into()],
                ..prompt("p", "hi")
            },
        )
        .unwrap_err();
    assert!(matches!(e, RegistryError::InvalidName { .. }), "{e}");
    assert!(reg.list_prompts(&who).unwrap().is_empty());

    let e = reg.prompt(&who, "nope").unwrap_err();
    assert!(matches!(e, RegistryError::NotFound(_)), "{e}");
    reg.create_prompt(&who, &prompt("p", "hi")).unwrap();
    assert!(matches!(
        reg.prompt(&who, "p@7"),
        Err(RegistryError::NotFound(_))
    ));
    assert!(reg.prompt(&who, "p@../x").is_err());
    assert!(reg.set_prompt_alias(&who, "p@1", "Not-Valid").is_err());
    assert!(reg.set_prompt_alias(&who, "p@1", "latest").is_err());
}

#[test]
fn models_and_prompts_share_one_namespace() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let gguf = common::write_gguf(&d.path().join("m.gguf"), 1, 4, 8, 1);
    reg.import(
        &who,
        &ImportRequest {
            path: gguf.clone(),
            name: "m".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let e = reg.create_prompt(&who, &prompt("m", "hi")).unwrap_err();
    assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
    let e = reg.prompt(&who, "m").unwrap_err().to_string();
    assert!(e.contains("is a model"), "{e}");

    reg.create_prompt(&who, &prompt("p", "hi")).unwrap();
    let e = reg
        .import(
            &who,
            &ImportRequest {
                path: gguf,
                name: "p".into(),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(e, RegistryError::Conflict(_)), "{e}");
}

#[test]
fn roles_gate_prompt_changes_and_they_are_audited() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let admin = reg
        .principal(Some(&reg.create_token(&boot, "root", Role::Admin).unwrap()))
        .unwrap();
    let reader = reg
        .principal(Some(&reg.create_token(&admin, "r", Role::Reader).unwrap()))
        .unwrap();
    let writer = reg
        .principal(Some(&reg.create_token(&admin, "w", Role::Writer).unwrap()))
        .unwrap();
    assert!(matches!(
        reg.create_prompt(&reader, &prompt("p", "hi")),
        Err(RegistryError::Forbidden { .. })
    ));
    reg.create_prompt(&writer, &prompt("p", "hi {{ x }}"))
        .unwrap();
    reg.prompt(&reader, "p").unwrap();
    reg.set_prompt_alias(&writer, "p@1", "beta").unwrap();
    assert!(matches!(
        reg.set_prompt_alias(&writer, "p@1", "production"),
        Err(RegistryError::Forbidden {
            needed: Role::Promoter,
            ..
        })
    ));
    let actions: Vec<String> = reg
        .audit_log(&admin, 50)
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {} {}", e.actor, e.action, e.target))
        .collect();
    assert!(
        actions.contains(&"w prompt.create p@1".to_string()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"w alias.set p@1".to_string()),
        "{actions:?}"
    );
}

#[test]
fn gc_keeps_prompt_chunks_and_verify_checks_them() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    reg.create_prompt(&who, &prompt("p", "one {{ a }}"))
        .unwrap();
    reg.create_prompt(&who, &prompt("p", "two {{ a }}"))
        .unwrap();
    reg.gc(&who, false).unwrap();
    assert!(reg.verify(&who, true).unwrap().ok());
    assert_eq!(
        reg.prompt(&who, "p@1").unwrap().template.user,
        "one {{ a }}"
    );
    // Deleting a version frees its template at the next gc; the other stays readable.
    reg.delete(&who, "p@1", false).unwrap();
    let g = reg.gc(&who, false).unwrap();
    assert!(g.unreferenced_chunks >= 1, "{g:?}");
    assert_eq!(reg.prompt(&who, "p").unwrap().template.user, "two {{ a }}");
}
