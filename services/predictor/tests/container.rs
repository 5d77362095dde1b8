//! Container mode (`petrel-predictor serve`) on a real penguins bundle, packaged as
//! `petrel models package` writes it: the health check before and after the model arrives,
//! every MLflow request format, the native body, the Open Inference Protocol, the errors, and
//! shutdown, both in process and as the real binary under SIGTERM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use petrel_api::predictor::PredictResponse;
use petrel_ml::{BUNDLE_FILE, MANIFEST_FILE, PackageManifest};
use petrel_predictor::container::{ContainerApp, ContainerConfig};
use petrel_testkit::{SPECIES, Service, bundle, eventually, send};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A fresh scratch directory for one test.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("petrel-container-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes the penguins bundle and its manifest into `dir` as a package, version `version`.
/// The bundle goes last and by rename, so a server watching `dir` never reads half of it.
fn write_package(dir: &Path, version: i32) -> PackageManifest {
    write_bundle(dir, "penguins", bundle(), version)
}

/// [`write_package`] of any bundle, as model `name`.
fn write_bundle(
    dir: &Path,
    name: &str,
    bundle: &petrel_ml::ModelBundle,
    version: i32,
) -> PackageManifest {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = bundle.to_bytes().unwrap();
    let manifest = PackageManifest {
        name: name.into(),
        version,
        artifact_uri: "file:///artifacts/models/penguins/job/bundle.json".into(),
        sha256: petrel_store::content_hash(&bytes),
        bundle_format_version: petrel_ml::BUNDLE_FORMAT_VERSION,
    };
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let tmp = dir.join(".bundle.json.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dir.join(BUNDLE_FILE)).unwrap();
    manifest
}

async fn start(dir: &Path, extra: &[&str]) -> Service {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model-dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let cancel = CancellationToken::new();
    let app = ContainerApp::build(ContainerConfig::parse_from(args), cancel.clone())
        .await
        .expect("the container starts");
    Service::spawn("the container", app.port(), cancel, app.run())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

async fn post(
    http: &reqwest::Client,
    c: &Service,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    send(
        http.post(c.url(path))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

/// The classes of an MLflow answer, checking each row's shape on the way.
fn classes(body: &Value) -> Vec<String> {
    body["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions: {body}"))
        .iter()
        .map(|p| {
            let probs = p["probabilities"].as_object().unwrap();
            assert_eq!(probs.len(), SPECIES.len(), "{p}");
            let class = p["class"].as_str().unwrap();
            assert_eq!(p["confidence"], probs[class], "{p}");
            assert!(p["inference_id"].as_str().is_some_and(|s| !s.is_empty()));
            class.to_owned()
        })
        .collect()
}

#[track_caller]
fn assert_mlflow_error(got: &(u16, Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error_code"], code, "{}", got.1);
    let message = got.1["message"].as_str().unwrap();
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}

#[tokio::test]
async fn ping_waits_for_the_model_then_serves_it() {
    let root = scratch();
    let dir = root.join("model");
    let c = start(&dir, &[]).await;
    let http = reqwest::Client::new();
    let (status, body) = send(http.get(c.url("/ping"))).await;
    assert_eq!((status, &body["status"]), (503, &json!("loading")));
    let early = post(
        &http,
        &c,
        "/invocations",
        "application/json",
        fixture("split.json"),
    )
    .await;
    assert_mlflow_error(&early, 503, "TEMPORARILY_UNAVAILABLE", "still loading");
    let (status, _) = send(http.get(c.url("/v2/health/ready"))).await;
    assert_eq!(status, 503);

    write_package(&dir, 7);
    let body = eventually("the container to load the late model", || async {
        let (status, body) = send(http.get(c.url("/ping"))).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["model_name"], "penguins");
    assert_eq!(body["model_version"], 7);
    let (status, health) = send(http.get(c.url("/health"))).await;
    assert_eq!((status, &health["status"]), (200, &json!("ready")));
    let (_, version) = send(http.get(c.url("/version"))).await;
    assert_eq!(version["petrel_version"], env!("CARGO_PKG_VERSION"));
    let served = post(&http, &c, "/invocations", "text/csv", fixture("frame.csv")).await;
    assert_eq!(served.0, 200, "{}", served.1);
    c.stop().await;
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test]
async fn every_mlflow_format_and_the_native_body_are_answered() {
    let dir = scratch();
    write_package(&dir, 3);
    let c = start(&dir, &[]).await;
    let http = reqwest::Client::new();
    let species: Vec<String> = serde_json::from_slice(&fixture("species.json")).unwrap();

    let mut answers = Vec::new();
    for (content_type, file) in [
        ("application/json", "split.json"),
        ("application/json", "records.json"),
        ("application/json", "inputs-columns.json"),
        ("application/json", "instances-records.json"),
        ("application/json; format=pandas-split", "raw-split.json"),
        (
            "application/json; format=pandas-records",
            "raw-records.json",
        ),
        ("text/csv", "frame.csv"),
        ("text/csv; charset=utf-8", "frame.csv"),
    ] {
        let (status, body) = post(&http, &c, "/invocations", content_type, fixture(file)).await;
        assert_eq!(status, 200, "{content_type} {file}: {body}");
        answers.push((file, classes(&body)));
    }
    // Every format means the same rows, so the same answers; and the model is right about
    // (nearly) all of them, the all-missing row aside.
    for (file, got) in &answers {
        assert_eq!(got, &answers[0].1, "{file}");
    }
    let right = answers[0]
        .1
        .iter()
        .zip(&species)
        .filter(|(a, b)| a == b)
        .count();
    assert!(right >= 5, "{:?} vs {species:?}", answers[0].1);

    // The native body answers as /v1/predict does, keeping the caller's ids.
    let native = json!({"rows": [
        {"inference_id": "n-1", "features": {"island": "Biscoe", "bill_length_mm": 47.5,
            "bill_depth_mm": 15.0, "flipper_length_mm": 218, "body_mass_g": 4950,
            "sex": "female", "year": 2008}},
        {"features": {"island": "Dream"}}
    ]});
    let (status, body) = send(http.post(c.url("/invocations")).json(&native)).await;
    assert_eq!(status, 200, "{body}");
    let resp: PredictResponse = serde_json::from_value(body).unwrap();
    assert_eq!(resp.predictions.len(), 2);
    assert_eq!(resp.predictions[0].inference_id, "n-1");
    assert_eq!(resp.predictions[0].class, "Gentoo");
    assert_eq!(resp.predictions[0].model_name, "penguins");
    assert_eq!(resp.predictions[0].model_version, 3);
    c.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn bad_requests_get_clear_errors_in_each_protocols_shape() {
    let dir = scratch();
    write_package(&dir, 1);
    let c = start(&dir, &["--max-rows", "3", "--max-body-bytes", "4096"]).await;
    let http = reqwest::Client::new();
    let json = "application/json";
    let body = |v: Value| v.to_string().into_bytes();

    let got = post(&http, &c, "/invocations", "text/plain", b"x".to_vec()).await;
    assert_mlflow_error(&got, 415, "BAD_REQUEST", "application/json and text/csv");
    let got = post(&http, &c, "/invocations", json, b"{\"inputs\": [".to_vec()).await;
    assert_mlflow_error(&got, 400, "BAD_REQUEST", "not valid JSON");
    let got = post(&http, &c, "/invocations", json, body(json!({"data": []}))).await;
    assert_mlflow_error(&got, 400, "BAD_REQUEST", "exactly one of the input fields");
    let got = post(
        &http,
        &c,
        "/invocations",
        json,
        body(json!({"dataframe_records": [{"island": "Dream"}, {"islnd": "Dream"}]})),
    )
    .await;
    assert_mlflow_error(
        &got,
        422,
        "INVALID_PARAMETER_VALUE",
        "dataframe_records[1]: unknown column 'islnd'",
    );
    let got = post(
        &http,
        &c,
        "/invocations",
        "text/csv",
        b"island,body_mass_g\nDream,3000\nDream,heavy\n".to_vec(),
    )
    .await;
    assert_mlflow_error(
        &got,
        422,
        "INVALID_PARAMETER_VALUE",
        "CSV row 2: invalid value for column 'body_mass_g': 'heavy' is not a number",
    );
    let got = post(
        &http,
        &c,
        "/invocations",
        json,
        body(json!({"instances": [{}, {}, {}, {}]})),
    )
    .await;
    assert_mlflow_error(
        &got,
        422,
        "INVALID_PARAMETER_VALUE",
        "4 rows in one request; the limit is 3",
    );
    let big = body(json!({"instances": [{"island": "x".repeat(5000)}]}));
    let got = post(&http, &c, "/invocations", json, big).await;
    assert_mlflow_error(
        &got,
        413,
        "REQUEST_LIMIT_EXCEEDED",
        "larger than the limit of 4096 bytes",
    );

    // Native bodies keep Petrel's error shape.
    let got = send(
        http.post(c.url("/invocations"))
            .json(&json!({"rows": [{"features": {"island": "Dream", "sex": 3.5, "year": []}}]})),
    )
    .await;
    assert_eq!(got.0, 422, "{}", got.1);
    assert_eq!(got.1["error"]["code"], "invalid");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("rows[0]: invalid value for column 'year'"),
        "{message}"
    );
    let got = send(
        http.post(c.url("/invocations"))
            .json(&json!({"rows": [{"feature": {}}]})),
    )
    .await;
    assert_eq!(got.0, 400, "{}", got.1);
    assert_eq!(got.1["error"]["code"], "bad_request", "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rows[0] has unknown field \"feature\"")
    );

    // V2: `{"error": ...}`.
    let got = post(
        &http,
        &c,
        "/v2/models/penguins/infer",
        json,
        body(json!({"inputs": [{"name": "weight", "shape": [1], "datatype": "FP32", "data": [1.0]}]})),
    )
    .await;
    assert_eq!(got.0, 400, "{}", got.1);
    assert!(
        got.1["error"]
            .as_str()
            .unwrap()
            .contains("\"weight\", which is not a column")
    );
    let (status, body) = send(http.get(c.url("/v2/models/otters"))).await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("this server serves \"penguins\"")
    );
    let (status, _) = send(http.get(c.url("/v2/models/penguins/versions/9"))).await;
    assert_eq!(status, 404);
    c.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_open_inference_protocol_is_served() {
    let dir = scratch();
    write_package(&dir, 2);
    let c = start(&dir, &[]).await;
    let http = reqwest::Client::new();
    let (status, meta) = send(http.get(c.url("/v2/models/penguins"))).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["versions"], json!(["2"]));
    assert_eq!(meta["inputs"][0]["name"], "island");
    let (status, _) = send(http.get(c.url("/v2/models/penguins/versions/2"))).await;
    assert_eq!(status, 200);
    let (status, ready) = send(http.get(c.url("/v2/models/penguins/ready"))).await;
    assert_eq!((status, &ready["ready"]), (200, &json!(true)));

    let (status, body) = post(
        &http,
        &c,
        "/v2/models/penguins/infer",
        "application/json",
        fixture("v2-columns.json"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "fixture-1");
    assert_eq!(body["model_version"], "2");
    assert_eq!(body["outputs"][0]["name"], "class");
    assert_eq!(body["outputs"][0]["shape"], json!([6]));
    assert_eq!(body["outputs"][0]["data"][4], "Gentoo");
    assert_eq!(body["outputs"][1]["shape"], json!([6, 3]));

    // One [n, k] tensor in schema order, only the outputs asked for.
    let matrix = json!({
        "inputs": [{"name": "input-0", "shape": [1, 7], "datatype": "BYTES",
                    "data": ["Biscoe", "47.5", "15.0", "218", "4950", "female", "2008"]}],
        "outputs": [{"name": "class"}]
    });
    let (status, body) = send(
        http.post(c.url("/v2/models/penguins/versions/2/infer"))
            .json(&matrix),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"],
        json!([{"name": "class", "shape": [1], "datatype": "BYTES", "data": ["Gentoo"]}])
    );
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    c.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A text model in the container: raw review text in MLflow's dataframe formats, in CSV, and
/// as a `BYTES` tensor of the Open Inference Protocol, all answered alike.
#[tokio::test]
async fn a_text_model_takes_raw_text_in_every_protocol() {
    let dir = scratch();
    write_bundle(&dir, "reviews", petrel_testkit::reviews_bundle(), 1);
    let c = start(&dir, &[]).await;
    let http = reqwest::Client::new();
    let good = "the battery is really excellent, would recommend";
    let bad = "the screen was cracked. the support is useless, want a refund";
    let split = json!({"dataframe_split": {"columns": ["product", "review"],
        "data": [["phone", good], ["kettle", bad]]}});
    let (status, body) = send(http.post(c.url("/invocations")).json(&split)).await;
    assert_eq!(status, 200, "{body}");
    let answer: Vec<&str> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["class"].as_str().unwrap())
        .collect();
    assert_eq!(answer, ["positive", "negative"], "{body}");
    let frame = format!("product,review\nphone,\"{good}\"\nkettle,\"{bad}\"\n");
    let (status, body) = post(&http, &c, "/invocations", "text/csv", frame.into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][1]["class"], "negative", "{body}");

    let (status, meta) = send(http.get(c.url("/v2/models/reviews"))).await;
    assert_eq!(status, 200, "{meta}");
    assert_eq!(
        meta["inputs"][1],
        json!({"name": "review", "datatype": "BYTES", "shape": [-1]})
    );
    let tensors = json!({"inputs": [
        {"name": "product", "shape": [2], "datatype": "BYTES", "data": ["phone", "kettle"]},
        {"name": "review", "shape": [2], "datatype": "BYTES", "data": [good, bad]}]});
    let (status, body) = send(http.post(c.url("/v2/models/reviews/infer")).json(&tensors)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["outputs"][0]["data"],
        json!(["positive", "negative"]),
        "{body}"
    );
    // A text column given a list is refused by name.
    let wrong = json!({"dataframe_records": [{"product": "phone", "review": ["a", "b"]}]});
    let (status, body) = send(http.post(c.url("/invocations")).json(&wrong)).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("review"),
        "{body}"
    );
    c.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_damaged_package_stops_the_server_with_a_clear_error() {
    let dir = scratch();
    write_package(&dir, 1);
    let mut manifest: PackageManifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    manifest.sha256 = "sha256:00".into();
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let config = ContainerConfig::parse_from([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model-dir",
        dir.to_str().unwrap(),
    ]);
    let err = ContainerApp::build(config.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("the package is damaged or mixed up"),
        "{err:#}"
    );

    std::fs::remove_file(dir.join(MANIFEST_FILE)).unwrap();
    std::fs::write(dir.join(BUNDLE_FILE), b"{\"format_version\": 1}").unwrap();
    let err = ContainerApp::build(config, CancellationToken::new())
        .await
        .unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("cannot load the model in") && err.contains("malformed model bundle"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// The real binary: `serve` is a subcommand, environment variables configure it, and SIGTERM
/// ends it with status 0.
#[tokio::test]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = scratch();
    write_package(&dir, 4);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_petrel-predictor"))
        .arg("serve")
        .env("PETREL_CONTAINER_LISTEN", format!("127.0.0.1:{port}"))
        .env("PETREL_MODEL_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the binary to answer /ping", || async {
        let resp = http.get(format!("{base}/ping")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    let (status, body) = send(
        http.post(format!("{base}/invocations"))
            .header("content-type", "application/json")
            .body(fixture("records.json")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(classes(&body).len(), 6);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the binary exits within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    std::fs::remove_dir_all(dir).unwrap();
}
