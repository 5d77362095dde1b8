//! Whether this process's copy of the prediction log has caught up with the log as it stood
//! when the process started.
//!
//! A retried caller-chosen inference id that this process has not answered is looked up in
//! Postgres ([`crate::store`]). That copy is written downstream of JetStream, so right after a
//! restart the rows the previous process logged in its last moments may still be on their way:
//! a lookup then would miss them and log the id a second time. The fence records the stream
//! sequence of the last `predictions.logged` event at start and opens once the `predictor-log`
//! consumer has acknowledged everything up to it; until then, such lookups wait, and answer
//! 503 with `Retry-After` if it takes longer than the lookup's time limit. Events the previous
//! process had received but not acknowledged come back after the consumer's ack wait (5 s), so
//! that is about how long the fence can stay closed after a restart; with nothing left
//! unacknowledged it opens at once.

use std::time::Duration;

use petrel_events::Bus;
use petrel_events::payloads::subjects;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The durable consumer that writes the Postgres copy.
pub const LOG_CONSUMER: &str = "predictor-log";

/// How often the fence checks the consumer while closed.
const POLL: Duration = Duration::from_millis(50);

/// Open once the copy has caught up; cheap to clone.
#[derive(Clone, Debug)]
pub struct LogFence {
    open: watch::Receiver<bool>,
}

/// The side that opens the fence.
#[derive(Debug)]
pub struct FenceKeeper {
    open: watch::Sender<bool>,
}

/// A closed fence and its keeper.
#[must_use]
pub fn fence() -> (LogFence, FenceKeeper) {
    let (tx, rx) = watch::channel(false);
    (LogFence { open: rx }, FenceKeeper { open: tx })
}

impl LogFence {
    /// Whether the copy has caught up.
    pub fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Waits until the copy has caught up (or the keeper is gone).
    pub async fn wait(&self) {
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
    }
}

impl FenceKeeper {
    /// Finds the last `predictions.logged` event now and opens the fence once the log
    /// consumer has acknowledged it; retries through NATS outages until `cancel`.
    pub async fn run(self, bus: Bus, cancel: CancellationToken) {
        let subject = bus.namespace().subject(subjects::PREDICTIONS_LOGGED);
        let target = loop {
            match last_sequence(&bus, &subject).await {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the prediction log's end yet");
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        };
        loop {
            if target == 0 || acked_through(&bus).await.is_some_and(|s| s >= target) {
                tracing::info!(
                    stream.sequence = target,
                    "the log's Postgres copy has caught up"
                );
                let _ = self.open.send(true);
                return;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }
}

/// The stream sequence of the last event on `subject`, 0 when there is none.
async fn last_sequence(bus: &Bus, subject: &str) -> anyhow::Result<u64> {
    let stream = bus.ensure_stream().await?;
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(m.sequence),
        Err(e)
            if matches!(
                e.kind(),
                async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
            ) =>
        {
            Ok(0)
        }
        Err(e) => Err(e.into()),
    }
}

/// The stream sequence through which the log consumer has acknowledged every event, if it
/// exists yet.
async fn acked_through(bus: &Bus) -> Option<u64> {
    let stream = bus.ensure_stream().await.ok()?;
    let info = stream.consumer_info(LOG_CONSUMER).await.ok()?;
    Some(info.ack_floor.stream_sequence)
}
