//! `petrel batch`: score a CSV in bulk with the predictor and follow the job to its end.
//!
//! A local file is first put in the artifact store the services share (`--artifact-root`, the
//! same directory the predictor reads), under `batch-inputs/<sha256>.csv`, so the same file is
//! stored once; a `file://` URI is taken as it is. The job is then posted to `POST /v1/batch`
//! and polled until it finishes, with a progress bar on stderr.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use petrel_api::ApiClient;
use petrel_api::predictor::{BatchJob, BatchStatus, CreateBatch};

#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// The CSV to score: a local file (stored in the artifact store first) or a `file://` URI
    /// already in the store. Its header names the columns; a label column is ignored.
    #[arg(long)]
    pub input: String,
    /// The model to score with (`name@alias` or `name/VERSION`); the served alias if absent.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(
        long,
        env = "PETREL_PREDICTOR_URL",
        default_value = "http://127.0.0.1:8084"
    )]
    pub predictor_url: String,
    /// The artifact store the predictor reads: a directory path or `file://` URL.
    #[arg(
        long,
        env = "PETREL_ARTIFACT_ROOT",
        default_value = ".petrel/artifacts"
    )]
    pub artifact_root: String,
    /// How often to ask how the job is doing (milliseconds).
    #[arg(long, default_value_t = 250)]
    pub poll_ms: u64,
}

pub async fn run(a: BatchArgs) -> anyhow::Result<()> {
    let input_uri = if a.input.starts_with("file://") {
        a.input.clone()
    } else {
        store_input(&a.artifact_root, Path::new(&a.input)).await?
    };
    let client = ApiClient::new(&a.predictor_url);
    let job: BatchJob = client
        .post(
            "/v1/batch",
            &CreateBatch {
                input_uri,
                model: a.model.clone(),
            },
        )
        .await
        .context("the predictor did not take the batch")?;
    eprintln!("batch job {} queued", job.id);
    let path = format!("/v1/batch/{}", job.id);
    let every = Duration::from_millis(a.poll_ms.max(50));
    let job = loop {
        let job: BatchJob = client
            .get(&path)
            .await
            .context("cannot ask the predictor about the job")?;
        draw(&job);
        if job.status.is_finished() {
            eprintln!();
            break job;
        }
        tokio::time::sleep(every).await;
    };
    match job.status {
        BatchStatus::Succeeded => {
            println!("output: {}", job.output_uri.as_deref().unwrap_or("-"));
            println!(
                "run:    {}",
                job.run_id.map(|r| r.to_string()).unwrap_or_default()
            );
            println!(
                "rows:   {} scored, {} rejected (see the error column)",
                job.rows_done - job.rows_rejected,
                job.rows_rejected
            );
            Ok(())
        }
        _ => anyhow::bail!(
            "batch job {} failed: {}",
            job.id,
            job.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// Stores a local file in the shared artifact store, keyed by its content.
async fn store_input(root: &str, file: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let hash = petrel_store::content_hash(&bytes);
    let key = format!("batch-inputs/{}.csv", hash.trim_start_matches("sha256:"));
    let store = petrel_store::open(root).context("cannot open the artifact store")?;
    store
        .put(&key, bytes::Bytes::from(bytes))
        .await
        .context("cannot store the input in the artifact store")
}

/// One line of progress, redrawn in place.
fn draw(job: &BatchJob) {
    let line = progress_line(job, 30);
    let mut err = std::io::stderr();
    let _ = write!(err, "\r{line}");
    let _ = err.flush();
}

/// `[#####-----]  42% 1234/2900 rows running`: the bar `width` wide.
fn progress_line(job: &BatchJob, width: usize) -> String {
    let status = match job.status {
        BatchStatus::Queued => "queued",
        BatchStatus::Running => "running",
        BatchStatus::Succeeded => "succeeded",
        BatchStatus::Failed => "failed",
    };
    match job.rows_total {
        Some(total) if total > 0 => {
            let done = job.rows_done.clamp(0, total);
            let filled = (done as usize * width) / total as usize;
            format!(
                "[{}{}] {:>3}% {done}/{total} rows {status}   ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                done * 100 / total
            )
        }
        _ => format!("[{}] {status}   ", "-".repeat(width)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(done: i64, total: Option<i64>, status: BatchStatus) -> BatchJob {
        BatchJob {
            id: uuid::Uuid::nil(),
            event_id: None,
            model: None,
            model_name: None,
            model_version: None,
            input_uri: "file:///x.csv".into(),
            status,
            rows_total: total,
            rows_done: done,
            rows_rejected: 0,
            output_uri: None,
            run_id: None,
            error: None,
            attempts: 1,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn the_bar_fills_with_the_rows_done() {
        assert_eq!(
            progress_line(&job(5, Some(10), BatchStatus::Running), 10),
            "[#####-----]  50% 5/10 rows running   "
        );
        assert_eq!(
            progress_line(&job(0, None, BatchStatus::Queued), 4),
            "[----] queued   "
        );
        assert!(progress_line(&job(10, Some(10), BatchStatus::Succeeded), 10).contains("100%"));
    }
}
