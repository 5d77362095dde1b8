//! `petrel train`: start a training job on the trainer and follow it to its end with a
//! progress bar (trials, epochs, ETA). Ctrl-C cancels the job; `--detach` leaves it running.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use petrel_api::ApiClient;
use serde_json::{Map, Value, json};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The dataset to train on, by name (as ingested); its newest version unless `--version`.
    #[arg(long, default_value = "penguins")]
    pub dataset: String,
    #[arg(long)]
    pub version: Option<i32>,
    /// The model to register under; the dataset's name by default.
    #[arg(long)]
    pub model: Option<String>,
    /// A training setting that differs from the trainer's, e.g. `--set epochs=300
    /// --set hidden_size=64`, `--set kind=gbt --set rounds=200` for gradient-boosted trees, or
    /// `--set kind=cnn --set epochs=12` for the image CNN (settings: kind, hidden_size, depth,
    /// dropout, epochs, batch_size, channels, patience, validation_fraction, learning_rate,
    /// weight_decay, rounds, max_depth, eta, text_buckets, text_ngrams, test_fraction, seed).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    pub settings: Vec<(String, Value)>,
    /// Cross-validate with this many folds (0: off).
    #[arg(long)]
    pub cv_folds: Option<usize>,
    /// A sweep file (JSON: `grid`, `folds`, `concurrency`, `samples`).
    #[arg(long)]
    pub sweep: Option<PathBuf>,
    /// Print the job and return instead of following it.
    #[arg(long)]
    pub detach: bool,
    #[arg(
        long,
        env = "PETREL_TRAINER_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub trainer_url: String,
    /// How often to ask how the job is doing (milliseconds).
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
}

fn parse_setting(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.trim().to_owned(), value))
}

pub async fn run(a: TrainArgs) -> anyhow::Result<()> {
    let mut body = json!({
        "dataset": a.dataset,
        "config": a.settings.iter().cloned().collect::<Map<String, Value>>(),
    });
    if let Some(v) = a.version {
        body["version"] = json!(v);
    }
    if let Some(m) = &a.model {
        body["model_name"] = json!(m);
    }
    if let Some(k) = a.cv_folds {
        body["cv_folds"] = json!(k);
    }
    if let Some(path) = &a.sweep {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the sweep file {}", path.display()))?;
        body["sweep"] = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?;
    }
    let client = ApiClient::new(&a.trainer_url);
    let job: Value = client
        .post("/v1/jobs", &body)
        .await
        .context("the trainer did not take the job")?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "training job {id} queued: {} on {}",
        job["model_name"].as_str().unwrap_or("?"),
        job["dataset_name"].as_str().unwrap_or("?")
    );
    if a.detach {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(());
    }
    let path = format!("/v1/jobs/{id}");
    let every = Duration::from_millis(a.poll_ms.max(50));
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let mut cancelled = false;
    let job = loop {
        let job: Value = client
            .get(&path)
            .await
            .context("cannot ask the trainer about the job")?;
        draw(&job);
        if is_finished(&job) {
            eprintln!();
            break job;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut interrupt, if !cancelled => {
                cancelled = true;
                eprintln!("\ncancelling job {id} (it stops within an epoch)...");
                let _: Value = client
                    .post(&format!("/v1/jobs/{id}/cancel"), &json!({}))
                    .await
                    .context("the trainer did not take the cancel")?;
            }
        }
    };
    report(&job)
}

fn is_finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn report(job: &Value) -> anyhow::Result<()> {
    let id = job["id"].as_str().unwrap_or_default();
    match job["status"].as_str() {
        Some("succeeded") => {
            let m = &job["metrics"];
            println!(
                "model:     {} version {}",
                job["model_name"].as_str().unwrap_or("?"),
                job["model_version"]
            );
            println!("run:       {}", job["run_id"].as_str().unwrap_or("-"));
            println!(
                "test:      accuracy {} log loss {} on {} held-out rows",
                num(&m["test_accuracy"]),
                num(&m["test_log_loss"]),
                m["n_test"]
            );
            if let Some(c) = job["champion"].as_object() {
                match c["score"]["accuracy"].as_f64() {
                    Some(acc) => println!(
                        "champion:  version {} ({}) scored accuracy {acc:.4} on the same rows",
                        c["version"],
                        c["alias"].as_str().unwrap_or("?")
                    ),
                    None => println!(
                        "champion:  version {} not scored: {}",
                        c["version"],
                        c["score"]["unavailable"].as_str().unwrap_or("?")
                    ),
                }
            }
            if let Some(p) = job["promotion"].as_object() {
                println!("decision:  {}", p["reason"].as_str().unwrap_or("?"));
            }
            Ok(())
        }
        Some("cancelled") => anyhow::bail!("training job {id} was cancelled"),
        _ => anyhow::bail!(
            "training job {id} failed: {}",
            job["error"].as_str().unwrap_or("no reason given")
        ),
    }
}

