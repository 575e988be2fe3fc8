//! End-to-end registry behaviour over real files in a temporary home.

mod common;

use std::collections::BTreeMap;

use hangar_registry::{ImportRequest, LineageSpec, Registry, RegistryError, Role};

fn import_req(path: &std::path::Path, name: &str) -> ImportRequest {
    ImportRequest {
        path: path.to_path_buf(),
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn import_list_show_promote_export_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let model_dir = d.path().join("m");
    std::fs::create_dir(&model_dir).unwrap();
    common::write_gguf(&model_dir.join("model.gguf"), 4, 64, 256, 1);
    std::fs::write(model_dir.join("config.json"), br#"{"hidden": 256}"#).unwrap();
    std::fs::write(model_dir.join("chat_template.jinja"), "{{ messages }}").unwrap();

    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let mut req = import_req(&model_dir, "tiny");
    req.metadata = BTreeMap::from([("owner".into(), "ml-team".into())]);
    req.tags = vec!["baseline".into()];
    let out = reg.import(&who, &req).unwrap();
    assert_eq!(out.version, 1);
    assert_eq!(out.files.len(), 3);
    assert!(!out.already_present);

    // A retried import of identical content makes no new version.
    let again = reg.import(&who, &req).unwrap();
    assert!(again.already_present);
    assert_eq!(again.version, 1);
    assert_eq!(again.new_bytes, 0);

    let list = reg.list(&who).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].latest, Some(1));
    assert_eq!(list[0].production, None);

    let v = reg.promote(&who, "tiny@1", "production").unwrap();
    assert_eq!(v.stage.as_deref(), Some("production"));
    let v = reg.show(&who, "tiny").unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(v.metadata["owner"], "ml-team");
    assert_eq!(v.tags, vec!["baseline"]);
    let formats: Vec<_> = v.files.iter().map(|f| f.format.as_str()).collect();
    assert_eq!(formats, vec!["text", "text", "gguf"]);

    let out_dir = d.path().join("out");
    let e = reg
        .export(&who, "tiny@production", &out_dir, false)
        .unwrap();
    assert_eq!(e.files.len(), 3);
    for f in ["model.gguf", "config.json", "chat_template.jinja"] {
        assert_eq!(
            std::fs::read(out_dir.join(f)).unwrap(),
            std::fs::read(model_dir.join(f)).unwrap(),
            "{f}"
        );
    }
    let r = reg.resolve(&who, "tiny@1").unwrap();
    assert!(r.primary.as_ref().unwrap().ends_with("model.gguf"));
    hangar_formats::GgufFile::open(r.primary.unwrap()).unwrap();
    assert!(reg.verify(&who, true).unwrap().ok());
}

#[test]
fn stages_aliases_and_production_delete_guard() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    for seed in 0..3u64 {
        let p = common::write_gguf(
            &d.path().join(format!("m{seed}.gguf")),
            2,
            16,
            64,
            seed * 10,
        );
        reg.import(&who, &import_req(&p, "m")).unwrap();
    }
    reg.promote(&who, "m@1", "production").unwrap();
    reg.promote(&who, "m@2", "staging").unwrap();
    reg.promote(&who, "m@3", "canary").unwrap();
    assert_eq!(reg.show(&who, "m@staging").unwrap().version, 2);
    assert_eq!(reg.show(&who, "m@canary").unwrap().version, 3);
    assert_eq!(reg.show(&who, "m@latest").unwrap().version, 3);
    assert_eq!(reg.show(&who, "m").unwrap().version, 1);

    // Promoting 2 archives 1: one production version per model.
    reg.promote(&who, "m@2", "production").unwrap();
    assert_eq!(
        reg.show(&who, "m@1").unwrap().stage.as_deref(),
        Some("archived")
    );
    assert_eq!(reg.show(&who, "m@production").unwrap().version, 2);

    reg.set_alias(&who, "m@3", "champion").unwrap();
    assert_eq!(reg.show(&who, "m@champion").unwrap().version, 3);
    assert!(reg.set_alias(&who, "m@3", "production").is_err());

    let err = reg.delete(&who, "m@2", false).unwrap_err();
    assert!(matches!(err, RegistryError::Conflict(_)), "{err}");
    reg.delete(&who, "m@1", false).unwrap();
    assert!(reg.show(&who, "m@1").is_err());
    reg.delete(&who, "m@2", true).unwrap();

    // Version numbers are never reused.
    let p = common::write_gguf(&d.path().join("m9.gguf"), 2, 16, 64, 99);
    assert_eq!(reg.import(&who, &import_req(&p, "m")).unwrap().version, 4);

    reg.demote(&who, "m@3", None).unwrap();
    assert_eq!(
        reg.show(&who, "m@3").unwrap().stage.as_deref(),
        Some("archived")
    );
}

