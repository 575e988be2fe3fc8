//! HNSW recall against exact search on seeded data, and filters evaluated during the
//! search returning exactly min(limit, matches) points, with and without indexes.

mod common;

use hangar_vector::{
    CollectionConfig, Distance, Filter, HnswParams, IndexKind, PointId, Quantization, SearchPlan,
    SearchRequest, VectorDb, WithPayload,
};
use serde_json::json;
use std::collections::HashSet;

fn config(dim: usize, d: Distance, q: Quantization) -> CollectionConfig {
    let mut c = CollectionConfig::new(dim, d);
    c.hnsw = HnswParams {
        m: 16,
        ef_construct: 100,
    };
    c.quantization = q;
    // Small, so the graph answers unfiltered queries on these few thousand points.
    c.full_scan_threshold = 200;
    c
}

fn recall(d: Distance, q: Quantization) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let (n, dim) = (4000, 24);
    let c = db.create("r", config(dim, d, q)).unwrap();
    let mut c = c.write().unwrap();
    for chunk in common::points(7, n, dim).chunks(500) {
        c.upsert(chunk.to_vec(), false).unwrap();
    }
    let mut r = common::rng(99);
    let (mut hit, mut total) = (0, 0);
    for _ in 0..100 {
        let v = common::random_vec(&mut r, dim);
        let req = SearchRequest {
            vector: v,
            limit: 10,
            ef: Some(64),
            ..Default::default()
        };
        let (approx, plan) = c.search_planned(&req).unwrap();
        assert_eq!(plan, SearchPlan::Graph);
        let exact = c.search(&SearchRequest { exact: true, ..req }).unwrap();
        assert_eq!(exact.len(), 10);
        let truth: HashSet<PointId> = exact.iter().map(|p| p.id).collect();
        hit += approx.iter().filter(|p| truth.contains(&p.id)).count();
        total += 10;
        // Scores are exact (int8 candidates are re-scored in f32).
        for p in approx.iter().filter(|p| truth.contains(&p.id)) {
            let e = exact.iter().find(|e| e.id == p.id).unwrap();
            assert!((e.score - p.score).abs() < 1e-5);
        }
    }
    hit as f64 / total as f64
}

#[test]
fn hnsw_recall_at_10_is_at_least_095_for_every_distance() {
    for d in [Distance::Cosine, Distance::Dot, Distance::Euclid] {
        let r = recall(d, Quantization::None);
        assert!(r >= 0.95, "{d:?}: recall@10 {r}");
    }
}

#[test]
fn int8_quantised_search_with_rescoring_keeps_recall() {
    for d in [Distance::Cosine, Distance::Euclid] {
        let r = recall(d, Quantization::Int8);
        assert!(r >= 0.95, "{d:?} int8: recall@10 {r}");
    }
}

fn filters() -> Vec<serde_json::Value> {
    vec![
        json!({"must": [{"key": "city", "match": {"value": "Oslo"}}]}),
        json!({"must": [{"key": "city", "match": {"any": ["Rome", "Paris"]}}]}),
        json!({"must": [{"key": "city", "match": {"except": ["Rome", "Paris", "Oslo"]}}]}),
        json!({"must": [{"key": "n", "range": {"gte": 100, "lt": 107}}]}),
        json!({"must": [{"key": "price", "range": {"gt": 99.0}}]}),
        json!({"must": [{"is_empty": {"key": "tags"}}]}),
        json!({"must": [{"is_null": {"key": "note"}}]}),
        json!({"must": [{"has_id": [5, 17, 2999, 123456]}]}),
        json!({"must": [{"key": "geo.zip", "match": {"value": 1007}}]}),
        json!({"must": [{"key": "tags", "values_count": {"gte": 3}}]}),
        json!({"should": [{"key": "n", "range": {"lt": 3}}, {"key": "n", "range": {"gt": 2996}}]}),
        json!({"must_not": [{"key": "city", "match": {"any": ["Paris", "London", "Berlin", "Rome"]}}],
               "must": [{"key": "geo.zip", "range": {"lte": 1010}}]}),
        json!({"must": [{"key": "city", "match": {"value": "Oslo"}}, {"key": "n", "range": {"lt": 40}}]}),
        json!({"must": [{"key": "city", "match": {"value": "Nowhere"}}]}),
    ]
}

