//! MLflow's model registry over Petrel's: registered models, versions and aliases are the
//! rows `/api/v1/models` serves, and they change through the same store functions, so a
//! version registered here announces `model.registered` (and may take `production` by the
//! usual rule), and setting an alias announces `model.promoted`, both through the outbox in
//! the registering transaction.
//!
//! What Petrel's registry does not keep is refused with a message rather than dropped:
//! logged models (`model_id`) and versions without a run. Stages
//! are MLflow's deprecated mechanism; every version is in stage `None`, and aliases do that
//! job.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use petrel_api::registry::{CreateModelVersion, ModelVersion, PROMOTION_METRIC};
use petrel_events::outbox;
use petrel_events::payloads::ModelRegistered;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::search::{self, MetricJoins, push_order, push_where};
use super::tracking::{self, KeyValue};
use super::{
    Fields, MlflowError, Msg, Result, check_plain, check_text, max_results, millis, page_offset,
    parse_run_id, run_hex,
};
use crate::store::TagOwner;
use crate::{AppState, routes, store};

/// Longest model name (as `/api/v1`'s) and source URI. The source travels in
/// `model.registered`, so it is bounded well below the event's size limit.
const MAX_NAME: usize = 256;
const MAX_SOURCE: usize = 64 * 1024;
/// What a version copies from its run's latest metrics; `model.registered` carries them.
const MAX_VERSION_METRICS: usize = 1000;
const MAX_METRIC_KEY: usize = 256;

fn ok() -> Response {
    axum::Json(json!({})).into_response()
}

#[derive(Debug, Serialize)]
struct VersionOut {
    name: String,
    version: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    current_stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    source: String,
    run_id: String,
    status: &'static str,
    aliases: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValue>,
}

fn tags_out(tags: BTreeMap<String, String>) -> Vec<KeyValue> {
    tags.into_iter()
        .map(|(key, value)| KeyValue { key, value })
        .collect()
}

/// The `tags` of a create request, validated like run tags; the last value of a key wins.
fn tags_in(f: &Fields) -> Result<BTreeMap<String, String>> {
    Ok(tracking::last_wins(
        f.objects("tags")?
            .iter()
            .map(tracking::tag_in)
            .collect::<Result<_>>()?,
    ))
}

fn version_out(v: ModelVersion) -> VersionOut {
    VersionOut {
        version: v.version.to_string(),
        creation_timestamp: millis(v.created_at),
        last_updated_timestamp: millis(v.created_at),
        current_stage: "None",
        description: v.description,
        source: v.artifact_uri,
        run_id: run_hex(v.run_id),
        // Petrel registers a version in one transaction: it is ready once it exists.
        status: "READY",
        aliases: v.aliases,
        tags: tags_out(v.tags),
        name: v.model_name,
    }
}

#[derive(Debug, Serialize)]
struct AliasOut {
    alias: String,
    version: String,
}

#[derive(Debug, Serialize)]
struct ModelOut {
    name: String,
    creation_timestamp: i64,
    last_updated_timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    latest_versions: Vec<VersionOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<AliasOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<KeyValue>,
}

/// A model name as MLflow and `/api/v1` both accept it.
fn check_model_name(name: &str) -> Result<()> {
    if name.trim().is_empty() {
        return Err(MlflowError::invalid(
            "Missing value for required parameter 'name'.",
        ));
    }
    if name.contains('/') || name.contains(':') {
        return Err(MlflowError::invalid(format!(
            "Invalid model name '{name}'. Names cannot contain '/' or ':'."
        )));
    }
    if name.chars().count() > MAX_NAME || name == "." || name == ".." {
        return Err(MlflowError::invalid(format!(
            "Invalid model name '{name}'. Names are 1 to {MAX_NAME} characters, and not '.' or '..'."
        )));
    }
    check_plain("a model name", name)
}

