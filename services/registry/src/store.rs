//! The registry's SQL. Every function takes a connection so callers compose them into one
//! transaction with the events they imply.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use petrel_api::registry::{
    DatasetInput, Evaluation, Experiment, Metric, ModelVersion, PromotionDecision, PromotionPolicy,
    RegisteredModel, Run, RunStatus,
};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::{Error, Result};

pub async fn get_or_create_experiment(conn: &mut PgConnection, name: &str) -> Result<Experiment> {
    sqlx::query("INSERT INTO experiments (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(Uuid::now_v7())
        .bind(name)
        .execute(&mut *conn)
        .await?;
    find_experiment(conn, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("experiment {name:?} does not exist")))
}

fn experiment_from_row(r: &sqlx::postgres::PgRow) -> Experiment {
    Experiment {
        id: r.get("id"),
        name: r.get("name"),
        created_at: r.get("created_at"),
    }
}

/// Creates an experiment; `None` when one with that name already exists.
pub async fn create_experiment(conn: &mut PgConnection, name: &str) -> Result<Option<Experiment>> {
    let row = sqlx::query(
        "INSERT INTO experiments (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING \
         RETURNING id, name, created_at",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(experiment_from_row))
}

/// Every experiment, by name (at most 10,000).
pub async fn list_experiments(conn: &mut PgConnection) -> Result<Vec<Experiment>> {
    let rows =
        sqlx::query("SELECT id, name, created_at FROM experiments ORDER BY name LIMIT 10000")
            .fetch_all(conn)
            .await?;
    Ok(rows.iter().map(experiment_from_row).collect())
}

pub async fn find_experiment(conn: &mut PgConnection, name: &str) -> Result<Option<Experiment>> {
    let row = sqlx::query("SELECT id, name, created_at FROM experiments WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(experiment_from_row))
}

fn parse_status(s: &str) -> RunStatus {
    match s {
        "finished" => RunStatus::Finished,
        "failed" => RunStatus::Failed,
        "killed" => RunStatus::Killed,
        _ => RunStatus::Running,
    }
}

pub async fn get_run(conn: &mut PgConnection, id: Uuid) -> Result<Run> {
    let row = sqlx::query(
        "SELECT r.id, r.experiment_id, e.name AS experiment, r.name, r.status, r.start_time, r.end_time, \
         r.parent_run_id FROM runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::NotFound(format!("run {id} does not exist")))?;
    let kv = |rows: Vec<sqlx::postgres::PgRow>| -> BTreeMap<String, String> {
        rows.into_iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect()
    };
    let params = kv(
        sqlx::query("SELECT key, value FROM run_params WHERE run_id = $1")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?,
    );
    let tags = kv(
        sqlx::query("SELECT key, value FROM run_tags WHERE run_id = $1")
            .bind(id)
            .fetch_all(&mut *conn)
            .await?,
    );
    let metrics = sqlx::query(
        "SELECT key, value, step, timestamp FROM run_metrics WHERE run_id = $1 ORDER BY key, step, timestamp",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| Metric { key: r.get("key"), value: r.get("value"), step: r.get("step"), timestamp: r.get("timestamp") })
    .collect();
    let status: String = row.get("status");
    Ok(Run {
        id: row.get("id"),
        experiment_id: row.get("experiment_id"),
        experiment: row.get("experiment"),
        name: row.get("name"),
        status: parse_status(&status),
        params,
        tags,
        metrics,
        start_time: row.get("start_time"),
        end_time: row.get("end_time"),
        parent_run_id: row.get("parent_run_id"),
        inputs: run_inputs(&mut *conn, &[id])
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect(),
    })
}

/// The dataset inputs of `runs`, each with its run, in logging order.
pub async fn run_inputs(
    conn: &mut PgConnection,
    runs: &[Uuid],
) -> Result<Vec<(Uuid, DatasetInput)>> {
    let rows = sqlx::query(
        "SELECT run_id, name, digest, source_type, source, schema, profile, tags FROM run_inputs \
         WHERE run_id = ANY($1) ORDER BY run_id, logged_at, name, digest",
    )
    .bind(runs)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("run_id"),
                DatasetInput {
                    name: r.get("name"),
                    digest: r.get("digest"),
                    source_type: r.get("source_type"),
                    source: r.get("source"),
                    schema: r.get("schema"),
                    profile: r.get("profile"),
                    tags: serde_json::from_value(r.get("tags")).unwrap_or_default(),
                },
            )
        })
        .collect())
}

