//! `petrel alerts`: follow alerts as they are published (a JetStream consumer, so each alert
//! is printed once even when the monitor republishes after a crash), or list them from the
//! monitor.

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use petrel_api::ApiClient;
use petrel_api::monitor::{AlertList, AlertRecord};
use petrel_events::Envelope;
use petrel_events::payloads::{Alert, AlertStatus};

#[derive(clap::Args, Debug)]
pub struct AlertsArgs {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    tail: TailArgs,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Print alerts as they arrive (the default).
    Tail(TailArgs),
    /// List recent alerts from the monitor (`GET /v1/alerts`).
    List(ListArgs),
}

#[derive(clap::Args, Debug)]
pub struct TailArgs {
    #[arg(long, env = "PETREL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "PETREL_NATS_PREFIX", default_value = "")]
    nats_prefix: String,
    /// Stop after this many alerts (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    count: usize,
    /// Start from the oldest alert the stream still holds instead of the next new one.
    #[arg(long)]
    all: bool,
    /// Print each alert as its JSON event, one per line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ListArgs {
    #[arg(
        long,
        env = "PETREL_MONITOR_URL",
        default_value = "http://127.0.0.1:8086"
    )]
    monitor_url: String,
    /// Only alerts of episodes still open.
    #[arg(long)]
    open: bool,
    #[arg(long)]
    model: Option<String>,
    /// drift, prediction_drift, data_quality, accuracy, estimated_accuracy, confidence, trend.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long, default_value_t = 20)]
    limit: usize,
}

pub async fn run(a: AlertsArgs) -> anyhow::Result<()> {
    match a.action {
        Some(Action::Tail(t)) => tail(t).await,
        Some(Action::List(l)) => list(l).await,
        None => tail(a.tail).await,
    }
}

async fn tail(a: TailArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(&a.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", a.nats_url))?;
    let ns = petrel_events::Namespace::new(Some(&a.nats_prefix));
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(ns.stream_name()).await.with_context(|| {
        format!(
            "no Petrel stream {} on this NATS server (are the services running with the same --nats-prefix?)",
            ns.stream_name()
        )
    })?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: ns.subject("alerts.>"),
            deliver_policy: if a.all {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .context("cannot create a consumer for alerts.>")?;
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while let Some(msg) = messages.next().await {
        let msg = msg.context("the alert stream broke off")?;
        if a.json {
            println!("{}", String::from_utf8_lossy(&msg.payload));
        } else {
            match Envelope::<Alert>::from_bytes(&msg.payload) {
                Ok(env) => println!("{} {}", env.time.format("%H:%M:%S"), format(&env.data)),
                Err(e) => println!("unreadable alert on {}: {e}", msg.subject),
            }
        }
        seen += 1;
        if a.count > 0 && seen >= a.count {
            break;
        }
    }
    Ok(())
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let mut query = format!("/v1/alerts?limit={}", a.limit);
    if a.open {
        query.push_str("&open=true");
    }
    if let Some(m) = &a.model {
        query.push_str(&format!("&model={}", urlencode(m)));
    }
    if let Some(k) = &a.kind {
        query.push_str(&format!("&kind={}", urlencode(k)));
    }
    let list: AlertList = ApiClient::new(&a.monitor_url).get(&query).await?;
    if list.alerts.is_empty() {
        println!("no alerts");
    }
    for r in list.alerts.iter().rev() {
        println!("{}", format_record(r));
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One line for people.
pub fn format(a: &Alert) -> String {
    let head = match a.status {
        AlertStatus::Opened => "ALERT",
        AlertStatus::Renotified => "STILL",
        AlertStatus::Resolved => "RESOLVED",
    };
    format!("{head} {} [{}] {}", a.kind, a.severity.as_str(), a.message)
}

fn format_record(r: &AlertRecord) -> String {
    format!(
        "{} {} {} [{}] {}{}",
        r.created_at.format("%Y-%m-%d %H:%M:%S"),
        r.status,
        r.kind,
        r.severity,
        r.message,
        if r.episode_open { " (open)" } else { "" }
    )
}
