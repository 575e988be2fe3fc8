//! Ingest, re-ingest and retrieval on the real all-MiniLM-L6-v2 (`hangar pull
//! embedder`; skipped without it unless HANGAR_REQUIRE_MODEL=1) over a temporary vector
//! store.

use hangar_engine::{Embedder, EmbedderConfig, EmbeddingModel};
use hangar_rag::{
    chunk_document, DocFormat, DocOutcome, IngestOptions, Ingestor, RagError, RetrievalOptions,
};
use hangar_vector::{Filter, VectorDb};

fn embedder() -> Option<Embedder> {
    let dir = hangar_testkit::embedder_dir()?;
    let model = EmbeddingModel::load(&dir, "all-minilm-l6-v2").expect("load the embedding model");
    Some(Embedder::start(
        model,
        EmbedderConfig {
            threads: 2,
            ..EmbedderConfig::default()
        },
    ))
}

const CATS: &str = "# Cats\n\nCats are small carnivorous mammals that people keep as pets. \
They sleep for most of the day and purr when they are content.";
const ROCKETS: &str = "<html><body><h1>Rockets</h1><p>A rocket engine burns fuel with an \
oxidiser &amp; expels the hot exhaust through a nozzle to produce thrust.</p></body></html>";
const BREAD: &str = "Bread is made from flour, water, salt and yeast. The dough is kneaded, \
left to rise and then baked in a hot oven.";

#[test]
fn reingest_skips_unchanged_replaces_changed_and_prunes_missing() {
    let Some(e) = embedder() else { return };
    let d = tempfile::tempdir().unwrap();
    let db = VectorDb::open(d.path()).unwrap();
    let mut ing = Ingestor::open(&db, "kb", &e, IngestOptions::default()).unwrap();
    assert_eq!(
        ing.add("cats.md", DocFormat::Markdown, CATS).unwrap(),
        DocOutcome::Added
    );
    assert_eq!(
        ing.add("rockets.html", DocFormat::Html, ROCKETS).unwrap(),
        DocOutcome::Added
    );
    assert_eq!(
        ing.add("bread.txt", DocFormat::Text, BREAD).unwrap(),
        DocOutcome::Added
    );
    let r = ing.finish().unwrap();
    assert_eq!((r.added, r.updated, r.unchanged, r.removed), (3, 0, 0, 0));
    assert_eq!(r.chunks, 3);
    let c = db.get("kb").unwrap();
    assert_eq!(c.read().unwrap().config().dim, 384);

    // Again, with cats changed (now two chunks) and bread gone.
    let long_cats = format!(
        "{CATS}\n\n{}",
        "Cats have whiskers and sharp claws. ".repeat(40)
    );
    let mut ing = Ingestor::open(&db, "kb", &e, IngestOptions::default()).unwrap();
    assert_eq!(ing.existing().len(), 3);
    assert_eq!(
        ing.add("cats.md", DocFormat::Markdown, &long_cats).unwrap(),
        DocOutcome::Updated
    );
    assert_eq!(
        ing.add("rockets.html", DocFormat::Html, ROCKETS).unwrap(),
        DocOutcome::Unchanged
    );
    assert_eq!(ing.prune(&["".into()]).unwrap(), 1);
    let r = ing.finish().unwrap();
    assert_eq!((r.added, r.updated, r.unchanged, r.removed), (0, 1, 1, 1));
    let cats_chunks = chunk_document(
        &long_cats,
        DocFormat::Markdown,
        e.model().tokenizer(),
        Default::default(),
    )
    .len();
    assert!(cats_chunks >= 2);
    let c = c.read().unwrap();
    assert_eq!(c.count(None), cats_chunks + 1);
    let bread = hangar_rag::source_filter("bread.txt").unwrap();
    assert_eq!(c.count(Some(&bread)), 0);
}

#[test]
fn retrieval_finds_the_answering_document_and_honours_filters() {
    let Some(e) = embedder() else { return };
    let d = tempfile::tempdir().unwrap();
    let db = VectorDb::open(d.path()).unwrap();
    let mut ing = Ingestor::open(&db, "kb", &e, IngestOptions::default()).unwrap();
    ing.add("cats.md", DocFormat::Markdown, CATS).unwrap();
    ing.add("rockets.html", DocFormat::Html, ROCKETS).unwrap();
    ing.add("bread.txt", DocFormat::Text, BREAD).unwrap();
    ing.finish().unwrap();
    let ask = |q: &str, filter: Option<Filter>| {
        let opts = RetrievalOptions {
            top_k: 3,
            filter,
            score_threshold: None,
        };
        hangar_rag::retrieve_blocking(&db, "kb", &e, q, &opts).unwrap()
    };
    for (q, want) in [
        ("How does a rocket produce thrust?", "rockets.html"),
        ("Which animals purr?", "cats.md"),
        ("What ingredients go into bread dough?", "bread.txt"),
    ] {
        let ps = ask(q, None);
        assert_eq!(ps[0].source, want, "{q}: {ps:?}");
        assert!(ps[0].score > ps[1].score);
    }
    let r = &ask("How does a rocket produce thrust?", None)[0];
    assert_eq!(
        &ROCKETS[r.start..r.end],
        "Rockets</h1><p>A rocket engine burns fuel with an \
oxidiser &amp; expels the hot exhaust through a nozzle to produce thrust."
    );
    assert!(r.text.contains("oxidiser & expels"));
    let only_bread = Filter::from_json(&serde_json::json!(
        {"must": [{"key": "source", "match": {"value": "bread.txt"}}]}
    ))
    .unwrap();
    let ps = ask("How does a rocket produce thrust?", Some(only_bread));
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].source, "bread.txt");
    let err = hangar_rag::retrieve_blocking(&db, "nope", &e, "q", &RetrievalOptions::default())
        .unwrap_err();
    assert!(matches!(err, RagError::NoCollection(_)), "{err}");
    assert!(err.to_string().contains("hangar ingest"), "{err}");
}

#[test]
fn chunks_fit_the_model_and_overlap_on_real_tokens() {
    let Some(e) = embedder() else { return };
    let tok = e.model().tokenizer();
    let text = std::fs::read_to_string(hangar_testkit::repo_file("README.md")).unwrap();
    let opts = hangar_rag::ChunkOptions::default();
    let cs = chunk_document(&text, DocFormat::Markdown, tok, opts);
    assert!(cs.len() > 5);
    for c in &cs {
        assert_eq!(&text[c.start..c.end], c.text);
        let n = tok.encode(&c.text, false).len();
        assert_eq!(
            n, c.tokens,
            "per-word counts add up to the whole: {:?}",
            c.text
        );
        assert!(n <= opts.chunk_tokens);
    }
    for w in cs.windows(2) {
        assert!(w[1].start < w[0].end, "consecutive chunks overlap");
        assert!(w[1].start > w[0].start);
    }
    let d = tempfile::tempdir().unwrap();
    let db = VectorDb::open(d.path()).unwrap();
    let too_big = IngestOptions {
        chunking: hangar_rag::ChunkOptions {
            chunk_tokens: 400,
            overlap: 0,
        },
        ..IngestOptions::default()
    };
    let err = Ingestor::open(&db, "kb", &e, too_big)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use at most 254"), "{err}");
}
