//! `petrel bench train`: the trainer's side of `scripts/bench-train.sh`, which runs the same
//! measurements with scikit-learn and PyTorch in the same run. Prints one JSON object.
//!
//! - `fit`: the penguins MLP (32 hidden units, 200 full-batch Adam epochs), median of `--runs`.
//! - `sweep`: 24 configurations, each 5-fold cross-validated, then the best retrained (the
//!   trainer's sweep, `--concurrency` trials at once).
//! - `throughput`: the same MLP on `--rows` synthetic rows (7 numeric features, 3 classes),
//!   `--epochs` full-batch epochs: training samples per second.
//! - `gbt`: gradient-boosted trees on penguins (100 rounds, depth 5, eta 0.3), median of runs.
//! - `text`: the review sentiment model on `--text-data` (a `petrel reviews` CSV): reading and
//!   validating the file, hashed TF-IDF of words and word pairs into 2,048 buckets, the same MLP
//!   for `--text-epochs` full-batch epochs, and scoring the held-out 20%: the time to its test
//!   accuracy, median of runs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use petrel_ml::{
    Column, ModelKind, Schema, Stop, SweepGrid, SweepSpec, Table, TrainConfig, Value, parse_csv,
    sweep, train_classifier,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(clap::Args, Debug)]
pub struct TrainBench {
    #[arg(long, default_value = "data/penguins.csv")]
    data: PathBuf,
    /// Runs of each timed fit (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Synthetic rows for the throughput measurement.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Full-batch epochs for the throughput measurement.
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Sweep trials trained at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Run only the throughput measurement (for profiling it alone).
    #[arg(long)]
    throughput_only: bool,
    /// Generated reviews (`petrel reviews --out FILE`) for the text measurement; without it,
    /// the text model is not measured.
    #[arg(long)]
    text_data: Option<PathBuf>,
    /// Full-batch epochs of the text model.
    #[arg(long, default_value_t = 30)]
    text_epochs: usize,
    /// Run only the text measurement.
    #[arg(long, requires = "text_data")]
    text_only: bool,
    /// The digits file (`data/digits.csv`) for the image CNN measurement; without it, the CNN
    /// is not measured.
    #[arg(long)]
    digits_data: Option<PathBuf>,
    /// Epochs of the digits CNN (minibatches of 64).
    #[arg(long, default_value_t = 12)]
    digits_epochs: usize,
    /// Run only the digits measurement.
    #[arg(long, requires = "digits_data", conflicts_with = "text_only")]
    digits_only: bool,
}

/// The median seconds from a file's bytes to a trained, evaluated model of `config`, and that
/// model's metrics, under keys `PREFIX_fit_s`, `PREFIX_test_accuracy`, `PREFIX_rows` and
/// `PREFIX_epochs`.
fn file_fit(
    prefix: &str,
    bytes: &[u8],
    schema: &Schema,
    config: &TrainConfig,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut secs = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let s = Instant::now();
        let table = parse_csv(bytes, schema)?.table;
        let bundle = train_classifier(&table, config, &mut |_, _| {})?;
        secs.push(s.elapsed().as_secs_f64());
        last = Some(bundle.metrics);
    }
    secs.sort_by(f64::total_cmp);
    let metrics = last.context("at least one run")?;
    Ok(json!({
        format!("{prefix}_fit_s"): secs[secs.len() / 2],
        format!("{prefix}_test_accuracy"): metrics.test_accuracy,
        format!("{prefix}_rows"): metrics.n_train + metrics.n_test,
        format!("{prefix}_epochs"): config.epochs,
    }))
}

/// The review sentiment model (`text_*`): the default MLP for `epochs` full-batch epochs.
fn text_fit(bytes: &[u8], epochs: usize, runs: usize) -> anyhow::Result<serde_json::Value> {
    let config = TrainConfig {
        epochs,
        ..TrainConfig::default()
    };
    file_fit("text", bytes, &Schema::reviews(), &config, runs)
}

/// The digits CNN (`digits_*`) for `epochs` epochs of minibatches.
fn digits_fit(bytes: &[u8], epochs: usize, runs: usize) -> anyhow::Result<serde_json::Value> {
    let config = TrainConfig {
        kind: ModelKind::Cnn,
        epochs,
        ..TrainConfig::default()
    };
    file_fit("digits", bytes, &Schema::digits(), &config, runs)
}

/// Seconds to train the default MLP for `epochs` on `rows` synthetic rows, and the bundle.
fn throughput(rows: usize, epochs: usize) -> anyhow::Result<(f64, petrel_ml::ModelBundle)> {
    let table = synthetic(rows, 7);
    let config = TrainConfig {
        epochs,
        ..TrainConfig::default()
    };
    let s = Instant::now();
    let bundle = train_classifier(&table, &config, &mut |_, _| {})?;
    Ok((s.elapsed().as_secs_f64(), bundle))
}

