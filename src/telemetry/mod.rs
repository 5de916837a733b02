//! What walbox tells the people who run it: Prometheus metrics, the relay's state for the
//! health endpoints, and the HTTP server that serves both.
//!
//! The data path only records into these (counters, gauges, the current state); nothing here
//! feeds back into relaying, so a slow scrape can never slow events down.

pub mod health;
pub mod metrics;
pub mod server;
pub mod slot_poller;

pub use health::{Health, RelayState};
pub use metrics::{Metrics, Side};

/// The metrics and the health state, shared by the data path and the HTTP server.
#[derive(Default)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub health: Health,
}