/// Records dataset inputs of a run; a dataset (name and digest) it already has is left as it
/// was.
pub async fn insert_inputs(
    conn: &mut PgConnection,
    run: Uuid,
    inputs: &[DatasetInput],
) -> Result<()> {
    for d in inputs {
        sqlx::query(
            "INSERT INTO run_inputs (run_id, name, digest, source_type, source, schema, profile, tags) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id, name, digest) DO NOTHING",
        )
        .bind(run)
        .bind(&d.name)
        .bind(&d.digest)
        .bind(&d.source_type)
        .bind(&d.source)
        .bind(&d.schema)
        .bind(&d.profile)
        .bind(serde_json::to_value(&d.tags).unwrap_or_default())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Creates a run, or returns the run created earlier with the same client token.
/// Returns the run id and whether it is new.
///
/// Concurrent calls with the same token are safe: the insert skips a conflicting row (waiting
/// for the transaction that wrote it), and the loser then reads the winner's run instead of
/// failing with a unique violation.
pub async fn create_run(
    conn: &mut PgConnection,
    experiment_id: Uuid,
    name: Option<&str>,
    client_token: Option<&str>,
    params: &BTreeMap<String, String>,
    tags: &BTreeMap<String, String>,
    parent: Option<Uuid>,
) -> Result<(Uuid, bool)> {
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO runs (id, experiment_id, name, status, client_token, parent_run_id) \
         VALUES ($1, $2, $3, 'running', $4, $5) \
         ON CONFLICT (experiment_id, client_token) DO NOTHING RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(experiment_id)
    .bind(name)
    .bind(client_token)
    .bind(parent)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = inserted else {
        // Only a token can conflict (NULLs are distinct): the run is the one with this token.
        let existing: Uuid = sqlx::query_scalar(
            "SELECT id FROM runs WHERE experiment_id = $1 AND client_token = $2",
        )
        .bind(experiment_id)
        .bind(client_token)
        .fetch_one(&mut *conn)
        .await?;
        return Ok((existing, false));
    };
    for (table, map) in [("run_params", params), ("run_tags", tags)] {
        let keys: Vec<&String> = map.keys().collect();
        let values: Vec<&String> = map.values().collect();
        let sql = format!(
            "INSERT INTO {table} (run_id, key, value) SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v)"
        );
        sqlx::query(&sql)
            .bind(id)
            .bind(&keys)
            .bind(&values)
            .execute(&mut *conn)
            .await?;
    }
    Ok((id, true))
}

pub async fn log_metrics(
    conn: &mut PgConnection,
    run: Uuid,
    metrics: &[(String, f64, i64)],
) -> Result<()> {
    let keys: Vec<&str> = metrics.iter().map(|m| m.0.as_str()).collect();
    let values: Vec<f64> = metrics.iter().map(|m| m.1).collect();
    let steps: Vec<i64> = metrics.iter().map(|m| m.2).collect();
    sqlx::query(
        "INSERT INTO run_metrics (run_id, key, value, step) \
         SELECT $1, k, v, s FROM UNNEST($2::text[], $3::float8[], $4::int8[]) AS t(k, v, s)",
    )
    .bind(run)
    .bind(&keys)
    .bind(&values)
    .bind(&steps)
    .execute(conn)
    .await?;
    Ok(())
}

/// A param logged again with another value: params are immutable.
#[derive(Debug, PartialEq)]
pub struct ParamConflict {
    pub key: String,
    pub old: String,
    pub new: String,
}

/// Inserts the params that are new and checks that the others already have these values;
/// answers the first that does not (nothing is changed for it).
pub async fn insert_params(
    conn: &mut PgConnection,
    run: Uuid,
    params: &BTreeMap<String, String>,
) -> Result<Option<ParamConflict>> {
    if params.is_empty() {
        return Ok(None);
    }
    let keys: Vec<&String> = params.keys().collect();
    let values: Vec<&String> = params.values().collect();
    sqlx::query(
        "INSERT INTO run_params (run_id, key, value) \
         SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v) \
         ON CONFLICT (run_id, key) DO NOTHING",
    )
    .bind(run)
    .bind(&keys)
    .bind(&values)
    .execute(&mut *conn)
    .await?;
    let stored =
        sqlx::query("SELECT key, value FROM run_params WHERE run_id = $1 AND key = ANY($2)")
            .bind(run)
            .bind(&keys)
            .fetch_all(conn)
            .await?;
    for r in stored {
        let key: String = r.get("key");
        let old: String = r.get("value");
        if let Some(new) = params.get(&key).filter(|new| **new != old) {
            return Ok(Some(ParamConflict {
                new: new.clone(),
                key,
                old,
            }));
        }
    }
    Ok(None)
}

/// Sets `tags` of the row `owner` in a tag table (`experiment_tags` or `run_tags`), replacing
/// values, in one statement.
pub async fn upsert_tag_rows(
    conn: &mut PgConnection,
    table: &'static str,
    owner_column: &'static str,
    owner: Uuid,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    let keys: Vec<&String> = tags.keys().collect();
    let values: Vec<&String> = tags.values().collect();
    sqlx::query(&format!(
        "INSERT INTO {table} ({owner_column}, key, value) \
         SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v) \
         ON CONFLICT ({owner_column}, key) DO UPDATE SET value = EXCLUDED.value"
    ))
    .bind(owner)
    .bind(&keys)
    .bind(&values)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Sets a run's tags (replacing values), keeping its name and parent in step with MLflow's
/// `mlflow.runName` and `mlflow.parentRunId` tags.
pub async fn upsert_run_tags(
    conn: &mut PgConnection,
    run: Uuid,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    upsert_tag_rows(conn, "run_tags", "run_id", run, tags).await?;
    if let Some(name) = tags.get(crate::mlflow::RUN_NAME_TAG) {
        sqlx::query("UPDATE runs SET name = $2 WHERE id = $1")
            .bind(run)
            .bind(name)
            .execute(&mut *conn)
            .await?;
    }
    if let Some(parent) = tags.get(crate::mlflow::PARENT_RUN_TAG) {
        let parent = Uuid::try_parse(parent.trim()).ok();
        sqlx::query(
            "UPDATE runs SET parent_run_id = (SELECT id FROM runs WHERE id = $2 AND id <> $1) \
             WHERE id = $1",
        )
        .bind(run)
        .bind(parent)
        .execute(conn)
        .await?;
    }
    Ok(())
}

pub async fn set_run_status(conn: &mut PgConnection, run: Uuid, status: RunStatus) -> Result<()> {
    let end = if status == RunStatus::Running {
        None
    } else {
        Some(Utc::now())
    };
    let done = sqlx::query("UPDATE runs SET status = $2, end_time = $3 WHERE id = $1")
        .bind(run)
        .bind(status.as_str())
        .bind(end)
        .execute(conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(Error::NotFound(format!("run {run} does not exist")));
    }
    Ok(())
}

pub(crate) const VERSION_COLUMNS: &str = "v.model_name, v.version, v.run_id, v.artifact_uri, v.dataset_id, v.metrics, \
     v.description, v.created_at, v.evaluation, v.promotion, v.input_schema, v.class_names, \
     COALESCE((SELECT array_agg(a.alias ORDER BY a.alias) FROM model_aliases a \
               WHERE a.model_name = v.model_name AND a.version = v.version), '{}') AS aliases, \
     COALESCE((SELECT jsonb_object_agg(t.key, t.value) FROM model_version_tags t \
               WHERE t.model_name = v.model_name AND t.version = v.version), '{}') AS tags";

pub(crate) fn version_from_row(r: &sqlx::postgres::PgRow) -> ModelVersion {
    let metrics: serde_json::Value = r.get("metrics");
    ModelVersion {
        model_name: r.get("model_name"),
        version: r.get("version"),
        run_id: r.get("run_id"),
        artifact_uri: r.get("artifact_uri"),
        dataset_id: r.get("dataset_id"),
        metrics: serde_json::from_value(metrics).unwrap_or_default(),
        description: r.get("description"),
        aliases: r.get("aliases"),
        created_at: r.get("created_at"),
        evaluation: r
            .get::<Option<serde_json::Value>, _>("evaluation")
            .and_then(|v| serde_json::from_value::<Evaluation>(v).ok()),
        promotion: r
            .get::<Option<serde_json::Value>, _>("promotion")
            .and_then(|v| serde_json::from_value::<PromotionDecision>(v).ok()),
        tags: tags_from_row(r),
        input_schema: r
            .get::<Option<serde_json::Value>, _>("input_schema")
            .and_then(|v| serde_json::from_value(v).ok()),
        class_names: r.get("class_names"),
    }
}

fn tags_from_row(r: &sqlx::postgres::PgRow) -> BTreeMap<String, String> {
    serde_json::from_value(r.get("tags")).unwrap_or_default()
}

/// Which tags: of a registered model, or of one of its versions.
#[derive(Debug, Clone, Copy)]
pub enum TagOwner<'a> {
    Model(&'a str),
    Version(&'a str, i32),
}

/// Sets tags (a key already present takes the new value).
pub async fn set_model_tags(
    conn: &mut PgConnection,
    owner: TagOwner<'_>,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    if tags.is_empty() {
        return Ok(());
    }
    let keys: Vec<&String> = tags.keys().collect();
    let values: Vec<&String> = tags.values().collect();
    let (name, version) = match owner {
        TagOwner::Model(n) => (n, None),
        TagOwner::Version(n, v) => (n, Some(v)),
    };
    let sql = match version {
        None => {
            "INSERT INTO registered_model_tags (model_name, key, value) \
             SELECT $1, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v) \
             ON CONFLICT (model_name, key) DO UPDATE SET value = EXCLUDED.value"
        }
        Some(_) => {
            "INSERT INTO model_version_tags (model_name, version, key, value) \
             SELECT $1, $4, k, v FROM UNNEST($2::text[], $3::text[]) AS t(k, v) \
             ON CONFLICT (model_name, version, key) DO UPDATE SET value = EXCLUDED.value"
        }
    };
    let mut q = sqlx::query(sql).bind(name).bind(&keys).bind(&values);
    if let Some(v) = version {
        q = q.bind(v);
    }
    q.execute(conn).await?;
    Ok(())
}

/// Deletes one tag; `false` when there was none with that key.
pub async fn delete_model_tag(
    conn: &mut PgConnection,
    owner: TagOwner<'_>,
    key: &str,
) -> Result<bool> {
    let done = match owner {
        TagOwner::Model(name) => {
            sqlx::query("DELETE FROM registered_model_tags WHERE model_name = $1 AND key = $2")
                .bind(name)
                .bind(key)
                .execute(conn)
                .await?
        }
        TagOwner::Version(name, version) => sqlx::query(
            "DELETE FROM model_version_tags WHERE model_name = $1 AND version = $2 AND key = $3",
        )
        .bind(name)
        .bind(version)
        .bind(key)
        .execute(conn)
        .await?,
    };
    Ok(done.rows_affected() > 0)
}

/// Records what a version was evaluated on.
pub async fn set_version_evaluation(
    conn: &mut PgConnection,
    model: &str,
    version: i32,
    evaluation: &Evaluation,
) -> Result<()> {
    sqlx::query("UPDATE model_versions SET evaluation = $3 WHERE model_name = $1 AND version = $2")
        .bind(model)
        .bind(version)
        .bind(serde_json::to_value(evaluation).unwrap_or_default())
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the promotion decision made for a version.
pub async fn set_version_promotion(
    conn: &mut PgConnection,
    model: &str,
    version: i32,
    decision: &PromotionDecision,
) -> Result<()> {
    sqlx::query("UPDATE model_versions SET promotion = $3 WHERE model_name = $1 AND version = $2")
        .bind(model)
        .bind(version)
        .bind(serde_json::to_value(decision).unwrap_or_default())
        .execute(conn)
        .await?;
    Ok(())
}

/// The model's promotion policy, or the default.
pub async fn policy(conn: &mut PgConnection, model: &str) -> Result<PromotionPolicy> {
    let p: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT policy FROM promotion_policies WHERE model_name = $1")
            .bind(model)
            .fetch_optional(conn)
            .await?;
    Ok(p.and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default())
}

pub async fn set_policy(
    conn: &mut PgConnection,
    model: &str,
    policy: &PromotionPolicy,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO promotion_policies (model_name, policy) VALUES ($1, $2) \
         ON CONFLICT (model_name) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now()",
    )
    .bind(model)
    .bind(serde_json::to_value(policy).unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_version(
    conn: &mut PgConnection,
    model: &str,
    version: i32,
) -> Result<Option<ModelVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.model_name = $1 AND v.version = $2"
    );
    let row = sqlx::query(&sql)
        .bind(model)
        .bind(version)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(version_from_row))
}

pub async fn get_version(
    conn: &mut PgConnection,
    model: &str,
    version: i32,
) -> Result<ModelVersion> {
    find_version(conn, model, version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("model {model:?} has no version {version}")))
}

pub async fn version_for_run(
    conn: &mut PgConnection,
    model: &str,
    run: Uuid,
) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "SELECT version FROM model_versions WHERE model_name = $1 AND run_id = $2",
    )
    .bind(model)
    .bind(run)
    .fetch_optional(conn)
    .await?)
}

