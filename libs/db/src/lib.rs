//! Postgres access for Petrel's services.
//!
//! Every service owns one Postgres *schema* (`registry`, `ingest`, ...) inside a shared database,
//! and never reads another service's schema: services meet only through events and HTTP. A pool
//! made by [`connect`] pins `search_path` to the service's schema, so the service's SQL names its
//! tables without qualification and its migrations land in its own schema, with their own
//! `_sqlx_migrations` table.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use uuid::Uuid;

pub mod testing;

/// The tables every service has: `processed_events` and `outbox`.
static COMMON: Migrator = sqlx::migrate!("./migrations");

/// Errors from database setup.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("invalid schema name {0:?}: use lowercase letters, digits and underscores")]
    InvalidSchema(String),
    #[error("cannot connect to Postgres at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// A `postgres://` URL naming the database.
    pub url: String,
    /// The service's schema; created if missing.
    pub schema: String,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
}

fn check_schema(schema: &str) -> Result<(), DbError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(DbError::InvalidSchema(schema.to_owned()))
    }
}

/// The URL with any password replaced, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::parse_password_span(url) {
        Some((start, end)) => format!("{}***{}", &url[..start], &url[end..]),
        None => url.to_owned(),
    }
}

mod url {
    /// Byte span of the password in `scheme://user:password@host/...`, if there is one.
    pub fn parse_password_span(url: &str) -> Option<(usize, usize)> {
        let after_scheme = url.find("://")? + 3;
        let at = after_scheme + url[after_scheme..].find('@')?;
        let colon = after_scheme + url[after_scheme..at].find(':')?;
        Some((colon + 1, at))
    }
}

fn options(url: &str) -> Result<PgConnectOptions, DbError> {
    url.parse::<PgConnectOptions>()
        .map_err(|e| DbError::InvalidUrl(format!("{}: {e}", redact(url))))
}

/// Creates the database named in `url` if it does not exist, connecting to the `postgres`
/// maintenance database of the same server. Lets a fresh machine run Petrel with no manual step.
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = options(url)?;
    let name = opts.get_database().unwrap_or("postgres").to_owned();
    let admin = opts.clone().database("postgres");
    let mut conn = admin.connect().await.map_err(|source| DbError::Connect {
        url: redact(url),
        source,
    })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => tracing::info!(db.name = %name, "created database"),
            // Another service created it first (42P04, or 23505 when the race is that close):
            // that is the outcome we wanted.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Connects a pool whose connections use `config.schema`, creating the database and the schema
/// when missing, and runs the common migrations and then `migrator` (the service's own).
///
/// Service migrations must use versions above 1000 so they never collide with the common ones.
pub async fn connect(config: &DbConfig, migrator: &Migrator) -> Result<PgPool, DbError> {
    check_schema(&config.schema)?;
    ensure_database(&config.url).await?;
    let base = options(&config.url)?;
    {
        let mut conn = base.connect().await.map_err(|source| DbError::Connect {
            url: redact(&config.url),
            source,
        })?;
        let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", config.schema);
        if let Err(e) = sqlx::query(&sql).execute(&mut conn).await {
            // Two services racing on CREATE SCHEMA IF NOT EXISTS can still collide on the
            // catalog's unique index; the schema exists either way.
            let dup =
                matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"));
            if !dup {
                return Err(e.into());
            }
        }
        conn.close().await.ok();
    }
    let opts = base.options([("search_path", config.schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|source| DbError::Connect {
            url: redact(&config.url),
            source,
        })?;
    migrate(&pool, migrator).await?;
    Ok(pool)
}

async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), DbError> {
    // One migrator over the common migrations followed by the service's own, so sqlx checks the
    // whole history of the schema in one place.
    let mut all: Vec<_> = COMMON.iter().cloned().collect();
    all.extend(migrator.iter().cloned());
    all.sort_by_key(|m| m.version);
    let combined = Migrator {
        migrations: std::borrow::Cow::Owned(all),
        ..Migrator::DEFAULT
    };
    combined.run(pool).await?;
    Ok(())
}

/// Records that `consumer` has applied `event_id`, inside the caller's transaction.
///
/// Returns `false` when the event was already applied: the caller must then skip the effect
/// (and acknowledge the message). Because the claim commits or rolls back together with the
/// effect, an event is applied exactly once however often it is delivered.
pub async fn claim_event(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// [`claim_event`] for a batch: records every id of `event_ids` not applied yet and returns
/// those (the caller applies only their effects, in the same transaction).
pub async fn claim_events(
    conn: &mut PgConnection,
    consumer: &str,
    event_ids: &[Uuid],
) -> Result<std::collections::HashSet<Uuid>, sqlx::Error> {
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (consumer, event_id) SELECT $1, UNNEST($2::uuid[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(consumer)
    .bind(event_ids)
    .fetch_all(conn)
    .await?;
    Ok(fresh.into_iter().collect())
}

/// Whether a database error is a unique-constraint violation (SQLSTATE 23505).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("registry").is_ok());
        assert!(check_schema("a_1").is_ok());
        assert!(check_schema("Bad").is_err());
        assert!(check_schema("x; drop").is_err());
        assert!(check_schema("").is_err());
        assert!(check_schema("1a").is_err());
    }
}
