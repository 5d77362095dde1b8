//! Ingest's sources beyond inline text: uploads that stream (and stop at their limit), Parquet
//! files, and S3 objects, against the real Postgres, NATS and an S3-compatible server
//! (SeaweedFS).

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{
    S3_ACCESS_KEY, S3_SECRET_KEY, SeaweedFs, Service, TestEnv, assert_error, data_dir,
    penguins_csv, start_ingest_with,
};
use petrel_api::ingest::{DatasetStatus, IngestResponse, ValidationReport};
use petrel_events::Envelope;
use petrel_events::payloads::DataReady;
use petrel_ml::Schema;
use petrel_store::{ArtifactStore, S3Options, S3Store};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn spec(name: &str) -> Value {
    json!({ "name": name, "schema": Schema::penguins() })
}

/// Posts a multipart form to the upload route.
async fn upload(svc: &Service, form: Form) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .post(svc.url("/v1/datasets/upload"))
        .multipart(form)
        .send()
        .await
        .expect("ingest answers");
    let status = resp.status();
    let body = resp.json().await.expect("a JSON answer");
    (status, body)
}

fn form(spec: &Value, file_name: &str, bytes: impl Into<Bytes>) -> Form {
    Form::new()
        .part(
            "spec",
            Part::text(spec.to_string())
                .mime_str("application/json")
                .unwrap(),
        )
        .part(
            "file",
            Part::stream(bytes.into()).file_name(file_name.to_owned()),
        )
}

/// The files waiting in the spool directory.
fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn ok(got: (StatusCode, Value), expect: StatusCode) -> IngestResponse {
    assert_eq!(got.0, expect, "{}", got.1);
    serde_json::from_value(got.1).unwrap()
}

/// The bytes behind a `file://` URI.
fn read_uri(uri: &str) -> Vec<u8> {
    std::fs::read(uri.strip_prefix("file://").expect("a file:// URI")).unwrap()
}