/// Creates the model if needed and locks its row, so version numbers are assigned one at a time.
pub async fn lock_model(conn: &mut PgConnection, model: &str) -> Result<()> {
    sqlx::query("INSERT INTO registered_models (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(model)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT name FROM registered_models WHERE name = $1 FOR UPDATE")
        .bind(model)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks an existing model's row (aliases move one at a time); not found if there is none.
pub async fn lock_existing_model(conn: &mut PgConnection, model: &str) -> Result<()> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM registered_models WHERE name = $1 FOR UPDATE")
            .bind(model)
            .fetch_optional(conn)
            .await?;
    found
        .map(|_| ())
        .ok_or_else(|| Error::NotFound(format!("model {model:?} does not exist")))
}

/// What a new version is registered with.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub model: &'a str,
    pub run: Uuid,
    pub artifact_uri: &'a str,
    pub dataset_id: Option<Uuid>,
    pub metrics: &'a BTreeMap<String, f64>,
    pub description: Option<&'a str>,
    /// The input schema as JSON (the API's `Schema`, already validated).
    pub input_schema: Option<serde_json::Value>,
    pub class_names: &'a [String],
}

pub async fn insert_version(conn: &mut PgConnection, v: NewVersion<'_>) -> Result<i32> {
    let version: i32 = sqlx::query_scalar(
        "INSERT INTO model_versions (model_name, version, run_id, artifact_uri, dataset_id, metrics, \
         description, input_schema, class_names) \
         SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8 FROM model_versions \
         WHERE model_name = $1 RETURNING version",
    )
    .bind(v.model)
    .bind(v.run)
    .bind(v.artifact_uri)
    .bind(v.dataset_id)
    .bind(serde_json::to_value(v.metrics).unwrap_or_default())
    .bind(v.description)
    .bind(v.input_schema)
    .bind(v.class_names)
    .fetch_one(conn)
    .await?;
    Ok(version)
}

