//! Searching runs and experiments: filter clauses and order-by terms (from `filter.rs`)
//! become one SQL query over the runs table, the latest-metrics table and the param
//! and tag tables; offsets travel in opaque page tokens.

use rusqlite::types::Value as Sql;

use crate::error::{invalid, Result};
use crate::filter::{parse_filter, parse_order_by, Clause, Comparator, Entity, Value};
use crate::tracker::{
    experiment_row, experiment_tags, load_runs_data, parse_experiment_id, run_info_row, Tracker,
    RUN_COLUMNS,
};
use crate::types::{Experiment, Run};

/// The most results one search page may ask for.
pub const MAX_SEARCH_RESULTS: usize = 50_000;
const DEFAULT_MAX_RESULTS: usize = 1000;
/// Values one search may bind (experiment ids, filter values): SQLite's own limit is
/// 32 766, and a search this large is a mistake, not a query.
const MAX_SEARCH_VALUES: usize = 10_000;

fn check_size(args: &[Sql]) -> Result<()> {
    if args.len() > MAX_SEARCH_VALUES {
        return Err(invalid(format!(
            "the search names {} experiment ids and filter values; the limit is {MAX_SEARCH_VALUES}: split it into several searches",
            args.len()
        )));
    }
    Ok(())
}

/// Which lifecycle stages a search includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ViewType {
    #[default]
    ActiveOnly,
    DeletedOnly,
    All,
}

impl ViewType {
    /// Parses MLflow's `ACTIVE_ONLY`, `DELETED_ONLY`, `ALL` (also as 1, 2, 3).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "ACTIVE_ONLY" | "1" | "" => ViewType::ActiveOnly,
            "DELETED_ONLY" | "2" => ViewType::DeletedOnly,
            "ALL" | "3" => ViewType::All,
            _ => {
                return Err(invalid(format!(
                    "unknown run_view_type {s:?}: use ACTIVE_ONLY, DELETED_ONLY or ALL"
                )))
            }
        })
    }
    fn sql(self, column: &str) -> String {
        match self {
            ViewType::ActiveOnly => format!("{column} = 'active'"),
            ViewType::DeletedOnly => format!("{column} = 'deleted'"),
            ViewType::All => "1".into(),
        }
    }
}

/// A run search (MLflow's `runs/search`).
#[derive(Debug, Clone, Default)]
pub struct SearchRuns {
    pub experiment_ids: Vec<String>,
    pub filter: String,
    pub order_by: Vec<String>,
    /// 1..=50 000; 1000 when absent.
    pub max_results: Option<usize>,
    pub page_token: Option<String>,
    pub view: ViewType,
}

/// One page of runs.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<Run>,
    pub next_page_token: Option<String>,
}

/// An experiment search (MLflow's `experiments/search`): filter on `name`,
/// `creation_time`, `last_update_time` and `tags.*`.
#[derive(Debug, Clone, Default)]
pub struct SearchExperiments {
    pub filter: String,
    pub order_by: Vec<String>,
    pub max_results: Option<usize>,
    pub page_token: Option<String>,
    pub view: ViewType,
}

fn page_limits(max_results: Option<usize>, token: Option<&str>) -> Result<(usize, usize)> {
    let max = max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if max == 0 || max > MAX_SEARCH_RESULTS {
        return Err(invalid(format!(
            "max_results must be between 1 and {MAX_SEARCH_RESULTS}, got {max}"
        )));
    }
    let offset = match token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .strip_prefix("offset:")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| {
                invalid(format!(
                    "invalid page_token {t:?}: pass back the next_page_token of a previous page"
                ))
            })?,
    };
    Ok((max, offset))
}

fn next_token(offset: usize, max: usize, got: usize) -> Option<String> {
    (got > max).then(|| format!("offset:{}", offset + max))
}