/// The median seconds of `runs` trainings, and the test accuracy they reach.
fn median_fit(table: &Table, config: &TrainConfig, runs: usize) -> anyhow::Result<(f64, f64)> {
    let mut secs = Vec::with_capacity(runs);
    let mut accuracy = 0.0;
    for _ in 0..runs {
        let s = Instant::now();
        let bundle = train_classifier(table, config, &mut |_, _| {})?;
        secs.push(s.elapsed().as_secs_f64());
        accuracy = bundle.metrics.test_accuracy;
    }
    secs.sort_by(f64::total_cmp);
    Ok((secs[secs.len() / 2], accuracy))
}

/// Seven numeric features whose class means differ, with noise: separable but not trivially.
pub fn synthetic(rows: usize, seed: u64) -> Table {
    let mut rng = StdRng::seed_from_u64(seed);
    let features: Vec<Column> = (0..7).map(|i| Column::numeric(format!("x{i}"))).collect();
    let mut out = Table {
        schema: Schema {
            features,
            target: "y".into(),
        },
        rows: Vec::with_capacity(rows),
        targets: Vec::with_capacity(rows),
    };
    for _ in 0..rows {
        let class = rng.random_range(0..3usize);
        out.rows.push(
            (0..7)
                .map(|j| {
                    let centre = ((class * 7 + j) % 5) as f64 * 0.6;
                    Some(Value::Num(centre + rng.random::<f64>() * 2.0 - 1.0))
                })
                .collect(),
        );
        out.targets.push(format!("c{class}"));
    }
    out
}

pub fn run(b: TrainBench) -> anyhow::Result<()> {
    anyhow::ensure!(b.runs > 0, "--runs must be positive");
    if b.throughput_only {
        let (secs, bundle) = throughput(b.rows, b.epochs)?;
        println!(
            "{}",
            json!({
                "throughput_s": secs,
                "throughput_samples_per_s": (bundle.metrics.n_train * b.epochs) as f64 / secs,
            })
        );
        return Ok(());
    }
    let digits = match &b.digits_data {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(digits_fit(&bytes, b.digits_epochs, b.runs)?)
        }
        None => None,
    };
    if b.digits_only {
        println!("{}", digits.unwrap_or_default());
        return Ok(());
    }
    let text = match &b.text_data {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(text_fit(&bytes, b.text_epochs, b.runs)?)
        }
        None => None,
    };
    if b.text_only {
        println!("{}", text.unwrap_or_default());
        return Ok(());
    }
    let bytes =
        std::fs::read(&b.data).with_context(|| format!("cannot read {}", b.data.display()))?;
    let penguins = parse_csv(&bytes, &Schema::penguins())?.table;

    let (fit_s, accuracy) = median_fit(&penguins, &TrainConfig::default(), b.runs)?;

    let spec = SweepSpec {
        grid: SweepGrid {
            hidden_size: vec![16, 32, 64],
            learning_rate: vec![0.003, 0.01],
            weight_decay: vec![0.0, 1e-4],
            dropout: vec![0.0, 0.1],
            ..SweepGrid::default()
        },
        folds: 5,
        concurrency: b.concurrency,
        samples: None,
    };
    let s = Instant::now();
    let outcome = sweep(
        &penguins,
        &TrainConfig::default(),
        &spec,
        &[],
        &(),
        &Stop::new(),
    )?;
    let sweep_s = s.elapsed().as_secs_f64();

    let (throughput_s, bundle) = throughput(b.rows, b.epochs)?;
    let samples = (bundle.metrics.n_train * b.epochs) as f64;

    let gbt = TrainConfig {
        kind: ModelKind::Gbt,
        ..TrainConfig::default()
    };
    let (gbt_fit_s, gbt_accuracy) = median_fit(&penguins, &gbt, b.runs)?;

    let mut out = json!({
            "fit_s": fit_s,
            "fit_test_accuracy": accuracy,
            "sweep_s": sweep_s,
            "sweep_trials": outcome.trials.len(),
            "sweep_best_cv_accuracy": outcome.trials[outcome.best].cv.accuracy.mean,
            "sweep_test_accuracy": outcome.bundle.metrics.test_accuracy,
            "throughput_rows": bundle.metrics.n_train,
            "throughput_epochs": b.epochs,
            "throughput_s": throughput_s,
            "throughput_samples_per_s": samples / throughput_s,
            "throughput_test_accuracy": bundle.metrics.test_accuracy,
            "gbt_fit_s": gbt_fit_s,
            "gbt_test_accuracy": gbt_accuracy,
    });
    for extra in [text, digits].into_iter().flatten() {
        if let (Some(out), serde_json::Value::Object(extra)) = (out.as_object_mut(), extra) {
            out.extend(extra);
        }
    }
    println!("{out}");
    Ok(())
}
