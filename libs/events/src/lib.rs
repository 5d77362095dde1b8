//! Petrel's event bus.
//!
//! * [`Envelope`]: the JSON envelope every event travels in, with CloudEvents attribute names.
//! * [`payloads`]: one type per event, each bound to its subject through [`Event`].
//! * [`Bus`]: a JetStream context plus the deployment's subject namespace; creates the stream
//!   idempotently and publishes with the event id as `Nats-Msg-Id`, so JetStream drops
//!   duplicates inside its window.
//! * [`consumer`]: durable pull consumers with explicit acks; handlers answer done, retry later or
//!   reject, and rejected or exhausted events are set aside on a dead-letter subject.
//! * [`metrics`]: what the bus records for the service's `/metrics`.
//! * [`outbox`]: events implied by a database write are stored in the same transaction and
//!   relayed afterwards, so the write and the event never diverge.

mod bus;
pub mod consumer;
mod envelope;
pub mod metrics;
pub mod outbox;
pub mod payloads;

pub use bus::{Bus, BusError, Namespace};
pub use envelope::{Envelope, EnvelopeError, Event};
