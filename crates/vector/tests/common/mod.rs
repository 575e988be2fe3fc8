//! Seeded data for the vector tests.
#![allow(dead_code)]

use hangar_vector::{Payload, Point, PointId};
use rand::{Rng, SeedableRng};
use serde_json::json;

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

pub fn random_vec(r: &mut impl Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

/// Points with a varied payload: city (keyword), n (integer), price (float),
/// tags (array), nested geo.zip, sometimes null / empty / missing fields.
pub fn points(seed: u64, n: usize, dim: usize) -> Vec<Point> {
    let mut r = rng(seed);
    let cities = ["Paris", "London", "Berlin", "Rome", "Oslo"];
    (0..n)
        .map(|i| {
            let mut p = Payload::new();
            p.insert("city".into(), json!(cities[i % 5]));
            p.insert("n".into(), json!(i as i64));
            p.insert("price".into(), json!(r.gen_range(0.0f64..100.0)));
            p.insert(
                "tags".into(),
                json!((0..i % 4).map(|t| format!("t{t}")).collect::<Vec<_>>()),
            );
            p.insert("geo".into(), json!({"zip": 1000 + (i % 50) as i64}));
            if i % 7 == 0 {
                p.insert("note".into(), json!(null));
            }
            Point {
                id: PointId::Num(i as u64),
                vector: random_vec(&mut r, dim),
                payload: p,
            }
        })
        .collect()
}
