//! One test's isolated world.

use std::path::PathBuf;

use petrel_events::{Bus, Namespace};

use crate::NATS_URL;
use crate::events::Events;

/// One test's isolated world: a fresh database, NATS namespace and scratch directory, so that
/// tests run in parallel against the same Postgres and NATS without seeing each other's data.
/// [`TestEnv::cleanup`] removes it all at the end of a test.
#[derive(Debug)]
pub struct TestEnv {
    /// A URL naming a fresh database, created by the first service that connects to it.
    pub db: String,
    /// The NATS subject namespace (`t<uuid>`): the test's events are `<prefix>.<subject>`, in
    /// a stream of their own.
    pub prefix: String,
    /// The test's scratch directory, for files a test or a service needs besides artifacts.
    pub dir: PathBuf,
    /// The artifact store's root (`<dir>/artifacts`, created empty), shared by the services
    /// of the test as it is in production.
    pub artifacts: PathBuf,
    /// A NATS connection for the test's own subscriptions and server queries.
    pub nats: async_nats::Client,
    /// The NATS the services under test are pointed at by [`TestEnv::args`]: the shared one,
    /// unless a test that restarts NATS points them at a [`crate::ThrowawayNats`].
    pub services_nats_url: String,
}

impl TestEnv {
    /// Makes a new world and connects to NATS. Service logs go to the test's output when
    /// `RUST_LOG` is set (`RUST_LOG=info cargo test ...`), and nowhere otherwise.
    pub async fn new() -> Self {
        init_logging();
        let id = uuid::Uuid::now_v7().simple().to_string();
        let dir = std::env::temp_dir().join(format!("petrel-test-{id}"));
        let artifacts = dir.join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let nats = async_nats::connect(NATS_URL)
            .await
            .expect("nats-server must run at 127.0.0.1:4222");
        Self {
            db: petrel_db::testing::fresh_database_url(),
            prefix: format!("t{id}"),
            dir,
            artifacts,
            nats,
            services_nats_url: NATS_URL.to_owned(),
        }
    }

    /// The artifact root as a service's `--artifact-root` or `petrel_store::open` takes it.
    pub fn artifact_root(&self) -> &str {
        self.artifacts.to_str().unwrap()
    }

    /// The command line that points the service `bin` at this world: a free port on loopback,
    /// the fresh database, the local NATS and the namespace, the artifact root, then `extra`.
    /// For services that keep artifacts; see [`TestEnv::args_without_store`] for the others.
    pub fn args(&self, bin: &str, extra: &[&str]) -> Vec<String> {
        let mut with_store = vec!["--artifact-root", self.artifact_root()];
        with_store.extend_from_slice(extra);
        self.args_without_store(bin, &with_store)
    }

    /// As [`TestEnv::args`] but without `--artifact-root`, which services without an artifact
    /// store (the labeler) refuse, and which the others may do without (the registry keeps
    /// only MLflow clients' artifacts there).
    pub fn args_without_store(&self, bin: &str, extra: &[&str]) -> Vec<String> {
        [
            bin,
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &self.db,
            "--nats-url",
            &self.services_nats_url,
            "--nats-prefix",
            &self.prefix,
        ]
        .iter()
        .chain(extra)
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// The absolute subject of a relative one in this test's namespace.
    pub fn subject(&self, relative: &str) -> String {
        format!("{}.{relative}", self.prefix)
    }

    /// A core subscription to `relative` in this test's namespace, registered on the server
    /// before this returns, so no event published afterwards is missed.
    pub async fn subscribe(&self, relative: &str) -> async_nats::Subscriber {
        let sub = self.nats.subscribe(self.subject(relative)).await.unwrap();
        self.nats.flush().await.unwrap();
        sub
    }

    /// Like [`TestEnv::subscribe`], for tests that look at subjects and raw bytes, and at
    /// events that must not come.
    pub async fn events(&self, relative: &str) -> Events {
        let sub = self.subscribe(relative).await;
        Events::new(self.nats.clone(), sub, &self.prefix)
    }

    /// A bus on the test's namespace, for publishing events as another service would.
    pub async fn bus(&self) -> Bus {
        self.bus_as("petrel/test").await
    }

    /// A bus on the test's namespace whose events name `source` as their sender, for
    /// publishing as a particular service does.
    pub async fn bus_as(&self, source: &str) -> Bus {
        Bus::connect(NATS_URL, Namespace::new(Some(&self.prefix)), source)
            .await
            .expect("NATS is running")
    }

    /// Drops the test's stream and database and removes its directory, best effort: call it
    /// once the services are stopped.
    pub async fn cleanup(self) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let stream = Namespace::new(Some(&self.prefix)).stream_name();
        let _ = js.delete_stream(&stream).await;
        if let Some((server, name)) = self.db.rsplit_once('/') {
            let admin = format!("{server}/postgres");
            if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let args = petrel_runtime::config::LogArgs {
            log_format: "text".into(),
        };
        let _guard = petrel_runtime::telemetry::init("test", &args);
    }
}