fn num(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.4}"))
}

/// One line of progress, redrawn in place.
fn draw(job: &Value) {
    let line = progress_line(job, 30, chrono::Utc::now());
    let mut err = std::io::stderr();
    let _ = write!(err, "\r{line}");
    let _ = err.flush();
}

/// How much of the job is done, 0 to 1: a sweep's trials (its final fit counting as one more),
/// else the epochs of the fit.
fn fraction(job: &Value) -> f64 {
    let get = |k: &str| job[k].as_f64().unwrap_or(0.0);
    let epochs = get("epochs").max(1.0);
    let epoch = (get("epoch") / epochs).clamp(0.0, 1.0);
    let trials = get("trials_total");
    if is_finished(job) && job["status"] == "succeeded" {
        return 1.0;
    }
    if trials > 0.0 {
        let done = get("trials_done").min(trials);
        let last = if done >= trials { epoch } else { 0.0 };
        (done + last) / (trials + 1.0)
    } else {
        epoch
    }
}

/// `[#####-----]  42% trials 3/24 epoch 84/200 loss 0.2311 training  ETA 12s`.
fn progress_line(job: &Value, width: usize, now: chrono::DateTime<chrono::Utc>) -> String {
    let f = fraction(job);
    let filled = ((f * width as f64) as usize).min(width);
    let mut line = format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        "-".repeat(width - filled),
        (f * 100.0) as u32
    );
    if job["trials_total"].as_i64().unwrap_or(0) > 0 {
        line.push_str(&format!(
            " trials {}/{}",
            job["trials_done"], job["trials_total"]
        ));
    }
    line.push_str(&format!(" epoch {}/{}", job["epoch"], job["epochs"]));
    if let Some(loss) = job["train_loss"].as_f64() {
        line.push_str(&format!(" loss {loss:.4}"));
    }
    let phase = job["phase"]
        .as_str()
        .or(job["status"].as_str())
        .unwrap_or("?");
    line.push_str(&format!(" {phase}"));
    let started = job["started_at"]
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    if let Some(t) = started
        && f > 0.0
        && f < 1.0
        && !is_finished(job)
    {
        let elapsed = (now - t.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
        let eta = elapsed * (1.0 - f) / f;
        line.push_str(&format!("  ETA {}", human(eta)));
    }
    line.push_str("   ");
    line
}

fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_counts_epochs_or_trials_and_estimates_the_rest() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:10Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let job = json!({
            "status": "running", "phase": "training", "epoch": 50, "epochs": 200,
            "train_loss": 0.5, "trials_total": 0, "trials_done": 0,
            "started_at": "2026-01-01T00:00:00Z",
        });
        let line = progress_line(&job, 8, now);
        // A quarter done in 10 s: 30 s to go.
        assert!(
            line.starts_with("[##------]  25% epoch 50/200 loss 0.5000 training  ETA 30s"),
            "{line}"
        );
        let sweep = json!({
            "status": "running", "phase": "sweep", "epoch": 0, "epochs": 200,
            "trials_total": 3, "trials_done": 1, "started_at": "2026-01-01T00:00:00Z",
        });
        assert!((fraction(&sweep) - 0.25).abs() < 1e-12);
        assert!(progress_line(&sweep, 4, now).contains("trials 1/3"));
        let done = json!({"status": "succeeded", "epoch": 200, "epochs": 200});
        assert_eq!(fraction(&done), 1.0);
        assert!(!progress_line(&done, 4, now).contains("ETA"));
        assert_eq!(human(75.0), "1m15s");
        assert_eq!(human(3700.0), "1h01m");
    }

    #[test]
    fn settings_parse_as_json_or_text() {
        assert_eq!(
            parse_setting("epochs=300").unwrap(),
            ("epochs".into(), json!(300))
        );
        assert_eq!(
            parse_setting("name=abc").unwrap(),
            ("name".into(), json!("abc"))
        );
        assert!(parse_setting("epochs").is_err());
    }
}
