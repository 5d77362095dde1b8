//! MLflow tracking: experiments, runs, params, metrics and tags, over the tables `/api/v1`
//! uses. MLflow's rules come along: params are immutable, a run's latest metric value is the
//! one with the highest step (then the latest timestamp), deleted experiments and runs are kept
//! (`lifecycle_stage`) and refuse writes, and `mlflow.runName` / `mlflow.parentRunId` tags
//! keep the run's name and parent columns in step.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use petrel_api::registry::DatasetInput;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::search::{self, MetricJoins, push_order, push_where};
use super::{
    Fields, MlflowError, Msg, Result, check_plain, check_text, double, from_millis, max_results,
    millis, page_offset, parse_experiment_id, run_hex,
};
use crate::{AppState, store};

/// MLflow's limits on keys and values (`mlflow/utils/validation.py`).
const MAX_KEY: usize = 250;
pub const MAX_PARAM_VALUE: usize = 6000;
const MAX_TAG_VALUE: usize = 8000;
const MAX_EXPERIMENT_NAME: usize = 500;
const MAX_LOCATION: usize = 2048;
/// How much one `log-batch` may carry, all in one transaction. MLflow's own server takes at
/// most 1,000 entities; this registry takes more, so a client may send a whole epoch's
/// metrics with the run's params and tags at once.
pub const MAX_BATCH_METRICS: usize = 10_000;
pub const MAX_BATCH_PARAMS: usize = 1_000;
pub const MAX_BATCH_TAGS: usize = 1_000;
/// Metric history rows per page, when the client does not say, and at most.
const HISTORY_PAGE: i64 = 25_000;
const HISTORY_PAGE_MAX: i64 = 100_000;

use super::{PARENT_RUN_TAG as PARENT_TAG, RUN_NAME_TAG};

fn ok() -> Response {
    axum::Json(json!({})).into_response()
}

#[derive(Debug, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct ExperimentOut {
    experiment_id: String,
    name: String,
    artifact_location: String,
    lifecycle_stage: String,
    last_update_time: i64,
    creation_time: i64,
    tags: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub struct RunInfo {
    run_id: String,
    run_uuid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_name: Option<String>,
    experiment_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    status: &'static str,
    start_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_time: Option<i64>,
    pub artifact_uri: String,
    lifecycle_stage: String,
}

#[derive(Debug, Serialize)]
pub struct MetricOut {
    key: String,
    #[serde(serialize_with = "double")]
    value: f64,
    timestamp: i64,
    step: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct RunData {
    metrics: Vec<MetricOut>,
    params: Vec<KeyValue>,
    tags: Vec<KeyValue>,
}

#[derive(Debug, Serialize)]
pub struct RunOut {
    pub info: RunInfo,
    data: RunData,
    inputs: Value,
    outputs: Value,
}

// ---- validation ------------------------------------------------------------------------

/// A param, metric or tag key, by MLflow's rules: letters, digits, `_ - . : /` and spaces, at
/// most 250 characters, and never a path that would resolve to another name.
pub fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: ''. Names must not be empty."
        )));
    }
    if key.chars().count() > MAX_KEY {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: '{}...' is longer than {MAX_KEY} characters.",
            key.chars().take(40).collect::<String>()
        )));
    }
    if !key
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ' ' | ':' | '/'))
    {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: {key:?}. Names may only contain alphanumerics, underscores \
             (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)."
        )));
    }
    if key.starts_with('/')
        || key.ends_with('/')
        || key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(MlflowError::invalid(format!(
            "Invalid {what} name: {key:?}. Names may be treated as file paths, so they must \
             not start or end with '/', hold '//', or have '.' or '..' as a part."
        )));
    }
    Ok(())
}

fn check_value(what: &str, key: &str, value: &str, max: usize) -> Result<()> {
    check_text(&format!("the value of {what} {key:?}"), value)?;
    let n = value.chars().count();
    if n > max {
        return Err(MlflowError::invalid(format!(
            "The value of {what} {key:?} has {n} characters; the limit is {max}."
        )));
    }
    Ok(())
}

fn check_experiment_name(name: &str) -> Result<()> {
    if name.trim().is_empty() || name.chars().count() > MAX_EXPERIMENT_NAME {
        return Err(MlflowError::invalid(format!(
            "Invalid experiment name: {name:?}. It must be 1 to {MAX_EXPERIMENT_NAME} characters."
        )));
    }
    check_plain("an experiment name", name)
}

struct MetricIn {
    key: String,
    value: f64,
    timestamp: DateTime<Utc>,
    step: i64,
}

fn metric_in(f: &Fields) -> Result<MetricIn> {
    let key = f.str("key")?;
    check_key("metric", &key)?;
    let value = f.opt_f64("value")?.ok_or_else(|| f.missing("value"))?;
    let timestamp = match f.opt_i64("timestamp")? {
        Some(ms) => from_millis("timestamp", ms)?,
        None => Utc::now(),
    };
    Ok(MetricIn {
        key,
        value,
        timestamp,
        step: f.opt_i64("step")?.unwrap_or(0),
    })
}