/// An alias by both registries' rules: Petrel's characters and length, and MLflow's reserved
/// names.
fn check_alias(alias: &str) -> Result<()> {
    routes::check_alias(alias)?;
    let version_like = alias.len() > 1
        && alias.starts_with(['v', 'V'])
        && alias[1..].chars().all(|c| c.is_ascii_digit());
    if alias.eq_ignore_ascii_case("latest") || version_like {
        return Err(MlflowError::invalid(format!(
            "Alias name '{alias}' is reserved ('latest' and v<number> name versions)."
        )));
    }
    Ok(())
}

fn parse_version(f: &Fields) -> Result<i32> {
    let raw = f.str("version")?;
    raw.trim()
        .parse::<i32>()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            MlflowError::invalid(format!(
                "Invalid value {raw:?} for parameter 'version' supplied: versions are numbers from 1."
            ))
        })
}

fn model_not_found(name: &str) -> MlflowError {
    MlflowError::not_found(format!("Registered Model with name={name} not found"))
}

fn version_not_found(name: &str, version: i32) -> MlflowError {
    MlflowError::not_found(format!(
        "Model Version (name={name}, version={version}) not found"
    ))
}

async fn model_exists(conn: &mut PgConnection, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM registered_models WHERE name = $1)")
            .bind(name)
            .fetch_one(conn)
            .await?,
    )
}

/// Registered models with their latest version and aliases, in the order of `names`.
async fn load_models(conn: &mut PgConnection, names: &[String]) -> Result<Vec<ModelOut>> {
    let rows = sqlx::query(&format!(
        "SELECT m.name, m.description, m.created_at, {} AS updated_at, \
         COALESCE((SELECT jsonb_agg(jsonb_build_object('alias', a.alias, 'version', a.version) \
                   ORDER BY a.alias) FROM model_aliases a WHERE a.model_name = m.name), '[]') \
         AS aliases, \
         COALESCE((SELECT jsonb_object_agg(t.key, t.value) FROM registered_model_tags t \
                   WHERE t.model_name = m.name), '{{}}') AS tags \
         FROM registered_models m WHERE m.name = ANY($1)",
        search::models::UPDATED
    ))
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    let latest = sqlx::query(&format!(
        "SELECT {} FROM model_versions v WHERE (v.model_name, v.version) IN \
         (SELECT model_name, MAX(version) FROM model_versions WHERE model_name = ANY($1) \
          GROUP BY model_name)",
        store::VERSION_COLUMNS
    ))
    .bind(names)
    .fetch_all(&mut *conn)
    .await?;
    let mut latest: BTreeMap<String, ModelVersion> = latest
        .iter()
        .map(store::version_from_row)
        .map(|v| (v.model_name.clone(), v))
        .collect();
    let mut models: BTreeMap<String, ModelOut> = BTreeMap::new();
    for r in rows {
        let name: String = r.get("name");
        let aliases: Value = r.get("aliases");
        let tags: BTreeMap<String, String> =
            serde_json::from_value(r.get("tags")).unwrap_or_default();
        let aliases = aliases
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|a| AliasOut {
                        alias: a["alias"].as_str().unwrap_or_default().to_owned(),
                        version: a["version"].to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        models.insert(
            name.clone(),
            ModelOut {
                creation_timestamp: millis(r.get("created_at")),
                last_updated_timestamp: millis(r.get("updated_at")),
                description: r.get("description"),
                latest_versions: latest.remove(&name).map(version_out).into_iter().collect(),
                aliases,
                tags: tags_out(tags),
                name,
            },
        );
    }
    Ok(names.iter().filter_map(|n| models.remove(n)).collect())
}

async fn load_model(conn: &mut PgConnection, name: &str) -> Result<ModelOut> {
    load_models(conn, &[name.to_owned()])
        .await?
        .pop()
        .ok_or_else(|| model_not_found(name))
}

pub async fn create_registered_model(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_model_name(&name)?;
    let tags = tags_in(&f)?;
    let description = f.opt_str("description")?;
    if let Some(d) = &description {
        check_text("description", d)?;
    }
    let mut tx = s.infra.pool.begin().await?;
    let created: Option<String> = sqlx::query_scalar(
        "INSERT INTO registered_models (name, description) VALUES ($1, $2) \
         ON CONFLICT (name) DO NOTHING RETURNING name",
    )
    .bind(&name)
    .bind(&description)
    .fetch_optional(&mut *tx)
    .await?;
    if created.is_none() {
        return Err(MlflowError::exists(format!(
            "Registered Model (name={name}) already exists."
        )));
    }
    store::set_model_tags(&mut tx, TagOwner::Model(&name), &tags).await?;
    let model = load_model(&mut tx, &name).await?;
    tx.commit().await?;
    tracing::info!(model.name = %name, "registered model created over the MLflow API");
    Ok(axum::Json(json!({ "registered_model": model })).into_response())
}

pub async fn get_registered_model(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    let model = load_model(&mut conn, &name).await?;
    Ok(axum::Json(json!({ "registered_model": model })).into_response())
}

pub async fn update_registered_model(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let description = f.opt_str("description")?;
    if let Some(d) = &description {
        check_text("description", d)?;
    }
    let mut tx = s.infra.pool.begin().await?;
    let done = sqlx::query("UPDATE registered_models SET description = $2 WHERE name = $1")
        .bind(&name)
        .bind(&description)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(model_not_found(&name));
    }
    let model = load_model(&mut tx, &name).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "registered_model": model })).into_response())
}