fn check_filters(indexed: bool) {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let (n, dim) = (3000, 16);
    let c = db
        .create("f", config(dim, Distance::Cosine, Quantization::None))
        .unwrap();
    let mut c = c.write().unwrap();
    c.upsert(common::points(3, n, dim), true).unwrap();
    if indexed {
        c.create_index("city", IndexKind::Keyword, true).unwrap();
        c.create_index("n", IndexKind::Integer, true).unwrap();
        c.create_index("price", IndexKind::Float, true).unwrap();
    }
    let mut r = common::rng(5);
    for fj in filters() {
        let f = Filter::from_json(&fj).unwrap();
        let matches = c.count(Some(&f));
        for limit in [1usize, 10, 50] {
            let req = SearchRequest {
                vector: common::random_vec(&mut r, dim),
                limit,
                filter: Some(f.clone()),
                with_payload: WithPayload::All,
                ..Default::default()
            };
            let got = c.search(&req).unwrap();
            assert_eq!(got.len(), limit.min(matches), "{fj} limit {limit}");
            for p in &got {
                assert!(
                    f.matches(p.id, p.payload.as_ref().unwrap()),
                    "{fj}: {:?}",
                    p.id
                );
            }
            let exact = c.search(&SearchRequest { exact: true, ..req }).unwrap();
            let truth: HashSet<PointId> = exact.iter().map(|p| p.id).collect();
            let found = got.iter().filter(|p| truth.contains(&p.id)).count();
            assert!(
                found as f64 >= 0.8 * got.len() as f64,
                "{fj}: {found}/{}",
                got.len()
            );
        }
    }
}

#[test]
fn filters_return_min_of_limit_and_matches_without_indexes() {
    check_filters(false);
}

#[test]
fn filters_return_min_of_limit_and_matches_with_indexes() {
    check_filters(true);
}

#[test]
fn a_filter_matching_1_percent_still_finds_the_exact_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let (n, dim) = (5000, 16);
    let mut cfg = config(dim, Distance::Euclid, Quantization::None);
    cfg.full_scan_threshold = 20; // forces the filtered graph traversal
    let c = db.create("s", cfg).unwrap();
    let mut c = c.write().unwrap();
    c.upsert(common::points(11, n, dim), true).unwrap();
    // n % 100 == 0 without an index: 1% of points, checked during the traversal.
    let ids: Vec<u64> = (0..n as u64).filter(|i| i % 100 == 0).collect();
    let f = Filter::from_json(
        &json!({"must": [{"key": "geo.zip", "match": {"any": [1000]}}],
                                      "should": [{"has_id": ids}]}),
    )
    .unwrap();
    let matches = c.count(Some(&f));
    assert_eq!(matches, 50);
    let mut r = common::rng(2);
    let (mut hit, mut total) = (0, 0);
    for _ in 0..30 {
        let req = SearchRequest {
            vector: common::random_vec(&mut r, dim),
            limit: 10,
            filter: Some(f.clone()),
            ..Default::default()
        };
        let got = c.search(&req).unwrap();
        assert_eq!(got.len(), 10);
        let exact = c.search(&SearchRequest { exact: true, ..req }).unwrap();
        let truth: HashSet<PointId> = exact.iter().map(|p| p.id).collect();
        hit += got.iter().filter(|p| truth.contains(&p.id)).count();
        total += 10;
    }
    assert!(hit as f64 / total as f64 >= 0.95, "{hit}/{total}");
}

#[test]
fn deleted_points_are_never_returned_and_rebuild_drops_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db
        .create("d", config(8, Distance::Dot, Quantization::None))
        .unwrap();
    let mut c = c.write().unwrap();
    c.upsert(common::points(1, 1000, 8), true).unwrap();
    let odd: Vec<PointId> = (0..1000u64)
        .filter(|i| i % 2 == 1)
        .map(PointId::Num)
        .collect();
    assert_eq!(c.delete(odd, true).unwrap(), 500);
    let f =
        Filter::from_json(&json!({"must": [{"key": "city", "match": {"value": "Rome"}}]})).unwrap();
    assert_eq!(c.delete_where(&f, true).unwrap(), 100);
    assert_eq!(c.len(), 400);
    let check = |c: &hangar_vector::Collection| {
        let mut r = common::rng(3);
        for _ in 0..20 {
            let got = c
                .search(&SearchRequest {
                    vector: common::random_vec(&mut r, 8),
                    limit: 20,
                    ..Default::default()
                })
                .unwrap();
            assert_eq!(got.len(), 20);
            for p in got {
                let PointId::Num(i) = p.id else { panic!() };
                assert!(i % 2 == 0 && i % 5 != 3, "deleted point {i} returned");
            }
        }
    };
    check(&c);
    assert_eq!(c.info().deleted_rows, 600);
    c.checkpoint().unwrap();
    assert_eq!(c.info().deleted_rows, 0);
    assert_eq!(c.info().graph_rows, 400);
    check(&c);
}