fn param_in(f: &Fields) -> Result<(String, String)> {
    let key = f.str("key")?;
    check_key("param", &key)?;
    let value = f.opt_str("value")?.ok_or_else(|| f.missing("value"))?;
    check_value("param", &key, &value, MAX_PARAM_VALUE)?;
    Ok((key, value))
}

pub(crate) fn tag_in(f: &Fields) -> Result<(String, String)> {
    let key = f.str("key")?;
    check_key("tag", &key)?;
    let value = f.opt_str("value")?.unwrap_or_default();
    check_value("tag", &key, &value, MAX_TAG_VALUE)?;
    Ok((key, value))
}

/// Keeps the last value of each tag key, as applying them in order would.
pub(crate) fn last_wins(tags: Vec<(String, String)>) -> BTreeMap<String, String> {
    tags.into_iter().collect()
}

/// One value per param key: the same value twice is one param, two values are an error.
fn unique_params(params: Vec<(String, String)>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut clashes = Vec::new();
    for (k, v) in params {
        match out.get(&k) {
            Some(old) if *old != v => clashes.push(k),
            Some(_) => {}
            None => {
                out.insert(k, v);
            }
        }
    }
    if !clashes.is_empty() {
        return Err(MlflowError::invalid(format!(
            "Duplicate parameter keys have been submitted with different values: {clashes:?}. \
             Send one value per param key."
        )));
    }
    Ok(out)
}

fn status_out(db: &str) -> &'static str {
    match db {
        "finished" => "FINISHED",
        "failed" => "FAILED",
        "killed" => "KILLED",
        _ => "RUNNING",
    }
}

/// A run status by name or by its protobuf number.
fn status_in(f: &Fields) -> Result<Option<&'static str>> {
    let Some(raw) = f.opt_nonempty("status")? else {
        return Ok(None);
    };
    match raw.to_ascii_uppercase().as_str() {
        "RUNNING" | "1" => Ok(Some("running")),
        "FINISHED" | "3" => Ok(Some("finished")),
        "FAILED" | "4" => Ok(Some("failed")),
        "KILLED" | "5" => Ok(Some("killed")),
        "SCHEDULED" | "2" => Err(MlflowError::invalid(
            "SCHEDULED runs are not supported by this registry; create the run when it starts",
        )),
        _ => Err(MlflowError::invalid(format!(
            "Invalid value {raw:?} for parameter 'status' supplied: use RUNNING, FINISHED, \
             FAILED or KILLED."
        ))),
    }
}

/// The lifecycle stages a view type selects.
fn view_stages(f: &Fields, key: &str) -> Result<Vec<String>> {
    let raw = f.opt_nonempty(key)?.unwrap_or_else(|| "ACTIVE_ONLY".into());
    let stages: &[&str] = match raw.to_ascii_uppercase().as_str() {
        "ACTIVE_ONLY" | "1" => &["active"],
        "DELETED_ONLY" | "2" => &["deleted"],
        "ALL" | "3" => &["active", "deleted"],
        _ => {
            return Err(MlflowError::invalid(format!(
                "Invalid value {raw:?} for parameter '{key}' supplied: use ACTIVE_ONLY, \
                 DELETED_ONLY or ALL."
            )));
        }
    };
    Ok(stages.iter().map(|s| (*s).to_owned()).collect())
}

// ---- experiments -----------------------------------------------------------------------

const EXPERIMENT_SELECT: &str = "SELECT e.id, e.mlflow_id, e.name, \
     COALESCE(e.artifact_location, 'mlflow-artifacts:/' || e.mlflow_id) AS artifact_location, \
     e.lifecycle_stage, e.created_at, e.last_update_time FROM experiments e";

/// An experiment row: its UUID (for joins) and what MLflow shows.
struct ExperimentRow {
    id: Uuid,
    mlflow_id: i64,
    name: String,
    artifact_location: String,
    lifecycle_stage: String,
    created_at: DateTime<Utc>,
    last_update_time: DateTime<Utc>,
}

fn experiment_row(r: &sqlx::postgres::PgRow) -> ExperimentRow {
    ExperimentRow {
        id: r.get("id"),
        mlflow_id: r.get("mlflow_id"),
        name: r.get("name"),
        artifact_location: r.get("artifact_location"),
        lifecycle_stage: r.get("lifecycle_stage"),
        created_at: r.get("created_at"),
        last_update_time: r.get("last_update_time"),
    }
}

async fn find_experiment(conn: &mut PgConnection, mlflow_id: i64) -> Result<Option<ExperimentRow>> {
    let row = sqlx::query(&format!("{EXPERIMENT_SELECT} WHERE e.mlflow_id = $1"))
        .bind(mlflow_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(experiment_row))
}

