//! The `sagemaker` backend end to end: the real predictor binary (so credentials come from the
//! AWS default chain, as in production) with `--backend sagemaker`, pointed at a stand-in for
//! the SageMaker runtime API on loopback. The stand-in records what the SDK sends (the SigV4
//! signature's scope, the inference id header) and forwards the body to a real container-mode
//! predictor (`petrel-predictor serve`) with a real penguins bundle, so the answers are real
//! predictions; other endpoint names answer as SageMaker fails: a model error, throttling, a
//! slow model, an unknown endpoint.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use common::*;
use petrel_api::predictor::PredictResponse;
use petrel_events::payloads::PredictionsLogged;
use petrel_ml::{BUNDLE_FILE, MANIFEST_FILE, PackageManifest};
use petrel_predictor::container::{ContainerApp, ContainerConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const ACCESS_KEY: &str = "AKIDPETRELTEST";
const SECRET_KEY: &str = "petrel-test-secret-key-not-a-real-one";
const REGION: &str = "eu-west-1";
/// The account SageMaker names in its own messages; clients should never see it.
const ACCOUNT: &str = "123456789012";

/// One `InvokeEndpoint` call as the stand-in received it.
#[derive(Clone, Debug)]
struct Seen {
    endpoint: String,
    headers: HeaderMap,
    body: Value,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Clone)]
struct FakeState {
    http: reqwest::Client,
    /// A container serving the penguins package.
    model: String,
    /// A container whose package has not arrived: it answers 503, as a broken model would.
    loading: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A stand-in for the SageMaker runtime API: `POST /endpoints/{name}/invocations`.
struct FakeSageMaker {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeSageMaker {
    async fn start(model: &Service, loading: &Service) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            http: reqwest::Client::new(),
            model: model.url("/invocations"),
            loading: loading.url("/invocations"),
            seen: seen.clone(),
        };
        let router = axum::Router::new()
            .route("/endpoints/{name}/invocations", axum::routing::post(invoke))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Ends with the test's runtime.
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, seen }
    }

    /// The calls made to `endpoint` so far.
    fn calls(&self, endpoint: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.endpoint == endpoint)
            .cloned()
            .collect()
    }
}

async fn invoke(
    State(s): State<FakeState>,
    UrlPath(endpoint): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.seen.lock().unwrap().push(Seen {
        endpoint: endpoint.clone(),
        headers: headers.clone(),
        body: parsed,
    });
    match endpoint.as_str() {
        "penguins-prod" => forward(&s, &s.model, &headers, body).await,
        "penguins-loading" => forward(&s, &s.loading, &headers, body).await,
        "penguins-throttled" => aws_error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            json!({"message": "Rate exceeded"}),
        ),
        "penguins-slow" => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            forward(&s, &s.model, &headers, body).await
        }
        other => aws_error(
            StatusCode::BAD_REQUEST,
            "ValidationError",
            json!({"message": format!("Endpoint {other} of account {ACCOUNT} not found.")}),
        ),
    }
}

/// An error as SageMaker sends it: the status, the error type header and a JSON body.
fn aws_error(status: StatusCode, error_type: &str, body: Value) -> Response {
    (
        status,
        [
            ("x-amzn-errortype", error_type.to_owned()),
            ("content-type", "application/json".to_owned()),
        ],
        body.to_string(),
    )
        .into_response()
}

/// What SageMaker does with a request to a healthy endpoint: hand the body to the container's
/// `/invocations`, and return its answer, or, if the container failed, a 424 `ModelError`
/// carrying the container's status and body.
async fn forward(s: &FakeState, container: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let resp = s
        .http
        .post(container)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    if status == 200 {
        return (
            StatusCode::OK,
            [
                ("content-type", "application/json"),
                ("x-amzn-invoked-production-variant", "AllTraffic"),
            ],
            text,
        )
            .into_response();
    }
    let kind = if status < 500 { "client" } else { "server" };
    aws_error(
        StatusCode::FAILED_DEPENDENCY,
        "ModelError",
        json!({
            "ErrorCode": format!("{}_ERROR_FROM_MODEL", kind.to_uppercase()),
            "LogStreamArn": format!(
                "arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/penguins"
            ),
            "Message": format!(
                "Received {kind} error ({status}) from primary with message \"{text}\". See \
                 https://{REGION}.console.aws.amazon.com/cloudwatch/home in account {ACCOUNT} \
                 for more information."
            ),
            "OriginalMessage": text,
            "OriginalStatusCode": status,
        }),
    )
}

