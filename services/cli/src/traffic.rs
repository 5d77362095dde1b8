//! The traffic generator: rows sampled from a CSV go to the predictor; after a delay, their
//! true labels go to the labeler, the way real ground truth arrives late.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use petrel_api::ApiClient;
use petrel_api::labeler::{LabelInput, LabelsRequest, LabelsResponse};
use petrel_api::predictor::{PredictRequest, PredictResponse, PredictRow, RowPrediction};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

#[derive(clap::Args, Debug, Clone)]
pub struct TrafficArgs {
    /// CSV to sample rows from (its header names the columns).
    #[arg(long, default_value = "data/penguins.csv")]
    pub file: PathBuf,
    /// The target column: sent to the labeler, never to the predictor.
    #[arg(long, default_value = "species")]
    pub target: String,
    /// Rows to send.
    #[arg(long, default_value_t = 200)]
    pub rows: usize,
    /// Rows per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Rows per predict request.
    #[arg(long, default_value_t = 5)]
    pub batch: usize,
    /// Delay before a row's true label is posted, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub label_delay_ms: u64,
    /// Shift numeric features, e.g. `bill_length_mm=+12,flipper_length_mm=+25`; for an image
    /// column of pixel values (`image=+4`), every pixel, within the image's range.
    #[arg(long, value_parser = parse_drift, default_value = "")]
    pub drift: Drift,
    /// Sampling seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(
        long,
        env = "PETREL_PREDICTOR_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub predictor_url: String,
    #[arg(
        long,
        env = "PETREL_LABELER_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub labeler_url: String,
}

/// Additive shifts per column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Drift(pub BTreeMap<String, f64>);

fn parse_drift(s: &str) -> Result<Drift, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (col, delta) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected column=+delta"))?;
        let delta: f64 = delta
            .trim()
            .trim_start_matches('+')
            .parse()
            .map_err(|_| format!("{part:?}: {delta:?} is not a number"))?;
        out.insert(col.trim().to_owned(), delta);
    }
    Ok(Drift(out))
}

/// A CSV row as JSON features plus its label.
#[derive(Debug, Clone)]
pub struct Sample {
    pub features: Map<String, Value>,
    pub label: String,
}

/// Reads the CSV with the shared conversion ([`petrel_ml::csv_to_json_rows`]): numbers become
/// JSON numbers, missing-value tokens null. Rows without a label, or unreadable, are skipped.
pub fn load_samples(file: &PathBuf, target: &str) -> anyhow::Result<Vec<Sample>> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let rows = petrel_ml::csv_to_json_rows(&bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    anyhow::ensure!(
        rows.columns.iter().any(|h| h == target),
        "{} has no column {target:?}",
        file.display()
    );
    let mut out = Vec::new();
    for mut features in rows.rows.into_iter().flatten() {
        // A label is text, as the labeler takes it, even when it looks like a number.
        let label = match features.remove(target) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => n.as_f64().map(|x| {
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    format!("{}", x as i64)
                } else {
                    x.to_string()
                }
            }),
            _ => None,
        };
        if let Some(label) = label {
            out.push(Sample { features, label });
        }
    }
    anyhow::ensure!(!out.is_empty(), "{} has no labelled rows", file.display());
    Ok(out)
}

fn shifted(sample: &Sample, drift: &Drift) -> Map<String, Value> {
    let mut f = sample.features.clone();
    for (col, delta) in &drift.0 {
        match f.get(col) {
            Some(Value::Number(n)) => {
                if let Some(v) = n
                    .as_f64()
                    .and_then(|x| serde_json::Number::from_f64(x + delta))
                {
                    f.insert(col.clone(), Value::Number(v));
                }
            }
            Some(Value::String(s)) => {
                if let Some(brighter) = brighten(s, *delta) {
                    f.insert(col.clone(), Value::String(brighter));
                }
            }
            _ => {}
        }
    }
    f
}

