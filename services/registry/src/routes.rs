//! The registry's HTTP API (`docs/api.md` documents it).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use petrel_api::registry::{
    CreateExperiment, CreateModelVersion, CreateRun, LogBatch, LogMetrics, MetricsLogged,
    ModelVersion, PromotionPolicy, SetAlias, UpdateRun,
};
use petrel_events::outbox;
use petrel_events::payloads::{ModelAliasDeleted, ModelPromoted, ModelRegistered};
use petrel_runtime::http::{Json, Path};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::{AppState, store};

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/experiments",
            post(create_experiment).get(list_experiments),
        )
        .route("/api/v1/experiments/{name}", get(get_experiment))
        .route("/api/v1/runs", post(create_run))
        .route("/api/v1/runs/{id}", get(get_run).patch(update_run))
        .route("/api/v1/runs/{id}/metrics", post(log_metrics))
        .route("/api/v1/runs/{id}/batch", post(log_batch))
        .route("/api/v1/runs/{id}/inputs", post(log_inputs))
        .route("/api/v1/models", get(list_models))
        .route("/api/v1/models/{name}", get(get_model))
        .route(
            "/api/v1/models/{name}/policy",
            get(get_policy).put(put_policy),
        )
        .route(
            "/api/v1/models/{name}/versions",
            get(list_versions).post(create_version),
        )
        .route("/api/v1/models/{name}/versions/{version}", get(get_version))
        .route(
            "/api/v1/models/{name}/tags/{key}",
            axum::routing::put(put_model_tag).delete(delete_model_tag),
        )
        .route(
            "/api/v1/models/{name}/versions/{version}/tags/{key}",
            axum::routing::put(put_version_tag).delete(delete_version_tag),
        )
        .route(
            "/api/v1/models/{name}/aliases/{alias}",
            get(get_alias).put(set_alias).delete(delete_alias),
        )
        .route(
            "/api/v1/models/{name}/aliases/{alias}/history",
            get(alias_history),
        )
        .route(
            "/api/v1/tokens",
            post(crate::auth::issue).get(crate::auth::list),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(crate::auth::revoke),
        )
        .with_state(state.clone())
        .merge(crate::mlflow::router(state.clone()));
    let app = api
        .merge(petrel_runtime::http::health_routes(state.infra.readiness()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::check,
        ));
    petrel_runtime::http::finish(app, BODY_LIMIT)
}

/// Largest request body. `model.registered` copies the client's metrics map and artifact URI;
/// bounding the body well below NATS's 1 MiB payload limit (and the outbox's 900 KiB) keeps that
/// event publishable even after re-serialisation (`1` becomes `1.0`).
const BODY_LIMIT: usize = 512 * 1024;

/// Most metrics a version may carry, and the longest metric key (bytes). With the body limit
/// (which bounds the artifact URI), `model.registered` stays under the outbox's 900 KiB.
const MAX_VERSION_METRICS: usize = 1000;
const MAX_METRIC_KEY: usize = 256;

fn check_name(what: &str, name: &str) -> Result<()> {
    match petrel_api::name_problem(what, name) {
        Some(problem) => Err(Error::Invalid(problem)),
        None => Ok(()),
    }
}

/// An artifact URI: `file:///absolute/path` or `s3://bucket/key`, with no `.` or `..` segment
/// (percent-encoded or not), so no URI points outside the store it names.
fn check_artifact_uri(uri: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Invalid(format!("artifact_uri {why}")));
    let path = if let Some(p) = uri.strip_prefix("file://") {
        if !p.starts_with('/') {
            return bad("must be file:///absolute/path or s3://bucket/key");
        }
        p
    } else if let Some(p) = uri.strip_prefix("s3://") {
        match p.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => key,
            _ => return bad("must name a bucket and a key: s3://bucket/key"),
        }
    } else {
        return bad("must be file:///absolute/path or s3://bucket/key");
    };
    let Some(decoded) = percent_decode(path) else {
        return bad("has a malformed percent-encoding");
    };
    if decoded
        .split(['/', '\\'])
        .any(|seg| seg == ".." || seg == ".")
    {
        return bad("must not contain '.' or '..' segments");
    }
    Ok(())
}