pub async fn alias_version(
    conn: &mut PgConnection,
    model: &str,
    alias: &str,
) -> Result<Option<i32>> {
    Ok(
        sqlx::query_scalar(
            "SELECT version FROM model_aliases WHERE model_name = $1 AND alias = $2",
        )
        .bind(model)
        .bind(alias)
        .fetch_optional(conn)
        .await?,
    )
}

/// Points `alias` at `version` (or removes it with `None`) and records the move, who made it
/// and the evidence that decided it. Returns the previous version.
pub async fn move_alias_by(
    conn: &mut PgConnection,
    model: &str,
    alias: &str,
    version: Option<i32>,
    reason: &str,
    actor: &str,
    evidence: &serde_json::Value,
) -> Result<Option<i32>> {
    let previous = alias_version(&mut *conn, model, alias).await?;
    match version {
        Some(v) => {
            sqlx::query(
                "INSERT INTO model_aliases (model_name, alias, version) VALUES ($1, $2, $3) \
                 ON CONFLICT (model_name, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()",
            )
            .bind(model)
            .bind(alias)
            .bind(v)
            .execute(&mut *conn)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM model_aliases WHERE model_name = $1 AND alias = $2")
                .bind(model)
                .bind(alias)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(
        "INSERT INTO alias_history (model_name, alias, version, previous_version, reason, actor, evidence) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(model)
    .bind(alias)
    .bind(version)
    .bind(previous)
    .bind(reason)
    .bind(actor)
    .bind(evidence)
    .execute(conn)
    .await?;
    Ok(previous)
}

#[derive(Debug, serde::Serialize)]
pub struct AliasChange {
    pub version: Option<i32>,
    pub previous_version: Option<i32>,
    pub reason: String,
    /// Who moved it: `registry` for the promotion policy, else the caller.
    pub actor: String,
    /// The metric values that decided it.
    pub evidence: serde_json::Value,
    pub changed_at: DateTime<Utc>,
}

pub async fn alias_history(
    conn: &mut PgConnection,
    model: &str,
    alias: &str,
) -> Result<Vec<AliasChange>> {
    let rows = sqlx::query(
        "SELECT version, previous_version, reason, actor, evidence, changed_at FROM alias_history \
         WHERE model_name = $1 AND alias = $2 ORDER BY id DESC LIMIT 200",
    )
    .bind(model)
    .bind(alias)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| AliasChange {
            version: r.get("version"),
            previous_version: r.get("previous_version"),
            reason: r.get("reason"),
            actor: r.get("actor"),
            evidence: r.get("evidence"),
            changed_at: r.get("changed_at"),
        })
        .collect())
}

/// A model with its latest version and aliases, in one query for one model or for all.
const MODEL_SELECT: &str = "SELECT m.name, m.description, m.created_at, \
     (SELECT MAX(version) FROM model_versions WHERE model_name = m.name) AS latest, \
     COALESCE((SELECT jsonb_object_agg(alias, version) FROM model_aliases \
               WHERE model_name = m.name), '{}') AS aliases, \
     COALESCE((SELECT jsonb_object_agg(t.key, t.value) FROM registered_model_tags t \
               WHERE t.model_name = m.name), '{}') AS tags \
     FROM registered_models m";

fn model_from_row(r: &sqlx::postgres::PgRow) -> RegisteredModel {
    let aliases: serde_json::Value = r.get("aliases");
    RegisteredModel {
        name: r.get("name"),
        description: r.get("description"),
        created_at: r.get("created_at"),
        latest_version: r.get("latest"),
        aliases: serde_json::from_value(aliases).unwrap_or_default(),
        tags: tags_from_row(r),
    }
}

pub async fn get_model(conn: &mut PgConnection, name: &str) -> Result<RegisteredModel> {
    let row = sqlx::query(&format!("{MODEL_SELECT} WHERE m.name = $1"))
        .bind(name)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("model {name:?} does not exist")))?;
    Ok(model_from_row(&row))
}

pub async fn list_models(conn: &mut PgConnection) -> Result<Vec<RegisteredModel>> {
    let rows = sqlx::query(&format!("{MODEL_SELECT} ORDER BY m.name LIMIT 1000"))
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(model_from_row).collect())
}

/// Whether a run exists, without loading it.
pub async fn run_exists(conn: &mut PgConnection, id: Uuid) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM runs WHERE id = $1)")
            .bind(id)
            .fetch_one(conn)
            .await?,
    )
}

pub async fn list_versions(conn: &mut PgConnection, model: &str) -> Result<Vec<ModelVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM model_versions v WHERE v.model_name = $1 ORDER BY v.version DESC LIMIT 1000"
    );
    let rows = sqlx::query(&sql).bind(model).fetch_all(conn).await?;
    Ok(rows.iter().map(version_from_row).collect())
}
