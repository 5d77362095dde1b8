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

/// What is wrong with a user-chosen name (a model, an experiment, a dataset), in the API's
/// words, or `None` when it is fine: 1 to 256 characters without `/`, a backslash, control
/// characters or surrounding spaces, and not `.` or `..`, so it is safe as a path segment.
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    let bad = name.trim().is_empty()
        || name.trim() != name
        || name.len() > 256
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\');
    bad.then(|| {
        format!(
            "{what} must be 1 to 256 characters without '/', '\\', control characters or surrounding spaces, and not '.' or '..'"
        )
    })
}
