//! Schedules: a source ingested once per interval, with catch-up, backfill, retries and a
//! lease so that exactly one ingest instance runs each interval.
//!
//! Every interval's run is a row of `schedule_runs` keyed by (schedule, interval start), the
//! run key: planning inserts it with `ON CONFLICT DO NOTHING`, so any number of instances
//! planning the same interval create one run, and a replay of a run produces the same dataset
//! (ingest deduplicates by content, schema and checks). An instance claims queued runs while
//! holding the schedule's row lock, which also keeps `max_active_runs`, and holds each run by a
//! lease it renews while it works; a run whose lease lapsed (its instance died) is claimed
//! again. Finishing a run is conditional on still holding its lease.

use std::time::Duration as StdDuration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use petrel_api::ingest::{
    BackfillInterval, BackfillRequest, BackfillResponse, DatasetStatus, Generator, Interval,
    IntervalTimes, Reprocess, RunStatus, Schedule, ScheduleRun, ScheduleSpec,
};
use petrel_events::outbox;
use petrel_events::payloads::{Alert, AlertKind, AlertStatus, Severity};
use petrel_runtime::http::{ApiError, Json, Path, Query};
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::cadence::{Cadence, Cron, parse_period, render};
use crate::datasets::{self, Incoming, Origin};
use crate::validate::{GOLDEN_GAMMA, mix64};

/// Intervals one planning pass or one backfill creates at most (catch-up goes on at the next
/// pass).
const MAX_INTERVALS: usize = 10_000;
/// Longest wait between two retries.
const MAX_RETRY_DELAY: i64 = 86_400;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/schedules", get(list))
        .route("/v1/schedules/{name}", get(get_one).put(put).delete(delete))
        .route("/v1/schedules/{name}/runs", get(runs))
        .route("/v1/schedules/{name}/backfill", post(backfill))
}

/// The schedule's cadence, or what is wrong with the spec, in the request's words.
pub fn check_spec(spec: &ScheduleSpec) -> Result<Cadence, String> {
    let tz: Tz = spec.timezone.parse().map_err(|_| {
        format!(
            "timezone {:?} is not an IANA time zone such as UTC or Europe/Paris",
            spec.timezone
        )
    })?;
    let cadence = match (&spec.every, &spec.cron) {
        (Some(every), None) => Cadence::Every {
            anchor: spec.start,
            period: parse_period(every)?,
        },
        (None, Some(cron)) => Cadence::Cron {
            cron: Cron::parse(cron)?,
            tz,
        },
        _ => return Err("give exactly one of `every` (such as 1h) or `cron`".to_owned()),
    };
    if spec.end.is_some_and(|end| end <= spec.start) {
        return Err("end must be after start".to_owned());
    }
    if !(1..=32).contains(&spec.max_active_runs) {
        return Err("max_active_runs must be between 1 and 32".to_owned());
    }
    if spec.retries > 20 {
        return Err("retries must be at most 20".to_owned());
    }
    if !(1..=MAX_RETRY_DELAY as u64).contains(&spec.retry_delay_seconds) {
        return Err("retry_delay_seconds must be between 1 and 86400".to_owned());
    }
    let d = &spec.dataset;
    datasets::check_name(&d.name).map_err(|e| format!("dataset.{}", e.message))?;
    d.schema
        .validate()
        .map_err(|e| format!("dataset.schema: {e}"))?;
    crate::validate::check_rules(&d.checks, &d.schema)?;
    match (&d.path, &d.uri, &d.generate) {
        (Some(_), None, None) => {}
        (None, Some(uri), None) => {
            if !uri.starts_with("s3://") {
                return Err("dataset.uri must be an s3://bucket/key template".to_owned());
            }
        }
        (None, None, Some(Generator::Reviews(g))) => {
            g.validate().map_err(|e| format!("generate: {e}"))?
        }
        (None, None, Some(Generator::Penguins(g))) => {
            g.validate().map_err(|e| format!("generate: {e}"))?
        }
        _ => {
            return Err("dataset needs exactly one of `path`, `uri` or `generate`".to_owned());
        }
    }
    Ok(cadence)
}

fn timezone(spec: &ScheduleSpec) -> Tz {
    spec.timezone.parse().unwrap_or(Tz::UTC)
}

