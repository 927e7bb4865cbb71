//! What the CLI's target-database commands (`migrate ...`, `backup ...`)
//! share: dbswarm's own event store and the registered target they work
//! on, the result on stdout (text or `--json`), and the progress bar of
//! long commands on stderr, so that stdout stays the result.

use std::future::Future;
use std::pin::Pin;

use agents::ProgressSink;
use anyhow::Context;
use domain::target::ConnectionUrl;
use server::Config;

use crate::ServeArgs;

/// The arguments of every command on a registered target database.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The target database, by the name it was registered under (Admin.RegisterDatabase).
    #[arg(long, value_name = "NAME")]
    pub database: String,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub own: Box<ServeArgs>,
}

/// Width of the bar in characters: 5% each.
const BAR_CHARS: usize = 20;

pub struct StderrProgress;

impl ProgressSink for StderrProgress {
    fn report<'a>(&'a self, percent: f64, message: String) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let filled = ((percent / 5.0).round() as usize).min(BAR_CHARS);
            eprintln!(
                "[{}{}] {percent:5.1}% {message}",
                "#".repeat(filled),
                " ".repeat(BAR_CHARS - filled)
            );
        })
    }
}

/// dbswarm's own event store (its migrations applied) and a pool to the
/// registered target `database`, as `agent` connects to it.
pub struct Connected {
    pub config: Config,
    pub appender: event_store::Appender,
    pub reader: event_store::Reader,
    pub target_pool: sqlx::PgPool,
    pub url: ConnectionUrl,
}

pub async fn connect(config: Config, agent: &str, database: &str) -> anyhow::Result<Connected> {
    let pool = server::connect(&config).await?;
    event_store::MIGRATOR
        .run(&pool)
        .await
        .context("cannot apply dbswarm's own migrations")?;
    let (appender, _committers) = event_store::Appender::start(pool.clone(), config.append);
    let reader = event_store::Reader::new(pool.clone(), config.read);
    let targets = agents::Targets::new(
        pool.clone(),
        appender.clone(),
        config.limits,
        agents::TargetsConfig::default(),
    );
    let (target_pool, url) = targets.pool_for(agent, database).await?;
    Ok(Connected {
        config,
        appender,
        reader,
        target_pool,
        url,
    })
}

/// The result: pretty JSON, or the text `human` makes of it.
pub fn print<T: serde::Serialize>(json: bool, value: &T, human: impl Fn(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human(value));
    }
    Ok(())
}
