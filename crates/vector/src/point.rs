//! Points and their parts: ids (unsigned integers or UUIDs), distances and the JSON
//! payload. Plain data with serde shapes matching Qdrant's JSON; no storage, no search.

use crate::error::{Result, VectorError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A point id: an unsigned integer or a UUID. Integers sort before UUIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PointId {
    Num(u64),
    Uuid(u128),
}

impl PointId {
    /// Parses a UUID in hyphenated or simple (32 hex digits) form, or a decimal integer.
    pub fn parse(s: &str) -> Result<PointId> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(PointId::Num(n));
        }
        let hex: String = s.chars().filter(|c| *c != '-').collect();
        let hyphens_ok = s.len() == 32
            || (s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-'));
        if hex.len() == 32 && hyphens_ok && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            if let Ok(v) = u128::from_str_radix(&hex, 16) {
                return Ok(PointId::Uuid(v));
            }
        }
        Err(VectorError::Invalid(format!(
            "point id {s:?} is neither an unsigned integer nor a UUID"
        )))
    }
}

impl fmt::Display for PointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointId::Num(n) => write!(f, "{n}"),
            PointId::Uuid(u) => {
                let h = format!("{u:032x}");
                write!(
                    f,
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            }
        }
    }
}

impl Serialize for PointId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PointId::Num(n) => s.serialize_u64(*n),
            PointId::Uuid(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for PointId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => n.as_u64().map(PointId::Num).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "point id {n} is not an unsigned integer (use 0..2^64-1 or a UUID)"
                ))
            }),
            serde_json::Value::String(s) => match s.parse::<u64>() {
                // Qdrant accepts only UUID strings; a numeric string is not an id.
                Ok(_) => Err(serde::de::Error::custom(format!(
                    "point id {s:?} is a string but not a UUID; send integers as JSON numbers"
                ))),
                Err(_) => PointId::parse(&s).map_err(serde::de::Error::custom),
            },
            other => Err(serde::de::Error::custom(format!(
                "point id {other} must be an unsigned integer or a UUID string"
            ))),
        }
    }
}

/// How vectors are compared. Cosine and Dot: larger scores are closer; Euclid: the
/// score is the distance, smaller is closer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Distance {
    Cosine,
    Dot,
    Euclid,
}

impl Distance {
    pub fn parse(s: &str) -> Result<Distance> {
        match s.to_ascii_lowercase().as_str() {
            "cosine" => Ok(Distance::Cosine),
            "dot" => Ok(Distance::Dot),
            "euclid" | "l2" | "euclidean" => Ok(Distance::Euclid),
            _ => Err(VectorError::Invalid(format!(
                "unknown distance {s:?}; use Cosine, Dot or Euclid"
            ))),
        }
    }
    pub fn bigger_is_better(self) -> bool {
        !matches!(self, Distance::Euclid)
    }
}

/// A point's JSON payload: an object (possibly empty).
pub type Payload = serde_json::Map<String, serde_json::Value>;

/// A point as written by clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub id: PointId,
    pub vector: Vec<f32>,
    #[serde(default)]
    pub payload: Payload,
}

/// A point as read back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub id: PointId,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
}

/// A search hit.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoredPoint {
    pub id: PointId,
    pub score: f32,
    pub payload: Option<Payload>,
    pub vector: Option<Vec<f32>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_canonically() {
        let u = PointId::parse("5C56C793-69F3-4FBF-87E6-C4BF54C28C26").unwrap();
        assert_eq!(u.to_string(), "5c56c793-69f3-4fbf-87e6-c4bf54c28c26");
        let simple = PointId::parse("5c56c79369f34fbf87e6c4bf54c28c26").unwrap();
        assert_eq!(u, simple);
        assert_eq!(PointId::parse("42").unwrap(), PointId::Num(42));
        assert!(PointId::parse("nope").is_err());
        assert!(PointId::parse("5c56c793-69f34fbf87e6-c4bf54c28c26-").is_err());
        let j: PointId = serde_json::from_str("7").unwrap();
        assert_eq!(j, PointId::Num(7));
        assert!(serde_json::from_str::<PointId>("-1").is_err());
        assert!(serde_json::from_str::<PointId>("\"7\"").is_err());
        assert!(PointId::Num(u64::MAX) < u);
    }
}
