//! `petrel demo`: the whole loop on this machine, each service its own process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use petrel_api::ApiClient;
use petrel_api::ingest::{IngestRequest, IngestResponse};
use petrel_api::monitor::{Report, ReportList};
use petrel_api::predictor::ServedModel;
use petrel_api::registry::RegistryClient;
use petrel_events::payloads::{Alert, ModelPromoted};
use petrel_events::{Envelope, Namespace};
use petrel_ml::Schema;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::traffic::{self, Drift, TrafficArgs};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Postgres URL for the demo's database (dropped and recreated on every run).
    #[arg(
        long,
        env = "PETREL_DEMO_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/petrel_demo"
    )]
    database_url: String,
    #[arg(long, env = "PETREL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject namespace of the demo (its stream is reset on every run).
    #[arg(long, default_value = "demo")]
    nats_prefix: String,
    /// Where artifacts and service logs go (reset on every run).
    #[arg(long, default_value = ".petrel/demo")]
    work_dir: PathBuf,
    /// Directory holding the service binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The penguins CSV.
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

const SERVICES: [&str; 6] = [
    "registry",
    "trainer",
    "ingest",
    "predictor",
    "labeler",
    "monitor",
];

struct Service {
    name: &'static str,
    url: String,
    child: Child,
    log: PathBuf,
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn format_report(r: &Report) -> String {
    let drifted: Vec<String> = r
        .drift
        .iter()
        .filter(|d| d.drifted)
        .map(|d| format!("{} (p={:.1e})", d.feature, d.p_value))
        .collect();
    let opt = |x: Option<f64>| {
        x.map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "-".to_owned())
    };
    format!(
        "report {} {} v{}: {} predictions, {} labels, accuracy {}, estimated accuracy {}, mean confidence {}, drifted features {}/{}{}{}",
        r.window_start.format("%H:%M:%S"),
        r.model_name,
        r.model_version,
        r.n_predictions,
        r.n_labels,
        opt(r.accuracy),
        opt(r.detail.estimated_accuracy.as_ref().map(|e| e.accuracy)),
        opt(r.mean_confidence),
        r.drift.iter().filter(|d| d.drifted).count(),
        r.drift.len(),
        if drifted.is_empty() {
            String::new()
        } else {
            format!(" [{}]", drifted.join(", "))
        },
        if r.alerts.is_empty() {
            String::new()
        } else {
            format!(" -> alerts: {}", r.alerts.join(", "))
        },
    )
}

enum Seen {
    Promoted(ModelPromoted),
    Alert(Alert),
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(a.timeout_secs);
    step("Checking Postgres and NATS");
    check_infrastructure(&a).await?;
    let bin_dir = match &a.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no binary directory")?
            .to_path_buf(),
    };
    for s in SERVICES {
        let bin = bin_dir.join(format!("petrel-{s}"));
        anyhow::ensure!(
            bin.exists(),
            "{} is missing: build the services first (cargo build --bins)",
            bin.display()
        );
    }

    step("Resetting the demo's database, stream and artifacts");
    reset(&a).await?;

    step("Starting the six services");
    let mut services = start_services(&a, &bin_dir).await?;
    let result = drive(&a, &mut services, deadline).await;

    step("Stopping the services (SIGTERM)");
    let clean = stop_services(&mut services).await;
    match (result, clean) {
        (Ok(()), Ok(())) => {
            println!("\nDemo finished: the loop ran end to end and the monitor raised an alert.");
            Ok(())
        }
        (Ok(()), Err(e)) => Err(e),
        (Err(e), _) => {
            eprintln!(
                "\nService logs are in {}",
                a.work_dir.join("logs").display()
            );
            Err(e)
        }
    }
}

async fn check_infrastructure(a: &DemoArgs) -> anyhow::Result<()> {
    petrel_db::ensure_database(&a.database_url)
        .await
        .with_context(|| {
            format!(
                "Postgres is not reachable at {} (start it, or set PETREL_DEMO_DATABASE_URL)",
                petrel_db::redact(&a.database_url)
            )
        })?;
    // Creating the demo's stream proves both the connection and JetStream.
    petrel_events::Bus::connect(
        &a.nats_url,
        Namespace::new(Some(&a.nats_prefix)),
        "petrel/cli",
    )
    .await
    .context("NATS JetStream is not usable (start nats-server with -js)")?;
    println!("Postgres and NATS JetStream are up.");
    Ok(())
}

