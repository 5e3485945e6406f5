//! Integration tests: one binary, small helpers in `support`.

mod api;
mod binary;
mod breaker;
mod chaos;
mod cli;
mod crash;
mod dashboard;
mod e2b;
mod embed;
mod fuzz_regressions;
mod health;
mod isolation;
mod local;
mod metrics;
mod notify;
mod queue;
mod ratelimit;
mod sandbox_jobs;
mod sessions;
mod support;
mod webhook;
