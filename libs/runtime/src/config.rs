//! Configuration blocks shared by the services. Each service's `Config` flattens the blocks it
//! needs, so a flag means the same thing everywhere and `--help` lists every option with its
//! environment variable and default.

use clap::Args;

/// Postgres connection.
#[derive(Args, Clone, Debug)]
pub struct PostgresArgs {
    /// Postgres URL. The database is created if it does not exist; each service keeps its tables
    /// in its own schema inside it. It may hold a password, so `--help` never shows its value
    /// and logs redact it.
    #[arg(
        hide_env_values = true,
        long,
        env = "PETREL_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/petrel"
    )]
    pub database_url: String,

    /// Maximum pooled connections per service.
    #[arg(long, env = "PETREL_DATABASE_MAX_CONNECTIONS", default_value_t = 10)]
    pub database_max_connections: u32,
}

impl PostgresArgs {
    /// The pool settings for `schema`.
    pub fn db_config(&self, schema: &str) -> petrel_db::DbConfig {
        petrel_db::DbConfig {
            url: self.database_url.clone(),
            schema: schema.to_owned(),
            max_connections: self.database_max_connections,
        }
    }
}

/// NATS connection.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// NATS server URL (JetStream must be enabled).
    #[arg(long, env = "PETREL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Subject namespace: with `staging`, events go to `staging.data.ready` etc. and the stream
    /// is `PETREL_STAGING`. Empty for none.
    #[arg(long, env = "PETREL_NATS_PREFIX", default_value = "")]
    pub nats_prefix: String,
}

/// The artifact store.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// Where datasets and model bundles are kept: a local directory path, a `file://` URL, or
    /// `s3://bucket/prefix` (credentials from the standard AWS chain).
    #[arg(
        long,
        env = "PETREL_ARTIFACT_ROOT",
        default_value = ".petrel/artifacts"
    )]
    pub artifact_root: String,
    /// The S3 endpoint for S3-compatible servers (`http://127.0.0.1:8333`); AWS when unset.
    #[arg(long, env = "PETREL_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Path-style bucket addressing (`endpoint/bucket/key`), which most S3-compatible servers
    /// need.
    #[arg(long, env = "PETREL_S3_FORCE_PATH_STYLE", default_value_t = false)]
    pub s3_force_path_style: bool,
    /// The S3 region; from the AWS chain (`AWS_REGION`) when unset, else `us-east-1`.
    #[arg(long, env = "PETREL_S3_REGION")]
    pub s3_region: Option<String>,
    /// A static access key id for the S3 server (MinIO, SeaweedFS), with
    /// --s3-secret-access-key; the standard AWS chain when unset.
    #[arg(
        long,
        env = "PETREL_S3_ACCESS_KEY_ID",
        requires = "s3_secret_access_key"
    )]
    pub s3_access_key_id: Option<String>,
    /// The secret of --s3-access-key-id. Never logged.
    #[arg(
        long,
        env = "PETREL_S3_SECRET_ACCESS_KEY",
        hide_env_values = true,
        requires = "s3_access_key_id"
    )]
    pub s3_secret_access_key: Option<Secret>,
}

impl StoreArgs {
    /// Opens the configured artifact store.
    pub async fn open(
        &self,
    ) -> Result<std::sync::Arc<dyn petrel_store::ArtifactStore>, petrel_store::StoreError> {
        petrel_store::open_with(&self.artifact_root, &self.s3_options()).await
    }

    /// How to reach S3 (for the store, and for ingest's `s3://` sources).
    pub fn s3_options(&self) -> petrel_store::S3Options {
        petrel_store::S3Options {
            endpoint: self.s3_endpoint.clone(),
            force_path_style: self.s3_force_path_style,
            region: self.s3_region.clone(),
            credentials: self.s3_access_key_id.clone().zip(
                self.s3_secret_access_key
                    .as_ref()
                    .map(|s| s.expose().to_owned()),
            ),
        }
    }
}

/// Logging.
#[derive(Args, Clone, Debug)]
pub struct LogArgs {
    /// Log format: `text` for people, `json` for log pipelines. Levels come from `RUST_LOG`
    /// (default `info`).
    #[arg(long, env = "PETREL_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A secret from a flag or the environment: `Debug` never shows it, so a logged config does not
/// leak it. [`Secret::expose`] gives the value to the code that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

#[cfg(test)]
mod secret_tests {
    use super::Secret;

    #[test]
    fn a_secret_is_not_printed() {
        let s: Secret = "hunter2".parse().unwrap();
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
