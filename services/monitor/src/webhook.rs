//! Optional webhook: every alert notification POSTed to `--webhook-url` as its JSON event,
//! signed with HMAC-SHA256, retried with backoff until the receiver answers 2xx.
//!
//! Delivery reads `alerts.>` through a durable JetStream consumer, so a notification is
//! delivered even when the monitor restarts between publishing and posting, and each delivered
//! event id is recorded, so a redelivered event is not posted again. The one window left is a
//! crash after the receiver's 2xx and before that record commits: the receiver then sees the
//! same `X-Petrel-Event-Id` twice and should deduplicate by it.

use std::time::Duration;

use hmac::{Hmac, Mac};
use petrel_events::Envelope;
use petrel_events::consumer::Outcome;
use petrel_events::payloads::Alert;
use sha2::Sha256;

use crate::AppState;

/// Where alerts go.
#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: String,
    pub secret: Option<petrel_runtime::config::Secret>,
    pub client: reqwest::Client,
}

/// `sha256=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`: the timestamp is signed
/// with the body so a captured request cannot be replayed later under a new timestamp.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Consumer handler: posts one alert.
pub async fn deliver(s: &AppState, hook: &Webhook, env: Envelope<Alert>) -> Outcome {
    match deliver_once(s, hook, &env).await {
        Ok(()) => Outcome::Done,
        Err(e) => {
            tracing::warn!(event.id = %env.id, url = %hook.url, error = format!("{e:#}"), "alert webhook failed; retrying with backoff");
            Outcome::Retry(Duration::from_secs(2))
        }
    }
}

async fn deliver_once(s: &AppState, hook: &Webhook, env: &Envelope<Alert>) -> anyhow::Result<()> {
    let done: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = 'monitor-webhook' AND event_id = $1)",
    )
    .bind(env.id)
    .fetch_one(&s.infra.pool)
    .await?;
    if done {
        return Ok(());
    }
    let body = env.to_bytes()?;
    let timestamp = chrono::Utc::now().timestamp();
    let mut req = hook
        .client
        .post(&hook.url)
        .header("content-type", "application/json")
        .header("x-petrel-event-id", env.id.to_string())
        .header("x-petrel-timestamp", timestamp.to_string())
        .timeout(Duration::from_secs(10));
    if let Some(secret) = &hook.secret {
        req = req.header(
            "x-petrel-signature",
            signature(secret.expose(), timestamp, &body),
        );
    }
    let resp = req.body(body).send().await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "the receiver answered {}",
        resp.status()
    );
    let mut tx = s.infra.pool.begin().await?;
    petrel_db::claim_event(&mut tx, "monitor-webhook", env.id).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()` in Python.
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_and_body() {
        assert_eq!(
            signature("key", 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