/// Writes the penguins bundle as `petrel models package` packages it, as version 1, which is
/// what the registry serves in these tests.
fn write_package(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let bytes = bundle().to_bytes().unwrap();
    let manifest = PackageManifest {
        name: "penguins".into(),
        version: 1,
        artifact_uri: "file:///artifacts/models/penguins/v1/bundle.json".into(),
        sha256: petrel_store::content_hash(&bytes),
        bundle_format_version: petrel_ml::BUNDLE_FORMAT_VERSION,
    };
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join(BUNDLE_FILE), bytes).unwrap();
}

async fn start_container(dir: &Path) -> Service {
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model-dir",
        dir.to_str().unwrap(),
    ];
    let cancel = CancellationToken::new();
    let app = ContainerApp::build(ContainerConfig::parse_from(args), cancel.clone())
        .await
        .unwrap();
    Service::spawn("a container", app.port(), cancel, app.run())
}

/// A registry serving penguins v1, the two containers and the SageMaker stand-in.
struct World {
    env: TestEnv,
    registry: Service,
    containers: Vec<Service>,
    sagemaker: FakeSageMaker,
}

impl World {
    async fn start() -> Self {
        let env = TestEnv::new().await;
        let registry = start_registry(&env).await;
        let v1 = register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
        assert_eq!(v1.version, 1);
        write_package(&env.dir.join("model"));
        let model = start_container(&env.dir.join("model")).await;
        let loading = start_container(&env.dir.join("no-model-yet")).await;
        let sagemaker = FakeSageMaker::start(&model, &loading).await;
        Self {
            env,
            registry,
            containers: vec![model, loading],
            sagemaker,
        }
    }

    async fn stop(self) {
        for c in self.containers {
            c.stop().await;
        }
        self.registry.stop().await;
        self.env.cleanup().await;
    }
}

