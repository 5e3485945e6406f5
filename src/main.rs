//! The `sandwarden` binary: `serve` runs the service, `config check` validates configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sandwarden::config::{self, Overrides};
use sandwarden::{Runtime, api, telemetry};

#[derive(Parser)]
#[command(
    name = "sandwarden",
    version,
    about = "Runs sandbox jobs reliably against flaky sandbox providers"
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Directory for the store and local sandboxes.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Number of sandbox workers.
    #[arg(long, global = true)]
    workers: Option<u64>,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve,
    /// Run the E2B-compatible emulator (control plane and envd on one port, backed by local
    /// sandboxes), with fault injection at /_emulator/faults.
    Emulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: std::net::SocketAddr,
        /// API key clients must send (X-API-Key); none when absent.
        #[arg(long, env = "E2B_EMULATOR_API_KEY")]
        api_key: Option<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the effective configuration, or every problem with it.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config.clone(),
        listen: cli.listen.clone(),
        data_dir: cli.data_dir.clone(),
        workers: cli.workers,
        log_json: cli.log_json,
    };
    let settings = match config::load(&overrides) {
        Ok(s) => s,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => {
            print!("{}", config::render(&settings));
            if settings.provider == config::ProviderKind::Local {
                let probe = sandwarden::provider::isolation::probe();
                match settings.isolation {
                    config::IsolationKind::None => {
                        println!("\n# isolation in effect: none (local.isolation = \"none\")")
                    }
                    config::IsolationKind::Namespaces if probe.ok() => {
                        println!(
                            "\n# isolation in effect: {} (user, mount, pid, ipc, uts, net namespaces; rlimits)",
                            probe.mechanism
                        )
                    }
                    config::IsolationKind::Namespaces => {
                        eprintln!(
                            "local.isolation: this platform cannot isolate sandboxes: {}",
                            probe.problems.join("; ")
                        );
                        return ExitCode::from(2);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Command::Emulate { addr, api_key } => {
            telemetry::init_logging(settings.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("could not start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let data_dir = settings.data_dir.join("emulator");
            match rt.block_on(emulate(addr, data_dir, api_key)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sandwarden: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve => {
            telemetry::init_logging(settings.log_format);
            let _sentry = telemetry::init_sentry(settings.sentry_dsn.as_deref());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build();
            let rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("could not start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(serve(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sandwarden: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn serve(settings: sandwarden::Settings) -> anyhow::Result<()> {
    let listen = settings.listen;
    if !listen.ip().is_loopback() && settings.admin_token.is_none() {
        anyhow::bail!(
            "refusing to listen on {listen} without an admin token (set admin_token or SANDWARDEN_ADMIN_TOKEN)"
        );
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    let handle = Runtime::start(settings)
        .await
        .context("could not start the runtime")?;
    tracing::info!(addr = %listener.local_addr()?, data_dir = %handle.data_dir().display(), provider = handle.settings().provider.as_str(), "sandwarden is serving");
    // Tests and scripts read the bound address from this line on stdout.
    println!("listening on {}", listener.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(api::serve(handle.clone(), listener, async move {
        let _ = server_stop.wait_for(|s| *s).await;
    }));
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        r = handle.stopped() => r.map_err(|why| anyhow::anyhow!("the actor tree stopped: {why}")),
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    handle.shutdown().await.context("shutdown")?;
    outcome
}

async fn emulate(
    addr: std::net::SocketAddr,
    data_dir: PathBuf,
    api_key: Option<String>,
) -> anyhow::Result<()> {
    use sandwarden::emulator::{Emulator, EmulatorConfig};
    let handle = Emulator::start(EmulatorConfig {
        listen: addr,
        data_dir,
        api_key,
    })
    .await
    .context("could not start the emulator")?;
    println!("listening on {}", handle.base_url());
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