#[test]
fn few_tensor_change_costs_little_more_than_the_tensors() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    // 16 tensors of 1 MiB each.
    let names: Vec<String> = (0..16).map(|i| format!("blk.{i}.w")).collect();
    let mut spec: Vec<(&str, usize, usize, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 256, 1024, i as u64))
        .collect();
    let base = d.path().join("base.gguf");
    std::fs::write(&base, common::gguf_bytes(&spec)).unwrap();
    let first = reg.import(&who, &import_req(&base, "base")).unwrap();
    assert_eq!(first.new_bytes, first.logical_bytes);

    // Change two tensors.
    spec[3].3 = 1000;
    spec[11].3 = 1001;
    let derived = d.path().join("derived.gguf");
    std::fs::write(&derived, common::gguf_bytes(&spec)).unwrap();
    let mut req = import_req(&derived, "derived");
    req.lineage = Some(LineageSpec {
        base: "base@1".into(),
        derivation: "fine-tuned".into(),
        run: Some("run-42".into()),
    });
    let out = reg.import(&who, &req).unwrap();
    let changed = 2 * 256 * 1024 * 4;
    let overhead = out.new_bytes as i64 - changed as i64;
    println!(
        "changed {changed} B, stored {} B, ratio {:.2}",
        out.new_bytes, out.dedup_ratio
    );
    assert!(out.new_bytes >= changed as u64 / 2);
    // At most two max-size chunks of boundary overhead per changed region.
    assert!(
        overhead < 4 * hangar_registry::CHUNK_MAX as i64,
        "overhead {overhead}"
    );

    let v = reg.show(&who, "derived@1").unwrap();
    let l = v.lineage.unwrap();
    assert_eq!(
        (l.base_model.as_str(), l.base_version, l.run.as_deref()),
        ("base", 1, Some("run-42"))
    );
    assert_eq!(v.ancestry, vec!["base@1"]);
    let stats = reg.stats(&who).unwrap();
    assert!(stats.dedup_ratio > 1.6, "{stats:?}");

    // Deleting the base and collecting garbage keeps the derived model whole.
    reg.delete(&who, "base@1", false).unwrap();
    let gc = reg.gc(&who, false).unwrap();
    assert!(gc.unreferenced_chunks > 0);
    assert!(gc.bytes_freed >= changed as u64 / 2);
    let out_dir = d.path().join("out");
    reg.export(&who, "derived@1", &out_dir, false).unwrap();
    assert_eq!(
        std::fs::read(out_dir.join("derived.gguf")).unwrap(),
        std::fs::read(&derived).unwrap()
    );
    assert!(reg.verify(&who, true).unwrap().ok());
}

#[test]
fn refuses_pickle_and_bad_names_with_an_explanation() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let dir = d.path().join("hf");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{}").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    let e = reg
        .import(&who, &import_req(&dir, "m"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("pickle") && e.contains("safetensors"), "{e}");
    assert!(reg.list(&who).unwrap().is_empty());

    let p = common::write_gguf(&d.path().join("ok.gguf"), 1, 4, 8, 1);
    for bad in ["../evil", "a/b", ".hidden", "x\0y"] {
        assert!(reg.import(&who, &import_req(&p, bad)).is_err(), "{bad}");
    }
    assert!(reg.show(&who, "../../etc@1").is_err());
    assert!(reg.export(&who, "../x@1", d.path(), false).is_err());
}