async fn experiment(conn: &mut PgConnection, raw_id: &str) -> Result<ExperimentRow> {
    let id = parse_experiment_id(raw_id)?;
    find_experiment(conn, id)
        .await?
        .ok_or_else(|| MlflowError::not_found(format!("No Experiment with id={id} exists")))
}

async fn active_experiment(conn: &mut PgConnection, raw_id: &str) -> Result<ExperimentRow> {
    let e = experiment(conn, raw_id).await?;
    if e.lifecycle_stage != "active" {
        return Err(MlflowError::invalid(format!(
            "The experiment {} must be in the 'active' state. Current state is {}.",
            e.mlflow_id, e.lifecycle_stage
        )));
    }
    Ok(e)
}

async fn experiments_out(
    conn: &mut PgConnection,
    rows: Vec<ExperimentRow>,
) -> Result<Vec<ExperimentOut>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut tags: HashMap<Uuid, Vec<KeyValue>> = HashMap::new();
    for r in sqlx::query(
        "SELECT experiment_id, key, value FROM experiment_tags WHERE experiment_id = ANY($1) \
         ORDER BY key",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?
    {
        tags.entry(r.get("experiment_id"))
            .or_default()
            .push(KeyValue {
                key: r.get("key"),
                value: r.get("value"),
            });
    }
    Ok(rows
        .into_iter()
        .map(|e| ExperimentOut {
            experiment_id: e.mlflow_id.to_string(),
            tags: tags.remove(&e.id).unwrap_or_default(),
            name: e.name,
            artifact_location: e.artifact_location,
            lifecycle_stage: e.lifecycle_stage,
            last_update_time: millis(e.last_update_time),
            creation_time: millis(e.created_at),
        })
        .collect())
}

async fn experiment_out(conn: &mut PgConnection, row: ExperimentRow) -> Result<ExperimentOut> {
    Ok(experiments_out(conn, vec![row]).await?.remove(0))
}

pub async fn create_experiment(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_experiment_name(&name)?;
    let location = f.opt_nonempty("artifact_location")?;
    if let Some(l) = &location {
        check_plain("artifact_location", l)?;
        if l.len() > MAX_LOCATION || l.starts_with("runs:") {
            return Err(MlflowError::invalid(format!(
                "Invalid artifact_location {l:?}: at most {MAX_LOCATION} characters, and not a \
                 runs:/ URI"
            )));
        }
    }
    let tags = last_wins(
        f.objects("tags")?
            .iter()
            .map(tag_in)
            .collect::<Result<_>>()?,
    );
    let mut tx = s.infra.pool.begin().await?;
    let existing: Option<String> =
        sqlx::query_scalar("SELECT lifecycle_stage FROM experiments WHERE name = $1")
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(stage) = existing {
        let hint = if stage == "deleted" {
            " in the deleted state; restore it or choose another name"
        } else {
            ""
        };
        return Err(MlflowError::exists(format!(
            "Experiment(name={name}) already exists{hint}."
        )));
    }
    let (id, mlflow_id): (Uuid, i64) = sqlx::query_as(
        "INSERT INTO experiments (id, name, artifact_location) VALUES ($1, $2, $3) \
         RETURNING id, mlflow_id",
    )
    .bind(Uuid::now_v7())
    .bind(&name)
    .bind(&location)
    .fetch_one(&mut *tx)
    .await?;
    upsert_experiment_tags(&mut tx, id, &tags).await?;
    tx.commit().await?;
    tracing::info!(experiment.name = %name, experiment.id = mlflow_id, "experiment created over the MLflow API");
    Ok(axum::Json(json!({ "experiment_id": mlflow_id.to_string() })).into_response())
}

