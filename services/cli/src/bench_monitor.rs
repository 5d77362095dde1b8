//! `petrel bench monitor`: drives a running monitor (and labeler, if one consumes the same
//! namespace) with `predictions.logged` at a fixed rate, as predictors at that load would
//! publish them, and reports whether they keep up: consumer backlog each second, memory,
//! how late windows close, and that every prediction was reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use petrel_api::ApiClient;
use petrel_api::monitor::ReportList;
use petrel_api::registry::{CreateModelVersion, CreateRun, RegistryClient};
use petrel_events::payloads::{LoggedPrediction, PredictionsLogged};
use petrel_events::{Bus, Namespace};
use rand::{Rng, SeedableRng};

#[derive(clap::Args, Debug)]
pub struct MonitorBench {
    #[arg(long, env = "PETREL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "PETREL_NATS_PREFIX", default_value = "")]
    nats_prefix: String,
    #[arg(
        long,
        env = "PETREL_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry_url: String,
    #[arg(
        long,
        env = "PETREL_MONITOR_URL",
        default_value = "http://127.0.0.1:8086"
    )]
    monitor_url: String,
    /// The artifact store the monitor reads (the bench stores its model there).
    #[arg(long, env = "PETREL_ARTIFACT_ROOT")]
    artifact_root: String,
    /// Predictions per second to publish.
    #[arg(long, default_value_t = 15_000)]
    rate: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Predictions per event (the predictor packs up to 256).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Process ids to sample memory of (the monitor's, the labeler's).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Durable consumers whose backlog to watch.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "monitor-predictions,labeler"
    )]
    consumers: Vec<String>,
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn backlog(bus: &Bus, stream: &str, consumer: &str) -> Option<u64> {
    let s = bus.jetstream().get_stream(stream).await.ok()?;
    let mut c: async_nats::jetstream::consumer::Consumer<
        async_nats::jetstream::consumer::pull::Config,
    > = s.get_consumer(consumer).await.ok()?;
    let info = c.info().await.ok()?;
    Some(info.num_pending + info.num_ack_pending as u64)
}