pub async fn search_registered_models(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let clauses = search::models::filter(&f.opt_str("filter")?.unwrap_or_default())?;
    let orders = search::models::order(&f.strings("order_by")?)?;
    let limit = max_results(&f, 100, 1000)?;
    let offset = page_offset(f.opt_str("page_token")?)?;
    let mut qb = QueryBuilder::<Postgres>::new("SELECT m.name FROM registered_models m WHERE TRUE");
    push_where(&mut qb, &clauses, &MetricJoins::default());
    push_order(&mut qb, &orders, &MetricJoins::default());
    qb.push(" LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    let mut conn = s.infra.pool.acquire().await?;
    let mut names: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
    let more = names.len() as i64 > limit;
    names.truncate(limit as usize);
    let models = load_models(&mut conn, &names).await?;
    Ok(super::page(
        "registered_models",
        models,
        more,
        offset,
        limit,
    ))
}

/// The latest version, for stage `None` (every version's stage here), or for no stage given.
pub async fn get_latest_versions(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let stages = f.strings("stages")?;
    let mut conn = s.infra.pool.acquire().await?;
    let model = load_model(&mut conn, &name).await?;
    let wanted = stages.is_empty() || stages.iter().any(|st| st.eq_ignore_ascii_case("none"));
    let versions: Vec<VersionOut> = if wanted {
        model.latest_versions
    } else {
        Vec::new()
    };
    Ok(axum::Json(json!({ "model_versions": versions })).into_response())
}

/// The run's latest finite metrics, as a version carries them (and `model.registered` with
/// it): at most [`MAX_VERSION_METRICS`], the promotion metric always among them.
async fn version_metrics(conn: &mut PgConnection, run: Uuid) -> Result<BTreeMap<String, f64>> {
    let rows =
        sqlx::query("SELECT key, value FROM run_latest_metrics WHERE run_id = $1 ORDER BY key")
            .bind(run)
            .fetch_all(conn)
            .await?;
    let mut all: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (r.get::<String, _>("key"), r.get::<f64, _>("value")))
        .filter(|(k, v)| v.is_finite() && !k.is_empty() && k.len() <= MAX_METRIC_KEY)
        .collect();
    all.sort_by_key(|(k, _)| k != PROMOTION_METRIC);
    all.truncate(MAX_VERSION_METRICS);
    Ok(all.into_iter().collect())
}

