//! What the bus records through the `metrics` facade (rendered by the service's `/metrics`):
//! events published per subject, and per consumer the events handled by outcome, the time a
//! handler took, the events dead-lettered and the consumer's lag.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Help texts, registered once by the process's recorder.
pub fn describe() {
    describe_counter!(
        "petrel_events_published_total",
        "Events stored by JetStream, by subject (without the deployment's prefix) and result"
    );
    describe_counter!(
        "petrel_events_handled_total",
        "Event deliveries a consumer finished, by consumer and outcome: done, retry (nak with \
         backoff), rejected (set aside as invalid) or exhausted (set aside after max deliveries)"
    );
    describe_counter!(
        "petrel_events_dead_lettered_total",
        "Events set aside on deadletter.<consumer>, by consumer"
    );
    describe_histogram!(
        "petrel_event_handle_duration_seconds",
        Unit::Seconds,
        "Time a consumer's handler took per delivery (per batch for batch consumers)"
    );
    describe_gauge!(
        "petrel_consumer_pending",
        "Events in the stream not yet delivered to a consumer (its lag), as of its last delivery"
    );
}

pub(crate) fn published(subject: &str, ok: bool) {
    metrics::counter!(
        "petrel_events_published_total",
        "subject" => subject.to_owned(),
        "result" => if ok { "ok" } else { "error" },
    )
    .increment(1);
}

pub(crate) fn handled(consumer: &str, outcome: &'static str, n: u64) {
    metrics::counter!(
        "petrel_events_handled_total",
        "consumer" => consumer.to_owned(),
        "outcome" => outcome,
    )
    .increment(n);
}

pub(crate) fn dead_lettered(consumer: &str) {
    metrics::counter!("petrel_events_dead_lettered_total", "consumer" => consumer.to_owned())
        .increment(1);
}

pub(crate) fn handle_time(consumer: &str, seconds: f64) {
    metrics::histogram!("petrel_event_handle_duration_seconds", "consumer" => consumer.to_owned())
        .record(seconds);
}

pub(crate) fn pending(consumer: &str, pending: u64) {
    metrics::gauge!("petrel_consumer_pending", "consumer" => consumer.to_owned())
        .set(pending as f64);
}
