//! MLflow's wire shapes: request field parsing as the official client sends them
//! (int64 as numbers or strings, NaN/Infinity as bare words or strings, GET lists as
//! repeated query keys) and the response objects it parses.

use hangar_track::{Experiment, KeyValue, Metric, Run, RunInfo};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// Parses JSON that may contain Python's bare `NaN`, `Infinity` and `-Infinity`
/// (what `json.dumps` writes for non-finite floats) by quoting them first.
pub fn parse_lenient_json(bytes: &[u8]) -> serde_json::Result<Value> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(first) => {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return Err(first);
            };
            let mut out = String::with_capacity(text.len() + 16);
            let mut in_str = false;
            let mut escaped = false;
            let mut rest = text;
            while let Some(c) = rest.chars().next() {
                if in_str {
                    out.push(c);
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        in_str = false;
                    }
                    rest = &rest[c.len_utf8()..];
                    continue;
                }
                let word = ["-Infinity", "Infinity", "NaN"]
                    .into_iter()
                    .find(|w| rest.starts_with(w));
                if let Some(w) = word {
                    out.push('"');
                    out.push_str(w);
                    out.push('"');
                    rest = &rest[w.len()..];
                    continue;
                }
                if c == '"' {
                    in_str = true;
                }
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
            serde_json::from_str(&out).map_err(|_| first)
        }
    }
}

/// A query string as a JSON object; a key given twice becomes an array.
pub fn query_to_json(query: &str) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let v = Value::String(v.into_owned());
        match map.get_mut(k.as_ref()) {
            None => {
                map.insert(k.into_owned(), v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(old) => {
                let first = old.take();
                *old = Value::Array(vec![first, v]);
            }
        }
    }
    Value::Object(map)
}

/// An int64 sent as a number or a string.
pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer"))),
        Some(Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not an integer"))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected an integer, found {other}"
        ))),
    }
}

/// A double sent as a number or a string (`"NaN"`, `"Infinity"`, `"0.5"`).
pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => match s.trim() {
            "NaN" | "nan" => Ok(Some(f64::NAN)),
            "Infinity" | "inf" => Ok(Some(f64::INFINITY)),
            "-Infinity" | "-inf" => Ok(Some(f64::NEG_INFINITY)),
            t => t
                .parse::<f64>()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, found {other}"
        ))),
    }
}

/// A list sent as an array or (from a query string) a single value.
pub fn str_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(serde::de::Error::custom(format!(
                    "expected a string, found {other}"
                ))),
            })
            .collect(),
        Some(Value::Number(n)) => Ok(vec![n.to_string()]),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a list of strings, found {other}"
        ))),
    }
}

/// A bool sent as a JSON bool or the string `true`/`false`.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(Some(true)),
            "false" | "0" => Ok(Some(false)),
            _ => Err(serde::de::Error::custom(format!("{s:?} is not a boolean"))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a boolean, found {other}"
        ))),
    }
}

/// A `{key, value}` pair as sent (values may be missing or numbers).
#[derive(Debug, Deserialize)]
pub struct WireKeyValue {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
}

impl WireKeyValue {
    pub fn into_kv(self, what: &str) -> Result<KeyValue, String> {
        let key = self
            .key
            .ok_or_else(|| format!("a {what} is missing its 'key'"))?;
        let value = match self.value {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
        };
        Ok(KeyValue { key, value })
    }
}

/// A metric point as sent.
#[derive(Debug, Deserialize)]
pub struct WireMetric {
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub value: Option<f64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub step: Option<i64>,
}

impl WireMetric {
    pub fn into_metric(self) -> Result<Metric, String> {
        Ok(Metric {
            key: self.key.ok_or("a metric is missing its 'key'")?,
            value: self.value.ok_or("a metric is missing its 'value'")?,
            timestamp: self
                .timestamp
                .ok_or("a metric is missing its 'timestamp'")?,
            step: self.step.unwrap_or(0),
        })
    }
}

/// A double as MLflow's JSON writes it: a number, or `"NaN"`/`"Infinity"`/`"-Infinity"`.
pub fn ser_f64<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_str("NaN")
    } else if *v == f64::INFINITY {
        s.serialize_str("Infinity")
    } else if *v == f64::NEG_INFINITY {
        s.serialize_str("-Infinity")
    } else {
        s.serialize_f64(*v)
    }
}

#[derive(Debug, Serialize)]
pub struct OutKeyValue {
    pub key: String,
    pub value: String,
}

impl From<KeyValue> for OutKeyValue {
    fn from(kv: KeyValue) -> Self {
        OutKeyValue {
            key: kv.key,
            value: kv.value,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OutMetric {
    pub key: String,
    #[serde(serialize_with = "ser_f64")]
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

impl From<Metric> for OutMetric {
    fn from(m: Metric) -> Self {
        OutMetric {
            key: m.key,
            value: m.value,
            timestamp: m.timestamp,
            step: m.step,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OutExperiment {
    pub experiment_id: String,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub last_update_time: i64,
    pub creation_time: i64,
    pub tags: Vec<OutKeyValue>,
}

impl From<Experiment> for OutExperiment {
    fn from(e: Experiment) -> Self {
        OutExperiment {
            experiment_id: e.experiment_id,
            name: e.name,
            artifact_location: e.artifact_location,
            lifecycle_stage: e.lifecycle_stage,
            last_update_time: e.last_update_time,
            creation_time: e.creation_time,
            tags: e.tags.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OutRunInfo {
    pub run_id: String,
    pub run_uuid: String,
    pub run_name: String,
    pub experiment_id: String,
    pub user_id: String,
    pub status: &'static str,
    pub start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    pub lifecycle_stage: String,
}

impl From<RunInfo> for OutRunInfo {
    fn from(i: RunInfo) -> Self {
        OutRunInfo {
            run_uuid: i.run_id.clone(),
            run_id: i.run_id,
            run_name: i.run_name,
            experiment_id: i.experiment_id,
            user_id: i.user_id,
            status: i.status.as_str(),
            start_time: i.start_time,
            end_time: i.end_time,
            artifact_uri: i.artifact_uri,
            lifecycle_stage: i.lifecycle_stage,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct OutRunData {
    pub metrics: Vec<OutMetric>,
    pub params: Vec<OutKeyValue>,
    pub tags: Vec<OutKeyValue>,
}

#[derive(Debug, Serialize)]
pub struct OutRun {
    pub info: OutRunInfo,
    pub data: OutRunData,
    pub inputs: Map<String, Value>,
}

impl From<Run> for OutRun {
    fn from(r: Run) -> Self {
        OutRun {
            info: r.info.into(),
            data: OutRunData {
                metrics: r.metrics.into_iter().map(Into::into).collect(),
                params: r.params.into_iter().map(Into::into).collect(),
                tags: r.tags.into_iter().map(Into::into).collect(),
            },
            inputs: Map::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_nan_and_infinity_parse_outside_strings_only() {
        let v = parse_lenient_json(br#"{"value": NaN, "b": -Infinity, "s": "NaN is Infinity"}"#)
            .unwrap();
        assert_eq!(v["value"], "NaN");
        assert_eq!(v["b"], "-Infinity");
        assert_eq!(v["s"], "NaN is Infinity");
        assert!(parse_lenient_json(b"{oops}").is_err());
    }

    #[test]
    fn repeated_query_keys_become_lists() {
        let v = query_to_json("a=1&b=x%20y&a=2");
        assert_eq!(v["a"], serde_json::json!(["1", "2"]));
        assert_eq!(v["b"], "x y");
    }
}
