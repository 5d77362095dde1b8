//! Compose parity: the six services start natively with exactly the environment `compose.yaml`
//! gives them, as Docker Compose itself reads the file (its real binary renders it to JSON).
//! Host names are mapped to 127.0.0.1 (each service on a free port), `/var/lib/petrel` to a
//! scratch directory laid out as the image lays it out, the database to a fresh one, and NATS
//! and the S3 store to servers of this test's own, started with compose's credentials and
//! bucket. Every variable compose sets must be an option the service documents (clap ignores
//! unknown variables, so a typo would otherwise pass silently); each service must become
//! healthy by compose's own health check; and the loop's first steps must run through them:
//! a file ingested, a model trained, registered and promoted on S3 artifacts, a prediction
//! served.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use petrel_testkit::{SeaweedFs, ThrowawayNats, docker_compose, penguins_csv};
use serde_json::{Value, json};

const SERVICES: [&str; 6] = [
    "registry",
    "trainer",
    "ingest",
    "predictor",
    "labeler",
    "monitor",
];
/// How long a service may take to pass its health check, and the loop to serve a model.
const STARTUP: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `compose.yaml` as Docker Compose renders it, with no variables set (the defaults).
fn rendered() -> Value {
    let out = Command::new(docker_compose())
        .arg("-f")
        .arg(repo().join("compose.yaml"))
        .args(["config", "--format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("docker-compose runs");
    assert!(
        out.status.success(),
        "docker-compose config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("compose renders JSON")
}

/// The service binaries next to this test's (cargo builds them for the workspace's tests).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).unwrap();
    let bin = debug.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace's binaries (cargo test --workspace builds them)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The `PETREL_*` variables a binary reads, from its `--help`.
fn documented(bin: &Path) -> BTreeSet<String> {
    let out = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

/// Running services, killed on drop.
struct Stack {
    children: Vec<(String, Child)>,
    logs: PathBuf,
}

impl Stack {
    fn log(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `url` until it answers 2xx.
async fn healthy(url: &str, deadline: Instant) -> bool {
    let client = reqwest::Client::new();
    while Instant::now() < deadline {
        if let Ok(r) = client.get(url).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn the_services_run_with_the_environment_compose_gives_them() {
    let compose = rendered();
    let services = &compose["services"];

    // The S3 store and its credentials, as compose starts it.
    let s3 = &services["s3"];
    let s3_command: Vec<&str> = s3["command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let bucket = s3_command
        .iter()
        .find_map(|a| a.strip_prefix("-bucket="))
        .expect("compose's S3 store creates its bucket");
    let s3_env = &s3["environment"];
    let store = SeaweedFs::start_as(
        &[bucket],
        s3_env["AWS_ACCESS_KEY_ID"].as_str().unwrap(),
        s3_env["AWS_SECRET_ACCESS_KEY"].as_str().unwrap(),
    )
    .await;
    let nats = ThrowawayNats::start().await;
    let db = petrel_db::testing::fresh_database_url();

    // A scratch /var/lib/petrel laid out as the image lays it out (`COPY data ...`).
    let root = std::env::temp_dir().join(format!("petrel-compose-{}", uuid::Uuid::now_v7()));
    let var = root.join("var/lib/petrel");
    for dir in ["artifacts", "spool", "data"] {
        std::fs::create_dir_all(var.join(dir)).unwrap();
    }
    std::fs::write(var.join("data/penguins.csv"), penguins_csv()).unwrap();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).unwrap();

    // Each service's port in compose (what it publishes), and the free port it gets here.
    let mut ports: BTreeMap<&str, (u16, u16)> = BTreeMap::new();
    for name in SERVICES {
        let target = services[name]["ports"][0]["target"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} publishes a port"));
        ports.insert(name, (target as u16, free_port()));
    }
    let store_port = store.endpoint.rsplit(':').next().unwrap().to_owned();
    let map = |value: &str| -> String {
        if value.starts_with("postgres://") {
            // The test's own fresh database, on the local server.
            assert!(value.contains("@postgres:5432/"), "{value}");
            return db.clone();
        }
        let mut v = value
            .replace("nats:4222", &format!("127.0.0.1:{}", nats.port))
            .replace("s3:8333", &format!("127.0.0.1:{store_port}"))
            .replace("/var/lib/petrel", var.to_str().unwrap());
        for (name, (target, port)) in &ports {
            // Its name from the others, its listen address, and its own health check.
            for from in [name, "0.0.0.0", "127.0.0.1"] {
                v = v.replace(&format!("{from}:{target}"), &format!("127.0.0.1:{port}"));
            }
        }
        v
    };

    // Start them in an order that honours depends_on, each once compose's health check passes.
    let mut stack = Stack {
        children: Vec::new(),
        logs: logs.clone(),
    };
    let mut started: BTreeSet<String> = ["postgres", "nats", "s3"].map(String::from).into();
    let mut pending: Vec<&str> = SERVICES.to_vec();
    while !pending.is_empty() {
        let ready = pending
            .iter()
            .position(|name| {
                services[*name]["depends_on"]
                    .as_object()
                    .is_none_or(|deps| deps.keys().all(|d| started.contains(d)))
            })
            .expect("depends_on has no cycle");
        let name = pending.remove(ready);
        let spec = &services[name];
        let target = spec["build"]["target"].as_str().expect("a build target");
        let bin = binary(&format!("petrel-{target}"));
        let options = documented(&bin);
        let mut env = BTreeMap::new();
        for (key, value) in spec["environment"].as_object().unwrap() {
            let value = value.as_str().unwrap();
            assert!(
                key == "RUST_LOG" || options.contains(key),
                "compose sets {key} for {name}, which petrel-{target} has no option for \
                 (it reads {options:?})"
            );
            env.insert(key.clone(), map(value));
        }
        let log = std::fs::File::create(logs.join(format!("{name}.log"))).unwrap();
        let child = Command::new(&bin)
            .env_clear()
            .envs(&env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&var)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        stack.children.push((name.to_owned(), child));

        let check: Vec<&str> = spec["healthcheck"]["test"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} has a health check"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let url = map(check.last().unwrap());
        assert!(
            healthy(&url, Instant::now() + STARTUP).await,
            "{name} did not pass its health check ({url}); its log:\n{}",
            stack.log(name)
        );
        started.insert(name.to_owned());
    }

    // The loop's first steps, through the addresses compose wires together.
    let url = |name: &str| format!("http://127.0.0.1:{}", ports[name].1);
    let client = reqwest::Client::new();
    let schema = petrel_ml::Schema::penguins();
    let resp = client
        .post(format!("{}/v1/datasets", url("ingest")))
        .json(&json!({ "name": "penguins", "schema": schema, "path": "penguins.csv" }))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(
        body["dataset"]["uri"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{bucket}/")),
        "datasets live in compose's bucket: {body}"
    );

    let row = json!({"rows": [{"features": {
        "island": "Biscoe", "bill_length_mm": 45.7, "bill_depth_mm": 13.9,
        "flipper_length_mm": 214.0, "body_mass_g": 4400.0, "sex": "female", "year": 2008.0
    }}]});
    let deadline = Instant::now() + STARTUP;
    let answer = loop {
        let resp = client
            .post(format!("{}/v1/predict", url("predictor")))
            .json(&row)
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break resp.json::<Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no model was served; trainer log:\n{}\npredictor log:\n{}",
            stack.log("trainer"),
            stack.log("predictor")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        answer["predictions"][0]["model_name"], "penguins",
        "{answer}"
    );
    assert!(
        petrel_testkit::SPECIES.contains(&answer["predictions"][0]["class"].as_str().unwrap()),
        "a species: {answer}"
    );
    drop(stack);
    let _ = std::fs::remove_dir_all(&root);
}
