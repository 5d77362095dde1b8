//! Fresh databases for tests: each test gets its own, so tests run in parallel without sharing
//! state, against the real Postgres.

use uuid::Uuid;

/// The server tests use: `PETREL_TEST_DATABASE_URL`, or the local default. The database part
/// of the URL is replaced by a fresh name.
pub fn server_url() -> String {
    std::env::var("PETREL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A URL naming a new, not yet created database `petrel_test_<uuid>`. [`crate::connect`]
/// creates it on first use. `.ci/run` drops leftover test databases before each run.
pub fn fresh_database_url() -> String {
    let base = server_url();
    let name = format!("petrel_test_{}", Uuid::now_v7().simple());
    match base.rfind('/') {
        Some(i) if i > "postgres://".len() => format!("{}/{name}", &base[..i]),
        _ => format!("{base}/{name}"),
    }
}