/// The predictor binary, killed when dropped.
struct Predictor {
    child: tokio::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl Predictor {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the predictor process finds AWS credentials.
#[derive(Clone, Copy, PartialEq)]
enum Credentials {
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` in its environment.
    Environment,
    /// None anywhere in the chain.
    Missing,
}

/// Starts the predictor binary on `endpoint` at `url` (the stand-in's, unless given), with
/// `extra` options, and waits until it serves the model.
async fn start_predictor_process(
    world: &World,
    endpoint: &str,
    url: Option<&str>,
    credentials: Credentials,
    extra: &[&str],
) -> Predictor {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = url.unwrap_or(&world.sagemaker.url);
    let mut options = vec![
        "--backend",
        "sagemaker",
        "--sagemaker-endpoint",
        endpoint,
        "--sagemaker-endpoint-url",
        url,
        "--sagemaker-region",
        REGION,
    ];
    options.extend_from_slice(extra);
    let mut args = predictor_args(&world.env, &world.registry, &options);
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1] = listen.clone();
    let log = world
        .env
        .dir
        .join(format!("predictor-{endpoint}-{port}.log"));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_petrel-predictor"));
    cmd.args(&args[1..])
        .env("RUST_LOG", "info")
        // Nothing from this machine's AWS setup: no profile files, no instance metadata.
        .env(
            "AWS_CONFIG_FILE",
            world.env.dir.join("no-aws-config").as_os_str(),
        )
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            world.env.dir.join("no-aws-credentials").as_os_str(),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true);
    if credentials == Credentials::Environment {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    }
    let child = cmd.spawn().unwrap();
    let p = Predictor {
        child,
        base: format!("http://{listen}"),
        log,
    };
    let http = reqwest::Client::new();
    eventually(
        &format!(
            "the predictor for {endpoint} to serve (log: {})",
            p.log.display()
        ),
        || {
            let (http, url) = (http.clone(), p.url("/v1/model"));
            async move {
                let r = http.get(url).send().await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
    p
}

fn rows_request(rows: &[(Option<&str>, &serde_json::Map<String, Value>)]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|(id, features)| match id {
            Some(id) => json!({ "inference_id": id, "features": features }),
            None => json!({ "features": features }),
        })
        .collect();
    json!({ "rows": rows })
}

/// The SigV4 credential scope of a request: access key, date, region, service.
fn credential_scope(seen: &Seen) -> Vec<String> {
    let auth = seen
        .header("authorization")
        .unwrap_or_else(|| panic!("the call is not signed: {:?}", seen.headers));
    assert!(auth.starts_with("AWS4-HMAC-SHA256 "), "{auth}");
    let credential = auth
        .split_once("Credential=")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or_else(|| panic!("no credential in {auth}"));
    assert!(auth.contains("Signature="), "{auth}");
    credential.split('/').map(str::to_owned).collect()
}

/// The logged predictions' ids, in the stream's order.
async fn logged_ids(env: &TestEnv) -> Vec<String> {
    let bus = env.bus().await;
    stored_events::<PredictionsLogged>(&bus, "predictions.logged")
        .await
        .into_iter()
        .flat_map(|e| e.data.predictions.into_iter().map(|p| p.inference_id))
        .collect()
}

#[tokio::test]
async fn predicts_through_a_sagemaker_endpoint_as_it_does_locally() {
    let world = World::start().await;
    let sagemaker =
        start_predictor_process(&world, "penguins-prod", None, Credentials::Environment, &[]).await;
    let local = start_predictor(&world.env, &world.registry).await;
    let http = reqwest::Client::new();
    let penguins = penguin_rows();
    let picks = [0usize, 160, 250];

    // The same rows through both backends: the same answers, in the same shape.
    let rows =
        |ids: [Option<&'static str>; 3]| -> Vec<(Option<&'static str>, &serde_json::Map<_, _>)> {
            ids.into_iter()
                .zip(picks)
                .map(|(id, i)| (id, &penguins[i].1))
                .collect()
        };
    let (status, remote) = send(
        http.post(sagemaker.url("/v1/predict"))
            .json(&rows_request(&rows([Some("sm-a"), None, Some("sm-b")]))),
    )
    .await;
    assert_eq!(status, 200, "{remote}");
    let (status, here) = send(
        http.post(local.url("/v1/predict"))
            .json(&rows_request(&rows([Some("lo-a"), None, Some("lo-b")]))),
    )
    .await;
    assert_eq!(status, 200, "{here}");
    let strip_ids = |v: &Value| -> Value {
        let mut v = v.clone();
        for p in v["predictions"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("inference_id");
        }
        v
    };
    assert_eq!(strip_ids(&remote), strip_ids(&here));
    let remote: PredictResponse = serde_json::from_value(remote).unwrap();
    assert_eq!(remote.predictions.len(), 3);
    assert_eq!(remote.predictions[0].inference_id, "sm-a");
    assert_eq!(remote.predictions[2].inference_id, "sm-b");
    let generated = &remote.predictions[1].inference_id;
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");
    for (p, &i) in remote.predictions.iter().zip(&picks) {
        assert_eq!(p.model_name, "penguins");
        assert_eq!(p.model_version, 1);
        assert_eq!(p.class, penguins[i].0, "{p:?}");
    }

    // One signed call, for the configured region and SageMaker, with the first row's id, the
    // JSON content type, and every row with its id and its features as sent.
    let calls = world.sagemaker.calls("penguins-prod");
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    let scope = credential_scope(call);
    assert_eq!(scope.len(), 5, "{scope:?}");
    assert_eq!(scope[0], ACCESS_KEY);
    assert_eq!(scope[2], REGION);
    assert_eq!(scope[3], "sagemaker");
    assert_eq!(scope[4], "aws4_request");
    assert!(call.header("x-amz-date").is_some(), "{:?}", call.headers);
    assert_eq!(call.header("x-amzn-sagemaker-inference-id"), Some("sm-a"));
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(call.header("accept"), Some("application/json"));
    let sent = call.body["rows"].as_array().unwrap();
    assert_eq!(sent.len(), 3);
    for ((row, p), &i) in sent.iter().zip(&remote.predictions).zip(&picks) {
        assert_eq!(row["inference_id"], p.inference_id.as_str());
        assert_eq!(row["features"], Value::Object(penguins[i].1.clone()));
    }

    // A request whose first row has no id of the caller's: the id generated for it is sent.
    let (status, body) = send(
        http.post(sagemaker.url("/v1/predict"))
            .json(&rows_request(&[(None, &penguins[300].1)])),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let second: PredictResponse = serde_json::from_value(body).unwrap();
    let calls = world.sagemaker.calls("penguins-prod");
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1].header("x-amzn-sagemaker-inference-id"),
        Some(second.predictions[0].inference_id.as_str())
    );

    // A replayed id is answered as logged, without calling SageMaker again.
    let (status, body) = send(
        http.post(sagemaker.url("/v1/predict"))
            .json(&rows_request(&[(Some("sm-a"), &penguins[0].1)])),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["predictions"][0]["class"], remote.predictions[0].class);
    assert_eq!(world.sagemaker.calls("penguins-prod").len(), 2);

    // Logged on predictions.logged like local predictions: each row once, as answered.
    let bus = world.env.bus().await;
    let events = stored_events::<PredictionsLogged>(&bus, "predictions.logged").await;
    let mut answered: Vec<_> = remote
        .predictions
        .iter()
        .chain(&second.predictions)
        .collect();
    answered.sort_by(|a, b| a.inference_id.cmp(&b.inference_id));
    let mut logged: Vec<_> = events
        .iter()
        .filter(|e| e.data.model_name == "penguins" && e.data.model_version == 1)
        .flat_map(|e| &e.data.predictions)
        .filter(|p| !p.inference_id.starts_with("lo-"))
        .filter(|p| answered.iter().any(|a| a.inference_id == p.inference_id))
        .collect();
    logged.sort_by(|a, b| a.inference_id.cmp(&b.inference_id));
    assert_eq!(logged.len(), answered.len(), "{logged:?}");
    for (l, a) in logged.iter().zip(&answered) {
        assert_eq!(l.inference_id, a.inference_id);
        assert_eq!(l.class, a.class);
        assert_eq!(l.confidence, a.confidence);
        assert_eq!(l.probabilities, a.probabilities);
    }
    let sm_a = logged.iter().find(|l| l.inference_id == "sm-a").unwrap();
    assert_eq!(sm_a.features, penguins[0].1, "the row as received");

    sagemaker.stop().await;
    local.stop().await;
    world.stop().await;
}

#[tokio::test]
async fn sagemaker_failures_are_answered_in_words_and_nothing_is_logged() {
    let world = World::start().await;
    let http = reqwest::Client::new();
    let penguins = penguin_rows();
    let row = &penguins[0].1;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let creds = Credentials::Environment;
    let (model_error, throttled, slow, missing, unreachable, anonymous, healthy) = tokio::join!(
        start_predictor_process(&world, "penguins-loading", None, creds, &[]),
        start_predictor_process(
            &world,
            "penguins-throttled",
            None,
            creds,
            &["--sagemaker-max-attempts", "2"]
        ),
        start_predictor_process(
            &world,
            "penguins-slow",
            None,
            creds,
            &[
                "--sagemaker-timeout-ms",
                "1000",
                "--sagemaker-attempt-timeout-ms",
                "400"
            ]
        ),
        start_predictor_process(&world, "penguins-missing", None, creds, &[]),
        start_predictor_process(
            &world,
            "penguins-unreachable",
            Some(&closed),
            creds,
            &["--sagemaker-max-attempts", "1"]
        ),
        start_predictor_process(
            &world,
            "penguins-prod",
            None,
            Credentials::Missing,
            &["--sagemaker-max-attempts", "1"]
        ),
        start_predictor_process(&world, "penguins-prod", None, creds, &[]),
    );
    let predict = |p: &Predictor, id: &str| {
        http.post(p.url("/v1/predict"))
            .json(&rows_request(&[(Some(id), row)]))
    };

    // The model failed (SageMaker's 424 ModelError): a 502 with the container's own words, and
    // none of SageMaker's wrapping (its account, its log stream).
    let (status, body) = send(predict(&model_error, "fail-model")).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body, "bad_gateway");
    assert!(
        message.contains("the model answered 503")
            && message.contains("the model is still loading"),
        "{message}"
    );
    assert!(!message.contains(ACCOUNT), "{message}");
    assert_eq!(world.sagemaker.calls("penguins-loading").len(), 1);

    // Throttling: retried up to --sagemaker-max-attempts, then a 503 with Retry-After.
    let resp = predict(&throttled, "fail-throttled").send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let body: Value = resp.json().await.unwrap();
    assert!(
        error_message(&body, "unavailable").contains("throttling"),
        "{body}"
    );
    assert_eq!(world.sagemaker.calls("penguins-throttled").len(), 2);

    // A model slower than --sagemaker-timeout-ms: a 504 once the timeout is spent, attempts
    // cut off at --sagemaker-attempt-timeout-ms and retried meanwhile.
    let started = Instant::now();
    let (status, body) = send(predict(&slow, "fail-slow")).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        error_message(&body, "gateway_timeout").contains("did not answer within 1s"),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(world.sagemaker.calls("penguins-slow").len() >= 2);

    // An endpoint SageMaker does not know: a 502 naming SageMaker's reason.
    let (status, body) = send(predict(&missing, "fail-missing")).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body, "bad_gateway");
    assert!(
        message.contains("ValidationError") && message.contains("not found"),
        "{message}"
    );

    // Nothing listening at the endpoint URL.
    let (status, body) = send(predict(&unreachable, "fail-unreachable")).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body, "bad_gateway");
    assert!(message.contains("cannot reach SageMaker"), "{message}");

    // No credentials anywhere in the chain: nothing is sent, and the answer says why.
    let calls_before = world.sagemaker.calls("penguins-prod").len();
    let (status, body) = send(predict(&anonymous, "fail-anonymous")).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body, "bad_gateway");
    assert!(
        message.ends_with("cannot call SageMaker: no credentials found in chain"),
        "{message}"
    );
    assert!(!message.contains(SECRET_KEY), "{message}");
    assert_eq!(world.sagemaker.calls("penguins-prod").len(), calls_before);

    // A healthy endpoint still answers, and it is the only row logged.
    let (status, body) = send(predict(&healthy, "ok-after-failures")).await;
    assert_eq!(status, 200, "{body}");
    let logged = logged_ids(&world.env).await;
    assert_eq!(
        logged,
        ["ok-after-failures"],
        "failed rows must not be logged"
    );

    for p in [
        model_error,
        throttled,
        slow,
        missing,
        unreachable,
        anonymous,
        healthy,
    ] {
        p.stop().await;
    }
    world.stop().await;
}

#[tokio::test]
async fn the_backend_is_local_by_default_and_sagemaker_needs_an_endpoint() {
    let env = TestEnv::new().await;
    let config = petrel_predictor::Config::parse_from(env.args("petrel-predictor", &[]));
    assert_eq!(
        config.backend,
        petrel_predictor::backend::BackendKind::Local
    );
    assert_eq!(config.sagemaker.timeout_ms, 5_000);
    assert_eq!(config.sagemaker.max_attempts, 3);

    let args = env.args(
        "petrel-predictor",
        &[
            "--registry-url",
            "http://127.0.0.1:9",
            "--backend",
            "sagemaker",
            "--sagemaker-region",
            REGION,
        ],
    );
    let err = petrel_predictor::App::build(
        petrel_predictor::Config::parse_from(args),
        CancellationToken::new(),
    )
    .await
    .expect_err("sagemaker without an endpoint name cannot start");
    let err = format!("{err:#}");
    assert!(err.contains("--sagemaker-endpoint"), "{err}");
    env.cleanup().await;
}
