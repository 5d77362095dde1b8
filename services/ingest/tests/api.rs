//! Ingest's HTTP API and its `data.ready` events, against the real Postgres and NATS.

mod common;

use std::time::Duration;

use common::{Service, TestEnv, assert_error, data_dir, penguins_csv, start_ingest};
use petrel_api::ingest::{Dataset, DatasetStatus, IngestRequest, IngestResponse, ValidationReport};
use petrel_events::Envelope;
use petrel_events::payloads::{Alert, AlertKind, DataReady, DatasetPurpose};
use petrel_ml::Schema;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// How long to listen for an event that must not come. The relay publishes within milliseconds
/// of a commit (and polls every second), so this comfortably covers a missed poke.
const QUIET: Duration = Duration::from_millis(1500);

fn by_csv(name: &str, csv: &str) -> Value {
    serde_json::to_value(IngestRequest {
        name: name.to_owned(),
        schema: Schema::penguins(),
        csv: Some(csv.to_owned()),
        path: None,
        uri: None,
        generate: None,
        purpose: Default::default(),
        checks: Default::default(),
    })
    .unwrap()
}

fn by_path(name: &str, path: &str) -> Value {
    serde_json::to_value(IngestRequest {
        name: name.to_owned(),
        schema: Schema::penguins(),
        csv: None,
        path: Some(path.to_owned()),
        uri: None,
        generate: None,
        purpose: Default::default(),
        checks: Default::default(),
    })
    .unwrap()
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The bytes behind a `file://` URI.
fn read_uri(uri: &str) -> Vec<u8> {
    let path = uri.strip_prefix("file://").expect("a file:// URI");
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

async fn ingest(svc: &Service, body: Value, expect: StatusCode) -> IngestResponse {
    let (status, v) = svc.send(Method::POST, "/v1/datasets", Some(body)).await;
    assert_eq!(status, expect, "{v}");
    serde_json::from_value(v).unwrap()
}

fn data_ready(bytes: &[u8]) -> Envelope<DataReady> {
    Envelope::from_bytes(bytes).expect("a data.ready envelope")
}

/// The penguins header, its first `n` data rows, then `extra` lines.
fn penguins_with(n: usize, extra: &[&str]) -> String {
    let full = penguins_csv();
    let mut lines: Vec<&str> = full.lines().take(n + 1).collect();
    lines.extend_from_slice(extra);
    lines.join("\n") + "\n"
}

#[tokio::test]
async fn ingesting_penguins_stores_the_file_and_announces_it_once() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    let csv = penguins_csv();

    let first = ingest(&svc, by_csv("penguins", &csv), StatusCode::CREATED).await;
    assert!(first.created);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let ds = &first.dataset;
    assert_eq!(ds.name, "penguins");
    assert_eq!(ds.version, 1);
    // Rows with NA are missing values, not errors.
    assert_eq!(ds.row_count, 344);
    assert_eq!(ds.rejected_rows, 0);
    assert_eq!(ds.schema, Schema::penguins());
    assert_eq!(ds.content_hash, sha256(csv.as_bytes()));

    // The stored file is the uploaded one, inside the artifact root.
    assert!(ds.uri.starts_with("file://"), "{}", ds.uri);
    let stored_path = ds.uri.trim_start_matches("file://");
    assert!(
        std::path::Path::new(stored_path).starts_with(&world.artifacts),
        "{stored_path} is outside {}",
        world.artifacts.display()
    );
    let stored = read_uri(&ds.uri);
    assert_eq!(sha256(&stored), ds.content_hash);
    assert_eq!(stored, csv.as_bytes());

    // One data.ready, describing the same dataset.
    let (subject, bytes) = events.next().await;
    assert_eq!(subject, "data.ready");
    let env = data_ready(&bytes);
    assert_eq!(env.source, "petrel/ingest");
    assert_eq!(env.data.dataset_id, ds.id);
    assert_eq!(env.data.name, "penguins");
    assert_eq!(env.data.version, 1);
    assert_eq!(env.data.uri, ds.uri);
    assert_eq!(env.data.content_hash, ds.content_hash);
    assert_eq!(env.data.row_count, 344);
    assert_eq!(env.data.rejected_rows, 0);
    assert_eq!(env.data.schema, Schema::penguins());
    assert_eq!(env.data.purpose, DatasetPurpose::Training, "the default");
    assert_eq!(ds.purpose, DatasetPurpose::Training);
    events.assert_quiet(QUIET).await;

    // The same bytes again: 200, the same dataset, nothing new announced.
    let again = ingest(&svc, by_csv("penguins", &csv), StatusCode::OK).await;
    assert!(!again.created);
    assert_eq!(again.dataset, first.dataset);
    events.assert_quiet(QUIET).await;

    // The dataset can be read back.
    let (status, got) = svc
        .send(Method::GET, &format!("/v1/datasets/{}", ds.id), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let got: Dataset = serde_json::from_value(got).unwrap();
    assert_eq!(&got, ds);

    // New content under the same name is the next version.
    let smaller = penguins_with(100, &[]);
    let second = ingest(&svc, by_csv("penguins", &smaller), StatusCode::CREATED).await;
    assert!(second.created);
    assert_eq!(second.dataset.version, 2);
    assert_eq!(second.dataset.row_count, 100);
    assert_ne!(second.dataset.id, ds.id);
    assert_ne!(second.dataset.uri, ds.uri);
    assert_eq!(read_uri(&second.dataset.uri), smaller.as_bytes());
    let (_, bytes) = events.next().await;
    let env2 = data_ready(&bytes);
    assert_eq!(env2.data.dataset_id, second.dataset.id);
    assert_eq!(env2.data.version, 2);
    assert_ne!(env2.id, env.id);
    // The first file is untouched.
    assert_eq!(read_uri(&ds.uri), csv.as_bytes());

    // The same content under another name is another dataset, version 1.
    let other = ingest(&svc, by_csv("penguins-copy", &csv), StatusCode::CREATED).await;
    assert_eq!(other.dataset.version, 1);
    assert_ne!(other.dataset.id, ds.id);
    events.next().await;

    let (status, list) = svc.send(Method::GET, "/v1/datasets", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["datasets"].as_array().unwrap().len(), 3);

    events.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_scoring_dataset_is_stored_and_announced_as_one() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    let mut body = by_csv("penguins", &penguins_with(20, &[]));
    body["purpose"] = json!("scoring");
    let created = ingest(&svc, body, StatusCode::CREATED).await;
    assert_eq!(created.dataset.purpose, DatasetPurpose::Scoring);
    let (_, bytes) = events.next().await;
    let env = data_ready(&bytes);
    assert_eq!(env.data.dataset_id, created.dataset.id);
    assert_eq!(env.data.purpose, DatasetPurpose::Scoring);
    // Kept with the dataset: reading it back says so too.
    let (status, got) = svc
        .send(
            Method::GET,
            &format!("/v1/datasets/{}", created.dataset.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["purpose"], "scoring");
    // A purpose that is not one is refused.
    let mut body = by_csv("penguins", &penguins_with(5, &[]));
    body["purpose"] = json!("fun");
    let (status, _) = svc.send(Method::POST, "/v1/datasets", Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    svc.stop().await;
    world.cleanup().await;
}

/// The review generator as a source: seeded, so the same spec is the same dataset and a shifted
/// one a new version; text columns are stored and announced like any other.
#[tokio::test]
async fn a_generated_review_feed_is_reproducible_and_its_spec_checked() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    let body =
        |spec: Value| json!({ "name": "reviews", "schema": Schema::reviews(), "generate": spec });
    let spec = json!({ "generator": "reviews", "rows": 300, "seed": 5 });
    let first = ingest(&svc, body(spec.clone()), StatusCode::CREATED).await;
    assert_eq!(first.dataset.row_count, 300);
    assert_eq!(first.dataset.schema, Schema::reviews());
    // What was stored is what the generator makes locally, byte for byte.
    let local = petrel_ml::generate_reviews(&petrel_ml::ReviewSpec::new(300, 5)).unwrap();
    assert_eq!(read_uri(&first.dataset.uri), local.as_bytes());
    assert_eq!(first.dataset.content_hash, sha256(local.as_bytes()));
    let (_, bytes) = events.next().await;
    assert_eq!(data_ready(&bytes).data.dataset_id, first.dataset.id);
    // The same spec again is the same dataset, and nothing is announced.
    let again = ingest(&svc, body(spec), StatusCode::OK).await;
    assert!(!again.created);
    assert_eq!(again.dataset.id, first.dataset.id);
    events.assert_quiet(QUIET).await;
    // A shifted feed is new data: version 2.
    let shifted = json!({ "generator": "reviews", "rows": 300, "seed": 5, "shift": 0.5 });
    let second = ingest(&svc, body(shifted), StatusCode::CREATED).await;
    assert_eq!(second.dataset.version, 2);

    let invalid = |r: &(StatusCode, Value), needle: &str| {
        assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        let m = r.1["error"]["message"].as_str().unwrap();
        assert!(m.contains(needle), "{m} lacks {needle}");
    };
    let send = |b: Value| svc.send(Method::POST, "/v1/datasets", Some(b));
    let r = send(body(json!({ "generator": "reviews", "rows": 0 }))).await;
    invalid(&r, "rows must be between 1 and 1000000");
    let r = send(body(
        json!({ "generator": "reviews", "rows": 5, "shift": 2 }),
    ))
    .await;
    invalid(&r, "shift must be a share in [0, 1]");
    let r = send(body(
        json!({ "generator": "reviews", "rows": 5, "sift": 0.5 }),
    ))
    .await;
    assert!(r.0.is_client_error(), "{}", r.1);
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("sift"),
        "{}",
        r.1
    );
    let r = send(body(json!({ "generator": "poems", "rows": 5 }))).await;
    assert!(r.0.is_client_error(), "{}", r.1);
    let mut both = body(json!({ "generator": "reviews", "rows": 5 }));
    both["csv"] = json!("a,b\n1,2\n");
    let r = send(both).await;
    invalid(&r, "exactly one of");
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_few_bad_rows_are_left_out_and_reported_by_line() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    // Header is line 1; 30 good rows are lines 2..=31; then three bad lines and one good line.
    let csv = penguins_with(
        30,
        &[
            "Adelie,Torgersen,abc,18.7,181,3750,male,2007",
            ",Torgersen,39.1,18.7,181,3750,male,2007",
            "Adelie,Torgersen,39.1",
            "Gentoo,Biscoe,46.1,13.2,211,4500,female,2007",
        ],
    );
    let resp = ingest(&svc, by_csv("some-bad", &csv), StatusCode::CREATED).await;
    assert!(resp.created);
    assert_eq!(resp.dataset.row_count, 31);
    assert_eq!(resp.dataset.rejected_rows, 3);
    let lines: Vec<u64> = resp.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![32, 33, 34], "{:?}", resp.errors);
    assert_eq!(resp.errors[0].column.as_deref(), Some("bill_length_mm"));
    assert!(
        resp.errors[0].message.contains("abc"),
        "{:?}",
        resp.errors[0]
    );
    assert_eq!(resp.errors[1].column.as_deref(), Some("species"));
    assert_eq!(resp.errors[2].column, None);

    let env = data_ready(&events.next().await.1);
    assert_eq!(env.data.dataset_id, resp.dataset.id);
    assert_eq!(env.data.row_count, 31);
    assert_eq!(env.data.rejected_rows, 3);

    // The full file is stored (training re-validates it the same way).
    assert_eq!(read_uri(&resp.dataset.uri), csv.as_bytes());

    // Re-ingesting reports the same errors.
    let again = ingest(&svc, by_csv("some-bad", &csv), StatusCode::OK).await;
    assert!(!again.created);
    assert_eq!(again.errors, resp.errors);
    events.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn unusable_requests_are_refused_with_json_errors_and_store_nothing() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    let invalid =
        |r: &(StatusCode, Value)| assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    // Neither csv nor path, and both.
    let r = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(json!({"name": "bad", "schema": Schema::penguins()})),
        )
        .await;
    invalid(&r);
    let mut both = by_csv("bad", &penguins_csv());
    both["path"] = json!("penguins.csv");
    let r = svc.send(Method::POST, "/v1/datasets", Some(both)).await;
    invalid(&r);

    // Bad names, and a bad schema.
    for name in ["", "a b", "a/b", ".", ".."] {
        let r = svc
            .send(
                Method::POST,
                "/v1/datasets",
                Some(by_csv(name, &penguins_csv())),
            )
            .await;
        assert_eq!(
            r.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name {name:?}: {}",
            r.1
        );
        invalid(&r);
    }
    let mut schema_bad = by_csv("bad", &penguins_csv());
    schema_bad["schema"]["target"] = json!("island");
    let r = svc
        .send(Method::POST, "/v1/datasets", Some(schema_bad))
        .await;
    invalid(&r);

    // Bodies that are not the request.
    let r = svc
        .send_raw(
            Method::POST,
            "/v1/datasets",
            Some("application/json"),
            "{not json",
        )
        .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_json");
    let r = svc
        .send(Method::POST, "/v1/datasets", Some(json!({"csv": "x"})))
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid_json");

    // Unknown datasets and routes.
    let r = svc
        .send(
            Method::GET,
            &format!("/v1/datasets/{}", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = svc.send(Method::GET, "/v1/datasets/nope", None).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_path");
    let r = svc.send(Method::GET, "/v1/nope", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    // Bad checks are refused by name.
    let mut bad_checks = by_csv("bad", &penguins_csv());
    bad_checks["checks"] = json!({"columns": {"beak": {"min": 1}}});
    let r = svc
        .send(Method::POST, "/v1/datasets", Some(bad_checks))
        .await;
    invalid(&r);
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("beak"),
        "{}",
        r.1
    );
    let mut bad_checks = by_csv("bad", &penguins_csv());
    bad_checks["checks"] = json!({"max_rejected_share": 2});
    let r = svc
        .send(Method::POST, "/v1/datasets", Some(bad_checks))
        .await;
    invalid(&r);

    // Nothing was stored or announced.
    let (_, list) = svc.send(Method::GET, "/v1/datasets", None).await;
    assert_eq!(list["datasets"], json!([]));
    events.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

/// A rejection as the uploader sees it: 422 `rejected`, with the stored dataset and its report.
fn rejected(r: &(StatusCode, Value), needle: &str) -> (Dataset, ValidationReport) {
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    let message = r.1["error"]["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message} lacks {needle}");
    let dataset: Dataset = serde_json::from_value(r.1["dataset"].clone()).unwrap();
    assert_eq!(dataset.status, DatasetStatus::Rejected);
    let report: ValidationReport = serde_json::from_value(r.1["report"].clone()).unwrap();
    assert!(!report.problems.is_empty());
    (dataset, report)
}

#[tokio::test]
async fn files_that_fail_validation_are_stored_as_rejected_and_raise_a_data_quality_alert() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut ready = world.events("data.>").await;
    let mut alerts = world.events("alerts.>").await;
    let send = |body: Value| svc.send(Method::POST, "/v1/datasets", Some(body));

    // Mostly bad: 10 good rows, 10 bad ones, far over the 10% allowed.
    let bad: Vec<String> = (0..10)
        .map(|i| format!("Adelie,Dream,abc{i},18,180,3500,male,2008"))
        .collect();
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    let mostly_bad = penguins_with(10, &bad);
    let r = send(by_csv("feed", &mostly_bad)).await;
    let (dataset, report) = rejected(&r, "10 of 20");
    assert!(
        report.problems[0].contains("line 12"),
        "names the first bad line: {report:?}"
    );
    assert!(
        report.problems[0].contains("max_rejected_share"),
        "says how to fix it: {report:?}"
    );
    assert_eq!(
        (report.rows, report.accepted, report.rejected),
        (20, 10, 10)
    );
    assert_eq!(report.rejected_by_column["bill_length_mm"], 10);
    assert_eq!(
        read_uri(&dataset.source_uri),
        mostly_bad.as_bytes(),
        "kept for inspection"
    );

    // Announced on alerts.data_quality, never on data.ready.
    let (subject, bytes) = alerts.next().await;
    assert_eq!(subject, "alerts.data_quality");
    let alert: Envelope<Alert> = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!(alert.data.kind, AlertKind::DataQuality);
    assert_eq!(alert.data.dataset.as_ref().unwrap().id, dataset.id);
    assert_eq!(alert.data.report_id, dataset.id);
    assert!(alert.data.model_name.is_empty());
    assert!(
        alert.data.message.contains("10 of 20"),
        "{}",
        alert.data.message
    );
    assert_eq!(alert.data.observed, 0.5);

    // The same file again is the same rejected dataset, and raises nothing new.
    let again = send(by_csv("feed", &mostly_bad)).await;
    assert_eq!(rejected(&again, "10 of 20").0.id, dataset.id);
    assert_eq!(again.1["created"], false);

    // Its report, and the listing by status.
    let (status, got) = svc
        .send(
            Method::GET,
            &format!("/v1/datasets/{}/report", dataset.id),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        serde_json::from_value::<ValidationReport>(got).unwrap(),
        report
    );
    let (_, list) = svc
        .send(Method::GET, "/v1/datasets?status=rejected", None)
        .await;
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1);
    let (_, list) = svc
        .send(Method::GET, "/v1/datasets?status=accepted", None)
        .await;
    assert_eq!(list["datasets"], json!([]));
    let r = svc
        .send(Method::GET, "/v1/datasets?status=maybe", None)
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");

    // Just over the threshold (2 bad of 12 is 16%), nothing valid, a header without a
    // schema column, an empty file: each rejected, each with its own alert.
    rejected(
        &send(by_csv("feed", &penguins_with(10, &bad[..2]))).await,
        "2 of 12",
    );
    rejected(
        &send(by_csv("feed", &penguins_with(0, &bad))).await,
        "no valid rows",
    );
    let no_sex = penguins_csv()
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(',').collect();
            fields.remove(6);
            fields.join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    rejected(&send(by_csv("feed", &no_sex)).await, "sex");
    rejected(&send(by_csv("feed", "")).await, "empty");
    for _ in 0..4 {
        let (subject, _) = alerts.next().await;
        assert_eq!(subject, "alerts.data_quality");
    }
    // A rejection threshold of the request's own lets the 16% file through.
    let mut lenient = by_csv("feed", &penguins_with(10, &bad[..2]));
    lenient["checks"] = json!({"max_rejected_share": 0.2});
    let accepted = ingest(&svc, lenient, StatusCode::CREATED).await;
    assert_eq!(accepted.dataset.status, DatasetStatus::Accepted);
    assert_eq!(
        data_ready(&ready.next().await.1).data.dataset_id,
        accepted.dataset.id
    );

    ready.assert_quiet(QUIET).await;
    alerts.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn column_checks_reject_rows_and_training_reads_only_the_accepted_ones() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut ready = world.events("data.>").await;
    // Lines 2..=21 are good; line 22 has a bill of 900 mm, line 23 an island nobody knows.
    let csv = penguins_with(
        20,
        &[
            "Adelie,Torgersen,900,18.7,181,3750,male,2007",
            "Adelie,Atlantis,39.1,18.7,181,3750,male,2007",
        ],
    );
    let mut body = by_csv("checked", &csv);
    body["checks"] = json!({
        "columns": {
            "bill_length_mm": {"min": 25, "max": 70},
            "island": {"categories": ["Biscoe", "Dream", "Torgersen"]},
            "species": {"categories": ["Adelie", "Chinstrap", "Gentoo"]},
        },
        "max_rejected_share": 0.1,
    });
    let resp = ingest(&svc, body.clone(), StatusCode::CREATED).await;
    assert_eq!(
        (resp.dataset.row_count, resp.dataset.rejected_rows),
        (20, 2)
    );
    let lines: Vec<u64> = resp.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![22, 23]);
    assert!(
        resp.errors[0].message.contains("above the maximum 70"),
        "{:?}",
        resp.errors
    );
    assert!(
        resp.errors[1].message.contains("'Atlantis'"),
        "{:?}",
        resp.errors
    );
    assert_eq!(
        resp.report.columns.len(),
        8,
        "seven features and the target"
    );
    let bill = &resp.report.columns[1];
    assert_eq!(bill.name, "bill_length_mm");
    assert!(
        bill.max.unwrap() < 70.0,
        "the summary covers accepted rows only: {bill:?}"
    );

    // The file as sent is kept; training reads the accepted rows only.
    assert_eq!(read_uri(&resp.dataset.source_uri), csv.as_bytes());
    assert_ne!(resp.dataset.uri, resp.dataset.source_uri);
    let accepted = read_uri(&resp.dataset.uri);
    assert_eq!(accepted, penguins_with(20, &[]).as_bytes());
    let env = data_ready(&ready.next().await.1);
    assert_eq!(env.data.uri, resp.dataset.uri);
    assert_eq!(
        env.data.content_hash,
        sha256(csv.as_bytes()),
        "the digest is the file's"
    );
    let reparsed = petrel_ml::parse_csv(&accepted, &Schema::penguins()).unwrap();
    assert_eq!(reparsed.table.len(), 20);
    assert!(reparsed.errors.is_empty());

    // Replaying the request is the same dataset; the same bytes under other checks are not.
    let again = ingest(&svc, body.clone(), StatusCode::OK).await;
    assert_eq!(again.dataset.id, resp.dataset.id);
    body["checks"]["columns"]["bill_length_mm"]["max"] = json!(1000);
    let looser = ingest(&svc, body, StatusCode::CREATED).await;
    assert_eq!(looser.dataset.version, 2);
    assert_eq!(looser.dataset.rejected_rows, 1);
    ready.next().await;
    ready.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn the_same_bytes_under_a_corrected_schema_are_a_new_dataset() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut ready = world.events("data.>").await;
    let csv = penguins_with(30, &[]);
    let first = ingest(&svc, by_csv("penguins", &csv), StatusCode::CREATED).await;
    // The year was meant as a category.
    let mut corrected = by_csv("penguins", &csv);
    corrected["schema"]["features"][6]["kind"] = json!("categorical");
    let second = ingest(&svc, corrected.clone(), StatusCode::CREATED).await;
    assert!(second.created);
    assert_eq!(second.dataset.version, 2);
    assert_ne!(second.dataset.id, first.dataset.id);
    assert_eq!(second.dataset.content_hash, first.dataset.content_hash);
    assert_eq!(
        second.dataset.schema.features[6].kind,
        petrel_ml::ColumnKind::Categorical
    );
    let a = data_ready(&ready.next().await.1);
    let b = data_ready(&ready.next().await.1);
    assert_eq!(
        (a.data.dataset_id, b.data.dataset_id),
        (first.dataset.id, second.dataset.id)
    );
    assert_eq!(
        b.data.schema, second.dataset.schema,
        "announced with the corrected schema"
    );
    // Each pairing of bytes and schema is still one dataset.
    assert_eq!(
        ingest(&svc, corrected, StatusCode::OK).await.dataset.id,
        second.dataset.id
    );
    assert_eq!(
        ingest(&svc, by_csv("penguins", &csv), StatusCode::OK)
            .await
            .dataset
            .id,
        first.dataset.id
    );
    ready.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn a_generated_penguin_feed_is_reproducible_and_drift_moves_it() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let body =
        |spec: Value| json!({ "name": "feed", "schema": Schema::penguins(), "generate": spec });
    let plain = json!({ "generator": "penguins", "rows": 500, "seed": 3 });
    let first = ingest(&svc, body(plain.clone()), StatusCode::CREATED).await;
    assert_eq!(first.dataset.row_count, 500);
    assert_eq!(first.dataset.source, "generate:penguins");
    let local = petrel_ml::generate_penguins(&petrel_ml::PenguinSpec::new(500, 3)).unwrap();
    assert_eq!(read_uri(&first.dataset.uri), local.as_bytes());
    assert!(
        first.report.duplicates > 0,
        "resampling repeats rows: {:?}",
        first.report
    );
    assert_eq!(
        ingest(&svc, body(plain), StatusCode::OK).await.dataset.id,
        first.dataset.id
    );

    let drifted = ingest(
        &svc,
        body(json!({ "generator": "penguins", "rows": 500, "seed": 3, "drift": 2.0 })),
        StatusCode::CREATED,
    )
    .await;
    let mean = |r: &IngestResponse| r.report.columns[1].mean.unwrap();
    let moved = mean(&drifted) - mean(&first);
    assert!(
        (moved - 10.9).abs() < 0.2,
        "two standard deviations of bill length: {moved}"
    );
    let r = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(body(
                json!({ "generator": "penguins", "rows": 5, "drift": 50 }),
            )),
        )
        .await;
    assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        r.1["error"]["message"].as_str().unwrap().contains("drift"),
        "{}",
        r.1
    );
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn ingest_by_path_reads_only_inside_the_data_dir() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let mut events = world.events("data.>").await;
    let data_dir = data_dir(&world);
    let csv = penguins_csv();
    std::fs::write(data_dir.join("penguins.csv"), &csv).unwrap();
    std::fs::create_dir_all(data_dir.join("2024")).unwrap();
    let small = penguins_with(50, &[]);
    std::fs::write(data_dir.join("2024/small.csv"), &small).unwrap();
    // A valid file right next to the data directory, and a link pointing at it from inside.
    let outside = data_dir.parent().unwrap().join("outside.csv");
    std::fs::write(&outside, &small).unwrap();
    std::os::unix::fs::symlink(&outside, data_dir.join("link.csv")).unwrap();

    let resp = ingest(
        &svc,
        by_path("penguins", "penguins.csv"),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(resp.dataset.row_count, 344);
    assert_eq!(resp.dataset.content_hash, sha256(csv.as_bytes()));
    assert_eq!(read_uri(&resp.dataset.uri), csv.as_bytes());
    let env = data_ready(&events.next().await.1);
    assert_eq!(env.data.dataset_id, resp.dataset.id);

    let resp = ingest(
        &svc,
        by_path("small", "2024/small.csv"),
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(resp.dataset.row_count, 50);
    events.next().await;

    // The same file by path and by content is the same dataset.
    let same = ingest(&svc, by_csv("penguins", &csv), StatusCode::OK).await;
    assert!(!same.created);

    let outside_rel = format!("../{}", outside.file_name().unwrap().to_str().unwrap());
    for path in [
        "../../etc/passwd",
        "/etc/passwd",
        outside.to_str().unwrap(),
        outside_rel.as_str(),
        "link.csv",
        "2024/../../outside.csv",
        "missing.csv",
        "2024",
    ] {
        let r = svc
            .send(Method::POST, "/v1/datasets", Some(by_path("escape", path)))
            .await;
        assert_error(&r, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    }
    events.assert_quiet(QUIET).await;
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let world = TestEnv::new().await;
    let svc = start_ingest(&world).await;
    let (status, body) = svc.send(Method::GET, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "alive");
    let (status, body) = svc.send(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    svc.stop().await;
    world.cleanup().await;
}