#[test]
fn roles_gate_actions_and_every_change_is_audited() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let admin_t = reg.create_token(&boot, "root", Role::Admin).unwrap();
    // Once a token exists, anonymous local use is refused.
    assert!(matches!(
        reg.principal(None),
        Err(RegistryError::Unauthorized(_))
    ));
    assert!(reg.principal(Some("hgr_wrong")).is_err());
    let admin = reg.principal(Some(&admin_t)).unwrap();
    let tokens: Vec<String> = ["reader", "writer", "promoter"]
        .iter()
        .map(|r| {
            reg.create_token(&admin, &format!("t-{r}"), r.parse().unwrap())
                .unwrap()
        })
        .collect();
    let reader = reg.principal(Some(&tokens[0])).unwrap();
    let writer = reg.principal(Some(&tokens[1])).unwrap();
    let promoter = reg.principal(Some(&tokens[2])).unwrap();

    let p = common::write_gguf(&d.path().join("m.gguf"), 2, 8, 32, 5);
    assert!(matches!(
        reg.import(&reader, &import_req(&p, "m")),
        Err(RegistryError::Forbidden { .. })
    ));
    reg.import(&writer, &import_req(&p, "m")).unwrap();
    reg.list(&reader).unwrap();
    reg.promote(&writer, "m@1", "staging").unwrap();
    let e = reg.promote(&writer, "m@1", "production").unwrap_err();
    assert!(
        matches!(
            e,
            RegistryError::Forbidden {
                needed: Role::Promoter,
                ..
            }
        ),
        "{e}"
    );
    reg.promote(&promoter, "m@1", "production").unwrap();
    assert!(reg.demote(&writer, "m@1", None).is_err());
    assert!(reg.delete(&promoter, "m@1", true).is_err());
    assert!(reg.gc(&writer, false).is_err());
    assert!(reg.audit_log(&reader, 10).is_err());

    let log = reg.audit_log(&admin, 100).unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .rev()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert!(actions.contains(&("t-writer", "import")), "{actions:?}");
    assert!(actions.contains(&("t-writer", "promote")));
    assert!(actions.contains(&("t-promoter", "promote")));
    assert!(actions.contains(&("local", "token.create")));
    reg.revoke_token(&admin, "t-reader").unwrap();
    assert!(reg.principal(Some(&tokens[0])).is_err());
}

#[test]
fn default_model_installs_as_version_one_in_production() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let p = common::write_gguf(&d.path().join("gemma.gguf"), 2, 8, 32, 7);
    let out =
        hangar_registry::default_model::install_default_from(&mut reg, &who, &p, false).unwrap();
    assert_eq!(out.version, 1);
    let again =
        hangar_registry::default_model::install_default_from(&mut reg, &who, &p, false).unwrap();
    assert_eq!(again.version, 1);
    assert!(again.import.already_present);
    let r = reg.resolve(&who, hangar_registry::DEFAULT_MODEL).unwrap();
    assert_eq!((r.version, r.stage.as_deref()), (1, Some("production")));
    assert_eq!(
        std::fs::read(r.primary.unwrap()).unwrap(),
        std::fs::read(&p).unwrap()
    );
}

/// The real default model (located by hangar-testkit).
#[test]
fn real_default_model_roundtrips_when_cached() {
    let Some(p) = hangar_testkit::model_path() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let out =
        hangar_registry::default_model::install_default_from(&mut reg, &who, &p, false).unwrap();
    assert_eq!(
        out.import.files[0].sha256,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    let r = reg.resolve(&who, "gemma3-270m").unwrap();
    let g = hangar_formats::GgufFile::open(r.primary.unwrap()).unwrap();
    assert_eq!(g.architecture().unwrap(), "gemma3");
}

/// Flips one byte of `p` in place (same size), then puts its mtime back.
fn tamper_in_place(p: &std::path::Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(p).unwrap().modified().unwrap(), mtime);
}

