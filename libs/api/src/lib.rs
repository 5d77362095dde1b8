//! The HTTP contracts of Petrel's services: request and response bodies, and a typed client.
//!
//! Services and the `petrel` CLI both depend on this crate and on nothing of each other, so a
//! service's internals can change freely while its API stays put. `docs/api.md` documents
//! these routes for users.

pub mod client;
pub mod ingest;
pub mod labeler;
pub mod monitor;
pub mod predictor;
pub mod registry;

pub use client::{ApiClient, ClientError};