/// The intervals starting in `[from, to)` that have ended by `until`, in order (at most
/// [`MAX_INTERVALS`]).
fn intervals(
    cadence: &Cadence,
    spec: &ScheduleSpec,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Vec<IntervalTimes> {
    let until = spec.end.map_or(until, |end| end.min(until));
    let mut out = Vec::new();
    let Some(mut start) = cadence.first_at_or_after(from.max(spec.start)) else {
        return out;
    };
    while start < to && out.len() < MAX_INTERVALS {
        let Some(end) = cadence.next_after(start) else {
            break;
        };
        if end > until {
            break;
        }
        out.push(IntervalTimes { start, end });
        start = end;
    }
    out
}

/// The latest interval that has ended by `now`, looking back over growing windows.
fn latest_finished(
    cadence: &Cadence,
    spec: &ScheduleSpec,
    now: DateTime<Utc>,
) -> Option<IntervalTimes> {
    let until = spec.end.map_or(now, |end| end.min(now));
    let mut window = Duration::hours(1);
    loop {
        let from = until - window;
        let found = intervals(cadence, spec, from, until, until);
        if let Some(last) = found.last()
            && found.len() < MAX_INTERVALS
        {
            return Some(last.clone());
        }
        if from <= spec.start || window > Duration::days(366 * 8) {
            return found.last().cloned();
        }
        window = window * 2;
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

async fn put(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(spec): Json<ScheduleSpec>,
) -> Result<impl IntoResponse, ApiError> {
    datasets::check_name(&name)?;
    check_spec(&spec).map_err(ApiError::invalid)?;
    let created: bool = sqlx::query_scalar(
        "INSERT INTO schedules (name, spec) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now() \
         RETURNING (xmax = 0)",
    )
    .bind(&name)
    .bind(serde_json::to_value(&spec).map_err(ApiError::internal)?)
    .fetch_one(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    tracing::info!(schedule = %name, created, "schedule saved");
    let schedule = fetch(&s, &name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(schedule)))
}

async fn fetch(s: &AppState, name: &str) -> Result<Schedule, ApiError> {
    let row =
        sqlx::query("SELECT name, spec, created_at, updated_at FROM schedules WHERE name = $1")
            .bind(name)
            .fetch_optional(&s.infra.pool)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(format!("schedule {name:?} does not exist")))?;
    let counts = sqlx::query(
        "SELECT status, count(*) AS n FROM schedule_runs WHERE schedule = $1 GROUP BY status",
    )
    .bind(name)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let mut schedule = schedule_from_row(&row)?;
    schedule.runs = counts
        .iter()
        .map(|r| (r.get::<String, _>("status"), r.get::<i64, _>("n") as u64))
        .collect();
    Ok(schedule)
}

fn schedule_from_row(row: &sqlx::postgres::PgRow) -> Result<Schedule, ApiError> {
    let spec: ScheduleSpec = serde_json::from_value(row.get("spec")).map_err(ApiError::internal)?;
    let next_interval = check_spec(&spec).ok().and_then(|cadence| {
        let now = Utc::now();
        let start = match latest_finished(&cadence, &spec, now) {
            Some(last) => last.end,
            None => cadence.first_at_or_after(spec.start)?,
        };
        let end = cadence.next_after(start)?;
        spec.end
            .is_none_or(|e| end <= e)
            .then_some(IntervalTimes { start, end })
    });
    Ok(Schedule {
        name: row.get("name"),
        spec,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        next_interval,
        runs: Default::default(),
    })
}

async fn get_one(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(fetch(&s, &name).await?))
}

async fn list(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let rows =
        sqlx::query("SELECT name, spec, created_at, updated_at FROM schedules ORDER BY name")
            .fetch_all(&s.infra.pool)
            .await
            .map_err(ApiError::internal)?;
    let schedules = rows
        .iter()
        .map(schedule_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "schedules": schedules })))
}

async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let gone = sqlx::query("DELETE FROM schedules WHERE name = $1")
        .bind(&name)
        .execute(&s.infra.pool)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
    if gone == 0 {
        return Err(ApiError::not_found(format!(
            "schedule {name:?} does not exist"
        )));
    }
    tracing::info!(schedule = %name, "schedule deleted");
    // Its runs go with it; the datasets they made stay.
    Ok(Json(json!({ "deleted": name })))
}