#[test]
fn a_tampered_cached_copy_is_caught_by_verify_and_re_exported_by_resolve() {
    let d = tempfile::tempdir().unwrap();
    let src = common::write_gguf(&d.path().join("model.gguf"), 2, 64, 256, 7);
    let original = std::fs::read(&src).unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    reg.import(&who, &import_req(&src, "tiny")).unwrap();
    reg.promote(&who, "tiny@1", "production").unwrap();
    let first = reg.resolve(&who, "tiny@production").unwrap();
    assert!(first.repaired.is_empty());
    let cached = first.primary.unwrap();
    assert_eq!(std::fs::read(&cached).unwrap(), original);
    let report = reg.verify(&who, false).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
    assert_eq!(
        report.cached_files_checked, 0,
        "an unchanged copy is not re-read"
    );

    // Let the file-system clock tick past the export before editing the copy.
    std::thread::sleep(std::time::Duration::from_millis(50));
    tamper_in_place(&cached, original.len() as u64 / 2);
    for deep in [false, true] {
        let report = reg.verify(&who, deep).unwrap();
        assert_eq!(report.cached_files_checked, 1, "deep {deep}");
        assert!(
            report.problems.len() == 1 && report.problems[0].contains("cached copy"),
            "deep {deep}: {:?}",
            report.problems
        );
    }

    let again = reg.resolve(&who, "tiny@production").unwrap();
    assert_eq!(again.repaired, vec![cached.clone()]);
    assert_eq!(std::fs::read(&cached).unwrap(), original);
    assert!(reg.verify(&who, true).unwrap().ok());
    let audit = reg.audit_log(&who, 10).unwrap();
    assert!(audit
        .iter()
        .any(|a| a.action == "cache.repair" && a.target == "tiny@1"));

    // A copy that was only touched is re-hashed, found intact and kept as it is.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cached).unwrap());
    std::fs::File::options()
        .write(true)
        .open(&cached)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let touched = reg.resolve(&who, "tiny").unwrap();
    assert!(touched.repaired.is_empty());
    let meta = std::fs::metadata(&cached).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), ino);

    // A copy of another size, or replaced by something else, is re-exported too.
    std::fs::write(&cached, b"GGUF").unwrap();
    assert_eq!(reg.resolve(&who, "tiny").unwrap().repaired.len(), 1);
    assert_eq!(std::fs::read(&cached).unwrap(), original);
}

#[test]
fn cached_copies_from_before_stamps_are_hashed_once_then_trusted() {
    let d = tempfile::tempdir().unwrap();
    let src = common::write_gguf(&d.path().join("model.gguf"), 1, 16, 64, 3);
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    reg.import(&who, &import_req(&src, "tiny")).unwrap();
    reg.resolve(&who, "tiny").unwrap();
    // Forget the stamp, as a registry made by an older build has none.
    drop(reg);
    let db = d.path().join("home/registry/registry.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM cache_stamps", [])
        .unwrap();
    let reg = Registry::open(Some(d.path().join("home"))).unwrap();
    assert_eq!(reg.verify(&who, false).unwrap().cached_files_checked, 1);
    let again = reg.resolve(&who, "tiny").unwrap();
    assert!(again.repaired.is_empty());
    assert_eq!(reg.verify(&who, false).unwrap().cached_files_checked, 0);
}

/// Real pickles of every protocol, made by CPython at test time, under names the
/// registry accepts for text companions.
#[test]
fn import_refuses_pickles_of_every_protocol_whatever_the_name() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("made");
    std::fs::create_dir(&dir).unwrap();
    let script = r#"
import pickle, os, sys
class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))
out = sys.argv[1]
for p in range(6):
    for kind, obj in (("data", {"a": [1, 2.5, "x", None]}), ("call", Boom())):
        with open(os.path.join(out, f"p{p}-{kind}.bin"), "wb") as f:
            pickle.dump(obj, f, protocol=p)
"#;
    let status = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .status()
        .expect("python3 is needed to make real pickles for this test");
    assert!(status.success());
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let made = e.unwrap().path();
        for name in [
            "notes.txt",
            "README.md",
            "template.jinja",
            "tokenizer.model",
        ] {
            let sub = d.path().join(format!("in-{n}"));
            n += 1;
            std::fs::create_dir(&sub).unwrap();
            std::fs::copy(&made, sub.join(name)).unwrap();
            let err = match reg.import(&who, &import_req(&sub, "m")) {
                Ok(_) => panic!("{} as {name} was accepted", made.display()),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("pickle"), "{}: {err}", made.display());
        }
    }
    assert_eq!(n, 6 * 2 * 4);
    assert!(reg.list(&who).unwrap().is_empty());
}