#[test]
fn scroll_pages_through_ids_in_order_and_count_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db
        .create("p", config(4, Distance::Cosine, Quantization::None))
        .unwrap();
    let mut c = c.write().unwrap();
    c.upsert(common::points(1, 95, 4), true).unwrap();
    let f =
        Filter::from_json(&json!({"must": [{"key": "city", "match": {"any": ["Paris", "Oslo"]}}]}))
            .unwrap();
    let mut seen = Vec::new();
    let mut offset = None;
    loop {
        let (page, next) = c.scroll(Some(&f), offset, 7, &WithPayload::None, false);
        seen.extend(page.iter().map(|r| r.id));
        match next {
            Some(n) => offset = Some(n),
            None => break,
        }
    }
    let want: Vec<PointId> = (0..95u64)
        .filter(|i| i % 5 == 0 || i % 5 == 4)
        .map(PointId::Num)
        .collect();
    assert_eq!(seen, want);
    assert_eq!(c.count(Some(&f)), want.len());
    assert_eq!(c.count(None), 95);
}

#[test]
fn mmr_trades_relevance_for_diversity_as_defined() {
    // Two tight clusters near the query direction and one far point: plain nearest
    // returns one cluster; MMR with diversity picks from the other after the first.
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db
        .create("m", CollectionConfig::new(2, Distance::Cosine))
        .unwrap();
    let mut c = c.write().unwrap();
    let pt = |id: u64, x: f32, y: f32| hangar_vector::Point {
        id: PointId::Num(id),
        vector: vec![x, y],
        payload: Default::default(),
    };
    c.upsert(
        vec![
            pt(1, 1.0, 0.00),
            pt(2, 1.0, 0.01),
            pt(3, 1.0, 0.02),
            pt(4, 1.0, 0.50),
            pt(5, 1.0, 0.52),
            pt(6, -1.0, 0.0),
        ],
        true,
    )
    .unwrap();
    let ask = |mmr: Option<hangar_vector::Mmr>| -> Vec<u64> {
        c.search(&SearchRequest {
            vector: vec![1.0, 0.1],
            limit: 2,
            mmr,
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|p| match p.id {
            PointId::Num(n) => n,
            PointId::Uuid(_) => unreachable!(),
        })
        .collect()
    };
    let plain = ask(None);
    assert_eq!(plain, vec![3, 2]);
    // diversity 0: relevance only, the same as plain nearest.
    let m = |diversity, candidates_limit| {
        Some(hangar_vector::Mmr {
            diversity,
            candidates_limit,
        })
    };
    assert_eq!(ask(m(0.0, Some(5))), plain);
    // diversity 0.5 over five candidates: the nearest, then from the other cluster
    // the point farther from it (5: 0.5 x 0.9287 - 0.5 x 0.8963 = 0.0162 beats
    // 4: 0.5 x 0.9345 - 0.5 x 0.9032 = 0.0157).
    assert_eq!(ask(m(0.5, Some(5))), vec![3, 5]);
    // Candidates default to the limit: MMR can only reorder those two.
    assert_eq!(ask(m(0.5, None)), plain);
    // Scores stay the similarity to the query.
    let with_scores = c
        .search(&SearchRequest {
            vector: vec![1.0, 0.1],
            limit: 2,
            mmr: m(0.5, Some(5)),
            ..Default::default()
        })
        .unwrap();
    let cos = |x: f32, y: f32| (x + 0.1 * y) / ((x * x + y * y).sqrt() * 1.01f32.sqrt());
    assert!((with_scores[1].score - cos(1.0, 0.52)).abs() < 1e-5);
    // Out-of-range diversity is refused.
    assert!(c
        .search(&SearchRequest {
            vector: vec![1.0, 0.1],
            limit: 2,
            mmr: m(1.5, None),
            ..Default::default()
        })
        .is_err());
}