/// An image cell of space-separated pixel values with `delta` added to every pixel, kept
/// within 0 and the image's own brightest pixel (so it stays inside its column's range);
/// `None` for anything that is not such a cell.
fn brighten(cell: &str, delta: f64) -> Option<String> {
    let pixels: Vec<f64> = cell
        .split_whitespace()
        .map(|t| t.parse::<f64>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()?;
    if pixels.len() < 2 {
        return None;
    }
    let max = pixels.iter().copied().fold(0.0, f64::max);
    let out: Vec<String> = pixels
        .iter()
        .map(|p| format!("{}", (p + delta).clamp(0.0, max)))
        .collect();
    Some(out.join(" "))
}

/// What a traffic run did.
#[derive(Debug, Default)]
pub struct Summary {
    pub sent: usize,
    pub correct: usize,
    pub labelled: usize,
    pub first: Vec<RowPrediction>,
}

/// Sends the traffic; returns once every row is predicted and every label posted.
pub async fn send(
    args: &TrafficArgs,
    samples: &[Sample],
    id_prefix: &str,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        args.rate > 0.0 && args.batch > 0,
        "rate and batch must be positive"
    );
    let predictor = ApiClient::new(&args.predictor_url);
    let labeler = ApiClient::new(&args.labeler_url);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut summary = Summary::default();
    let pause = Duration::from_secs_f64(args.batch as f64 / args.rate);
    let mut labels = tokio::task::JoinSet::new();
    let mut n = 0;
    while n < args.rows {
        let size = args.batch.min(args.rows - n);
        let picked: Vec<&Sample> = (0..size)
            .map(|_| &samples[rng.random_range(0..samples.len())])
            .collect();
        let rows: Vec<PredictRow> = picked
            .iter()
            .enumerate()
            .map(|(i, s)| PredictRow {
                inference_id: Some(format!("{id_prefix}-{}", n + i)),
                features: shifted(s, &args.drift),
            })
            .collect();
        let resp: PredictResponse = predictor
            .post("/v1/predict", &PredictRequest { rows })
            .await
            .context("predict request failed")?;
        let truth: Vec<LabelInput> = resp
            .predictions
            .iter()
            .zip(&picked)
            .map(|(p, s)| LabelInput {
                inference_id: p.inference_id.clone(),
                label: s.label.clone(),
            })
            .collect();
        summary.correct += resp
            .predictions
            .iter()
            .zip(&picked)
            .filter(|(p, s)| p.class == s.label)
            .count();
        summary.sent += size;
        if summary.first.len() < 3 {
            summary
                .first
                .extend(resp.predictions.into_iter().take(3 - summary.first.len()));
        }
        let labeler = labeler.clone();
        let delay = Duration::from_millis(args.label_delay_ms);
        labels.spawn(async move {
            tokio::time::sleep(delay).await;
            let r: Result<LabelsResponse, _> =
                labeler.post("/v1/labels", &LabelsRequest::new(truth)).await;
            r.map(|r| r.accepted)
        });
        n += size;
        tokio::time::sleep(pause).await;
    }
    while let Some(r) = labels.join_next().await {
        summary.labelled += r
            .context("label task failed")?
            .context("posting labels failed")?;
    }
    Ok(summary)
}

pub async fn run_cli(args: TrafficArgs) -> anyhow::Result<()> {
    let samples = load_samples(&args.file, &args.target)?;
    let prefix = format!("traffic-{}", uuid::Uuid::now_v7().simple());
    let s = send(&args, &samples, &prefix).await?;
    println!(
        "sent {} rows ({} predicted correctly), posted {} labels",
        s.sent, s.correct, s.labelled
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_drift_specs() {
        let d = parse_drift("bill_length_mm=+12, flipper_length_mm=-3.5").unwrap();
        assert_eq!(d.0["bill_length_mm"], 12.0);
        assert_eq!(d.0["flipper_length_mm"], -3.5);
        assert!(parse_drift("").unwrap().0.is_empty());
        assert!(parse_drift("x").is_err());
        assert!(parse_drift("x=abc").is_err());
    }

    #[test]
    fn loads_penguins_and_shifts() {
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/penguins.csv"
        ));
        let samples = load_samples(&path, "species").unwrap();
        assert_eq!(samples.len(), 344);
        assert!(!samples[0].features.contains_key("species"));
        assert_eq!(samples[0].features["island"], "Torgersen");
        assert_eq!(samples[3].features["bill_length_mm"], Value::Null);
        let drift = parse_drift("bill_length_mm=+10").unwrap();
        let f = shifted(&samples[0], &drift);
        assert!((f["bill_length_mm"].as_f64().unwrap() - 49.1).abs() < 1e-9);
    }

    #[test]
    fn image_cells_brighten_within_their_range() {
        assert_eq!(brighten("0 4 16 12", 4.0).as_deref(), Some("4 8 16 16"));
        assert_eq!(brighten("0 4 16 12", -6.0).as_deref(), Some("0 0 10 6"));
        assert_eq!(brighten("Torgersen", 4.0), None);
        assert_eq!(brighten("3", 4.0), None);
        let path = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/digits.csv"
        ));
        let samples = load_samples(&path, "digit").unwrap();
        assert_eq!(samples.len(), 1797);
        assert_eq!(samples[0].label, "0");
        let f = shifted(&samples[0], &parse_drift("image=+4").unwrap());
        let pixels = petrel_ml::image::parse_image_text(
            f["image"].as_str().unwrap(),
            &petrel_ml::Schema::digits().features[0].image.unwrap(),
        )
        .unwrap();
        assert_eq!(pixels[0], 4.0);
    }
}
