//! `dbswarm`: the CLI over the server library.

use std::path::PathBuf;

/// The relay and the gRPC paths allocate many small buffers per event;
/// mimalloc measured markedly cheaper than glibc malloc for that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use server::{Config, Settings};

/// dbswarm: an event-sourced control plane for PostgreSQL operations.
///
/// Settings come from built-in defaults, then a TOML file (--config), then
/// DBSWARM_* environment variables, then flags; later ones win.
#[derive(Parser)]
#[command(name = "dbswarm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply migrations, then serve gRPC (EventStore, health, reflection)
    /// and HTTP (/metrics, /healthz) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names,
    /// with underscores: grpc_addr = "127.0.0.1:50051"). Unknown keys are errors.
    #[arg(long, env = "DBSWARM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Ok(Config::from_settings(self.settings.over(file))?)
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line a person can act on, not a backtrace.
            eprintln!("dbswarm: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args.load()?).await,
            Command::Migrate(args) => migrate(args.load()?).await,
        }
    })
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let _telemetry =
        server::telemetry::init_tracing(config.log_format, server::telemetry::otlp_endpoint_from_env())?;
    let mut running = server::start(config).await?;
    tokio::select! {
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            running.shutdown().await?;
            Ok(())
        }
        error = running.failed() => Err(error.into()),
    }
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    let pool = server::connect(&config).await?;
    event_store::MIGRATOR
        .run(&pool)
        .await
        .context("cannot apply migrations")?;
    println!("migrations applied to {}", redact(&config.database_url));
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}@{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
