//! `sluice`: the broker server and its admin commands.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use sluice_broker::broker::{self, Broker};
use sluice_broker::cli::{self, AdminCommand, Target};
use sluice_broker::config::{ServeArgs, ServerConfig};
use sluice_broker::limits;
use sluice_broker::server::{self, BindError, Server};
use sluice_broker::tls::ServerTls;

/// Sluice: a persistent message broker.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// `--url` and `--json`: global, so they may come before or after the command.
    #[command(flatten)]
    target: Target,
    /// How log lines on stderr look: `text` for people, `json` (one object a line) for log
    /// collectors.
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the broker (the default when no command is given).
    Serve(ServeArgs),
    #[command(flatten)]
    Admin(AdminCommand),
}

/// The format of the log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Plain text; coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            init_logging("info", cli.log_format);
            if let Some(flag) = admin_flag_given(&matches) {
                return fail(&format!(
                    "{flag} is for the admin commands, not for serve; set the address to listen on with --listen"
                ));
            }
            match serve(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&one_sentence(&e)),
            }
        }
        Command::Admin(command) => {
            // Commands print their results; the client's logs are for trouble only.
            init_logging("warn", cli.log_format);
            if matches.value_source("url") == Some(ValueSource::CommandLine) {
                if let Some(refusal) = cli::refuse_password_in_url_flag(&cli.target.url) {
                    return fail(&refusal);
                }
            }
            cli::run(command, cli.target)
        }
    }
}

/// The admin-only option given on the command line, if any (`SLUICE_URL` in the environment is
/// fine: it is there for the admin commands run from the same shell).
fn admin_flag_given(matches: &ArgMatches) -> Option<&'static str> {
    [("url", "--url"), ("json", "--json")]
        .into_iter()
        .find(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|(_, flag)| flag)
}

/// Prints `sluice: <message>` on stderr, once, and returns the failure status.
fn fail(message: &str) -> ExitCode {
    eprintln!("sluice: {message}");
    ExitCode::FAILURE
}

/// The error and its causes on one line. Many errors already include their source in their
/// own message, so a cause is added only if its text is not there yet.
fn one_sentence(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Logs go to stderr; `SLUICE_LOG` overrides the default filter.
fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Escape codes are noise in a file or a pipe.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let config = ServerConfig::resolve(args)?;
    if std::env::var_os("SLUICE_USERS").is_some() {
        // Its plain passwords would otherwise seem to work and silently not.
        tracing::warn!("SLUICE_USERS is no longer read: users and their hashed passwords live in the users file (sluice user add; docs/security.md)");
    }
    // Unusable TLS files fail the start now, not after a recovery that may take long; the
    // server loads them again when it binds.
    if let Some(tls) = &config.tls {
        ServerTls::load(tls.files.clone())?;
    }
    // Before anything opens a file: the sockets and queue files all draw on this limit.
    match limits::raise_descriptor_limit() {
        Ok(limit) => tracing::info!(
            before = %limit_text(limit.before),
            now = %limit_text(limit.now),
            "file descriptor limit (RLIMIT_NOFILE, soft)"
        ),
        Err(e) => tracing::warn!(error = %e, limit = %limit_text(limits::descriptor_limit()),
            "could not raise the file descriptor limit; keeping it"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let cluster_settings = config.cluster.clone();
        let broker = Broker::open(config).map_err(|e| match e {
            // Names its own file, which need not be in the data directory.
            broker::StartError::Users(e) => anyhow::anyhow!("{e}"),
            e => anyhow::anyhow!("cannot open the data directory {}: {e}", data_dir.display()),
        })?;
        let server = Server::bind(broker).await.map_err(|e| match e {
            server::StartError::Bind(e) => anyhow::anyhow!(listen_error(&e)),
            e => anyhow::Error::new(e),
        })?;
        let addr = server.local_addr()?;
        let tls_addr = server.tls_addr()?;
        let http_addr = server.http_addr()?;
        let cluster_addr = match &cluster_settings {
            Some(settings) => {
                let advertise = settings.advertise.as_deref();
                let client = addr
                    .or(tls_addr)
                    .map(|a| reachable(a, advertise))
                    .unwrap_or_default();
                let http = http_addr.map(|a| reachable(a, advertise));
                Some(start_cluster(server.broker(), settings, &data_dir, client, http).await?)
            }
            None => None,
        };
        // The handlers are installed before the announcement: a SIGTERM sent as soon as the
        // line is read must shut down gracefully, not kill the process.
        let shutdown = shutdown_signal()?;
        // Tests and scripts wait for this line to learn the port.
        let off =
            |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_owned(), |a| a.to_string());
        match addr {
            Some(addr) => announce(&format!(
                "sluice listening on {addr} (data directory {})",
                data_dir.display()
            )),
            None => announce(&format!(
                "sluice listening off (data directory {})",
                data_dir.display()
            )),
        }
        // Always a second and a third line, so a reader knows whether to expect the API and
        // the TLS port.
        match http_addr {
            Some(http) => announce(&format!("sluice http on {http}")),
            None => announce("sluice http off"),
        }
        match tls_addr {
            Some(tls) => announce(&format!("sluice tls on {tls}")),
            None => announce("sluice tls off"),
        }
        // Only in a cluster: a single node prints exactly what it always did.
        if let Some(cluster) = cluster_addr {
            announce(&format!("cluster listening on {cluster}"));
        }
        tracing::info!(addr = %off(addr), tls = %off(tls_addr), http = %off(http_addr),
            data_dir = %data_dir.display(), "sluice ready");
        server.run(shutdown).await;
        anyhow::Ok(())
    })?;
    // The runtime and the broker are gone: every log is closed and synced.
    tracing::info!("stopped");
    Ok(())
}