async fn upsert_experiment_tags(
    conn: &mut PgConnection,
    experiment: Uuid,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    store::upsert_tag_rows(conn, "experiment_tags", "experiment_id", experiment, tags).await?;
    sqlx::query("UPDATE experiments SET last_update_time = now() WHERE id = $1")
        .bind(experiment)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get_experiment(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let mut conn = s.infra.pool.acquire().await?;
    let e = experiment(&mut conn, &f.str("experiment_id")?).await?;
    let out = experiment_out(&mut conn, e).await?;
    Ok(axum::Json(json!({ "experiment": out })).into_response())
}

pub async fn get_experiment_by_name(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("experiment_name")?;
    check_plain("experiment_name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    let row = sqlx::query(&format!("{EXPERIMENT_SELECT} WHERE e.name = $1"))
        .bind(&name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            MlflowError::not_found(format!("Could not find experiment with name '{name}'"))
        })?;
    let out = experiment_out(&mut conn, experiment_row(&row)).await?;
    Ok(axum::Json(json!({ "experiment": out })).into_response())
}

pub async fn search_experiments(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let clauses = search::experiments::filter(&f.opt_str("filter")?.unwrap_or_default())?;
    let orders = search::experiments::order(&f.strings("order_by")?)?;
    let stages = view_stages(&f, "view_type")?;
    let limit = max_results(&f, 1000, 50_000)?;
    let offset = page_offset(f.opt_str("page_token")?)?;
    let mut qb = QueryBuilder::<Postgres>::new(format!(
        "{EXPERIMENT_SELECT} WHERE e.lifecycle_stage = ANY("
    ));
    qb.push_bind(stages).push(")");
    push_where(&mut qb, &clauses, &MetricJoins::default());
    push_order(&mut qb, &orders, &MetricJoins::default());
    qb.push(" LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    let mut conn = s.infra.pool.acquire().await?;
    let mut rows: Vec<ExperimentRow> = qb
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(experiment_row)
        .collect();
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let experiments = experiments_out(&mut conn, rows).await?;
    Ok(super::page("experiments", experiments, more, offset, limit))
}

/// Soft-deletes an experiment and its runs, as MLflow does: they stay, marked deleted.
pub async fn delete_experiment(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_experiment_stage(&s, &f, "deleted").await
}

pub async fn restore_experiment(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_experiment_stage(&s, &f, "active").await
}

async fn set_experiment_stage(s: &AppState, f: &Fields, stage: &str) -> Result<Response> {
    let mut tx = s.infra.pool.begin().await?;
    let e = experiment(&mut tx, &f.str("experiment_id")?).await?;
    sqlx::query(
        "UPDATE experiments SET lifecycle_stage = $2, last_update_time = now() WHERE id = $1",
    )
    .bind(e.id)
    .bind(stage)
    .execute(&mut *tx)
    .await?;
    let deleted_time = if stage == "deleted" { "now()" } else { "NULL" };
    sqlx::query(&format!(
        "UPDATE runs SET lifecycle_stage = $2, deleted_time = {deleted_time} \
         WHERE experiment_id = $1 AND lifecycle_stage <> $2"
    ))
    .bind(e.id)
    .bind(stage)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        experiment.id = e.mlflow_id,
        stage,
        "experiment lifecycle changed"
    );
    Ok(ok())
}

pub async fn update_experiment(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let new_name = f.str("new_name")?;
    check_experiment_name(&new_name)?;
    let mut tx = s.infra.pool.begin().await?;
    let e = active_experiment(&mut tx, &f.str("experiment_id")?).await?;
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM experiments WHERE name = $1 AND id <> $2)",
    )
    .bind(&new_name)
    .bind(e.id)
    .fetch_one(&mut *tx)
    .await?;
    if taken {
        return Err(MlflowError::exists(format!(
            "Experiment(name={new_name}) already exists."
        )));
    }
    sqlx::query("UPDATE experiments SET name = $2, last_update_time = now() WHERE id = $1")
        .bind(e.id)
        .bind(&new_name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ok())
}

pub async fn set_experiment_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let (key, value) = tag_in(&f)?;
    let mut tx = s.infra.pool.begin().await?;
    let e = active_experiment(&mut tx, &f.str("experiment_id")?).await?;
    upsert_experiment_tags(&mut tx, e.id, &BTreeMap::from([(key, value)])).await?;
    tx.commit().await?;
    Ok(ok())
}

pub async fn delete_experiment_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let key = f.str("key")?;
    check_plain("key", &key)?;
    let mut tx = s.infra.pool.begin().await?;
    let e = active_experiment(&mut tx, &f.str("experiment_id")?).await?;
    let done = sqlx::query("DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = $2")
        .bind(e.id)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(MlflowError::not_found(format!(
            "No tag with name: {key} in experiment with id {}",
            e.mlflow_id
        )));
    }
    tx.commit().await?;
    Ok(ok())
}

// ---- runs ------------------------------------------------------------------------------

fn run_select() -> String {
    format!(
        "SELECT r.id, e.mlflow_id, r.name, r.user_id, r.status, r.start_time, r.end_time, \
         r.lifecycle_stage, {} AS artifact_uri \
         FROM runs r JOIN experiments e ON e.id = r.experiment_id",
        search::runs::ARTIFACT_URI
    )
}

fn run_info(r: &sqlx::postgres::PgRow) -> RunInfo {
    let id: Uuid = r.get("id");
    let mlflow_id: i64 = r.get("mlflow_id");
    let status: String = r.get("status");
    let end: Option<DateTime<Utc>> = r.get("end_time");
    RunInfo {
        run_id: run_hex(id),
        run_uuid: run_hex(id),
        run_name: r.get("name"),
        experiment_id: mlflow_id.to_string(),
        user_id: r.get("user_id"),
        status: status_out(&status),
        start_time: millis(r.get("start_time")),
        end_time: end.map(millis),
        artifact_uri: r.get("artifact_uri"),
        lifecycle_stage: r.get("lifecycle_stage"),
    }
}

