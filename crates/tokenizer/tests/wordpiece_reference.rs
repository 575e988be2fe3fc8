//! WordPiece ids against the `tokenizers` library on varied text (accents, CJK, emoji,
//! control characters, empty, longer than 256 tokens). The reference
//! (`tests/data/wordpiece_reference.json`) comes from `scripts/make-embedding-reference.py`;
//! the tokenizer.json is the pulled all-MiniLM-L6-v2 (`hangar pull embedder`).

use hangar_tokenizer::WordPieceTokenizer;

#[test]
fn ids_match_the_tokenizers_library() {
    let Some(dir) = hangar_testkit::embedder_dir() else {
        return;
    };
    let tok = WordPieceTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let path = hangar_testkit::repo_file("crates/tokenizer/tests/data/wordpiece_reference.json");
    let reference: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(reference.len() >= 200);
    assert!(reference
        .iter()
        .any(|r| r["ids"].as_array().unwrap().len() > 256));
    let mut failures = Vec::new();
    for r in &reference {
        let text = r["text"].as_str().unwrap();
        let want: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true);
        if got != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} texts differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