/// SQL for one filter clause on runs (`r`), binding its arguments into `args`.
fn run_clause_sql(c: &Clause, args: &mut Vec<Sql>) -> String {
    let (column, correlated) = match c.entity {
        Entity::Metric => (
            "m.value",
            "latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = ?",
        ),
        Entity::Param => (
            "p.value",
            "params p WHERE p.run_uuid = r.run_uuid AND p.key = ?",
        ),
        Entity::Tag => (
            "t.value",
            "tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?",
        ),
        Entity::Attribute => {
            let col = match c.key.as_str() {
                "run_id" => "r.run_uuid",
                "created" => "r.start_time",
                k => match k {
                    "run_name" => "r.run_name",
                    "status" => "r.status",
                    "user_id" => "r.user_id",
                    "artifact_uri" => "r.artifact_uri",
                    "lifecycle_stage" => "r.lifecycle_stage",
                    "start_time" => "r.start_time",
                    _ => "r.end_time",
                },
            };
            return comparison_sql(col, c, args);
        }
    };
    args.push(Sql::Text(c.key.clone()));
    let cmp = comparison_sql(column, c, args);
    format!("EXISTS (SELECT 1 FROM {correlated} AND {cmp})")
}

fn comparison_sql(column: &str, c: &Clause, args: &mut Vec<Sql>) -> String {
    match &c.value {
        Value::Number(n) => {
            args.push(Sql::Real(*n));
            format!("{column} {} ?", c.comparator.sql())
        }
        Value::Str(s) => {
            args.push(Sql::Text(s.clone()));
            if c.comparator == Comparator::ILike {
                format!("LOWER({column}) LIKE LOWER(?)")
            } else {
                format!("{column} {} ?", c.comparator.sql())
            }
        }
        Value::List(items) => {
            let marks = vec!["?"; items.len()].join(", ");
            args.extend(items.iter().cloned().map(Sql::Text));
            format!("{column} {} ({marks})", c.comparator.sql())
        }
    }
}

/// SQL for one order-by term on runs; missing values sort last either way.
fn run_order_sql(term: &str, args: &mut Vec<Sql>) -> Result<String> {
    let o = parse_order_by(term)?;
    let expr = match o.entity {
        Entity::Metric => {
            "(SELECT m.value FROM latest_metrics m WHERE m.run_uuid = r.run_uuid AND m.key = ?)"
                .to_string()
        }
        Entity::Param => {
            "(SELECT p.value FROM params p WHERE p.run_uuid = r.run_uuid AND p.key = ?)".to_string()
        }
        Entity::Tag => {
            "(SELECT t.value FROM tags t WHERE t.run_uuid = r.run_uuid AND t.key = ?)".to_string()
        }
        Entity::Attribute => match o.key.as_str() {
            "run_id" => "r.run_uuid".into(),
            "created" => "r.start_time".into(),
            k => format!("r.{k}"),
        },
    };
    let dir = if o.ascending { "ASC" } else { "DESC" };
    if o.entity == Entity::Attribute {
        return Ok(format!("{expr} IS NULL, {expr} {dir}"));
    }
    args.push(Sql::Text(o.key.clone()));
    args.push(Sql::Text(o.key));
    Ok(format!("{expr} IS NULL, {expr} {dir}"))
}