async fn run_infos(conn: &mut PgConnection, ids: &[Uuid]) -> Result<HashMap<Uuid, RunInfo>> {
    let rows = sqlx::query(&format!("{} WHERE r.id = ANY($1)", run_select()))
        .bind(ids)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(|r| (r.get("id"), run_info(r))).collect())
}

/// Runs with their params, tags and latest metrics, in the order of `ids` (unknown ids are
/// skipped).
pub async fn load_runs(conn: &mut PgConnection, ids: &[Uuid]) -> Result<Vec<RunOut>> {
    let mut infos = run_infos(&mut *conn, ids).await?;
    let mut data: HashMap<Uuid, RunData> = HashMap::new();
    for (table, is_params) in [("run_params", true), ("run_tags", false)] {
        let rows = sqlx::query(&format!(
            "SELECT run_id, key, value FROM {table} WHERE run_id = ANY($1) ORDER BY key"
        ))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        for r in rows {
            let kv = KeyValue {
                key: r.get("key"),
                value: r.get("value"),
            };
            let d = data.entry(r.get("run_id")).or_default();
            if is_params {
                d.params.push(kv);
            } else {
                d.tags.push(kv);
            }
        }
    }
    let latest = sqlx::query(
        "SELECT run_id, key, value, step, timestamp FROM run_latest_metrics \
         WHERE run_id = ANY($1) ORDER BY run_id, key",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    for r in latest {
        data.entry(r.get("run_id"))
            .or_default()
            .metrics
            .push(metric_out(&r));
    }
    let mut inputs: HashMap<Uuid, Vec<Value>> = HashMap::new();
    for (run, d) in crate::store::run_inputs(&mut *conn, ids).await? {
        let mut dataset = json!({
            "name": d.name,
            "digest": d.digest,
            "source_type": d.source_type,
            "source": d.source,
        });
        if let Some(v) = d.schema {
            dataset["schema"] = json!(v);
        }
        if let Some(v) = d.profile {
            dataset["profile"] = json!(v);
        }
        let tags: Vec<KeyValue> = d
            .tags
            .into_iter()
            .map(|(key, value)| KeyValue { key, value })
            .collect();
        inputs
            .entry(run)
            .or_default()
            .push(json!({ "tags": tags, "dataset": dataset }));
    }
    Ok(ids
        .iter()
        .filter_map(|id| {
            let info = infos.remove(id)?;
            Some(RunOut {
                info,
                data: data.remove(id).unwrap_or_default(),
                inputs: match inputs.remove(id) {
                    Some(d) => json!({ "dataset_inputs": d }),
                    None => json!({}),
                },
                outputs: json!({}),
            })
        })
        .collect())
}

fn metric_out(r: &sqlx::postgres::PgRow) -> MetricOut {
    MetricOut {
        key: r.get("key"),
        value: r.get("value"),
        timestamp: millis(r.get("timestamp")),
        step: r.get("step"),
    }
}

fn run_not_found(id: Uuid) -> MlflowError {
    MlflowError::not_found(format!("Run with id={} not found", run_hex(id)))
}

async fn load_run(conn: &mut PgConnection, id: Uuid) -> Result<RunOut> {
    load_runs(conn, &[id])
        .await?
        .pop()
        .ok_or_else(|| run_not_found(id))
}

/// Fails unless the run exists and is not deleted. Locks nothing: concurrent writers of the
/// same param meet at the param's primary key instead.
async fn active_run(conn: &mut PgConnection, id: Uuid) -> Result<()> {
    let stage: Option<String> =
        sqlx::query_scalar("SELECT lifecycle_stage FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    match stage.as_deref() {
        None => Err(run_not_found(id)),
        Some("active") => Ok(()),
        Some(other) => Err(MlflowError::invalid(format!(
            "The run {} must be in the 'active' state. Current state is {other}.",
            run_hex(id)
        ))),
    }
}

/// Inserts params that are new; a param already logged with another value is refused with
/// MLflow's message.
async fn insert_params(
    conn: &mut PgConnection,
    run: Uuid,
    params: &BTreeMap<String, String>,
) -> Result<()> {
    match store::insert_params(conn, run, params).await? {
        None => Ok(()),
        Some(store::ParamConflict { key, old, new }) => Err(MlflowError::invalid(format!(
            "Changing param values is not allowed. Param with key='{key}' was already \
             logged with value='{old}' for run ID='{}'. Attempted logging new value '{new}'.",
            run_hex(run)
        ))),
    }
}

async fn insert_metrics(conn: &mut PgConnection, run: Uuid, metrics: &[MetricIn]) -> Result<()> {
    if metrics.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = metrics.iter().map(|m| m.key.as_str()).collect();
    let values: Vec<f64> = metrics.iter().map(|m| m.value).collect();
    let steps: Vec<i64> = metrics.iter().map(|m| m.step).collect();
    let stamps: Vec<DateTime<Utc>> = metrics.iter().map(|m| m.timestamp).collect();
    sqlx::query(
        "INSERT INTO run_metrics (run_id, key, value, step, timestamp) \
         SELECT $1, k, v, s, t FROM UNNEST($2::text[], $3::float8[], $4::int8[], $5::timestamptz[]) \
         AS u(k, v, s, t)",
    )
    .bind(run)
    .bind(&keys)
    .bind(&values)
    .bind(&steps)
    .bind(&stamps)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn create_run(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let experiment_id = f
        .opt_nonempty("experiment_id")?
        .unwrap_or_else(|| "0".to_owned());
    let user = f.opt_nonempty("user_id")?;
    if let Some(u) = &user {
        check_plain("user_id", u)?;
    }
    let start = match f.opt_i64("start_time")? {
        Some(ms) => from_millis("start_time", ms)?,
        None => Utc::now(),
    };
    let mut tags = last_wins(
        f.objects("tags")?
            .iter()
            .map(tag_in)
            .collect::<Result<_>>()?,
    );
    let requested = f.opt_nonempty("run_name")?;
    if let Some(n) = &requested {
        check_plain("run_name", n)?;
    }
    let id = Uuid::now_v7();
    let name = match (requested, tags.get(RUN_NAME_TAG)) {
        (Some(n), Some(t)) if n != *t => {
            return Err(MlflowError::invalid(format!(
                "Both 'run_name' ({n:?}) and the '{RUN_NAME_TAG}' tag ({t:?}) are given, with \
                 different values; give one"
            )));
        }
        (Some(n), _) => n,
        (None, Some(t)) if !t.is_empty() => t.clone(),
        // A v7 UUID starts with the time and ends with random bits: the tail tells runs apart.
        _ => format!("run-{}", &run_hex(id)[24..]),
    };
    tags.insert(RUN_NAME_TAG.to_owned(), name.clone());

    let mut tx = s.infra.pool.begin().await?;
    let e = active_experiment(&mut tx, &experiment_id).await?;
    let artifact_uri = format!("{}/{}/artifacts", e.artifact_location, run_hex(id));
    sqlx::query(
        "INSERT INTO runs (id, experiment_id, name, status, start_time, user_id, artifact_uri) \
         VALUES ($1, $2, $3, 'running', $4, $5, $6)",
    )
    .bind(id)
    .bind(e.id)
    .bind(&name)
    .bind(start)
    .bind(&user)
    .bind(&artifact_uri)
    .execute(&mut *tx)
    .await?;
    store::upsert_run_tags(&mut tx, id, &tags).await?;
    let run = load_run(&mut tx, id).await?;
    tx.commit().await?;
    tracing::debug!(run.id = %id, experiment.id = e.mlflow_id, "run created over the MLflow API");
    Ok(axum::Json(json!({ "run": run })).into_response())
}

pub async fn update_run(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let status = status_in(&f)?;
    let end = match f.opt_i64("end_time")? {
        Some(ms) => Some(from_millis("end_time", ms)?),
        None => None,
    };
    let name = f.opt_nonempty("run_name")?;
    if let Some(n) = &name {
        check_plain("run_name", n)?;
    }
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    sqlx::query(
        "UPDATE runs SET status = COALESCE($2, status), \
         end_time = CASE WHEN $3::timestamptz IS NOT NULL THEN $3::timestamptz \
                         WHEN $2 IS NOT NULL AND $2 <> 'running' THEN COALESCE(end_time, now()) \
                         ELSE end_time END \
         WHERE id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(end)
    .execute(&mut *tx)
    .await?;
    if let Some(n) = name {
        store::upsert_run_tags(&mut tx, id, &BTreeMap::from([(RUN_NAME_TAG.to_owned(), n)]))
            .await?;
    }
    let run = load_run(&mut tx, id).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "run_info": run.info })).into_response())
}