/// Creates version N+1 of a registered model from a run's artifacts, or returns the version
/// already registered for that run (Petrel keeps one version per model and run).
pub async fn create_model_version(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_model_name(&name)?;
    let source = f.str("source")?;
    check_plain("source", &source)?;
    if source.len() > MAX_SOURCE {
        return Err(MlflowError::invalid(format!(
            "source is {} bytes; the limit is {MAX_SOURCE}",
            source.len()
        )));
    }
    let Some(run_id) = f.opt_nonempty("run_id")? else {
        return Err(MlflowError::invalid(
            "run_id is required: this registry keeps every model version with the run that \
             produced it",
        ));
    };
    let run = parse_run_id(&run_id)?;
    let tags = tags_in(&f)?;
    if f.opt_nonempty("model_id")?.is_some() {
        return Err(MlflowError::invalid(
            "logged models (model_id) are not supported by this registry; register a run's \
             artifacts with runs:/<run_id>/<path>",
        ));
    }
    let description = f.opt_str("description")?;
    if let Some(d) = &description {
        check_text("description", d)?;
    }

    let mut tx = s.infra.pool.begin().await?;
    if !model_exists(&mut tx, &name).await? {
        return Err(model_not_found(&name));
    }
    store::lock_model(&mut tx, &name).await?;
    if let Some(v) = store::version_for_run(&mut tx, &name, run).await? {
        let existing = store::get_version(&mut tx, &name, v).await?;
        tx.commit().await?;
        return Ok(axum::Json(json!({ "model_version": version_out(existing) })).into_response());
    }
    if !store::run_exists(&mut tx, run).await? {
        return Err(MlflowError::not_found(format!(
            "Run with id={} not found",
            run_hex(run)
        )));
    }
    let metrics = version_metrics(&mut tx, run).await?;
    let version = store::insert_version(
        &mut tx,
        store::NewVersion {
            model: &name,
            run,
            artifact_uri: &source,
            dataset_id: None,
            metrics: &metrics,
            description: description.as_deref(),
            input_schema: None,
            class_names: &[],
        },
    )
    .await?;
    store::set_model_tags(&mut tx, TagOwner::Version(&name, version), &tags).await?;
    let registered = ModelRegistered {
        model_name: name.clone(),
        version,
        run_id: run,
        artifact_uri: source.clone(),
        dataset_id: None,
        metrics: metrics.clone(),
    };
    outbox::enqueue(&mut tx, &s.infra.bus.envelope(registered)).await?;
    let req = CreateModelVersion {
        run_id: run,
        artifact_uri: source,
        dataset_id: None,
        metrics,
        description,
        // MLflow does not say what data the metrics were measured on, so an MLflow version
        // takes an alias automatically only when nothing holds it yet.
        evaluation: None,
        // MLflow keeps a model's signature in its MLmodel artifact, not on the version.
        input_schema: None,
        class_names: Vec::new(),
        champion_score: None,
    };
    routes::maybe_promote(&s, &mut tx, &name, version, &req).await?;
    let created = store::get_version(&mut tx, &name, version).await?;
    tx.commit().await?;
    s.infra.relay.poke();
    tracing::info!(
        model.name = %name,
        model.version = version,
        aliases = ?created.aliases,
        "version registered over the MLflow API"
    );
    Ok(axum::Json(json!({ "model_version": version_out(created) })).into_response())
}

async fn find_version(conn: &mut PgConnection, f: &Fields) -> Result<ModelVersion> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let version = parse_version(f)?;
    store::find_version(conn, &name, version)
        .await?
        .ok_or_else(|| version_not_found(&name, version))
}

pub async fn get_model_version(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let mut conn = s.infra.pool.acquire().await?;
    let v = find_version(&mut conn, &f).await?;
    Ok(axum::Json(json!({ "model_version": version_out(v) })).into_response())
}

