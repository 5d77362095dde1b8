//! `petrel bench`: repeatable measurements of the predictor, for docs/benchmarks.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use petrel_api::ApiClient;
use petrel_api::predictor::{PredictRequest, PredictResponse, PredictRow};
use petrel_ml::{ModelBundle, Schema, TrainConfig, parse_csv, row_from_json};

use crate::traffic::load_samples;

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
    /// HTTP latency and throughput of `POST /v1/predict` against a running predictor.
    Predict(PredictBench),
    /// In-process inference and training speed of the model code (no services needed).
    Model(ModelBench),
    /// Training speed against scikit-learn and PyTorch (`scripts/bench-train.sh` runs those):
    /// the penguins MLP fit, a 24-configuration 5-fold sweep, samples/s on 1,000,000 rows and
    /// gradient-boosted trees. Prints one JSON object.
    Train(crate::bench_train::TrainBench),
    /// The HTTP ceiling `scripts/bench-serve.sh` compares with: a bare axum handler that reads
    /// and parses the JSON body and answers a small fixed JSON, nothing else.
    Ceiling(CeilingBench),
    /// Drives a running monitor (and labeler) with `predictions.logged` at a fixed rate and
    /// reports backlog, memory and how late windows close (`scripts/bench-monitor.sh`).
    Monitor(crate::bench_monitor::MonitorBench),
    /// Writes the fixed request bodies the serving benchmark sends (`predict-N.json`, N rows of
    /// penguins each, with no inference ids so every row is scored and logged afresh).
    Bodies(BodiesBench),
}

#[derive(clap::Args, Debug)]
pub struct CeilingBench {
    #[arg(long, default_value = "127.0.0.1:18090")]
    listen: String,
}

#[derive(clap::Args, Debug)]
pub struct BodiesBench {
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
    /// Where to write the bodies.
    #[arg(long)]
    out: PathBuf,
    /// Row counts to write a body for.
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    rows: Vec<usize>,
}