const RUN_COLUMNS: &str = "id, schedule, interval_start, interval_end, status, trigger, attempts, \
    error, dataset_id, not_before, created_at, updated_at, finished_at";

fn run_from_row(r: &sqlx::postgres::PgRow) -> ScheduleRun {
    ScheduleRun {
        id: r.get("id"),
        schedule: r.get("schedule"),
        start: r.get("interval_start"),
        end: r.get("interval_end"),
        status: RunStatus::parse(r.get("status")).unwrap_or(RunStatus::Queued),
        trigger: r.get("trigger"),
        attempts: r.get::<i32, _>("attempts") as u32,
        error: r.get("error"),
        dataset_id: r.get("dataset_id"),
        not_before: r.get("not_before"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        finished_at: r.get("finished_at"),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    status: Option<String>,
    limit: Option<i64>,
}

async fn runs(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    fetch(&s, &name).await?;
    let status = match q.status.as_deref() {
        None => None,
        Some(v) => Some(RunStatus::parse(v).ok_or_else(|| {
            ApiError::invalid("status must be queued, running, succeeded, rejected or failed")
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be between 1 and 1000"));
    }
    let rows = sqlx::query(&format!(
        "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE schedule = $1 \
         AND ($2::text IS NULL OR status = $2) ORDER BY interval_start DESC LIMIT $3"
    ))
    .bind(&name)
    .bind(status.map(RunStatus::as_str))
    .bind(limit)
    .fetch_all(&s.infra.pool)
    .await
    .map_err(ApiError::internal)?;
    let runs: Vec<ScheduleRun> = rows.iter().map(run_from_row).collect();
    Ok(Json(json!({ "runs": runs })))
}

async fn backfill(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<BackfillRequest>,
) -> Result<Json<BackfillResponse>, ApiError> {
    let schedule = fetch(&s, &name).await?;
    if req.to <= req.from {
        return Err(ApiError::invalid("to must be after from"));
    }
    let cadence = check_spec(&schedule.spec).map_err(ApiError::invalid)?;
    let now = Utc::now();
    let wanted = intervals(&cadence, &schedule.spec, req.from, req.to, now);
    if wanted.len() >= MAX_INTERVALS {
        return Err(ApiError::invalid(format!(
            "the range holds more than {MAX_INTERVALS} intervals; backfill it in parts"
        )));
    }
    let mut tx = s.infra.pool.begin().await.map_err(ApiError::internal)?;
    let existing = sqlx::query(
        "SELECT interval_start, status FROM schedule_runs WHERE schedule = $1 \
         AND interval_start >= $2 AND interval_start < $3 FOR UPDATE",
    )
    .bind(&name)
    .bind(req.from)
    .bind(req.to)
    .fetch_all(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let existing: std::collections::HashMap<DateTime<Utc>, RunStatus> = existing
        .iter()
        .map(|r| {
            (
                r.get("interval_start"),
                RunStatus::parse(r.get("status")).unwrap_or(RunStatus::Queued),
            )
        })
        .collect();
    let mut out = BackfillResponse {
        dry_run: req.dry_run,
        created: 0,
        requeued: 0,
        skipped: 0,
        intervals: Vec::with_capacity(wanted.len()),
    };
    for interval in wanted {
        let status = existing.get(&interval.start).copied();
        let action = match (status, req.reprocess) {
            (None, _) => "create",
            (Some(RunStatus::Queued | RunStatus::Running), _) => "skip",
            (Some(RunStatus::Failed | RunStatus::Rejected), Reprocess::Failed) => "requeue",
            (Some(_), Reprocess::All) => "requeue",
            (Some(_), _) => "skip",
        };
        match action {
            "create" => out.created += 1,
            "requeue" => out.requeued += 1,
            _ => out.skipped += 1,
        }
        if !req.dry_run {
            match action {
                "create" => {
                    sqlx::query(
                        "INSERT INTO schedule_runs (id, schedule, interval_start, interval_end, \
                         status, trigger) VALUES ($1, $2, $3, $4, 'queued', 'backfill') \
                         ON CONFLICT (schedule, interval_start) DO NOTHING",
                    )
                    .bind(Uuid::now_v7())
                    .bind(&name)
                    .bind(interval.start)
                    .bind(interval.end)
                    .execute(&mut *tx)
                    .await
                    .map_err(ApiError::internal)?;
                }
                "requeue" => {
                    sqlx::query(
                        "UPDATE schedule_runs SET status = 'queued', trigger = 'backfill', \
                         attempts = 0, error = NULL, not_before = now(), finished_at = NULL, \
                         updated_at = now() WHERE schedule = $1 AND interval_start = $2",
                    )
                    .bind(&name)
                    .bind(interval.start)
                    .execute(&mut *tx)
                    .await
                    .map_err(ApiError::internal)?;
                }
                _ => {}
            }
        }
        out.intervals.push(BackfillInterval {
            start: interval.start,
            end: interval.end,
            action: action.to_owned(),
            status,
        });
    }
    tx.commit().await.map_err(ApiError::internal)?;
    tracing::info!(
        schedule = %name,
        dry_run = req.dry_run,
        created = out.created,
        requeued = out.requeued,
        skipped = out.skipped,
        "backfill"
    );
    if !req.dry_run {
        s.scheduler_wake.notify_one();
    }
    Ok(Json(out))
}

// ---------------------------------------------------------------------------------------
// The scheduler

/// How the scheduler paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Between two planning passes.
    pub tick: StdDuration,
    /// How long a claimed run is held without renewal.
    pub lease: StdDuration,
}

/// Plans, claims and runs schedule intervals until `cancel`; on the way out, runs in progress
/// are stopped and handed back (queued again, their attempt not counted).
pub async fn run(s: AppState, pace: Pace, cancel: CancellationToken) -> anyhow::Result<()> {
    let owner = Uuid::now_v7();
    tracing::info!(%owner, tick_ms = pace.tick.as_millis() as u64, "scheduler started");
    let mut running: JoinSet<()> = JoinSet::new();
    loop {
        if let Err(e) = plan(&s, Utc::now()).await {
            tracing::warn!(error = %e, "cannot plan schedule runs; trying again");
        }
        match claim(&s, owner, pace.lease).await {
            Ok(claimed) => {
                for (run, spec) in claimed {
                    let s = s.clone();
                    running.spawn(async move { execute(&s, owner, pace.lease, run, spec).await });
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot claim schedule runs; trying again"),
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(pace.tick) => {}
            () = s.scheduler_wake.notified() => {}
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    running.abort_all();
    while running.join_next().await.is_some() {}
    let handed_back = sqlx::query(
        "UPDATE schedule_runs SET status = 'queued', attempts = greatest(attempts - 1, 0), \
         lease_owner = NULL, lease_until = NULL, not_before = now(), updated_at = now() \
         WHERE lease_owner = $1 AND status = 'running'",
    )
    .bind(owner)
    .execute(&s.infra.pool)
    .await?
    .rows_affected();
    tracing::info!(%owner, handed_back, "scheduler stopped");
    Ok(())
}

/// Creates the runs of every interval that is due: the latest finished one, and with catch-up
/// every one missed since the last run.
pub async fn plan(s: &AppState, now: DateTime<Utc>) -> anyhow::Result<u64> {
    let rows = sqlx::query(
        "SELECT s.name, s.spec, (SELECT max(interval_start) FROM schedule_runs r \
         WHERE r.schedule = s.name AND r.trigger <> 'backfill') AS latest FROM schedules s",
    )
    .fetch_all(&s.infra.pool)
    .await?;
    let mut created = 0;
    for row in rows {
        let name: String = row.get("name");
        let Ok(spec) = serde_json::from_value::<ScheduleSpec>(row.get("spec")) else {
            tracing::warn!(schedule = %name, "a stored schedule no longer reads; skipped");
            continue;
        };
        if !spec.enabled {
            continue;
        }
        let Ok(cadence) = check_spec(&spec) else {
            continue;
        };
        let latest: Option<DateTime<Utc>> = row.get("latest");
        let due = if spec.catchup {
            let from = match latest {
                Some(l) => cadence.next_after(l).unwrap_or(now),
                None => spec.start,
            };
            intervals(&cadence, &spec, from, now, now)
        } else {
            latest_finished(&cadence, &spec, now)
                .filter(|i| latest.is_none_or(|l| i.start > l))
                .into_iter()
                .collect()
        };
        let last = due.len().saturating_sub(1);
        for (k, interval) in due.iter().enumerate() {
            let trigger = if k == last { "scheduled" } else { "catchup" };
            created += sqlx::query(
                "INSERT INTO schedule_runs (id, schedule, interval_start, interval_end, status, \
                 trigger) VALUES ($1, $2, $3, $4, 'queued', $5) \
                 ON CONFLICT (schedule, interval_start) DO NOTHING",
            )
            .bind(Uuid::now_v7())
            .bind(&name)
            .bind(interval.start)
            .bind(interval.end)
            .bind(trigger)
            .execute(&s.infra.pool)
            .await?
            .rows_affected();
        }
    }
    Ok(created)
}

/// A claimed run.
#[derive(Debug)]
struct Claimed {
    id: Uuid,
    schedule: String,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    attempts: u32,
}

/// Claims what each schedule may start now, oldest interval first, within its
/// `max_active_runs`. The schedule's row lock serialises claims across instances.
async fn claim(
    s: &AppState,
    owner: Uuid,
    lease: StdDuration,
) -> anyhow::Result<Vec<(Claimed, ScheduleSpec)>> {
    let ready: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT schedule FROM schedule_runs WHERE (status = 'queued' AND not_before <= now()) \
         OR (status = 'running' AND lease_until < now())",
    )
    .fetch_all(&s.infra.pool)
    .await?;
    let mut out = Vec::new();
    for name in ready {
        let mut tx = s.infra.pool.begin().await?;
        let Some(spec) = sqlx::query_scalar::<_, serde_json::Value>(
            "SELECT spec FROM schedules WHERE name = $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(&name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            // Another instance is claiming for it right now.
            continue;
        };
        let Ok(spec) = serde_json::from_value::<ScheduleSpec>(spec) else {
            continue;
        };
        if !spec.enabled {
            continue;
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM schedule_runs WHERE schedule = $1 AND status = 'running' \
             AND lease_until >= now()",
        )
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
        let room = i64::from(spec.max_active_runs) - active;
        if room <= 0 {
            continue;
        }
        let rows = sqlx::query(
            "UPDATE schedule_runs SET status = 'running', attempts = attempts + 1, \
             lease_owner = $2, lease_until = now() + make_interval(secs => $3), updated_at = now() \
             WHERE id IN (SELECT id FROM schedule_runs WHERE schedule = $1 AND \
             ((status = 'queued' AND not_before <= now()) OR (status = 'running' AND lease_until < now())) \
             ORDER BY interval_start LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, interval_start, interval_end, attempts",
        )
        .bind(&name)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .bind(room)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        for r in rows {
            out.push((
                Claimed {
                    id: r.get("id"),
                    schedule: name.clone(),
                    start: r.get("interval_start"),
                    end: r.get("interval_end"),
                    attempts: r.get::<i32, _>("attempts") as u32,
                },
                spec.clone(),
            ));
        }
    }
    Ok(out)
}

/// Mixes a generator's seed with the interval's start, so every interval has its own rows and
/// the same interval always the same ones (SplitMix64's finaliser).
fn interval_seed(seed: u64, start: DateTime<Utc>) -> u64 {
    mix64(seed ^ (start.timestamp() as u64).wrapping_mul(GOLDEN_GAMMA))
}

/// Ingests one interval's data.
async fn ingest_interval(
    s: &AppState,
    run: &Claimed,
    spec: &ScheduleSpec,
) -> Result<datasets::Ingested, ApiError> {
    let d = &spec.dataset;
    let origin = match (&d.path, &d.uri, &d.generate) {
        (Some(template), _, _) => {
            Origin::Path(render(template, run.start, run.end, &timezone(spec)))
        }
        (None, Some(template), _) => {
            Origin::Uri(render(template, run.start, run.end, &timezone(spec)))
        }
        (None, None, Some(generator)) => {
            let mut generator = generator.clone();
            match &mut generator {
                Generator::Reviews(g) => g.seed = interval_seed(g.seed, run.start),
                Generator::Penguins(g) => g.seed = interval_seed(g.seed, run.start),
            }
            Origin::Generate(generator)
        }
        (None, None, None) => {
            return Err(ApiError::invalid(
                "the schedule names no path, uri or generator",
            ));
        }
    };
    let source = format!("schedule:{}; {}", run.schedule, origin.label());
    let file = datasets::fetch(s, origin).await?;
    datasets::ingest_file(
        s,
        Incoming {
            name: d.name.clone(),
            schema: d.schema.clone(),
            checks: d.checks.clone(),
            purpose: d.purpose,
            source,
            file,
            interval: Some(Interval {
                schedule: run.schedule.clone(),
                start: run.start,
                end: run.end,
            }),
        },
    )
    .await
}

/// Runs one claimed interval, renewing its lease while it works, and records the outcome.
async fn execute(s: &AppState, owner: Uuid, lease: StdDuration, run: Claimed, spec: ScheduleSpec) {
    let work = ingest_interval(s, &run, &spec);
    tokio::pin!(work);
    let mut renew = tokio::time::interval(lease / 3);
    renew.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            _ = renew.tick() => {
                let held = sqlx::query(
                    "UPDATE schedule_runs SET lease_until = now() + make_interval(secs => $3) \
                     WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
                )
                .bind(run.id)
                .bind(owner)
                .bind(lease.as_secs_f64())
                .execute(&s.infra.pool)
                .await;
                if matches!(held, Ok(r) if r.rows_affected() == 0) {
                    tracing::warn!(run.id = %run.id, "lost the run's lease; another instance has it");
                    return;
                }
            }
        }
    };
    if let Err(e) = finish(s, owner, &run, &spec, outcome).await {
        // The lease lapses and another pass takes the run again; its dataset, if any, is
        // found by content.
        tracing::warn!(run.id = %run.id, error = %e, "cannot record the run's outcome");
    }
}

async fn finish(
    s: &AppState,
    owner: Uuid,
    run: &Claimed,
    spec: &ScheduleSpec,
    outcome: Result<datasets::Ingested, ApiError>,
) -> Result<(), sqlx::Error> {
    let mut tx = s.infra.pool.begin().await?;
    let held = "id = $1 AND lease_owner = $2 AND status = 'running'";
    match outcome {
        Ok(done) => {
            let (status, error) = match done.dataset.status {
                DatasetStatus::Accepted => (RunStatus::Succeeded, None),
                DatasetStatus::Rejected => {
                    (RunStatus::Rejected, Some(done.report.problems.join("; ")))
                }
            };
            sqlx::query(&format!(
                "UPDATE schedule_runs SET status = $3, dataset_id = $4, error = $5, \
                 lease_owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() \
                 WHERE {held}"
            ))
            .bind(run.id)
            .bind(owner)
            .bind(status.as_str())
            .bind(done.dataset.id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            tracing::info!(
                schedule = %run.schedule,
                run.id = %run.id,
                interval.start = %run.start,
                status = status.as_str(),
                dataset.id = %done.dataset.id,
                "schedule run finished"
            );
        }
        Err(e) if run.attempts <= spec.retries => {
            let delay = (spec.retry_delay_seconds as i64)
                .saturating_mul(1 << (run.attempts - 1).min(20))
                .min(MAX_RETRY_DELAY);
            sqlx::query(&format!(
                "UPDATE schedule_runs SET status = 'queued', error = $3, lease_owner = NULL, \
                 lease_until = NULL, not_before = now() + make_interval(secs => $4), \
                 updated_at = now() WHERE {held}"
            ))
            .bind(run.id)
            .bind(owner)
            .bind(&e.message)
            .bind(delay as f64)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(
                schedule = %run.schedule,
                run.id = %run.id,
                attempt = run.attempts,
                retry_in_s = delay,
                error = %e.message,
                "schedule run failed; retrying"
            );
        }
        Err(e) => {
            let updated = sqlx::query(&format!(
                "UPDATE schedule_runs SET status = 'failed', error = $3, lease_owner = NULL, \
                 lease_until = NULL, finished_at = now(), updated_at = now() WHERE {held}"
            ))
            .bind(run.id)
            .bind(owner)
            .bind(&e.message)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                outbox::enqueue(&mut tx, &s.infra.bus.envelope(failure_alert(run, spec, &e)))
                    .await?;
            }
            tracing::error!(
                schedule = %run.schedule,
                run.id = %run.id,
                attempts = run.attempts,
                error = %e.message,
                "schedule run failed for good"
            );
        }
    }
    tx.commit().await?;
    s.infra.relay.poke();
    Ok(())
}

/// The `alerts.data_quality` of a run whose every attempt failed.
fn failure_alert(run: &Claimed, spec: &ScheduleSpec, error: &ApiError) -> Alert {
    Alert {
        kind: AlertKind::DataQuality,
        status: AlertStatus::Opened,
        episode_id: Some(run.id),
        severity: Severity::Critical,
        model_name: String::new(),
        model_version: 0,
        key: Some(run.schedule.clone()),
        report_id: run.id,
        window_start: Some(run.start),
        window_end: Some(run.end),
        message: format!(
            "schedule {} failed for the interval from {} to {} after {} attempts: {}; fix the \
             source, then `petrel backfill {} --from {} --to {} --reprocess failed`",
            run.schedule,
            run.start.to_rfc3339(),
            run.end.to_rfc3339(),
            run.attempts,
            error.message,
            run.schedule,
            run.start.to_rfc3339(),
            run.end.to_rfc3339(),
        ),
        observed: f64::from(run.attempts),
        threshold: f64::from(spec.retries + 1),
        evidence: Vec::new(),
        details: json!({
            "schedule": run.schedule,
            "run_id": run.id,
            "dataset": spec.dataset.name,
            "error": error.message,
        }),
        dataset: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(every: &str, start: &str, catchup: bool) -> ScheduleSpec {
        serde_json::from_value(json!({
            "every": every,
            "timezone": "UTC",
            "start": start,
            "catchup": catchup,
            "dataset": {
                "name": "feed",
                "schema": petrel_ml::Schema::penguins(),
                "generate": {"generator": "penguins", "rows": 10},
            },
        }))
        .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn intervals_are_those_finished_in_the_range() {
        let spec = spec("1h", "2026-12-01T00:00:00Z", true);
        let cadence = check_spec(&spec).unwrap();
        let now = utc("2026-12-01T03:30:00Z");
        let got = intervals(&cadence, &spec, spec.start, now, now);
        let starts: Vec<String> = got
            .iter()
            .map(|i| i.start.format("%H").to_string())
            .collect();
        assert_eq!(starts, ["00", "01", "02"]);
        assert_eq!(got[2].end, utc("2026-12-01T03:00:00Z"));
        assert_eq!(
            latest_finished(&cadence, &spec, now),
            Some(IntervalTimes {
                start: utc("2026-12-01T02:00:00Z"),
                end: utc("2026-12-01T03:00:00Z"),
            })
        );
        // Nothing has finished before the first interval ends.
        assert_eq!(
            latest_finished(&cadence, &spec, utc("2026-12-01T00:59:59Z")),
            None
        );
        // A start long ago, daily: the latest day is found without walking from the start.
        let old = ScheduleSpec {
            every: Some("1d".into()),
            ..spec.clone()
        };
        let old = ScheduleSpec {
            start: utc("2000-01-01T00:00:00Z"),
            ..old
        };
        let cadence = check_spec(&old).unwrap();
        assert_eq!(
            latest_finished(&cadence, &old, now).unwrap().start,
            utc("2026-11-30T00:00:00Z")
        );
    }

    #[test]
    fn specs_are_checked_in_the_request_words() {
        let good = spec("1h", "2026-12-01T00:00:00Z", false);
        check_spec(&good).unwrap();
        let cases: Vec<(ScheduleSpec, &str)> = vec![
            (
                ScheduleSpec {
                    timezone: "Mars/Olympus".into(),
                    ..good.clone()
                },
                "IANA",
            ),
            (
                ScheduleSpec {
                    cron: Some("0 0 * * *".into()),
                    ..good.clone()
                },
                "exactly one of `every`",
            ),
            (
                ScheduleSpec {
                    max_active_runs: 0,
                    ..good.clone()
                },
                "max_active_runs",
            ),
            (
                ScheduleSpec {
                    end: Some(good.start),
                    ..good.clone()
                },
                "end must be after start",
            ),
        ];
        for (spec, words) in cases {
            let err = check_spec(&spec).unwrap_err();
            assert!(err.contains(words), "{err}");
        }
    }

    #[test]
    fn each_interval_has_its_own_seed_and_always_the_same() {
        let a = interval_seed(7, utc("2026-12-01T00:00:00Z"));
        assert_eq!(a, interval_seed(7, utc("2026-12-01T00:00:00Z")));
        assert_ne!(a, interval_seed(7, utc("2026-12-01T01:00:00Z")));
        assert_ne!(a, interval_seed(8, utc("2026-12-01T00:00:00Z")));
    }
}