pub async fn get_download_uri(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let mut conn = s.infra.pool.acquire().await?;
    let v = find_version(&mut conn, &f).await?;
    Ok(axum::Json(json!({ "artifact_uri": v.artifact_uri })).into_response())
}

pub async fn update_model_version(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let description = f.opt_str("description")?;
    if let Some(d) = &description {
        check_text("description", d)?;
    }
    let mut tx = s.infra.pool.begin().await?;
    let v = find_version(&mut tx, &f).await?;
    sqlx::query(
        "UPDATE model_versions SET description = $3 WHERE model_name = $1 AND version = $2",
    )
    .bind(&v.model_name)
    .bind(v.version)
    .bind(&description)
    .execute(&mut *tx)
    .await?;
    let updated = store::get_version(&mut tx, &v.model_name, v.version).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "model_version": version_out(updated) })).into_response())
}

pub async fn search_model_versions(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let clauses = search::versions::filter(&f.opt_str("filter")?.unwrap_or_default())?;
    let orders = search::versions::order(&f.strings("order_by")?)?;
    let limit = max_results(&f, 10_000, 200_000)?;
    let offset = page_offset(f.opt_str("page_token")?)?;
    let mut qb = QueryBuilder::<Postgres>::new(format!(
        "SELECT {} FROM model_versions v WHERE TRUE",
        store::VERSION_COLUMNS
    ));
    push_where(&mut qb, &clauses, &MetricJoins::default());
    push_order(&mut qb, &orders, &MetricJoins::default());
    qb.push(" LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    let rows = qb.build().fetch_all(&s.infra.pool).await?;
    let more = rows.len() as i64 > limit;
    let versions: Vec<VersionOut> = rows
        .iter()
        .take(limit as usize)
        .map(|r| version_out(store::version_from_row(r)))
        .collect();
    Ok(super::page("model_versions", versions, more, offset, limit))
}

/// Points an alias at a version and, when it moves, announces `model.promoted`, exactly as
/// `PUT /api/v1/models/{name}/aliases/{alias}` does.
pub async fn set_alias(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let alias = f.str("alias")?;
    check_alias(&alias)?;
    let version = parse_version(&f)?;
    let mut tx = s.infra.pool.begin().await?;
    if !model_exists(&mut tx, &name).await? {
        return Err(model_not_found(&name));
    }
    store::lock_model(&mut tx, &name).await?;
    let target = store::find_version(&mut tx, &name, version)
        .await?
        .ok_or_else(|| version_not_found(&name, version))?;
    if store::alias_version(&mut tx, &name, &alias).await? != Some(version) {
        routes::promote(
            &s,
            &mut tx,
            &name,
            &alias,
            version,
            &target.artifact_uri,
            "manual: set over the MLflow API",
            "mlflow",
            &serde_json::json!({ "metrics": target.metrics }),
        )
        .await?;
    }
    tx.commit().await?;
    s.infra.relay.poke();
    Ok(ok())
}

/// Removes an alias (recorded in its history). Like MLflow, removing an alias that is not set
/// succeeds.
pub async fn delete_alias(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let alias = f.str("alias")?;
    check_plain("alias", &alias)?;
    let mut tx = s.infra.pool.begin().await?;
    if !model_exists(&mut tx, &name).await? {
        return Err(model_not_found(&name));
    }
    if let Some(previous) = store::alias_version(&mut tx, &name, &alias).await? {
        let reason = "manual: deleted over the MLflow API";
        store::move_alias_by(
            &mut tx,
            &name,
            &alias,
            None,
            reason,
            "mlflow",
            &serde_json::json!({}),
        )
        .await?;
        let event = petrel_events::payloads::ModelAliasDeleted {
            model_name: name.clone(),
            alias: alias.clone(),
            previous_version: previous,
            reason: reason.to_owned(),
            actor: "mlflow".to_owned(),
        };
        outbox::enqueue(&mut tx, &s.infra.bus.envelope(event)).await?;
    }
    tx.commit().await?;
    s.infra.relay.poke();
    Ok(ok())
}

pub async fn get_model_version_by_alias(
    State(s): State<AppState>,
    Msg(f): Msg,
) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let alias = f.str("alias")?;
    check_plain("alias", &alias)?;
    let mut conn = s.infra.pool.acquire().await?;
    let version = store::alias_version(&mut conn, &name, &alias)
        .await?
        .ok_or_else(|| {
            MlflowError::not_found(format!(
                "Registered model alias {alias} not found for model {name}."
            ))
        })?;
    let v = store::get_version(&mut conn, &name, version).await?;
    Ok(axum::Json(json!({ "model_version": version_out(v) })).into_response())
}

