//! Schedules against the real Postgres and NATS (and an S3-compatible server for S3
//! partitions): intervals run once each even with two instances racing, catch-up after
//! downtime, backfill, retries and the failure alert.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use common::{
    SeaweedFs, Service, TestEnv, assert_error, data_dir, eventually, penguins_csv,
    start_ingest_on_s3, start_ingest_with,
};
use petrel_api::ingest::{BackfillResponse, Dataset, RunStatus, Schedule, ScheduleRun};
use petrel_events::Envelope;
use petrel_events::payloads::{Alert, AlertKind, DataReady};
use petrel_ml::Schema;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(1500);
/// A scheduler that looks every 50 ms, so tests do not wait on the default second.
const FAST: [&str; 2] = ["--schedule-tick-ms", "50"];

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn penguin_feed(every: &str, start: DateTime<Utc>, end: DateTime<Utc>, catchup: bool) -> Value {
    json!({
        "every": every,
        "timezone": "UTC",
        "start": start,
        "end": end,
        "catchup": catchup,
        "dataset": {
            "name": "feed",
            "schema": Schema::penguins(),
            "generate": {"generator": "penguins", "rows": 30, "seed": 1},
        },
    })
}

async fn runs(svc: &Service, name: &str) -> Vec<ScheduleRun> {
    let (status, v) = svc
        .send(
            Method::GET,
            &format!("/v1/schedules/{name}/runs?limit=1000"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut runs: Vec<ScheduleRun> = serde_json::from_value(v["runs"].clone()).unwrap();
    runs.sort_by_key(|r| r.start);
    runs
}

/// Waits until the schedule has `n` runs, all finished with `status`.
async fn settled(svc: &Service, name: &str, n: usize, status: RunStatus) -> Vec<ScheduleRun> {
    eventually(
        &format!("{n} {} runs of {name}", status.as_str()),
        || async {
            let got = runs(svc, name).await;
            (got.len() == n && got.iter().all(|r| r.status == status)).then_some(got)
        },
    )
    .await
}

async fn put(svc: &Service, name: &str, spec: Value, expect: StatusCode) -> Value {
    let (status, v) = svc
        .send(Method::PUT, &format!("/v1/schedules/{name}"), Some(spec))
        .await;
    assert_eq!(status, expect, "{v}");
    v
}

async fn backfill(svc: &Service, name: &str, body: Value) -> BackfillResponse {
    let (status, v) = svc
        .send(
            Method::POST,
            &format!("/v1/schedules/{name}/backfill"),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

#[tokio::test]
async fn two_instances_racing_for_the_same_intervals_run_each_exactly_once() {
    let world = TestEnv::new().await;
    let a = start_ingest_with(&world, &FAST).await;
    let b = start_ingest_with(&world, &FAST).await;
    let mut ready = world.events("data.>").await;
    // Thirty one-second intervals, all in the past: both instances plan and claim them at
    // once, four at a time.
    let start = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::seconds(40);
    let end = start + TimeDelta::seconds(30);
    let mut spec = penguin_feed("1s", start, end, true);
    spec["max_active_runs"] = json!(4);
    put(&a, "race", spec, StatusCode::CREATED).await;

    let done = settled(&b, "race", 30, RunStatus::Succeeded).await;
    let starts: Vec<DateTime<Utc>> = done.iter().map(|r| r.start).collect();
    let expected: Vec<DateTime<Utc>> = (0..30).map(|k| start + TimeDelta::seconds(k)).collect();
    assert_eq!(starts, expected, "one run per interval");
    assert!(done.iter().all(|r| r.attempts == 1), "{done:?}");
    assert!(
        done.iter()
            .all(|r| r.end == r.start + TimeDelta::seconds(1))
    );
    let datasets: HashSet<_> = done.iter().map(|r| r.dataset_id.unwrap()).collect();
    assert_eq!(datasets.len(), 30, "one dataset per interval");

    // One data.ready per interval, and no more.
    let mut announced = HashSet::new();
    for _ in 0..30 {
        let env: Envelope<DataReady> = Envelope::from_bytes(&ready.next().await.1).unwrap();
        announced.insert(env.data.dataset_id);
    }
    assert_eq!(announced, datasets);
    ready.assert_quiet(QUIET).await;

    // Each dataset names the interval that made it.
    let (_, list) = a.send(Method::GET, "/v1/datasets?name=feed", None).await;
    let list: Vec<Dataset> = serde_json::from_value(list["datasets"].clone()).unwrap();
    let intervals: BTreeSet<_> = list
        .iter()
        .map(|d| d.interval.as_ref().expect("a scheduled dataset").start)
        .collect();
    assert_eq!(intervals, expected.iter().copied().collect());
    assert!(
        list.iter()
            .all(|d| d.source == "schedule:race; generate:penguins")
    );
    let versions: BTreeSet<i32> = list.iter().map(|d| d.version).collect();
    assert_eq!(versions, (1..=30).collect());

    a.stop().await;
    b.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn after_downtime_catch_up_runs_the_missed_intervals_in_order() {
    let world = TestEnv::new().await;
    // The schedule is made while no instance runs schedules: that is the downtime.
    let api = start_ingest_with(&world, &["--scheduler", "false"]).await;
    let start = Utc::now().duration_trunc(TimeDelta::seconds(1)).unwrap() - TimeDelta::seconds(10);
    let spec = penguin_feed("1s", start, start + TimeDelta::seconds(6), true);
    let saved: Schedule =
        serde_json::from_value(put(&api, "catchup", spec, StatusCode::CREATED).await).unwrap();
    assert!(saved.spec.catchup);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        runs(&api, "catchup").await.is_empty(),
        "nothing ran while down"
    );

    let scheduler = start_ingest_with(&world, &FAST).await;
    let done = settled(&api, "catchup", 6, RunStatus::Succeeded).await;
    // One at a time (max_active_runs 1), oldest first.
    let finished: Vec<_> = done.iter().map(|r| r.finished_at.unwrap()).collect();
    let mut sorted = finished.clone();
    sorted.sort();
    assert_eq!(finished, sorted, "caught up in interval order: {done:?}");
    assert_eq!(done.last().unwrap().trigger, "scheduled");
    assert!(done[..5].iter().all(|r| r.trigger == "catchup"), "{done:?}");

    let (_, got) = api.send(Method::GET, "/v1/schedules/catchup", None).await;
    let got: Schedule = serde_json::from_value(got).unwrap();
    assert_eq!(got.runs["succeeded"], 6);
    assert!(got.next_interval.is_none(), "the schedule has ended");
    scheduler.stop().await;
    api.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn without_catch_up_only_the_latest_interval_runs_and_backfill_recreates_a_range() {
    let world = TestEnv::new().await;
    let svc = start_ingest_with(&world, &FAST).await;
    // Five hourly intervals, long finished.
    let start = utc("2026-01-01T00:00:00Z");
    let end = utc("2026-01-01T05:00:00Z");
    put(
        &svc,
        "daily",
        penguin_feed("1h", start, end, false),
        StatusCode::CREATED,
    )
    .await;
    let done = settled(&svc, "daily", 1, RunStatus::Succeeded).await;
    assert_eq!(
        done[0].start,
        utc("2026-01-01T04:00:00Z"),
        "only the latest"
    );
    assert_eq!(done[0].trigger, "scheduled");

    // A dry run says what would happen, and does nothing.
    let range = json!({"from": start, "to": end, "dry_run": true});
    let dry = backfill(&svc, "daily", range.clone()).await;
    assert!(dry.dry_run);
    assert_eq!((dry.created, dry.requeued, dry.skipped), (4, 0, 1));
    let actions: Vec<&str> = dry.intervals.iter().map(|i| i.action.as_str()).collect();
    assert_eq!(actions, ["create", "create", "create", "create", "skip"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs(&svc, "daily").await.len(), 1);

    let mut real = range.clone();
    real["dry_run"] = json!(false);
    let did = backfill(&svc, "daily", real.clone()).await;
    assert_eq!((did.created, did.requeued, did.skipped), (4, 0, 1));
    let done = settled(&svc, "daily", 5, RunStatus::Succeeded).await;
    assert!(
        done[..4].iter().all(|r| r.trigger == "backfill"),
        "{done:?}"
    );
    // Backfilling again is a no-op; reprocessing `failed` finds none; `all` would run all.
    let again = backfill(&svc, "daily", real).await;
    assert_eq!((again.created, again.requeued, again.skipped), (0, 0, 5));
    let mut failed = range.clone();
    failed["reprocess"] = json!("failed");
    assert_eq!(backfill(&svc, "daily", failed).await.requeued, 0);
    let mut all = range;
    all["reprocess"] = json!("all");
    let all = backfill(&svc, "daily", all).await;
    assert_eq!(all.requeued, 5);

    // A range with nothing in it, and bad ranges.
    let empty = backfill(
        &svc,
        "daily",
        json!({"from": "2025-01-01T00:00:00Z", "to": "2025-01-02T00:00:00Z"}),
    )
    .await;
    assert!(empty.intervals.is_empty());
    let r = svc
        .send(
            Method::POST,
            "/v1/schedules/daily/backfill",
            Some(json!({"from": end, "to": start})),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let r = svc
        .send(
            Method::POST,
            "/v1/schedules/nope/backfill",
            Some(json!({"from": start, "to": end})),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_failing_source_is_retried_then_marked_failed_with_an_alert_and_backfill_mends_it() {
    let world = TestEnv::new().await;
    let svc = start_ingest_with(&world, &FAST).await;
    let mut alerts = world.events("alerts.>").await;
    let spec = json!({
        "cron": "@daily",
        "timezone": "Europe/Paris",
        "start": "2025-12-31T23:00:00Z",
        "end": "2026-01-01T23:00:00Z",
        "retries": 1,
        "retry_delay_seconds": 1,
        "dataset": {
            "name": "penguins",
            "schema": Schema::penguins(),
            "path": "feed/{ds}.csv",
        },
    });
    put(&svc, "files", spec, StatusCode::CREATED).await;
    // The interval is 2026-01-01 in Paris; its file is not there.
    let failed = settled(&svc, "files", 1, RunStatus::Failed).await;
    assert_eq!(failed[0].start, utc("2025-12-31T23:00:00Z"));
    assert_eq!(failed[0].attempts, 2, "the first attempt and one retry");
    let error = failed[0].error.as_deref().unwrap();
    assert!(error.contains("feed/2026-01-01.csv"), "{error}");
    let (subject, bytes) = alerts.next().await;
    assert_eq!(subject, "alerts.data_quality");
    let alert: Envelope<Alert> = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!(alert.data.kind, AlertKind::DataQuality);
    assert_eq!(alert.data.key.as_deref(), Some("files"));
    assert!(
        alert.data.message.contains("after 2 attempts"),
        "{}",
        alert.data.message
    );
    assert!(
        alert.data.message.contains("petrel backfill files"),
        "{}",
        alert.data.message
    );

    // The file arrives; backfilling the failed interval runs it again.
    let dir = data_dir(&world).join("feed");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("2026-01-01.csv"), penguins_csv()).unwrap();
    let mended = backfill(
        &svc,
        "files",
        json!({
            "from": "2025-12-31T23:00:00Z",
            "to": "2026-01-01T23:00:00Z",
            "reprocess": "failed",
        }),
    )
    .await;
    assert_eq!(mended.requeued, 1);
    let done = settled(&svc, "files", 1, RunStatus::Succeeded).await;
    assert_eq!(done[0].attempts, 1, "attempts start again");
    assert_eq!(done[0].error, None);
    let (_, d) = svc
        .send(
            Method::GET,
            &format!("/v1/datasets/{}", done[0].dataset_id.unwrap()),
            None,
        )
        .await;
    let d: Dataset = serde_json::from_value(d).unwrap();
    assert_eq!(d.row_count, 344);
    assert_eq!(d.source, "schedule:files; path:feed/2026-01-01.csv");
    let interval = d.interval.unwrap();
    assert_eq!(
        (interval.schedule.as_str(), interval.start),
        ("files", failed[0].start)
    );
    alerts.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn schedules_are_managed_over_http_and_bad_specs_refused_in_plain_words() {
    let world = TestEnv::new().await;
    let svc = start_ingest_with(&world, &["--scheduler", "false"]).await;
    let start = utc("2030-01-01T00:00:00Z");
    let spec = penguin_feed("1d", start, start + TimeDelta::days(30), false);
    put(&svc, "later", spec.clone(), StatusCode::CREATED).await;
    let mut paused = spec.clone();
    paused["enabled"] = json!(false);
    let saved: Schedule =
        serde_json::from_value(put(&svc, "later", paused, StatusCode::OK).await).unwrap();
    assert!(!saved.spec.enabled);
    let next = saved.next_interval.unwrap();
    assert_eq!((next.start, next.end), (start, start + TimeDelta::days(1)));
    let (_, list) = svc.send(Method::GET, "/v1/schedules", None).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);

    let bad = |edit: &dyn Fn(&mut Value), needle: &'static str| {
        let mut body = spec.clone();
        edit(&mut body);
        let svc = &svc;
        async move {
            let r = svc.send(Method::PUT, "/v1/schedules/bad", Some(body)).await;
            assert!(r.0.is_client_error(), "{}", r.1);
            let m = r.1["error"]["message"].as_str().unwrap();
            assert!(m.contains(needle), "{m} lacks {needle}");
        }
    };
    bad(&|b| b["timezone"] = json!("Mars/Olympus"), "IANA").await;
    bad(&|b| b["every"] = json!("5 minutes"), "unit").await;
    bad(
        &|b| {
            b.as_object_mut().unwrap().remove("every");
            b["cron"] = json!("61 * * * *");
        },
        "outside 0-59",
    )
    .await;
    bad(
        &|b| b["dataset"]["path"] = json!("x.csv"),
        "exactly one of `path`, `uri` or `generate`",
    )
    .await;
    bad(&|b| b["dataset"]["name"] = json!("a/b"), "name").await;
    bad(
        &|b| {
            b.as_object_mut().unwrap().remove("timezone");
        },
        "timezone",
    )
    .await;
    bad(&|b| b["retries"] = json!(99), "retries").await;

    let r = svc.send(Method::GET, "/v1/schedules/nope", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = svc
        .send(Method::GET, "/v1/schedules/later/runs?status=maybe", None)
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let (status, _) = svc.send(Method::DELETE, "/v1/schedules/later", None).await;
    assert_eq!(status, StatusCode::OK);
    let r = svc.send(Method::DELETE, "/v1/schedules/later", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_schedule_reads_each_intervals_s3_partition() {
    // The Airflow pattern: one object per day under a date-stamped key.
    let server = SeaweedFs::start(&["landing", "artifacts"]).await;
    let world = TestEnv::new().await;
    let svc = start_ingest_on_s3(&world, &server, "s3://artifacts/petrel", &FAST).await;
    let options = petrel_store::S3Options {
        endpoint: Some(server.endpoint.clone()),
        force_path_style: true,
        region: Some("us-east-1".to_owned()),
        credentials: Some((
            common::S3_ACCESS_KEY.to_owned(),
            common::S3_SECRET_KEY.to_owned(),
        )),
    };
    let landing = petrel_store::S3Store::connect("s3://landing", &options)
        .await
        .unwrap();
    let csv = penguins_csv();
    let lines: Vec<&str> = csv.lines().collect();
    for (day, rows) in [("2026-11-28", 1..150), ("2026-11-29", 150..lines.len())] {
        let mut part = vec![lines[0]];
        part.extend_from_slice(&lines[rows]);
        use petrel_store::ArtifactStore as _;
        landing
            .put(
                &format!("daily/{day}.csv"),
                bytes::Bytes::from(part.join("\n") + "\n"),
            )
            .await
            .unwrap();
    }
    let spec = json!({
        "every": "1d",
        "timezone": "UTC",
        "start": "2026-11-28T00:00:00Z",
        "end": "2026-11-30T00:00:00Z",
        "catchup": true,
        "dataset": {
            "name": "daily",
            "schema": Schema::penguins(),
            "uri": "s3://landing/daily/{ds}.csv",
        },
    });
    put(&svc, "daily", spec, StatusCode::CREATED).await;
    let done = settled(&svc, "daily", 2, RunStatus::Succeeded).await;
    for (run, day) in done.iter().zip(["2026-11-28", "2026-11-29"]) {
        let id = run.dataset_id.unwrap();
        let (status, v) = svc
            .send(Method::GET, &format!("/v1/datasets/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let d: Dataset = serde_json::from_value(v).unwrap();
        assert_eq!(
            d.source,
            format!("schedule:daily; uri:s3://landing/daily/{day}.csv")
        );
        assert!(d.uri.starts_with("s3://artifacts/petrel/"), "{}", d.uri);
        assert_eq!(d.interval.unwrap().start, run.start);
    }
    svc.stop().await;
    world.cleanup().await;
}
