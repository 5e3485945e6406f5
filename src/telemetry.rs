//! Logging set-up: tracing to stderr, human-readable by default or JSON, filtered by
//! `RUST_LOG` (default `info`). Sentry is initialised here when a DSN is configured.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Initialise Sentry when a DSN is set; the guard must live as long as the process.
pub fn init_sentry(dsn: Option<&str>) -> Option<sentry::ClientInitGuard> {
    let dsn = dsn?;
    let guard = sentry::init((
        dsn,
        sentry::ClientOptions {
            release: sentry::release_name!(),
            ..Default::default()
        },
    ));
    tracing::info!("sentry alerts enabled");
    Some(guard)
}