async fn reset(a: &DemoArgs) -> anyhow::Result<()> {
    let (admin, name) = match a.database_url.rsplit_once('/') {
        Some((base, name)) => (format!("{base}/postgres"), name.to_owned()),
        None => bail!("the demo database URL must name a database"),
    };
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "the demo database name must be letters, digits and '_'"
    );
    let pool = sqlx::PgPool::connect(&admin)
        .await
        .context("cannot connect to Postgres")?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&pool)
        .await
        .context("cannot drop the demo database")?;
    pool.close().await;
    petrel_db::ensure_database(&a.database_url).await?;
    let nats = async_nats::connect(&a.nats_url).await?;
    let js = async_nats::jetstream::new(nats);
    let stream = Namespace::new(Some(&a.nats_prefix)).stream_name();
    let _ = js.delete_stream(&stream).await;
    let artifacts = a.work_dir.join("artifacts");
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts)
            .with_context(|| format!("cannot clear {}", artifacts.display()))?;
    }
    std::fs::create_dir_all(a.work_dir.join("logs"))?;
    std::fs::create_dir_all(&artifacts)?;
    println!(
        "database {name}, stream {stream} and {} are fresh.",
        artifacts.display()
    );
    Ok(())
}

async fn start_services(a: &DemoArgs, bin_dir: &Path) -> anyhow::Result<Vec<Service>> {
    let mut ports = BTreeMap::new();
    for s in SERVICES {
        ports.insert(s, free_port()?);
    }
    let url = |s: &str| format!("http://127.0.0.1:{}", ports[s]);
    let artifacts = std::fs::canonicalize(a.work_dir.join("artifacts"))?;
    let mut out = Vec::new();
    for s in SERVICES {
        let log = a.work_dir.join("logs").join(format!("{s}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin_dir.join(format!("petrel-{s}")));
        cmd.env("PETREL_DATABASE_URL", &a.database_url)
            .env("PETREL_NATS_URL", &a.nats_url)
            .env("PETREL_NATS_PREFIX", &a.nats_prefix)
            .env("PETREL_ARTIFACT_ROOT", &artifacts)
            .env("PETREL_REGISTRY_URL", url("registry"))
            .env("PETREL_LABELER_URL", url("labeler"))
            .env("PETREL_INGEST_URL", url("ingest"))
            .env("PETREL_PREDICTOR_URL", url("predictor"))
            .env(
                format!("PETREL_{}_LISTEN", s.to_uppercase()),
                format!("127.0.0.1:{}", ports[s]),
            )
            // One-second windows and quick resolution, so the demo's short bursts of traffic
            // show a whole alert episode.
            .env("PETREL_MONITOR_WINDOW_SECS", "1")
            .env("PETREL_MONITOR_WINDOW_LATENESS_SECS", "1")
            .env("PETREL_MONITOR_WINDOW_IDLE_SECS", "3")
            .env("PETREL_MONITOR_RESOLVE_AFTER", "2")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start petrel-{s}"))?;
        println!(
            "petrel-{s:<9} pid {:>7}  {}  log {}",
            child.id().unwrap_or(0),
            url(s),
            log.display()
        );
        out.push(Service {
            name: s,
            url: url(s),
            child,
            log,
        });
    }
    let started = Instant::now();
    for svc in out.iter_mut() {
        let client = ApiClient::new(&svc.url);
        loop {
            if let Some(status) = svc.child.try_wait()? {
                bail!(
                    "petrel-{} exited during start-up ({status}); last log lines:\n{}",
                    svc.name,
                    tail(&svc.log, 15)
                );
            }
            if client.get::<serde_json::Value>("/readyz").await.is_ok() {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "petrel-{} is not ready after 60 s; last log lines:\n{}",
                    svc.name,
                    tail(&svc.log, 15)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "all six services are ready ({} ms).",
        started.elapsed().as_millis()
    );
    Ok(out)
}

async fn stop_services(services: &mut [Service]) -> anyhow::Result<()> {
    for svc in services.iter() {
        if let Some(pid) = svc.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    let mut failures = Vec::new();
    for svc in services.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(40), svc.child.wait()).await {
            Ok(Ok(status)) if status.success() => println!("petrel-{} stopped cleanly.", svc.name),
            Ok(Ok(status)) => failures.push(format!("petrel-{} exited with {status}", svc.name)),
            Ok(Err(e)) => failures.push(format!("petrel-{}: {e}", svc.name)),
            Err(_) => {
                let _ = svc.child.kill().await;
                failures.push(format!("petrel-{} did not stop within 40 s", svc.name));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("unclean shutdown: {}", failures.join("; "))
    }
}

fn find<'a>(services: &'a [Service], name: &str) -> &'a Service {
    services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is one of SERVICES"))
}

fn service<'a>(services: &'a [Service], name: &str) -> &'a str {
    &find(services, name).url
}

async fn drive(a: &DemoArgs, services: &mut [Service], deadline: Instant) -> anyhow::Result<()> {
    // Watch the bus like a user would: model promotions and alerts.
    let nats = async_nats::connect(&a.nats_url).await?;
    let ns = Namespace::new(Some(&a.nats_prefix));
    let mut promotions = nats.subscribe(ns.subject("model.promoted")).await?;
    let mut alerts = nats.subscribe(ns.subject("alerts.>")).await?;
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let item = tokio::select! {
                Some(m) = promotions.next() => Envelope::<ModelPromoted>::from_bytes(&m.payload).ok().map(|e| Seen::Promoted(e.data)),
                Some(m) = alerts.next() => Envelope::<Alert>::from_bytes(&m.payload).ok().map(|e| Seen::Alert(e.data)),
                else => break,
            };
            if let Some(item) = item
                && tx.send(item).is_err()
            {
                break;
            }
        }
    });

    step("Ingesting data/penguins.csv");
    let csv = std::fs::read_to_string(&a.data)
        .with_context(|| format!("cannot read {}", a.data.display()))?;
    let resp: IngestResponse = ApiClient::new(service(services, "ingest"))
        .post(
            "/v1/datasets",
            &IngestRequest {
                name: "penguins".to_owned(),
                schema: Schema::penguins(),
                csv: Some(csv),
                path: None,
                uri: None,
                generate: None,
                purpose: Default::default(),
                checks: Default::default(),
            },
        )
        .await?;
    crate::print_ingest(&resp);

    step("Training (trainer consumes data.ready) and promoting (registry)");
    let promoted = loop {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(Duration::from_secs(180));
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some(Seen::Promoted(p))) => break p,
            Ok(Some(Seen::Alert(al))) => println!("{}", crate::format_alert(&al)),
            _ => bail!(
                "no model was promoted in time; trainer log:\n{}",
                tail(&find(services, "trainer").log, 20)
            ),
        }
    };
    let registry = RegistryClient::new(service(services, "registry"));
    let version = registry
        .get_version(&promoted.model_name, promoted.version)
        .await?;
    let accuracy = version
        .metrics
        .get("test_accuracy")
        .copied()
        .unwrap_or(f64::NAN);
    println!(
        "model {} v{} is now `{}` ({}); test accuracy {accuracy:.4}",
        promoted.model_name, promoted.version, promoted.alias, promoted.reason
    );

    let predictor = ApiClient::new(service(services, "predictor"));
    loop {
        match predictor.get::<ServedModel>("/v1/model").await {
            Ok(m) if m.model_version == promoted.version => {
                println!("predictor serves {} v{}", m.model_name, m.model_version);
                break;
            }
            _ if Instant::now() > deadline => bail!("the predictor never loaded the model"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    let samples = traffic::load_samples(&a.data, "species")?;
    let base = TrafficArgs {
        file: a.data.clone(),
        target: "species".to_owned(),
        rows: 300,
        rate: 150.0,
        batch: 5,
        label_delay_ms: 1000,
        drift: Drift::default(),
        seed: 7,
        predictor_url: service(services, "predictor").to_owned(),
        labeler_url: service(services, "labeler").to_owned(),
    };
    step("Sending normal traffic: 300 rows sampled from penguins, labels 1 s later");
    let normal = traffic::send(&base, &samples, "normal").await?;
    for p in &normal.first {
        println!(
            "prediction {}: {} (confidence {:.3}) by {} v{}",
            p.inference_id, p.class, p.confidence, p.model_name, p.model_version
        );
    }
    println!(
        "{} rows sent, {} predicted correctly, {} labels posted",
        normal.sent, normal.correct, normal.labelled
    );

    let monitor = ApiClient::new(service(services, "monitor"));
    let mut shown = std::collections::HashSet::new();
    wait_for_reports(
        &monitor,
        &mut shown,
        3,
        deadline.min(Instant::now() + Duration::from_secs(30)),
    )
    .await?;
    while let Ok(Seen::Alert(al)) = seen.try_recv() {
        println!("(during normal traffic) {}", crate::format_alert(&al));
    }

    step("Sending drifted traffic: bill_length_mm +12, flipper_length_mm +25, body_mass_g +1500");
    let mut drifted = base.clone();
    drifted.seed = 11;
    drifted.drift = Drift(BTreeMap::from([
        ("bill_length_mm".to_owned(), 12.0),
        ("flipper_length_mm".to_owned(), 25.0),
        ("body_mass_g".to_owned(), 1500.0),
    ]));
    let shifted = traffic::send(&drifted, &samples, "drifted").await?;
    println!(
        "{} rows sent, {} predicted correctly, {} labels posted",
        shifted.sent, shifted.correct, shifted.labelled
    );

    step("Waiting for alerts on alerts.>");
    let mut received = Vec::new();
    let until = deadline.min(Instant::now() + Duration::from_secs(60));
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let grace = if received.is_empty() {
            left
        } else {
            left.min(Duration::from_secs(3))
        };
        match tokio::time::timeout(grace, seen.recv()).await {
            Ok(Some(Seen::Alert(al))) => {
                println!("{}", crate::format_alert(&al));
                received.push(al);
            }
            Ok(Some(Seen::Promoted(_))) => {}
            _ => break,
        }
    }
    wait_for_reports(&monitor, &mut shown, 1, Instant::now())
        .await
        .ok();
    if received.is_empty() {
        bail!(
            "the monitor raised no alert for drifted traffic; monitor log:\n{}",
            tail(&find(services, "monitor").log, 20)
        );
    }
    let kinds: Vec<String> = received.iter().map(|a| a.kind.to_string()).collect();
    println!("received {} alert(s): {}", received.len(), kinds.join(", "));

    step("Traffic back to normal: the open alerts resolve after 2 clean windows");
    let mut calm = base.clone();
    calm.rows = 600;
    calm.seed = 13;
    traffic::send(&calm, &samples, "normal again").await?;
    let until = deadline.min(Instant::now() + Duration::from_secs(20));
    let mut resolved = 0;
    while let Ok(Some(item)) =
        tokio::time::timeout(until.saturating_duration_since(Instant::now()), seen.recv()).await
    {
        if let Seen::Alert(al) = item {
            println!("{}", crate::format_alert(&al));
            if al.status == petrel_events::payloads::AlertStatus::Resolved {
                resolved += 1;
                if resolved >= received.len() {
                    break;
                }
            }
        }
    }
    if resolved == 0 {
        println!(
            "(no alert resolved within 20 s; `petrel alerts list --open` shows what is still open)"
        );
    }

    step("Closing the loop: retrain on labelled production data when drift is raised");
    let trainer = ApiClient::new(service(services, "trainer"));
    let rows = base.rows;
    let policy: serde_json::Value = trainer
        .put(
            &format!("/v1/retraining/{}", promoted.model_name),
            &serde_json::json!({
                "mode": "recent", "alerts": ["drift"], "min_rows": rows, "max_rows": rows,
                "label_wait_seconds": 60, "cooldown_seconds": 600,
            }),
        )
        .await?;
    println!("retraining policy: {policy}");
    let mut again = drifted.clone();
    again.seed = 17;
    let sent = traffic::send(&again, &samples, "drifted again").await?;
    println!(
        "{} drifted rows sent, {} predicted correctly, {} labels posted",
        sent.sent, sent.correct, sent.labelled
    );
    let until = deadline.min(Instant::now() + Duration::from_secs(120));
    let next = loop {
        match tokio::time::timeout(until.saturating_duration_since(Instant::now()), seen.recv())
            .await
        {
            Ok(Some(Seen::Alert(al))) => println!("{}", crate::format_alert(&al)),
            Ok(Some(Seen::Promoted(p))) if p.version > promoted.version => break p,
            Ok(Some(Seen::Promoted(_))) => {}
            _ => bail!(
                "no retrained version was registered in time; trainer log:\n{}",
                tail(&find(services, "trainer").log, 20)
            ),
        }
    };
    let v = registry.get_version(&next.model_name, next.version).await?;
    if let Some(d) = &v.promotion {
        println!(
            "retrained {} v{} is now `{}`: {}",
            next.model_name, next.version, next.alias, d.reason
        );
    }
    Ok(())
}

/// Prints reports not shown yet; waits until at least `min_new` appear or `until` passes.
async fn wait_for_reports(
    monitor: &ApiClient,
    shown: &mut std::collections::HashSet<uuid::Uuid>,
    min_new: usize,
    until: Instant,
) -> anyhow::Result<()> {
    let mut new = 0;
    loop {
        let list: ReportList = monitor.get("/v1/reports?limit=50").await?;
        for r in list.reports.iter().rev() {
            if shown.insert(r.id) {
                new += 1;
                println!("{}", format_report(r));
            }
        }
        if new >= min_new || Instant::now() >= until {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
