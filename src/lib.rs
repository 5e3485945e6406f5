//! sandwarden runs sandbox jobs (create a sandbox, write files, run commands, read files)
//! against a sandbox provider and keeps them reliable when the provider fails: classified
//! errors, retries with backoff, a circuit breaker, and a durable queue that waits out
//! outages. See `ARCHITECTURE.md` for the map.
//!
//! Embedding: `Runtime::start(settings)` starts the whole supervision tree in the current
//! tokio runtime and returns a `RuntimeHandle`.

#![forbid(unsafe_code)]

pub mod api;
pub mod breaker;
pub mod chaos;
pub mod cli;
pub mod clock;
pub mod config;
pub mod emulator;
pub mod health;
pub mod job;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod provider;
pub mod queue;
pub mod ratelimit;
pub mod retry;
pub mod runtime;
pub mod store;
pub mod telemetry;

pub use config::Settings;
pub use runtime::{Runtime, RuntimeHandle};