pub async fn run(a: MonitorBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.rate > 0 && a.batch > 0 && a.batch <= 256,
        "rate > 0, batch in 1..=256"
    );
    // A model for the monitor to find: trained here, stored where the monitor reads, registered.
    let csv =
        std::fs::read(&a.data).with_context(|| format!("cannot read {}", a.data.display()))?;
    let schema = petrel_ml::Schema::penguins();
    let table = petrel_ml::parse_csv(&csv, &schema)?.table;
    let bundle = tokio::task::spawn_blocking(move || {
        petrel_ml::train_classifier(&table, &petrel_ml::TrainConfig::default(), &mut |_, _| {})
    })
    .await??;
    let store = petrel_store::open(&a.artifact_root)?;
    let key = format!("bench/{}/bundle.json", uuid::Uuid::now_v7());
    let uri = store
        .put(&key, bytes::Bytes::from(bundle.to_bytes()?))
        .await?;
    let registry = RegistryClient::new(&a.registry_url);
    let run = registry
        .create_run(&CreateRun {
            experiment: "bench-monitor".into(),
            ..Default::default()
        })
        .await?;
    let model_name = format!("bench-{}", &run.id.simple().to_string()[..8]);
    let version = registry
        .create_version(
            &model_name,
            &CreateModelVersion {
                run_id: run.id,
                artifact_uri: uri,
                metrics: BTreeMap::from([(
                    "test_accuracy".to_owned(),
                    bundle.metrics.test_accuracy,
                )]),
                ..Default::default()
            },
        )
        .await?;
    let model = bundle.load()?;
    let rows = petrel_ml::csv_to_json_rows(&csv)?;
    let samples: Vec<(
        serde_json::Map<String, serde_json::Value>,
        petrel_ml::Prediction,
    )> = rows
        .rows
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|mut f| {
            f.remove(&schema.target);
            let row = model.row_from_json(&f).ok()?;
            Some((f, model.predict(&[row]).remove(0)))
        })
        .collect();

    let ns = Namespace::new(Some(&a.nats_prefix));
    let bus = Bus::connect(&a.nats_url, ns.clone(), "petrel/bench").await?;
    let stream = ns.stream_name();
    println!(
        "publishing {} predictions/s for {} s as {model_name} v{} in events of {}; watching {}",
        a.rate,
        a.secs,
        version.version,
        a.batch,
        a.consumers.join(", ")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let events_per_sec = a.rate.div_ceil(a.batch);
    let interval = Duration::from_secs_f64(1.0 / events_per_sec as f64);
    let started = Instant::now();
    let mut next = Instant::now();
    let mut sent = 0usize;
    let mut last_print = Instant::now();
    let mut max_backlog: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_rss: BTreeMap<u32, f64> = BTreeMap::new();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    let total = a.rate * a.secs as usize;
    while sent < total {
        let n = a.batch.min(total - sent);
        let now = chrono::Utc::now();
        let predictions = (0..n)
            .map(|k| {
                let (f, p) = &samples[rng.random_range(0..samples.len())];
                LoggedPrediction {
                    inference_id: format!("bench-{}-{k}", sent),
                    features: f.clone(),
                    class: p.class.clone(),
                    confidence: p.confidence,
                    probabilities: p.probabilities.clone(),
                    predicted_at: now,
                }
            })
            .collect();
        let env = bus.envelope(PredictionsLogged {
            model_name: model_name.clone(),
            model_version: version.version,
            predictions,
        });
        let b = bus.clone();
        in_flight.push(async move { b.publish(&env).await });
        sent += n;
        while in_flight.len() > 32 {
            in_flight.next().await.transpose()?;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let mut line = format!(
                "t={:>5.1}s sent {:>8} ({:>6.0}/s)",
                started.elapsed().as_secs_f64(),
                sent,
                sent as f64 / started.elapsed().as_secs_f64()
            );
            for c in &a.consumers {
                if let Some(b) = backlog(&bus, &stream, c).await {
                    let m = max_backlog.entry(c.clone()).or_default();
                    *m = (*m).max(b);
                    line.push_str(&format!("  {c} backlog {b:>5} events"));
                }
            }
            for &pid in &a.pids {
                if let Some(r) = rss_mib(pid) {
                    let m = max_rss.entry(pid).or_default();
                    *m = m.max(r);
                    line.push_str(&format!("  pid {pid} {r:.0} MiB"));
                }
            }
            println!("{line}");
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    let publish_secs = started.elapsed().as_secs_f64();
    // Drain: until every watched consumer is caught up.
    let drain_started = Instant::now();
    loop {
        let mut left = 0;
        for c in &a.consumers {
            left += backlog(&bus, &stream, c).await.unwrap_or(0);
        }
        if left == 0 || drain_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_secs = drain_started.elapsed().as_secs_f64();
    // Every prediction reported, and how late windows closed.
    let monitor = ApiClient::new(&a.monitor_url);
    let deadline = Instant::now() + Duration::from_secs(90);
    let reports = loop {
        let list: ReportList = monitor
            .get(&format!("/v1/reports?model={model_name}&limit=1000"))
            .await?;
        let reported: i64 = list.reports.iter().map(|r| r.n_predictions).sum();
        if reported as usize >= total || Instant::now() > deadline {
            break list.reports;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let reported: i64 = reports.iter().map(|r| r.n_predictions).sum();
    let mut delays: Vec<f64> = reports
        .iter()
        .map(|r| (r.created_at - r.window_end).num_milliseconds() as f64 / 1000.0)
        .collect();
    delays.sort_by(f64::total_cmp);
    let pct = |q: f64| {
        delays
            .get(((delays.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "published {sent} predictions in {publish_secs:.1} s ({:.0}/s); consumers drained {drain_secs:.1} s after the last publish",
        sent as f64 / publish_secs
    );
    for (c, m) in &max_backlog {
        println!(
            "{c}: max backlog {m} events ({} predictions, {:.2} s of traffic)",
            m * a.batch as u64,
            (m * a.batch as u64) as f64 / a.rate as f64
        );
    }
    for (pid, m) in &max_rss {
        println!(
            "pid {pid}: max RSS {m:.0} MiB, now {:.0} MiB",
            rss_mib(*pid).unwrap_or(f64::NAN)
        );
    }
    println!(
        "{} windows, {reported} of {sent} predictions reported; window closed after its end: median {:.2} s, max {:.2} s",
        reports.len(),
        pct(0.5),
        pct(1.0)
    );
    Ok(())
}
