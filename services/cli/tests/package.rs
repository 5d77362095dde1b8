//! `petrel models package` against a real registry and artifact store, and the package it
//! writes served by `petrel-predictor serve`'s library, as SageMaker would run it.

use clap::Parser;
use petrel_predictor::container::{ContainerApp, ContainerConfig};
use petrel_testkit::{Service, TestEnv, register_model, send};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn start_registry(env: &TestEnv) -> Service {
    let args = env.args_without_store("petrel-registry", &["--database-max-connections", "4"]);
    let cancel = CancellationToken::new();
    let app =
        petrel_registry::App::build(petrel_registry::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    Service::spawn("the registry", app.port(), cancel, app.run())
}

/// Runs the `petrel` binary and returns its exit status, stdout and stderr.
async fn petrel(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_petrel"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_packaged_alias_unpacks_into_a_serving_container() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let version = register_model(&env, &registry, "models/penguins/job-1/bundle.json").await;
    assert_eq!(version.version, 1);
    let archive = env.dir.join("model.tar.gz");
    let archive_arg = archive.to_str().unwrap();
    let common = [
        "--registry-url",
        &registry.base,
        "--artifact-root",
        env.artifact_root(),
    ];

    let mut args = vec![
        "models",
        "package",
        "penguins@production",
        "--output",
        archive_arg,
    ];
    args.extend_from_slice(&common);
    let (ok, stdout, stderr) = petrel(&args).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("packaged penguins version 1 (sha256:"),
        "{stdout}"
    );

    // By version number, the same bytes: packaging is reproducible.
    let again = env.dir.join("again.tar.gz");
    let mut args = vec![
        "models",
        "package",
        "penguins/1",
        "--output",
        again.to_str().unwrap(),
    ];
    args.extend_from_slice(&common);
    let (ok, _, stderr) = petrel(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&archive).unwrap()
    );

    // An alias that is not set is a clear error, not an empty archive.
    let missing = env.dir.join("missing.tar.gz");
    let mut args = vec![
        "models",
        "package",
        "penguins@staging",
        "--output",
        missing.to_str().unwrap(),
    ];
    args.extend_from_slice(&common);
    let (ok, _, stderr) = petrel(&args).await;
    assert!(!ok);
    assert!(
        stderr.contains("model \"penguins\" has no alias \"staging\""),
        "{stderr}"
    );
    assert!(!missing.exists());

    // Unpack as SageMaker does into /opt/ml/model, and serve it.
    let model_dir = env.dir.join("opt-ml-model");
    let file = std::fs::File::open(&archive).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(&model_dir)
        .unwrap();
    assert!(model_dir.join(petrel_ml::BUNDLE_FILE).is_file());
    let config = ContainerConfig::parse_from([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--model-dir",
        model_dir.to_str().unwrap(),
    ]);
    let cancel = CancellationToken::new();
    let app = ContainerApp::build(config, cancel.clone()).await.unwrap();
    let container = Service::spawn("the container", app.port(), cancel, app.run());
    let http = reqwest::Client::new();
    let (status, ping) = send(http.get(container.url("/ping"))).await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["model_name"], "penguins");
    assert_eq!(ping["model_version"], 1);
    let body = json!({"dataframe_split": {
        "columns": ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"],
        "data": [["Biscoe", 47.5, 15.0, 218, 4950, "female", 2008]]
    }});
    let (status, answer): (u16, Value) =
        send(http.post(container.url("/invocations")).json(&body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["predictions"][0]["class"], "Gentoo");

    container.stop().await;
    registry.stop().await;
    env.cleanup().await;
}