impl Tracker {
    /// Runs of the given experiments matching a filter, in order, one page at a time.
    pub fn search_runs(&self, q: &SearchRuns) -> Result<RunPage> {
        let (max, offset) = page_limits(q.max_results, q.page_token.as_deref())?;
        let clauses = parse_filter(&q.filter)?;
        if q.experiment_ids.is_empty() {
            return Err(invalid(
                "experiment_ids must name at least one experiment to search",
            ));
        }
        let mut args: Vec<Sql> = Vec::new();
        let mut ids = Vec::new();
        for id in &q.experiment_ids {
            ids.push("?");
            args.push(Sql::Integer(parse_experiment_id(id)?));
        }
        let mut sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE r.experiment_id IN ({}) AND {}",
            ids.join(", "),
            q.view.sql("r.lifecycle_stage")
        );
        for c in &clauses {
            sql.push_str(" AND ");
            sql.push_str(&run_clause_sql(c, &mut args));
        }
        let mut order = Vec::new();
        for term in &q.order_by {
            order.push(run_order_sql(term, &mut args)?);
        }
        order.push("r.start_time DESC".into());
        order.push("r.run_uuid ASC".into());
        sql.push_str(&format!(" ORDER BY {} LIMIT ? OFFSET ?", order.join(", ")));
        args.push(Sql::Integer(max as i64 + 1));
        args.push(Sql::Integer(offset as i64));
        check_size(&args)?;
        let conn = self.conn();
        let mut st = conn.prepare_cached(&sql)?;
        let infos = st
            .query_map(rusqlite::params_from_iter(args), run_info_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next_page_token = next_token(offset, max, infos.len());
        let runs = load_runs_data(&conn, infos.into_iter().take(max).collect())?;
        Ok(RunPage {
            runs,
            next_page_token,
        })
    }

    /// Experiments matching a filter, one page at a time.
    pub fn search_experiments(
        &self,
        q: &SearchExperiments,
    ) -> Result<(Vec<Experiment>, Option<String>)> {
        let (max, offset) = page_limits(q.max_results, q.page_token.as_deref())?;
        let mut args: Vec<Sql> = Vec::new();
        let mut sql = format!(
            "SELECT e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage, e.creation_time, e.last_update_time
             FROM experiments e WHERE {}",
            q.view.sql("e.lifecycle_stage")
        );
        for c in parse_experiment_filter(&q.filter)? {
            sql.push_str(" AND ");
            if c.entity == Entity::Tag {
                args.push(Sql::Text(c.key.clone()));
                let cmp = comparison_sql("t.value", &c, &mut args);
                sql.push_str(&format!(
                    "EXISTS (SELECT 1 FROM experiment_tags t WHERE t.experiment_id = e.experiment_id AND t.key = ? AND {cmp})"
                ));
            } else {
                sql.push_str(&comparison_sql(&format!("e.{}", c.key), &c, &mut args));
            }
        }
        let mut order = Vec::new();
        for term in &q.order_by {
            let o = parse_order_by(term).ok().filter(|o| {
                o.entity == Entity::Attribute
                    && matches!(
                        o.key.as_str(),
                        "name" | "experiment_id" | "creation_time" | "last_update_time"
                    )
            });
            let o = match o {
                Some(o) => o,
                None => {
                    // `name` is not a run attribute, so parse it by hand.
                    let mut parts = term.split_whitespace();
                    let key = parts.next().unwrap_or("");
                    let key = key
                        .strip_prefix("attributes.")
                        .or_else(|| key.strip_prefix("attribute."))
                        .unwrap_or(key);
                    if !matches!(
                        key,
                        "name" | "experiment_id" | "creation_time" | "last_update_time"
                    ) {
                        return Err(invalid(format!(
                            "invalid order_by {term:?}: experiments order by name, experiment_id, creation_time or last_update_time"
                        )));
                    }
                    let asc = match parts.next().map(|d| d.to_ascii_uppercase()) {
                        None => true,
                        Some(d) if d == "ASC" => true,
                        Some(d) if d == "DESC" => false,
                        Some(d) => {
                            return Err(invalid(format!(
                                "invalid order_by {term:?}: expected ASC or DESC, found {d:?}"
                            )))
                        }
                    };
                    crate::filter::OrderBy {
                        entity: Entity::Attribute,
                        key: key.into(),
                        ascending: asc,
                    }
                }
            };
            order.push(format!(
                "e.{} {}",
                o.key,
                if o.ascending { "ASC" } else { "DESC" }
            ));
        }
        order.push("e.experiment_id ASC".into());
        sql.push_str(&format!(" ORDER BY {} LIMIT ? OFFSET ?", order.join(", ")));
        args.push(Sql::Integer(max as i64 + 1));
        args.push(Sql::Integer(offset as i64));
        check_size(&args)?;
        let conn = self.conn();
        let mut st = conn.prepare_cached(&sql)?;
        let mut exps = st
            .query_map(rusqlite::params_from_iter(args), experiment_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let next = next_token(offset, max, exps.len());
        exps.truncate(max);
        for e in &mut exps {
            e.tags = experiment_tags(&conn, &e.experiment_id)?;
        }
        Ok((exps, next))
    }
}

/// Experiment filters: `name`, `creation_time`, `last_update_time` attributes, `tags.*`.
fn parse_experiment_filter(src: &str) -> Result<Vec<Clause>> {
    let clauses =
        crate::filter::parse_filter_with(src, &["name"], &["creation_time", "last_update_time"])?;
    if clauses
        .iter()
        .any(|c| !matches!(c.entity, Entity::Attribute | Entity::Tag))
    {
        return Err(invalid(format!(
            "invalid filter {src:?}: experiments filter on name, creation_time, last_update_time or tags.<key>"
        )));
    }
    Ok(clauses)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyValue, LogBatch, Metric, NewRun, RunStatus};