/// An address other nodes and clients can dial: a listener on all interfaces is named by
/// the cluster's advertised host instead.
fn reachable(addr: std::net::SocketAddr, advertise: Option<&str>) -> String {
    match advertise.and_then(|a| a.rsplit_once(':')) {
        Some((host, _)) if addr.ip().is_unspecified() => format!("{host}:{}", addr.port()),
        _ => addr.to_string(),
    }
}

/// Starts this node's part of the cluster and attaches it to the broker; returns the cluster
/// listener's bound address.
async fn start_cluster(
    broker: &std::sync::Arc<Broker>,
    settings: &sluice_broker::config::ClusterSettings,
    data_dir: &std::path::Path,
    client_addr: String,
    http_addr: Option<String>,
) -> anyhow::Result<std::net::SocketAddr> {
    use sluice_broker::cluster::{Cluster, ClusterConfig, NodeInfo};
    let mut config = ClusterConfig::new(settings.node_id, settings.listen);
    config.advertise = settings.advertise.clone();
    config.join = settings.join.clone();
    config.election_timeout = settings.election_timeout;
    let local = NodeInfo {
        cluster_addr: String::new(),
        client_addr,
        http_addr,
    };
    let durability = broker.store().durability().clone();
    let cluster = Cluster::start(config, data_dir, local, durability)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot start the cluster (node {}): {e}", settings.node_id)
        })?;
    let addr = cluster.listen_addr();
    broker.attach_cluster(cluster).await;
    Ok(addr)
}

/// Why a listener could not be bound, naming the address and what to do.
fn listen_error(e: &BindError) -> String {
    let addr = e.addr;
    let (what, flag) = if e.purpose == "clients" {
        (format!("cannot listen on {addr}"), "--listen")
    } else if e.purpose == "TLS clients" {
        (
            format!("cannot listen for TLS clients on {addr}"),
            "--tls-listen",
        )
    } else {
        (
            format!("cannot listen for {} on {addr}", e.purpose),
            "--http-listen",
        )
    };
    match e.source.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "{what}: the address is already in use (is another broker running?); choose another with {flag}"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "{what}: no network interface of this machine has that address; choose another with {flag}"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "{what}: permission denied (ports below 1024 need privileges); choose another with {flag}"
        ),
        _ => format!("{what}: {}", e.source),
    }
}

/// Writes a line on stdout for whoever started the broker. A reader that has gone (a closed
/// pipe) is no reason to stop serving: `println!` would panic there.
fn announce(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// A descriptor limit for the log: a number, or "unlimited".
fn limit_text(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
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
