//! What walbox tells the people who run it: Prometheus metrics, the relay's state for the
//! health endpoints, and the HTTP server that serves both.
//!
//! The data path only records into these (counters, gauges, the current state); nothing here
//! feeds back into relaying, so a slow scrape can never slow events down.

pub(crate) mod health;
mod metrics;
pub(crate) mod server;
pub(crate) mod slot_poller;

pub(crate) use health::{Health, RelayState};
pub use metrics::Metrics;
pub(crate) use metrics::Side;

/// The metrics and the health state, shared by the data path and the HTTP server.
#[derive(Default)]
pub(crate) struct Telemetry {
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
}
