//! The `petrel` binary against real services: `petrel models package` with a real registry and
//! artifact store, and the package it writes served by `petrel-predictor serve`'s library, as
//! SageMaker would run it; `petrel batch` scoring a local file with a real predictor.

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

#[tokio::test]
async fn petrel_batch_scores_a_local_file_and_reports_the_run() {
    let env = TestEnv::new().await;
    let registry = start_registry(&env).await;
    let args = env.args(
        "petrel-predictor",
        &[
            "--database-max-connections",
            "4",
            "--registry-url",
            &registry.base,
        ],
    );
    let cancel = CancellationToken::new();
    let app =
        petrel_predictor::App::build(petrel_predictor::Config::parse_from(args), cancel.clone())
            .await
            .unwrap();
    let predictor = Service::spawn("the predictor", app.port(), cancel, app.run());
    register_model(&env, &registry, "models/penguins/v1/bundle.json").await;
    petrel_testkit::eventually("a served model", || async {
        let (status, _) = send(reqwest::Client::new().get(predictor.url("/v1/model"))).await;
        (status == 200).then_some(())
    })
    .await;
    let input = env.dir.join("score-me.csv");
    std::fs::write(&input, petrel_testkit::penguins_csv()).unwrap();
    let common = [
        "--predictor-url",
        predictor.base.as_str(),
        "--artifact-root",
        env.artifact_root(),
    ];
    let mut argv = vec!["batch", "--input", input.to_str().unwrap()];
    argv.extend_from_slice(&common);
    let (ok, stdout, stderr) = petrel(&argv).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("100%"),
        "a progress bar that ends full: {stderr}"
    );
    let output = stdout
        .lines()
        .find_map(|l| l.strip_prefix("output: "))
        .expect("the output uri");
    let path = output.strip_prefix("file://").unwrap();
    let lines = std::fs::read_to_string(path).unwrap().lines().count();
    assert_eq!(lines, 345, "a header and one line per penguin");
    assert!(
        stdout.contains("run:    ") && stdout.contains("344 scored"),
        "{stdout}"
    );

    // A failure is a non-zero exit that says why.
    let mut argv = vec!["batch", "--input", "file:///nowhere/at/all.csv"];
    argv.extend_from_slice(&common);
    let (ok, _, stderr) = petrel(&argv).await;
    assert!(!ok);
    assert!(
        stderr.contains("failed") && stderr.contains("input file"),
        "{stderr}"
    );
    predictor.stop().await;
    registry.stop().await;
    env.cleanup().await;
}
