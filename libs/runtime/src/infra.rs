//! Connecting a service to its backing services: its Postgres schema and the bus.

use anyhow::Context;
use petrel_events::outbox::Relay;
use petrel_events::{Bus, Namespace};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::config::{NatsArgs, PostgresArgs};
use crate::http::Readiness;

/// What a connected service holds.
#[derive(Clone, Debug)]
pub struct Infra {
    pub pool: PgPool,
    pub bus: Bus,
    pub relay: Relay,
}

impl Infra {
    /// Connects to Postgres (creating the database and `schema`, running migrations) and to
    /// NATS (creating the stream). Errors name what could not be reached.
    pub async fn connect(
        service: &str,
        schema: &str,
        pg: &PostgresArgs,
        nats: &NatsArgs,
        migrator: &Migrator,
    ) -> anyhow::Result<Self> {
        let pool = petrel_db::connect(&pg.db_config(schema), migrator)
            .await
            .context("Postgres is not usable")?;
        let ns = Namespace::new(Some(&nats.nats_prefix));
        let bus = Bus::connect(&nats.nats_url, ns, &format!("petrel/{service}"))
            .await
            .context("NATS JetStream is not usable")?;
        let relay = Relay::new(pool.clone(), bus.clone());
        Ok(Self { pool, bus, relay })
    }

    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.pool.clone(), self.bus.client().clone())
    }
}