pub async fn delete_run(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_run_stage(&s, &f, "deleted").await
}

pub async fn restore_run(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_run_stage(&s, &f, "active").await
}

async fn set_run_stage(s: &AppState, f: &Fields, stage: &str) -> Result<Response> {
    let id = f.run_id()?;
    let deleted_time = if stage == "deleted" { "now()" } else { "NULL" };
    let done = sqlx::query(&format!(
        "UPDATE runs SET lifecycle_stage = $2, deleted_time = {deleted_time} WHERE id = $1"
    ))
    .bind(id)
    .bind(stage)
    .execute(&s.infra.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(run_not_found(id));
    }
    Ok(ok())
}

pub async fn get_run(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let mut conn = s.infra.pool.acquire().await?;
    let run = load_run(&mut conn, id).await?;
    Ok(axum::Json(json!({ "run": run })).into_response())
}

pub async fn log_metric(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let metric = metric_in(&f)?;
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    insert_metrics(&mut tx, id, &[metric]).await?;
    tx.commit().await?;
    Ok(ok())
}

pub async fn log_param(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let (key, value) = param_in(&f)?;
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    insert_params(&mut tx, id, &BTreeMap::from([(key, value)])).await?;
    tx.commit().await?;
    Ok(ok())
}

pub async fn set_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let (key, value) = tag_in(&f)?;
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    store::upsert_run_tags(&mut tx, id, &BTreeMap::from([(key, value)])).await?;
    tx.commit().await?;
    Ok(ok())
}

