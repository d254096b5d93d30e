//! `sluice`: the broker server and its admin commands.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_broker::broker::Broker;
use sluice_broker::cli::{self, AdminCommand};
use sluice_broker::config::{ServeArgs, ServerConfig};
use sluice_broker::limits;
use sluice_broker::server::Server;

/// Sluice: a persistent message broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            init_logging("info");
            match serve(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin(command) => {
            // Commands print their results; the client's logs are for trouble only.
            init_logging("warn");
            cli::run(command)
        }
    }
}

/// Logs go to stderr; `SLUICE_LOG` overrides the default filter.
fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig::resolve(args)?;
    // Before anything opens a file: the sockets and queue files all draw on this limit.
    match limits::raise_descriptor_limit() {
        Ok(limit) => tracing::info!(before = ?limit.before, now = ?limit.now,
            "file descriptor limit (RLIMIT_NOFILE, soft)"),
        Err(e) => tracing::warn!(error = %e, limit = ?limits::descriptor_limit(),
            "could not raise the file descriptor limit; keeping it"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let broker = Broker::open(config)?;
        let server = Server::bind(broker).await?;
        let addr = server.local_addr()?;
        let http_addr = server.http_addr()?;
        // The handlers are installed before the announcement: a SIGTERM sent as soon as the
        // line is read must shut down gracefully, not kill the process.
        let shutdown = shutdown_signal()?;
        // Tests and scripts wait for this line to learn the port.
        println!(
            "sluice listening on {addr} (data directory {})",
            data_dir.display()
        );
        // Always a second line, so a reader of the first knows whether to expect the API.
        match http_addr {
            Some(http) => println!("sluice http on {http}"),
            None => println!("sluice http off"),
        }
        tracing::info!(%addr, http = ?http_addr, data_dir = %data_dir.display(), "sluice ready");
        server.run(shutdown).await;
        anyhow::Ok(())
    })?;
    // The runtime and the broker are gone: every log is closed and synced.
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future ends at the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
