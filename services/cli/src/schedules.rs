//! `petrel schedules ...` and `petrel backfill`: ingest's schedules over its HTTP API.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use petrel_api::ingest::{
    BackfillRequest, BackfillResponse, Reprocess, Schedule, ScheduleRun, ScheduleSpec,
};
use petrel_api::{ApiClient, client::segment};

#[derive(clap::Args, Debug)]
pub struct IngestUrl {
    #[arg(
        long,
        env = "PETREL_INGEST_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub ingest_url: String,
}

#[derive(Subcommand, Debug)]
pub enum Schedules {
    /// Create or replace a schedule from a JSON spec file (see docs/api.md, "Schedules").
    Put {
        name: String,
        /// The spec: {"every": "1h" | "cron": "0 2 * * *", "timezone": "UTC", "start": ...,
        /// "catchup": false, "dataset": {"name", "schema", "path" | "generate"}}.
        #[arg(long)]
        file: PathBuf,
        #[command(flatten)]
        url: IngestUrl,
    },
    /// List schedules with their next interval and runs by status.
    List {
        #[command(flatten)]
        url: IngestUrl,
    },
    /// Show one schedule's runs, newest first.
    Runs {
        name: String,
        /// Only runs in this status: queued, running, succeeded, rejected or failed.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        url: IngestUrl,
    },
    /// Delete a schedule and its runs (the datasets they made stay).
    Delete {
        name: String,
        #[command(flatten)]
        url: IngestUrl,
    },
}

#[derive(clap::Args, Debug)]
pub struct BackfillArgs {
    /// The schedule.
    pub schedule: String,
    /// First interval start to re-create (RFC 3339, such as 2026-11-01T00:00:00Z).
    #[arg(long)]
    pub from: DateTime<Utc>,
    /// Re-create the intervals starting before this.
    #[arg(long)]
    pub to: DateTime<Utc>,
    /// Which existing runs to run again: skip-existing (none), failed (failed and rejected
    /// ones) or all.
    #[arg(long, default_value = "skip-existing", value_parser = parse_reprocess)]
    pub reprocess: Reprocess,
    /// Print what would happen, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub url: IngestUrl,
}

fn parse_reprocess(s: &str) -> Result<Reprocess, String> {
    match s {
        "skip-existing" | "skip_existing" => Ok(Reprocess::SkipExisting),
        "failed" => Ok(Reprocess::Failed),
        "all" => Ok(Reprocess::All),
        _ => Err(format!("{s:?} is not skip-existing, failed or all")),
    }
}

pub async fn run(command: Schedules) -> anyhow::Result<()> {
    match command {
        Schedules::Put { name, file, url } => {
            let text =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let spec: ScheduleSpec = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a schedule spec", file.display()))?;
            let saved: Schedule = ApiClient::new(&url.ingest_url)
                .put(&format!("/v1/schedules/{}", segment(&name)), &spec)
                .await?;
            print_schedule(&saved);
        }
        Schedules::List { url } => {
            let list: serde_json::Value =
                ApiClient::new(&url.ingest_url).get("/v1/schedules").await?;
            let schedules: Vec<Schedule> = serde_json::from_value(list["schedules"].clone())
                .context("ingest answered an unexpected schedule list")?;
            if schedules.is_empty() {
                println!("no schedules");
            }
            for s in &schedules {
                print_schedule(s);
            }
        }
        Schedules::Runs {
            name,
            status,
            limit,
            url,
        } => {
            let mut path = format!("/v1/schedules/{}/runs?limit={limit}", segment(&name));
            if let Some(status) = status {
                path.push_str(&format!("&status={}", segment(&status)));
            }
            let list: serde_json::Value = ApiClient::new(&url.ingest_url).get(&path).await?;
            let runs: Vec<ScheduleRun> = serde_json::from_value(list["runs"].clone())
                .context("ingest answered an unexpected run list")?;
            if runs.is_empty() {
                println!("no runs");
            }
            for r in &runs {
                println!(
                    "{} .. {}  {:<9}  {:<9}  attempts {}{}{}",
                    r.start.to_rfc3339(),
                    r.end.to_rfc3339(),
                    r.status.as_str(),
                    r.trigger,
                    r.attempts,
                    r.dataset_id
                        .map(|d| format!("  dataset {d}"))
                        .unwrap_or_default(),
                    r.error
                        .as_deref()
                        .map(|e| format!("  error: {e}"))
                        .unwrap_or_default(),
                );
            }
        }
        Schedules::Delete { name, url } => {
            let _: serde_json::Value = ApiClient::new(&url.ingest_url)
                .call::<(), _>(
                    reqwest::Method::DELETE,
                    &format!("/v1/schedules/{}", segment(&name)),
                    None,
                )
                .await?;
            println!("schedule {name} deleted");
        }
    }
    Ok(())
}

fn print_schedule(s: &Schedule) {
    let cadence = match (&s.spec.every, &s.spec.cron) {
        (Some(every), _) => format!("every {every}"),
        (_, Some(cron)) => format!("cron {cron:?} in {}", s.spec.timezone),
        _ => "?".to_owned(),
    };
    let runs: Vec<String> = s.runs.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!(
        "{}: {cadence}, catch-up {}, {} -> dataset {}{}{}",
        s.name,
        if s.spec.catchup { "on" } else { "off" },
        if s.spec.enabled { "enabled" } else { "paused" },
        s.spec.dataset.name,
        s.next_interval
            .as_ref()
            .map(|i| format!(
                "; next interval {} .. {}",
                i.start.to_rfc3339(),
                i.end.to_rfc3339()
            ))
            .unwrap_or_default(),
        if runs.is_empty() {
            String::new()
        } else {
            format!("; runs: {}", runs.join(", "))
        },
    );
}

pub async fn backfill(a: BackfillArgs) -> anyhow::Result<()> {
    let resp: BackfillResponse = ApiClient::new(&a.url.ingest_url)
        .post(
            &format!("/v1/schedules/{}/backfill", segment(&a.schedule)),
            &BackfillRequest {
                from: a.from,
                to: a.to,
                reprocess: a.reprocess,
                dry_run: a.dry_run,
            },
        )
        .await?;
    for i in &resp.intervals {
        println!(
            "{} .. {}  {}{}",
            i.start.to_rfc3339(),
            i.end.to_rfc3339(),
            i.action,
            i.status
                .map(|s| format!(" (was {})", s.as_str()))
                .unwrap_or_default()
        );
    }
    println!(
        "{}{} to create, {} to run again, {} left as they are",
        if resp.dry_run { "dry run: " } else { "" },
        resp.created,
        resp.requeued,
        resp.skipped
    );
    Ok(())
}