#[derive(clap::Args, Debug)]
pub struct PredictBench {
    #[arg(
        long,
        env = "PETREL_PREDICTOR_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    predictor_url: String,
    /// Requests to send (after 100 warm-up requests).
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rows per request.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ModelBench {
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
    /// Single-row predictions to time.
    #[arg(long, default_value_t = 200_000)]
    predictions: usize,
    /// Trainings to time.
    #[arg(long, default_value_t = 5)]
    trainings: usize,
}

pub async fn run(b: Bench) -> anyhow::Result<()> {
    match b {
        Bench::Predict(p) => predict(p).await,
        Bench::Model(m) => tokio::task::spawn_blocking(move || model(m)).await?,
        Bench::Train(t) => tokio::task::spawn_blocking(move || crate::bench_train::run(t)).await?,
        Bench::Ceiling(c) => ceiling(c).await,
        Bench::Bodies(b) => bodies(b),
        Bench::Monitor(m) => crate::bench_monitor::run(m).await,
    }
}

async fn ceiling(c: CeilingBench) -> anyhow::Result<()> {
    use axum::routing::post;
    async fn handler(body: axum::body::Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        // Parse it, as every real handler must, so the ceiling pays for reading JSON too.
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => {
                let rows = v["rows"].as_array().map_or(0, Vec::len);
                axum::Json(serde_json::json!({ "rows": rows })).into_response()
            }
            Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/v1/predict", post(handler))
        .layer(axum::extract::DefaultBodyLimit::max(16 << 20));
    let listener = tokio::net::TcpListener::bind(&c.listen)
        .await
        .with_context(|| format!("cannot listen on {}", c.listen))?;
    eprintln!("ceiling listening on {}", c.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn bodies(b: BodiesBench) -> anyhow::Result<()> {
    let samples = load_samples(&b.data, "species")?;
    anyhow::ensure!(!samples.is_empty(), "{} holds no rows", b.data.display());
    std::fs::create_dir_all(&b.out)
        .with_context(|| format!("cannot create {}", b.out.display()))?;
    for n in b.rows {
        let rows: Vec<PredictRow> = (0..n)
            .map(|i| PredictRow {
                inference_id: None,
                features: samples[i % samples.len()].features.clone(),
            })
            .collect();
        let path = b.out.join(format!("predict-{n}.json"));
        let body = serde_json::to_vec(&PredictRequest { rows })?;
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn predict(p: PredictBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.requests > 0 && p.concurrency > 0 && p.rows > 0,
        "counts must be positive"
    );
    let samples = load_samples(&p.data, "species")?;
    let client = ApiClient::new(&p.predictor_url);
    let bodies: Arc<Vec<PredictRequest>> = Arc::new(
        (0..64)
            .map(|i| PredictRequest {
                rows: (0..p.rows)
                    .map(|j| PredictRow {
                        inference_id: None,
                        features: samples[(i * 7 + j * 13) % samples.len()].features.clone(),
                    })
                    .collect(),
            })
            .collect(),
    );
    // Warm up connections and the model.
    for body in bodies.iter().take(100.min(bodies.len())) {
        let _: PredictResponse = client
            .post("/v1/predict", body)
            .await
            .context("warm-up request failed")?;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = p.requests.div_ceil(p.concurrency);
    for t in 0..p.concurrency {
        let client = client.clone();
        let bodies = bodies.clone();
        let n = per_task.min(p.requests.saturating_sub(t * per_task));
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                let body = &bodies[(t + i) % bodies.len()];
                let s = Instant::now();
                let _: PredictResponse = client.post("/v1/predict", body).await?;
                lat.push(s.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        });
    }
    let mut all = Vec::with_capacity(p.requests);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    let wall = started.elapsed();
    all.sort();
    println!(
        "predict: {} requests x {} row(s), concurrency {}: {:.0} req/s, {:.0} rows/s; latency p50 {}, p90 {}, p99 {}, max {}",
        all.len(),
        p.rows,
        p.concurrency,
        all.len() as f64 / wall.as_secs_f64(),
        (all.len() * p.rows) as f64 / wall.as_secs_f64(),
        micros(percentile(&all, 0.5)),
        micros(percentile(&all, 0.9)),
        micros(percentile(&all, 0.99)),
        micros(*all.last().unwrap_or(&Duration::ZERO)),
    );
    Ok(())
}

fn model(m: ModelBench) -> anyhow::Result<()> {
    anyhow::ensure!(
        m.predictions > 0 && m.trainings > 0,
        "counts must be positive"
    );
    let bytes =
        std::fs::read(&m.data).with_context(|| format!("cannot read {}", m.data.display()))?;
    let schema = Schema::penguins();
    let table = parse_csv(&bytes, &schema)?.table;
    let mut times = Vec::new();
    let mut bundle: Option<ModelBundle> = None;
    for _ in 0..m.trainings {
        let s = Instant::now();
        bundle = Some(petrel_ml::train_classifier(
            &table,
            &TrainConfig::default(),
            &mut |_, _| {},
        )?);
        times.push(s.elapsed());
    }
    times.sort();
    let bundle = bundle.context("no training ran")?;
    println!(
        "train: penguins, {} epochs: median {:.1} ms over {} runs (test accuracy {:.4})",
        bundle.config.epochs,
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        times.len(),
        bundle.metrics.test_accuracy
    );
    let model = bundle.load()?;
    let samples = load_samples(&m.data, "species")?;
    let rows: Vec<_> = samples
        .iter()
        .map(|s| row_from_json(&s.features, &schema))
        .collect::<Result<_, _>>()?;
    // Time batches of 1,000 single-row calls; report the median batch.
    let mut per_call = Vec::new();
    let mut done = 0;
    let mut sink = 0usize;
    while done < m.predictions {
        let s = Instant::now();
        for i in 0..1000 {
            let row = &rows[(done + i) % rows.len()];
            sink += model.predict(std::slice::from_ref(row))[0].class.len();
        }
        per_call.push(s.elapsed() / 1000);
        done += 1000;
    }
    per_call.sort();
    let parse = {
        let s = Instant::now();
        for sample in samples.iter().cycle().take(100_000) {
            sink += row_from_json(&sample.features, &schema)?.len();
        }
        s.elapsed() / 100_000
    };
    println!(
        "infer: single-row predict median {:.2} µs per row ({} rows); JSON row validation {:.2} µs per row [{}]",
        percentile(&per_call, 0.5).as_secs_f64() * 1e6,
        done,
        parse.as_secs_f64() * 1e6,
        sink % 10
    );
    Ok(())
}