#[tokio::test]
async fn an_upload_streams_to_a_dataset_and_stops_at_the_limit_leaving_nothing() {
    let world = TestEnv::new().await;
    let spool = world.dir.join("spool");
    let svc = start_ingest_with(
        &world,
        &[
            "--max-upload-mb",
            "1",
            "--spool-dir",
            spool.to_str().unwrap(),
        ],
    )
    .await;
    let mut ready = world.events("data.ready").await;
    let csv = penguins_csv();

    let created = ok(
        upload(&svc, form(&spec("penguins"), "penguins.csv", csv.clone())).await,
        StatusCode::CREATED,
    );
    let d = &created.dataset;
    assert_eq!(d.source, "upload:penguins.csv");
    assert_eq!(d.content_hash, sha256(csv.as_bytes()));
    assert_eq!(d.row_count, created.report.accepted);
    assert!(d.row_count > 300, "{}", d.row_count);
    assert_eq!(read_uri(&d.source_uri), csv.as_bytes());
    let (_, bytes) = ready.next().await;
    let event: Envelope<DataReady> = Envelope::from_bytes(&bytes).unwrap();
    assert_eq!(event.data.dataset_id, d.id);
    assert_eq!(spooled(&spool), 0, "the spooled upload is gone once stored");

    // The same file again is the same dataset.
    let again = ok(
        upload(&svc, form(&spec("penguins"), "penguins.csv", csv.clone())).await,
        StatusCode::OK,
    );
    assert!(!again.created);
    assert_eq!(again.dataset.id, d.id);

    // Past the limit: a body that says its length is refused before it is read, and one that
    // does not (chunked) is cut off while it streams. Either way nothing is kept.
    let big = "x".repeat(3 << 20);
    let declared = upload(&svc, form(&spec("big"), "big.csv", big.clone())).await;
    assert_error(
        &declared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(
        declared.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 MiB"),
        "{}",
        declared.1
    );
    let chunks = futures::stream::iter(
        (0..3).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1 << 20]))),
    );
    let streamed = Form::new()
        .part("spec", Part::text(spec("big").to_string()))
        .part(
            "file",
            Part::stream(reqwest::Body::wrap_stream(chunks)).file_name("big.csv"),
        );
    let cut = upload(&svc, streamed).await;
    assert_error(&cut, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(spooled(&spool), 0, "a refused upload leaves nothing behind");
    let (_, list) = svc.send(Method::GET, "/v1/datasets", None).await;
    assert_eq!(list["datasets"].as_array().unwrap().len(), 1, "{list}");

    // A body that is not a multipart upload, or whose parts are wrong, says what to send.
    let (status, v) = svc
        .send(Method::POST, "/v1/datasets/upload", Some(spec("x")))
        .await;
    assert_error(
        &(status, v.clone()),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("curl -F"));
    let file_first = Form::new()
        .part("file", Part::text(csv.clone()).file_name("penguins.csv"))
        .part("spec", Part::text(spec("x").to_string()));
    let got = upload(&svc, file_first).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first part must be `spec`")
    );
    let mut with_csv = spec("x");
    with_csv["csv"] = json!("a,b\n");
    let got = upload(&svc, form(&with_csv, "p.csv", csv.clone())).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown field `csv`") && !message.contains("UploadSpec"),
        "{message}"
    );
    let got = upload(&svc, form(&spec(".."), "p.csv", csv.clone())).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    let spec_only = Form::new().part("spec", Part::text(spec("x").to_string()));
    let got = upload(&svc, spec_only).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("file part is missing")
    );

    // A file that fails validation is kept as rejected, as any other source's would be.
    let garbage = upload(
        &svc,
        form(&spec("garbage"), "g.csv", "not,a,penguin\n1,2,3\n"),
    )
    .await;
    assert_error(&garbage, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    assert_eq!(garbage.1["dataset"]["status"], "rejected");
    assert_eq!(spooled(&spool), 0);
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn parquet_files_are_validated_row_by_row_like_the_csv_they_hold() {
    let world = TestEnv::new().await;
    let svc = start_ingest_with(&world, &[]).await;
    let csv = penguins_csv();
    let (status, v) = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(json!({ "name": "from-csv", "schema": Schema::penguins(), "csv": csv })),
        )
        .await;
    let from_csv = ok((status, v), StatusCode::CREATED);

    let snappy = std::fs::read(fixture("penguins-snappy.parquet")).unwrap();
    let parquet = ok(
        upload(
            &svc,
            form(&spec("from-parquet"), "penguins.parquet", snappy.clone()),
        )
        .await,
        StatusCode::CREATED,
    );
    let d = &parquet.dataset;
    assert_eq!(d.content_hash, sha256(&snappy), "the digest is the file's");
    assert!(d.source_uri.ends_with(".parquet"), "{}", d.source_uri);
    assert_eq!(read_uri(&d.source_uri), snappy, "the original is kept");
    assert!(d.uri.ends_with(".csv"), "training reads CSV: {}", d.uri);
    assert_eq!(d.row_count, from_csv.dataset.row_count);
    let same = |a: &ValidationReport, b: &ValidationReport| {
        (a.rows, a.accepted, a.rejected, &a.columns) == (b.rows, b.accepted, b.rejected, &b.columns)
    };
    assert!(
        same(&parquet.report, &from_csv.report),
        "the Parquet file's report is the CSV's:\n{:?}\n{:?}",
        parquet.report,
        from_csv.report
    );
    let converted = String::from_utf8(read_uri(&d.uri)).unwrap();
    assert_eq!(converted.lines().count(), csv.lines().count());
    assert_eq!(
        converted.lines().nth(1),
        csv.lines().nth(1),
        "values print as they were written"
    );

    // Zstandard, by path; with a row rule, training reads the accepted rows only.
    std::fs::copy(
        fixture("penguins-zstd.parquet"),
        data_dir(&world).join("penguins.parquet"),
    )
    .unwrap();
    let (status, v) = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(json!({
                "name": "ruled",
                "schema": Schema::penguins(),
                "path": "penguins.parquet",
                "checks": {
                    "columns": {"bill_length_mm": {"min": 35}},
                    "max_rejected_share": 0.5,
                },
            })),
        )
        .await;
    let ruled = ok((status, v), StatusCode::CREATED);
    assert_eq!(ruled.dataset.source, "path:penguins.parquet");
    assert!(ruled.report.rejected > 0);
    assert!(
        ruled.dataset.uri.ends_with(".accepted.csv"),
        "{}",
        ruled.dataset.uri
    );
    let accepted = String::from_utf8(read_uri(&ruled.dataset.uri)).unwrap();
    assert_eq!(
        accepted.lines().count() as u64,
        ruled.report.accepted + 1,
        "the header and the accepted rows"
    );

    // A nested table cannot be a dataset: it is rejected with the reason.
    let nested = std::fs::read(fixture("nested.parquet")).unwrap();
    let got = upload(&svc, form(&spec("nested"), "nested.parquet", nested)).await;
    assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    let report: ValidationReport = serde_json::from_value(got.1["report"].clone()).unwrap();
    assert!(
        report.problems[0].contains("column \"bill\" is nested"),
        "{:?}",
        report.problems
    );
    svc.stop().await;
    world.cleanup().await;
}

