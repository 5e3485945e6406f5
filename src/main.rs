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
    /// Admin REPL against a running service (a script on stdin runs non-interactively).
    Admin {
        #[arg(long, env = "SANDWARDEN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "SANDWARDEN_TOKEN")]
        token: Option<String>,
        /// History file (default ~/.sandwarden_history).
        #[arg(long)]
        history: Option<PathBuf>,
    },
    /// Submit a job from a JSON file; with --wait, follow it and exit with its outcome.
    Submit {
        job: PathBuf,
        #[arg(long)]
        wait: bool,
        #[arg(long, env = "SANDWARDEN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "SANDWARDEN_TOKEN")]
        token: Option<String>,
    },
    /// Show one job.
    Job {
        id: String,
        #[arg(long, env = "SANDWARDEN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "SANDWARDEN_TOKEN")]
        token: Option<String>,
    },
    /// List jobs: a user's with --user, else all (admin token needed).
    Jobs {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[arg(long, env = "SANDWARDEN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "SANDWARDEN_TOKEN")]
        token: Option<String>,
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
    // Client commands talk to a running service and need no configuration of their own.
    if let Some(code) = client_command(&cli.command) {
        return code;
    }
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
                let resources = match settings.cgroups {
                    config::CgroupMode::Off => "rlimits only (local.cgroups = \"off\")".to_string(),
                    mode => match sandwarden::provider::cgroups::Cgroups::detect() {
                        Ok(c) => format!(
                            "{} per run step (memory, processes{}); rlimits: cpu time, open files, file size",
                            c.describe(),
                            if settings.local.cpu_millis > 0 {
                                ", cpu share"
                            } else {
                                ""
                            },
                        ),
                        Err(why) if mode == config::CgroupMode::On => {
                            eprintln!("local.cgroups: cgroups are not usable here: {why}");
                            return ExitCode::from(2);
                        }
                        Err(why) => format!(
                            "rlimits only (memory as RLIMIT_AS, processes as RLIMIT_NPROC): cgroups are not usable here: {why}"
                        ),
                    },
                };
                println!(
                    "# resources in effect: {resources}; disk use of the sandbox directory checked per step"
                );
                let t = sandwarden::runtime::local_templates(&settings);
                let dir = t.dir.clone().unwrap_or_default();
                println!(
                    "# templates: directory {} ({}); configured: {}",
                    dir.display(),
                    if dir.is_dir() {
                        "present"
                    } else {
                        "absent: only base and configured templates"
                    },
                    if t.configured.is_empty() {
                        "none".to_string()
                    } else {
                        t.configured.keys().cloned().collect::<Vec<_>>().join(", ")
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Command::Admin { .. }
        | Command::Submit { .. }
        | Command::Job { .. }
        | Command::Jobs { .. } => {
            unreachable!("client commands are handled before configuration is loaded")
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

fn client_command(command: &Command) -> Option<ExitCode> {
    use sandwarden::cli::client::{AdminClient, JobQuery};
    use sandwarden::cli::{repl, submit};
    let client = matches!(
        command,
        Command::Admin { .. } | Command::Submit { .. } | Command::Job { .. } | Command::Jobs { .. }
    );
    if !client {
        return None;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("could not start the async runtime: {e}");
            return Some(ExitCode::FAILURE);
        }
    };
    let code: anyhow::Result<i32> = match command {
        Command::Admin {
            url,
            token,
            history,
        } => rt.block_on(async {
            use std::io::IsTerminal;
            let client = AdminClient::new(url.clone(), token.clone());
            if std::io::stdin().is_terminal() {
                let history = history.clone().or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sandwarden_history"))
                });
                repl::run_repl(&client, history).await.map(|_| 0)
            } else {
                let failed =
                    repl::run_script(&client, std::io::stdin().lock(), &mut std::io::stdout())
                        .await?;
                Ok(i32::from(failed > 0))
            }
        }),
        Command::Submit {
            job,
            wait,
            url,
            token,
        } => rt.block_on(submit::submit(
            url,
            token.as_deref(),
            job,
            *wait,
            &mut std::io::stdout(),
        )),
        Command::Job { id, url, token } => rt.block_on(async {
            let client = AdminClient::new(url.clone(), token.clone());
            submit::show_job(&client, id, &mut std::io::stdout()).await
        }),
        Command::Jobs {
            user,
            status,
            limit,
            url,
            token,
        } => rt.block_on(async {
            let client = AdminClient::new(url.clone(), token.clone());
            let query = JobQuery {
                user: user.clone(),
                status: status.clone(),
                limit: Some(*limit),
                cursor: None,
            };
            submit::list_jobs(&client, &query, &mut std::io::stdout()).await
        }),
        _ => return None,
    };
    Some(match code {
        Ok(c) => ExitCode::from(c.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("sandwarden: {e:#}");
            ExitCode::FAILURE
        }
    })
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