    /// Five runs: acc = 0.1 * i, lr param alternating, a tag on even runs.
    fn fixture() -> (tempfile::TempDir, Tracker, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for i in 0..5i64 {
            let r = t
                .create_run(&NewRun {
                    experiment_id: "0".into(),
                    run_name: Some(format!("Run-{i}")),
                    start_time: Some(1000 + i),
                    ..Default::default()
                })
                .unwrap();
            let id = r.info.run_id;
            let mut b = LogBatch {
                metrics: vec![Metric {
                    key: "acc".into(),
                    value: 0.1 * i as f64,
                    timestamp: 1,
                    step: 0,
                }],
                params: vec![KeyValue::new("lr", if i % 2 == 0 { "0.1" } else { "0.01" })],
                ..Default::default()
            };
            if i % 2 == 0 {
                b.tags.push(KeyValue::new("team x", format!("vision-{i}")));
            }
            t.log_batch(&id, &b).unwrap();
            if i >= 3 {
                t.update_run(&id, Some(RunStatus::Finished), Some(2000), None)
                    .unwrap();
            }
            ids.push(id);
        }
        (dir, t, ids)
    }

    fn names(t: &Tracker, filter: &str, order: &[&str]) -> Vec<String> {
        t.search_runs(&SearchRuns {
            experiment_ids: vec!["0".into()],
            filter: filter.into(),
            order_by: order.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
        .runs
        .into_iter()
        .map(|r| r.info.run_name)
        .collect()
    }

    #[test]
    fn filters_select_by_metric_param_tag_and_attribute() {
        let (_d, t, ids) = fixture();
        assert_eq!(
            names(&t, "metrics.acc > 0.25", &["metrics.acc ASC"]),
            ["Run-3", "Run-4"]
        );
        assert_eq!(
            names(&t, "params.lr = '0.1'", &["attributes.start_time"]),
            ["Run-0", "Run-2", "Run-4"]
        );
        assert_eq!(
            names(
                &t,
                "tags.`team x` LIKE 'vision-%' and metrics.acc >= 0.2",
                &[]
            ),
            ["Run-4", "Run-2"]
        );
        assert_eq!(
            names(&t, "tags.`team x` LIKE 'VISION-%'", &[]),
            Vec::<String>::new()
        );
        assert_eq!(names(&t, "tags.`team x` ILIKE 'VISION-%'", &[]).len(), 3);
        assert_eq!(
            names(&t, "attributes.status = 'FINISHED'", &[]),
            ["Run-4", "Run-3"]
        );
        assert_eq!(
            names(&t, "status != 'FINISHED' and params.lr != '0.1'", &[]),
            ["Run-1"]
        );
        assert_eq!(
            names(&t, "run_name IN ('Run-1', 'Run-2')", &[]),
            ["Run-2", "Run-1"]
        );
        assert_eq!(
            names(&t, "attributes.run_name ILIKE 'run-0'", &[]),
            ["Run-0"]
        );
        assert_eq!(
            names(&t, &format!("attributes.run_id = '{}'", ids[1]), &[]),
            ["Run-1"]
        );
        assert_eq!(
            names(&t, "attributes.start_time >= 1003", &["start_time ASC"]),
            ["Run-3", "Run-4"]
        );
        assert_eq!(names(&t, "metrics.missing > 0", &[]), Vec::<String>::new());
    }

    #[test]
    fn order_by_sorts_missing_values_last_and_defaults_to_newest_first() {
        let (_d, t, _) = fixture();
        assert_eq!(
            names(&t, "", &[]),
            ["Run-4", "Run-3", "Run-2", "Run-1", "Run-0"]
        );
        assert_eq!(
            names(&t, "", &["metrics.acc DESC"]),
            ["Run-4", "Run-3", "Run-2", "Run-1", "Run-0"]
        );
        assert_eq!(
            names(&t, "", &["params.lr ASC", "metrics.acc DESC"]),
            ["Run-3", "Run-1", "Run-4", "Run-2", "Run-0"]
        );
        // Only even runs carry the tag: the others come after, in either direction.
        let asc = names(&t, "", &["tags.`team x` DESC"]);
        assert_eq!(&asc[..3], ["Run-4", "Run-2", "Run-0"]);
        let desc = names(&t, "", &["tags.`team x` ASC"]);
        assert_eq!(&desc[..3], ["Run-0", "Run-2", "Run-4"]);
    }

    #[test]
    fn pages_cover_every_run_once_and_deleted_runs_need_a_view() {
        let (_d, t, ids) = fixture();
        let mut seen = Vec::new();
        let mut token = None;
        loop {
            let page = t
                .search_runs(&SearchRuns {
                    experiment_ids: vec!["0".into()],
                    max_results: Some(2),
                    page_token: token,
                    ..Default::default()
                })
                .unwrap();
            assert!(page.runs.len() <= 2);
            seen.extend(page.runs.into_iter().map(|r| r.info.run_id));
            token = page.next_page_token;
            if token.is_none() {
                break;
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 5);
        t.delete_run(&ids[0]).unwrap();
        assert_eq!(names(&t, "", &[]).len(), 4);
        let deleted = t
            .search_runs(&SearchRuns {
                experiment_ids: vec!["0".into()],
                view: ViewType::DeletedOnly,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(deleted.runs.len(), 1);
        for bad in [Some(0), Some(50_001)] {
            assert!(t
                .search_runs(&SearchRuns {
                    experiment_ids: vec!["0".into()],
                    max_results: bad,
                    ..Default::default()
                })
                .is_err());
        }
        assert!(t
            .search_runs(&SearchRuns {
                experiment_ids: vec!["0".into()],
                page_token: Some("garbage".into()),
                ..Default::default()
            })
            .is_err());
    }

    #[test]
    fn experiments_search_by_name_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        t.create_experiment("alpha", None, &[KeyValue::new("team", "nlp")])
            .unwrap();
        let b = t.create_experiment("beta", None, &[]).unwrap();
        assert!(matches!(
            t.create_experiment("alpha", None, &[]),
            Err(crate::TrackError::AlreadyExists(_))
        ));
        let find = |f: &str| {
            t.search_experiments(&SearchExperiments {
                filter: f.into(),
                order_by: vec!["name DESC".into()],
                ..Default::default()
            })
            .unwrap()
            .0
            .into_iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
        };
        assert_eq!(find(""), ["beta", "alpha", "Default"]);
        assert_eq!(find("name LIKE 'a%'"), ["alpha"]);
        assert_eq!(find("tags.team = 'nlp'"), ["alpha"]);
        t.delete_experiment(&b).unwrap();
        assert_eq!(find(""), ["alpha", "Default"]);
        assert!(t
            .search_experiments(&SearchExperiments {
                filter: "metrics.x > 1".into(),
                ..Default::default()
            })
            .is_err());
    }
}