/// Decodes `%XX` escapes once; `None` for a malformed escape or text that is not UTF-8.
/// Shared by artifact URIs here and MLflow's artifact paths.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Free text (a parameter value, a description): anything Postgres TEXT can hold, so no NUL.
fn check_text(what: &str, text: &str) -> Result<()> {
    if text.contains('\0') {
        return Err(Error::Invalid(format!(
            "{what} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// A key, token or URI: no control characters (NUL included).
fn check_key(what: &str, key: &str) -> Result<()> {
    if key.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// A run's params and tags: keys that are not empty, without control characters.
fn check_entries(params: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> Result<()> {
    for (field, map) in [("params", params), ("tags", tags)] {
        for (k, v) in map {
            if k.trim().is_empty() {
                return Err(Error::Invalid(format!("{field} need non-empty keys")));
            }
            check_key(&format!("{field} key {k:?}"), k)?;
            check_text(&format!("{field}[{k:?}]"), v)?;
        }
    }
    Ok(())
}

/// A name in a lookup's path. No stored name has a control character, and Postgres would
/// refuse a NUL, so such a name is refused before any query.
fn check_lookup(what: &str, name: &str) -> Result<()> {
    check_key(what, name)
}

pub(crate) fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(Error::Invalid(
            "alias must be 1 to 64 letters, digits, '_' or '-'".to_owned(),
        ));
    }
    Ok(())
}

async fn create_experiment(
    State(s): State<AppState>,
    Json(req): Json<CreateExperiment>,
) -> Result<impl IntoResponse> {
    check_name("experiment name", &req.name)?;
    let mut conn = s.infra.pool.acquire().await?;
    // One statement decides who created it, so concurrent callers get one 201 and 409s.
    let exp = store::create_experiment(&mut conn, &req.name)
        .await?
        .ok_or_else(|| Error::Conflict(format!("experiment {:?} already exists", req.name)))?;
    Ok((StatusCode::CREATED, Json(exp)))
}

async fn list_experiments(State(s): State<AppState>) -> Result<impl IntoResponse> {
    let mut conn = s.infra.pool.acquire().await?;
    Ok(Json(
        json!({ "experiments": store::list_experiments(&mut conn).await? }),
    ))
}

async fn get_experiment(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    check_lookup("experiment name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    let exp = store::find_experiment(&mut conn, &name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("experiment {name:?} does not exist")))?;
    Ok(Json(exp))
}

async fn create_run(
    State(s): State<AppState>,
    Json(req): Json<CreateRun>,
) -> Result<impl IntoResponse> {
    check_name("experiment", &req.experiment)?;
    if let Some(name) = &req.name {
        check_key("name", name)?;
    }
    if let Some(token) = &req.client_token {
        check_key("client_token", token)?;
    }
    check_entries(&req.params, &req.tags)?;
    let mut tx = s.infra.pool.begin().await?;
    if let Some(parent) = req.parent_run_id
        && !store::run_exists(&mut tx, parent).await?
    {
        return Err(Error::Invalid(format!(
            "parent_run_id {parent} is not a run of this registry"
        )));
    }
    let exp = store::get_or_create_experiment(&mut tx, &req.experiment).await?;
    let mut tags = req.tags.clone();
    if let Some(parent) = req.parent_run_id {
        tags.insert(
            crate::mlflow::PARENT_RUN_TAG.to_owned(),
            parent.simple().to_string(),
        );
    }
    let (id, created) = store::create_run(
        &mut tx,
        exp.id,
        req.name.as_deref(),
        req.client_token.as_deref(),
        &req.params,
        &tags,
        req.parent_run_id,
    )
    .await?;
    let run = store::get_run(&mut tx, id).await?;
    tx.commit().await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(run)))
}

async fn get_run(State(s): State<AppState>, Path(id): Path<Uuid>) -> Result<impl IntoResponse> {
    let mut conn = s.infra.pool.acquire().await?;
    Ok(Json(store::get_run(&mut conn, id).await?))
}

async fn update_run(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(req): Json<UpdateRun>,
) -> Result<impl IntoResponse> {
    let mut tx = s.infra.pool.begin().await?;
    store::set_run_status(&mut tx, id, req.status).await?;
    let run = store::get_run(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(run))
}

async fn log_metrics(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(req): Json<LogMetrics>,
) -> Result<impl IntoResponse> {
    let batch = LogBatch {
        metrics: req.metrics,
        ..LogBatch::default()
    };
    write_batch(&s, id, &batch).await.map(Json)
}

async fn log_batch(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(req): Json<LogBatch>,
) -> Result<impl IntoResponse> {
    write_batch(&s, id, &req).await.map(Json)
}

/// Writes a batch in one transaction: all of it, or nothing.
async fn write_batch(s: &AppState, id: Uuid, req: &LogBatch) -> Result<MetricsLogged> {
    if let Some(bad) = req
        .metrics
        .iter()
        .find(|m| !m.value.is_finite() || m.key.is_empty())
    {
        return Err(Error::Invalid(format!(
            "metric {:?} needs a non-empty key and a finite value",
            bad.key
        )));
    }
    for m in &req.metrics {
        check_key(&format!("metric key {:?}", m.key), &m.key)?;
    }
    check_entries(&req.params, &req.tags)?;
    let mut tx = s.infra.pool.begin().await?;
    if !store::run_exists(&mut tx, id).await? {
        return Err(Error::NotFound(format!("run {id} does not exist")));
    }
    if let Some(c) = store::insert_params(&mut tx, id, &req.params).await? {
        return Err(Error::Conflict(format!(
            "param {:?} of run {id} is {:?}; params cannot change (asked for {:?})",
            c.key, c.old, c.new
        )));
    }
    store::upsert_run_tags(&mut tx, id, &req.tags).await?;
    let rows: Vec<_> = req
        .metrics
        .iter()
        .map(|m| (m.key.clone(), m.value, m.step))
        .collect();
    if !rows.is_empty() {
        store::log_metrics(&mut tx, id, &rows).await?;
    }
    tx.commit().await?;
    // The answer is constant in size, however long the run's history is.
    Ok(MetricsLogged {
        run_id: id,
        logged: rows.len(),
    })
}

/// Most dataset inputs one request may log, and the longest name, digest and source.
const MAX_INPUTS: usize = 1000;
const MAX_INPUT_FIELD: usize = 1024;
const MAX_INPUT_SOURCE: usize = 64 * 1024;

/// Records the datasets a run read (the same rows MLflow's `runs/log-inputs` writes).
async fn log_inputs(
    State(s): State<AppState>,
    Path(id): Path<Uuid>,
    Json(req): Json<petrel_api::registry::LogInputs>,
) -> Result<impl IntoResponse> {
    if req.inputs.len() > MAX_INPUTS {
        return Err(Error::Invalid(format!(
            "inputs has {} entries; the limit is {MAX_INPUTS}",
            req.inputs.len()
        )));
    }
    for (i, d) in req.inputs.iter().enumerate() {
        for (field, value, max) in [
            ("name", &d.name, MAX_INPUT_FIELD),
            ("digest", &d.digest, MAX_INPUT_FIELD),
            ("source_type", &d.source_type, MAX_INPUT_FIELD),
            ("source", &d.source, MAX_INPUT_SOURCE),
        ] {
            if value.trim().is_empty() || value.len() > max {
                return Err(Error::Invalid(format!(
                    "inputs[{i}].{field} must be 1 to {max} bytes"
                )));
            }
            check_key(&format!("inputs[{i}].{field}"), value)?;
        }
        for text in [&d.schema, &d.profile].into_iter().flatten() {
            check_text(&format!("inputs[{i}]"), text)?;
        }
        for (k, v) in &d.tags {
            check_key(&format!("inputs[{i}] tag key {k:?}"), k)?;
            check_text(&format!("inputs[{i}].tags[{k:?}]"), v)?;
        }
    }
    let mut tx = s.infra.pool.begin().await?;
    if !store::run_exists(&mut tx, id).await? {
        return Err(Error::NotFound(format!("run {id} does not exist")));
    }
    store::insert_inputs(&mut tx, id, &req.inputs).await?;
    let run = store::get_run(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Json(run))
}

async fn list_models(State(s): State<AppState>) -> Result<impl IntoResponse> {
    let mut conn = s.infra.pool.acquire().await?;
    let models = store::list_models(&mut conn).await?;
    Ok(Json(json!({ "models": models })))
}

async fn get_model(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    Ok(Json(store::get_model(&mut conn, &name).await?))
}

async fn list_versions(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    store::get_model(&mut conn, &name).await?;
    Ok(Json(
        json!({ "versions": store::list_versions(&mut conn, &name).await? }),
    ))
}

async fn get_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, i32)>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    Ok(Json(store::get_version(&mut conn, &name, version).await?))
}

/// The body of `PUT .../tags/{key}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TagValue {
    value: String,
}

/// Longest tag key and value, as MLflow allows.
const MAX_TAG_KEY: usize = 250;
const MAX_TAG_VALUE: usize = 8000;

fn check_tag(key: &str, value: Option<&str>) -> Result<()> {
    if key.is_empty() || key.chars().count() > MAX_TAG_KEY {
        return Err(Error::Invalid(format!(
            "a tag key is 1 to {MAX_TAG_KEY} characters"
        )));
    }
    check_key("a tag key", key)?;
    if let Some(v) = value {
        if v.chars().count() > MAX_TAG_VALUE {
            return Err(Error::Invalid(format!(
                "a tag value is at most {MAX_TAG_VALUE} characters"
            )));
        }
        check_text("a tag value", v)?;
    }
    Ok(())
}

/// Sets a registered model's tag; answers with the model.
async fn put_model_tag(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Json(req): Json<TagValue>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    check_tag(&key, Some(&req.value))?;
    let mut tx = s.infra.pool.begin().await?;
    store::get_model(&mut tx, &name).await?;
    let tags = std::collections::BTreeMap::from([(key, req.value)]);
    store::set_model_tags(&mut tx, store::TagOwner::Model(&name), &tags).await?;
    let model = store::get_model(&mut tx, &name).await?;
    tx.commit().await?;
    Ok(Json(model))
}

async fn delete_model_tag(
    State(s): State<AppState>,
    Path((name, key)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    check_tag(&key, None)?;
    let mut tx = s.infra.pool.begin().await?;
    store::get_model(&mut tx, &name).await?;
    if !store::delete_model_tag(&mut tx, store::TagOwner::Model(&name), &key).await? {
        return Err(Error::NotFound(format!(
            "model {name:?} has no tag {key:?}"
        )));
    }
    let model = store::get_model(&mut tx, &name).await?;
    tx.commit().await?;
    Ok(Json(model))
}

/// Sets a model version's tag; answers with the version.
async fn put_version_tag(
    State(s): State<AppState>,
    Path((name, version, key)): Path<(String, i32, String)>,
    Json(req): Json<TagValue>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    check_tag(&key, Some(&req.value))?;
    let mut tx = s.infra.pool.begin().await?;
    store::get_version(&mut tx, &name, version).await?;
    let tags = std::collections::BTreeMap::from([(key, req.value)]);
    store::set_model_tags(&mut tx, store::TagOwner::Version(&name, version), &tags).await?;
    let updated = store::get_version(&mut tx, &name, version).await?;
    tx.commit().await?;
    Ok(Json(updated))
}

async fn delete_version_tag(
    State(s): State<AppState>,
    Path((name, version, key)): Path<(String, i32, String)>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    check_tag(&key, None)?;
    let mut tx = s.infra.pool.begin().await?;
    store::get_version(&mut tx, &name, version).await?;
    let owner = store::TagOwner::Version(&name, version);
    if !store::delete_model_tag(&mut tx, owner, &key).await? {
        return Err(Error::NotFound(format!(
            "version {version} of model {name:?} has no tag {key:?}"
        )));
    }
    let updated = store::get_version(&mut tx, &name, version).await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// Most classes a version may name.
const MAX_CLASSES: usize = 10_000;

/// A version's input schema must be a valid schema, and its class names distinct, non-empty
/// labels.
fn check_signature(req: &CreateModelVersion) -> Result<()> {
    if let Some(schema) = &req.input_schema {
        schema
            .validate()
            .map_err(|e| Error::Invalid(format!("input_schema: {e}")))?;
    }
    if req.class_names.len() > MAX_CLASSES {
        return Err(Error::Invalid(format!(
            "class_names has {} entries; the limit is {MAX_CLASSES}",
            req.class_names.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &req.class_names {
        if c.is_empty() {
            return Err(Error::Invalid("class_names holds an empty name".to_owned()));
        }
        check_key(&format!("class name {c:?}"), c)?;
        if !seen.insert(c) {
            return Err(Error::Invalid(format!("class_names names {c:?} twice")));
        }
    }
    Ok(())
}

/// Registers a version. In the same transaction: announces `model.registered`, and moves the
/// `production` alias to it when its test accuracy is at least production's (announcing
/// `model.promoted`). Idempotent per run: registering the same run again returns the version.
async fn create_version(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<CreateModelVersion>,
) -> Result<impl IntoResponse> {
    check_name("model name", &name)?;
    if req.artifact_uri.trim().is_empty() {
        return Err(Error::Invalid("artifact_uri is required".to_owned()));
    }
    check_key("artifact_uri", &req.artifact_uri)?;
    check_artifact_uri(&req.artifact_uri)?;
    if let Some(e) = &req.evaluation {
        check_key("evaluation.digest", &e.digest)?;
        check_text("evaluation.split", &e.split)?;
    }
    // `model.registered` carries the metrics, and serialising may lengthen a value (`1e15`
    // comes out as `1000000000000000.0`), so the body limit alone does not bound the event:
    // these do.
    if req.metrics.len() > MAX_VERSION_METRICS {
        return Err(Error::Invalid(format!(
            "metrics has {} entries; the limit is {MAX_VERSION_METRICS}",
            req.metrics.len()
        )));
    }
    for k in req.metrics.keys() {
        if k.is_empty() || k.len() > MAX_METRIC_KEY {
            return Err(Error::Invalid(format!(
                "metric key {k:?} must be 1 to {MAX_METRIC_KEY} bytes"
            )));
        }
        check_key(&format!("metric key {k:?}"), k)?;
    }
    if let Some(d) = &req.description {
        check_text("description", d)?;
    }
    if let Some((k, _)) = req.metrics.iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Invalid(format!(
            "metric {k:?} is not a finite number"
        )));
    }
    crate::policy::check_metric_bounds(&req.metrics)?;
    if let Some(c) = &req.champion_score {
        check_champion_score(c, req.evaluation.as_ref())?;
    }
    check_signature(&req)?;
    let mut tx = s.infra.pool.begin().await?;
    store::lock_model(&mut tx, &name).await?;
    if let Some(v) = store::version_for_run(&mut tx, &name, req.run_id).await? {
        let existing = store::get_version(&mut tx, &name, v).await?;
        tx.commit().await?;
        return Ok((StatusCode::OK, Json(existing)));
    }
    if !store::run_exists(&mut tx, req.run_id).await? {
        return Err(Error::Invalid(format!(
            "run {} does not exist; create it first",
            req.run_id
        )));
    }
    let version = store::insert_version(
        &mut tx,
        store::NewVersion {
            model: &name,
            run: req.run_id,
            artifact_uri: &req.artifact_uri,
            dataset_id: req.dataset_id,
            metrics: &req.metrics,
            description: req.description.as_deref(),
            input_schema: req
                .input_schema
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok()),
            class_names: &req.class_names,
        },
    )
    .await?;
    if let Some(e) = &req.evaluation {
        store::set_version_evaluation(&mut tx, &name, version, e).await?;
    }
    let registered = ModelRegistered {
        model_name: name.clone(),
        version,
        run_id: req.run_id,
        artifact_uri: req.artifact_uri.clone(),
        dataset_id: req.dataset_id,
        metrics: req.metrics.clone(),
    };
    outbox::enqueue(&mut tx, &s.infra.bus.envelope(registered)).await?;
    maybe_promote(&s, &mut tx, &name, version, &req).await?;
    let created = store::get_version(&mut tx, &name, version).await?;
    tx.commit().await?;
    s.infra.relay.poke();
    tracing::info!(model.name = %name, model.version = version, aliases = ?created.aliases, "version registered");
    Ok((StatusCode::CREATED, Json(created)))
}

/// Checks a registering client's score of the alias holder on the candidate's held-out rows.
fn check_champion_score(
    c: &petrel_api::registry::ChampionScore,
    evaluation: Option<&petrel_api::registry::Evaluation>,
) -> Result<()> {
    if c.version < 1 {
        return Err(Error::Invalid(
            "champion_score.version must be a version number >= 1".into(),
        ));
    }
    if c.metrics.len() > MAX_VERSION_METRICS {
        return Err(Error::Invalid(format!(
            "champion_score.metrics has {} entries; the limit is {MAX_VERSION_METRICS}",
            c.metrics.len()
        )));
    }
    for (k, v) in &c.metrics {
        if k.is_empty() || k.len() > MAX_METRIC_KEY {
            return Err(Error::Invalid(format!(
                "champion_score metric key {k:?} must be 1 to {MAX_METRIC_KEY} bytes"
            )));
        }
        check_key(&format!("champion_score metric key {k:?}"), k)?;
        if !v.is_finite() {
            return Err(Error::Invalid(format!(
                "champion_score metric {k:?} is not a finite number"
            )));
        }
    }
    crate::policy::check_metric_bounds(&c.metrics)
        .map_err(|e| Error::Invalid(format!("champion_score: {e}")))?;
    if c.rows == 0 {
        return Err(Error::Invalid(
            "champion_score.rows must be at least 1".into(),
        ));
    }
    if let Some(e) = evaluation
        && e.rows != c.rows
    {
        return Err(Error::Invalid(format!(
            "champion_score.rows is {} but evaluation.rows is {}: both must come from the same held-out rows",
            c.rows, e.rows
        )));
    }
    Ok(())
}

/// Applies the model's promotion policy to a new version and records the decision.
pub(crate) async fn maybe_promote(
    s: &AppState,
    tx: &mut PgConnection,
    name: &str,
    version: i32,
    req: &CreateModelVersion,
) -> Result<()> {
    let policy = store::policy(&mut *tx, name).await?;
    let champion = match store::alias_version(&mut *tx, name, &policy.alias).await? {
        Some(v) => Some(store::get_version(&mut *tx, name, v).await?),
        None => None,
    };
    let decision = crate::policy::decide(
        &policy,
        &req.metrics,
        req.evaluation.as_ref(),
        champion.as_ref(),
        req.champion_score.as_ref(),
    );
    store::set_version_promotion(&mut *tx, name, version, &decision).await?;
    tracing::info!(model.name = %name, model.version = version, promoted = decision.promoted, reason = %decision.reason, "promotion decided");
    let alias = match (&decision.challenger, decision.promoted) {
        (_, true) => policy.alias.as_str(),
        (Some(challenger), false) => challenger.as_str(),
        (None, false) => return Ok(()),
    };
    let evidence = json!({
        "metric": decision.metric,
        "candidate": decision.candidate,
        "champion_version": decision.champion_version,
        "champion": decision.champion,
        "champion_recorded": decision.champion_recorded,
        "compared_on": decision.compared_on,
        "evaluation": req.evaluation,
    });
    promote(
        s,
        tx,
        name,
        alias,
        version,
        &req.artifact_uri,
        &decision.reason,
        "registry",
        &evidence,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn promote(
    s: &AppState,
    tx: &mut PgConnection,
    name: &str,
    alias: &str,
    version: i32,
    artifact_uri: &str,
    reason: &str,
    actor: &str,
    evidence: &serde_json::Value,
) -> Result<()> {
    let previous = store::move_alias_by(
        &mut *tx,
        name,
        alias,
        Some(version),
        reason,
        actor,
        evidence,
    )
    .await?;
    let event = ModelPromoted {
        model_name: name.to_owned(),
        alias: alias.to_owned(),
        version,
        previous_version: previous,
        artifact_uri: artifact_uri.to_owned(),
        reason: reason.to_owned(),
    };
    outbox::enqueue(tx, &s.infra.bus.envelope(event)).await?;
    tracing::info!(model.name = %name, alias, model.version = version, previous = ?previous, reason, "alias moved");
    Ok(())
}

async fn get_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<ModelVersion>> {
    check_lookup("model name", &name)?;
    check_lookup("alias", &alias)?;
    let mut conn = s.infra.pool.acquire().await?;
    let v = store::alias_version(&mut conn, &name, &alias)
        .await?
        .ok_or_else(|| Error::NotFound(format!("model {name:?} has no alias {alias:?}")))?;
    Ok(Json(store::get_version(&mut conn, &name, v).await?))
}

/// Points an alias at a version (a manual promotion or rollback) and announces it.
async fn set_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
    Json(req): Json<SetAlias>,
) -> Result<Json<ModelVersion>> {
    check_lookup("model name", &name)?;
    check_alias(&alias)?;
    let mut tx = s.infra.pool.begin().await?;
    store::lock_model(&mut tx, &name).await?;
    let target = store::find_version(&mut tx, &name, req.version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("model {name:?} has no version {}", req.version)))?;
    if let Some(r) = &req.reason {
        check_text("reason", r)?;
    }
    let actor = req.actor.clone().unwrap_or_else(|| "http".to_owned());
    check_key("actor", &actor)?;
    if store::alias_version(&mut tx, &name, &alias).await? != Some(req.version) {
        let reason = match &req.reason {
            Some(r) => format!("manual: {r}"),
            None => "manual: set over HTTP".to_owned(),
        };
        promote(
            &s,
            &mut tx,
            &name,
            &alias,
            req.version,
            &target.artifact_uri,
            &reason,
            &actor,
            &json!({ "metrics": target.metrics }),
        )
        .await?;
    }
    let updated = store::get_version(&mut tx, &name, req.version).await?;
    tx.commit().await?;
    s.infra.relay.poke();
    Ok(Json(updated))
}

async fn delete_alias(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<StatusCode> {
    check_lookup("model name", &name)?;
    check_lookup("alias", &alias)?;
    let mut tx = s.infra.pool.begin().await?;
    store::lock_existing_model(&mut tx, &name).await?;
    let Some(previous) = store::alias_version(&mut tx, &name, &alias).await? else {
        return Err(Error::NotFound(format!(
            "model {name:?} has no alias {alias:?}"
        )));
    };
    let reason = "manual: deleted over HTTP";
    store::move_alias_by(&mut tx, &name, &alias, None, reason, "http", &json!({})).await?;
    let event = ModelAliasDeleted {
        model_name: name.clone(),
        alias: alias.clone(),
        previous_version: previous,
        reason: reason.to_owned(),
        actor: "http".to_owned(),
    };
    outbox::enqueue(&mut tx, &s.infra.bus.envelope(event)).await?;
    tx.commit().await?;
    s.infra.relay.poke();
    Ok(StatusCode::NO_CONTENT)
}

async fn get_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<PromotionPolicy>> {
    check_lookup("model name", &name)?;
    let mut conn = s.infra.pool.acquire().await?;
    store::get_model(&mut conn, &name).await?;
    Ok(Json(store::policy(&mut conn, &name).await?))
}

/// Sets a model's promotion policy (creating the model if it does not exist yet, so a policy
/// can be in place before the first version).
async fn put_policy(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(policy): Json<PromotionPolicy>,
) -> Result<Json<PromotionPolicy>> {
    check_name("model name", &name)?;
    check_alias(&policy.alias)?;
    if let Some(c) = &policy.challenger_alias {
        check_alias(c)?;
    }
    crate::policy::check_policy(&policy)?;
    let mut tx = s.infra.pool.begin().await?;
    store::lock_model(&mut tx, &name).await?;
    store::set_policy(&mut tx, &name, &policy).await?;
    tx.commit().await?;
    Ok(Json(policy))
}

async fn alias_history(
    State(s): State<AppState>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    check_lookup("model name", &name)?;
    check_lookup("alias", &alias)?;
    let mut conn = s.infra.pool.acquire().await?;
    Ok(Json(
        json!({ "history": store::alias_history(&mut conn, &name, &alias).await? }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_cannot_escape_their_store() {
        assert!(check_artifact_uri("file:///data/models/a/bundle.json").is_ok());
        assert!(check_artifact_uri("s3://bucket/models/a/bundle.json").is_ok());
        for bad in [
            "../../../../etc/passwd",
            "file://../etc/passwd",
            "file:///data/../etc/passwd",
            "file:///data/%2e%2e/etc/passwd",
            "file:///data/%2E%2E%2Fetc/passwd",
            "s3://bucket/../x",
            "s3://bucket",
            "s3:///key",
            "http://example.com/x",
            "/etc/passwd",
        ] {
            assert!(check_artifact_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dot_names_are_refused() {
        for bad in ["..", ".", " x", "x ", "a/b", "a\\b", ""] {
            assert!(check_name("model name", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("model name", "penguins.v2").is_ok());
    }
}