#[tokio::test]
async fn s3_objects_are_ingested_with_the_stores_settings() {
    let server = SeaweedFs::start(&["landing", "artifacts"]).await;
    let options = S3Options {
        endpoint: Some(server.endpoint.clone()),
        force_path_style: true,
        region: Some("us-east-1".to_owned()),
        credentials: Some((S3_ACCESS_KEY.to_owned(), S3_SECRET_KEY.to_owned())),
    };
    let landing = S3Store::connect("s3://landing", &options).await.unwrap();
    let csv = penguins_csv();
    landing
        .put("exports/penguins.csv", Bytes::from(csv.clone()))
        .await
        .unwrap();
    let parquet = std::fs::read(fixture("penguins-snappy.parquet")).unwrap();
    landing
        .put("exports/penguins.parquet", Bytes::from(parquet))
        .await
        .unwrap();

    let world = TestEnv::new().await;
    // Datasets are stored in S3 too: the whole path runs on S3.
    let svc = common::start_ingest_on_s3(&world, &server, "s3://artifacts/petrel", &[]).await;

    let by_uri =
        |name: &str, uri: &str| json!({ "name": name, "schema": Schema::penguins(), "uri": uri });
    let (status, v) = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(by_uri("penguins", "s3://landing/exports/penguins.csv")),
        )
        .await;
    let got = ok((status, v), StatusCode::CREATED);
    let d = &got.dataset;
    assert_eq!(d.source, "uri:s3://landing/exports/penguins.csv");
    assert_eq!(d.content_hash, sha256(csv.as_bytes()));
    assert!(
        d.uri
            .starts_with("s3://artifacts/petrel/datasets/penguins/"),
        "{}",
        d.uri
    );
    let artifacts = S3Store::connect("s3://artifacts/petrel", &options)
        .await
        .unwrap();
    assert_eq!(artifacts.get(&d.uri).await.unwrap(), csv.as_bytes());

    let (status, v) = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(by_uri(
                "penguins-pq",
                "s3://landing/exports/penguins.parquet",
            )),
        )
        .await;
    let pq = ok((status, v), StatusCode::CREATED);
    assert_eq!(pq.dataset.row_count, d.row_count);
    assert_eq!(pq.dataset.status, DatasetStatus::Accepted);

    let missing = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(by_uri("gone", "s3://landing/exports/nothing.csv")),
        )
        .await;
    assert_error(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    assert!(
        missing.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("there is no object s3://landing/exports/nothing.csv")
    );
    let no_bucket = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(by_uri("gone", "s3://no-such-bucket/penguins.csv")),
        )
        .await;
    assert!(
        no_bucket.0 == StatusCode::UNPROCESSABLE_ENTITY || no_bucket.0 == StatusCode::BAD_GATEWAY,
        "{no_bucket:?}"
    );
    let not_s3 = svc
        .send(
            Method::POST,
            "/v1/datasets",
            Some(by_uri("gone", "https://example.com/penguins.csv")),
        )
        .await;
    assert_error(&not_s3, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    svc.stop().await;
    world.cleanup().await;
}