pub async fn delete_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let key = f.str("key")?;
    check_plain("key", &key)?;
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    let done = sqlx::query("DELETE FROM run_tags WHERE run_id = $1 AND key = $2")
        .bind(id)
        .bind(&key)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(MlflowError::not_found(format!(
            "No tag with name: {key} in run with id {}",
            run_hex(id)
        )));
    }
    if key == PARENT_TAG {
        sqlx::query("UPDATE runs SET parent_run_id = NULL WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ok())
}

/// Most datasets one `runs/log-inputs` request may log, and the limits MLflow sets on a
/// dataset's fields.
const MAX_INPUTS: usize = 1000;
const MAX_DATASET_NAME: usize = 500;
const MAX_DATASET_DIGEST: usize = 36;
const MAX_DATASET_SOURCE: usize = 65_535;
const MAX_DATASET_DOC: usize = 1 << 20;

fn dataset_in(item: &Fields) -> Result<DatasetInput> {
    let d = item
        .object("dataset")?
        .ok_or_else(|| item.missing("dataset"))?;
    let bounded = |key: &str, max: usize, required: bool| -> Result<Option<String>> {
        let v = if required {
            Some(d.str(key)?)
        } else {
            d.opt_str(key)?
        };
        if let Some(v) = &v {
            check_value("dataset field", key, v, max)?;
        }
        Ok(v)
    };
    let name = bounded("name", MAX_DATASET_NAME, true)?.unwrap_or_default();
    check_plain("a dataset name", &name)?;
    let digest = bounded("digest", MAX_DATASET_DIGEST, true)?.unwrap_or_default();
    check_plain("a dataset digest", &digest)?;
    Ok(DatasetInput {
        name,
        digest,
        source_type: bounded("source_type", MAX_KEY, true)?.unwrap_or_default(),
        source: bounded("source", MAX_DATASET_SOURCE, true)?.unwrap_or_default(),
        schema: bounded("schema", MAX_DATASET_DOC, false)?,
        profile: bounded("profile", MAX_DATASET_DOC, false)?,
        tags: last_wins(
            item.objects("tags")?
                .iter()
                .map(tag_in)
                .collect::<Result<_>>()?,
        ),
    })
}

/// The datasets a run read (`mlflow.log_input`), each with its input tags such as
/// `mlflow.data.context`. All are written in one transaction; a dataset (name and digest)
/// the run already has is left as it was, as MLflow does.
pub async fn log_inputs(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let items = f.objects("datasets")?;
    if items.len() > MAX_INPUTS {
        return Err(MlflowError::invalid(format!(
            "A request may log at most {MAX_INPUTS} datasets; this one has {}.",
            items.len()
        )));
    }
    if !f.objects("models")?.is_empty() {
        return Err(MlflowError::invalid(
            "logged models (models) are not supported by this registry",
        ));
    }
    let inputs = items.iter().map(dataset_in).collect::<Result<Vec<_>>>()?;
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    crate::store::insert_inputs(&mut tx, id, &inputs).await?;
    tx.commit().await?;
    Ok(ok())
}

/// Metrics, params and tags in one transaction: all of them are written, or none.
pub async fn log_batch(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let metric_fields = f.objects("metrics")?;
    let param_fields = f.objects("params")?;
    let tag_fields = f.objects("tags")?;
    for (what, n, limit) in [
        ("metrics", metric_fields.len(), MAX_BATCH_METRICS),
        ("params", param_fields.len(), MAX_BATCH_PARAMS),
        ("tags", tag_fields.len(), MAX_BATCH_TAGS),
    ] {
        if n > limit {
            return Err(MlflowError::invalid(format!(
                "A batch logging request can contain at most {limit} {what}. Got {n} {what}. \
                 Split them across several requests."
            )));
        }
    }
    let metrics: Vec<MetricIn> = metric_fields.iter().map(metric_in).collect::<Result<_>>()?;
    let params = unique_params(param_fields.iter().map(param_in).collect::<Result<_>>()?)?;
    let tags = last_wins(tag_fields.iter().map(tag_in).collect::<Result<_>>()?);
    let mut tx = s.infra.pool.begin().await?;
    active_run(&mut tx, id).await?;
    insert_params(&mut tx, id, &params).await?;
    insert_metrics(&mut tx, id, &metrics).await?;
    store::upsert_run_tags(&mut tx, id, &tags).await?;
    tx.commit().await?;
    tracing::debug!(
        run.id = %id,
        metrics = metrics.len(),
        params = params.len(),
        tags = tags.len(),
        "batch logged"
    );
    Ok(ok())
}

pub async fn search_runs(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let experiment_ids = f
        .strings("experiment_ids")?
        .iter()
        .map(|e| parse_experiment_id(e))
        .collect::<Result<Vec<i64>>>()?;
    let clauses = search::runs::filter(&f.opt_str("filter")?.unwrap_or_default())?;
    let orders = search::runs::order(&f.strings("order_by")?)?;
    let stages = view_stages(&f, "run_view_type")?;
    let limit = max_results(&f, 1000, 50_000)?;
    let offset = page_offset(f.opt_str("page_token")?)?;
    let mut conn = s.infra.pool.acquire().await?;
    let joins = MetricJoins::new(&clauses, &orders);
    let mut qb = QueryBuilder::<Postgres>::new(
        "SELECT r.id FROM runs r JOIN experiments e ON e.id = r.experiment_id",
    );
    joins.push(&mut qb);
    qb.push(" WHERE e.mlflow_id = ANY(")
        .push_bind(experiment_ids)
        .push(") AND r.lifecycle_stage = ANY(")
        .push_bind(stages)
        .push(")");
    push_where(&mut qb, &clauses, &joins);
    push_order(&mut qb, &orders, &joins);
    qb.push(" LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    let mut ids: Vec<Uuid> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
    let more = ids.len() as i64 > limit;
    ids.truncate(limit as usize);
    let runs = load_runs(&mut conn, &ids).await?;
    Ok(super::page("runs", runs, more, offset, limit))
}

/// Every value of one metric, by step then time, in pages.
pub async fn get_metric_history(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let key = f.str("metric_key")?;
    check_plain("metric_key", &key)?;
    let limit = max_results(&f, HISTORY_PAGE, HISTORY_PAGE_MAX)?;
    let offset = page_offset(f.opt_str("page_token")?)?;
    let mut conn = s.infra.pool.acquire().await?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Err(run_not_found(id));
    }
    let rows = sqlx::query(
        "SELECT key, value, step, timestamp FROM run_metrics WHERE run_id = $1 AND key = $2 \
         ORDER BY step, timestamp, value LIMIT $3 OFFSET $4",
    )
    .bind(id)
    .bind(&key)
    .bind(limit + 1)
    .bind(offset)
    .fetch_all(&mut *conn)
    .await?;
    let more = rows.len() as i64 > limit;
    let metrics: Vec<MetricOut> = rows.iter().take(limit as usize).map(metric_out).collect();
    Ok(super::page("metrics", metrics, more, offset, limit))
}

/// A run's artifacts, when they are kept by this registry's artifact proxy.
pub async fn list_artifacts(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let id = f.run_id()?;
    let path = f.opt_nonempty("path")?;
    if let Some(p) = &path {
        super::artifacts::check_path(p)?;
    }
    let mut conn = s.infra.pool.acquire().await?;
    let root = run_infos(&mut conn, &[id])
        .await?
        .remove(&id)
        .ok_or_else(|| run_not_found(id))?
        .artifact_uri;
    drop(conn);
    let mut files = Vec::new();
    if let Some(rel) = super::artifacts::proxied_path(&root) {
        let dir = match &path {
            Some(p) => format!("{rel}/{p}"),
            None => rel,
        };
        for e in super::artifacts::list(&s, &dir).await? {
            let mut file = json!({
                "path": match &path { Some(p) => format!("{p}/{}", e.name), None => e.name },
                "is_dir": e.is_dir,
            });
            if let Some(size) = e.size {
                file["file_size"] = json!(size);
            }
            files.push(file);
        }
    }
    Ok(axum::Json(json!({ "root_uri": root, "files": files })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_mlflow_rules() {
        for good in [
            "lr",
            "mlflow.runName",
            "a b",
            "x/y",
            "loss:train",
            "ünïcode_1",
            "a-b",
        ] {
            assert!(check_key("param", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "end/",
            "a//b",
            "a/../b",
            ".",
            "..",
            "semi;colon",
            "new\nline",
        ] {
            let e = check_key("param", bad).unwrap_err();
            assert_eq!(e.code, "INVALID_PARAMETER_VALUE", "{bad}");
        }
        assert!(check_key("metric", &"k".repeat(251)).is_err());
        assert!(check_value("param", "k", &"v".repeat(6001), MAX_PARAM_VALUE).is_err());
        assert!(check_value("param", "k", "nul\0", MAX_PARAM_VALUE).is_err());
    }

    #[test]
    fn params_in_one_request_must_agree() {
        let same = unique_params(vec![("a".into(), "1".into()), ("a".into(), "1".into())]);
        assert_eq!(same.unwrap().len(), 1);
        let clash = unique_params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]);
        assert!(clash.unwrap_err().message.contains("\"a\""));
        let tags = last_wins(vec![("t".into(), "1".into()), ("t".into(), "2".into())]);
        assert_eq!(tags["t"], "2");
    }
}