/// Sets a tag of a registered model (`registered-models/set-tag`) or of one of its versions
/// (`model-versions/set-tag`, with `version`).
async fn set_tag(s: &AppState, f: &Fields, of_version: bool) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let (key, value) = tracking::tag_in(f)?;
    let mut tx = s.infra.pool.begin().await?;
    let owner = tag_owner(&mut tx, f, &name, of_version).await?;
    store::set_model_tags(&mut tx, owner, &BTreeMap::from([(key, value)])).await?;
    tx.commit().await?;
    Ok(ok())
}

async fn delete_tag(s: &AppState, f: &Fields, of_version: bool) -> Result<Response> {
    let name = f.str("name")?;
    check_plain("name", &name)?;
    let key = f.str("key")?;
    check_plain("key", &key)?;
    let mut tx = s.infra.pool.begin().await?;
    let owner = tag_owner(&mut tx, f, &name, of_version).await?;
    if !store::delete_model_tag(&mut tx, owner, &key).await? {
        let of = match owner {
            TagOwner::Model(n) => format!("registered model {n}"),
            TagOwner::Version(n, v) => format!("model version (name={n}, version={v})"),
        };
        return Err(MlflowError::not_found(format!(
            "No tag with key {key} on {of}"
        )));
    }
    tx.commit().await?;
    Ok(ok())
}

/// The model or version a tag request names, which must exist.
async fn tag_owner<'a>(
    conn: &mut PgConnection,
    f: &Fields,
    name: &'a str,
    of_version: bool,
) -> Result<TagOwner<'a>> {
    if of_version {
        let version = parse_version(f)?;
        if store::find_version(conn, name, version).await?.is_none() {
            return Err(version_not_found(name, version));
        }
        Ok(TagOwner::Version(name, version))
    } else {
        if !model_exists(conn, name).await? {
            return Err(model_not_found(name));
        }
        Ok(TagOwner::Model(name))
    }
}

pub async fn set_model_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_tag(&s, &f, false).await
}

pub async fn delete_model_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    delete_tag(&s, &f, false).await
}

pub async fn set_version_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    set_tag(&s, &f, true).await
}

pub async fn delete_version_tag(State(s): State<AppState>, Msg(f): Msg) -> Result<Response> {
    delete_tag(&s, &f, true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases() {
        assert!(check_model_name("penguins").is_ok());
        for bad in ["", "  ", "a/b", "a:b", ".", "..", "tab\there"] {
            assert_eq!(
                check_model_name(bad).unwrap_err().code,
                "INVALID_PARAMETER_VALUE",
                "{bad:?}"
            );
        }
        assert!(check_model_name(&"m".repeat(257)).is_err());
        assert!(check_alias("champion").is_ok());
        assert!(check_alias("v1-candidate").is_ok());
        for bad in ["latest", "LATEST", "v1", "V22", "bad alias", ""] {
            assert_eq!(
                check_alias(bad).unwrap_err().code,
                "INVALID_PARAMETER_VALUE",
                "{bad:?}"
            );
        }
    }
}
