//! The `order-cdc` command line. Thin: parse, load the configuration, call the library,
//! turn any error into one line on stderr and a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use order_cdc::checkpoint::{self, Checkpoint, CheckpointStore};
use order_cdc::config::Config;
use order_cdc::metrics::Metrics;
use order_cdc::{daemon, logging, server, source, store, timestamp};

#[derive(Parser)]
#[command(name = "order-cdc", version, about = "Every change to every sales order, onto Kafka")]
struct Cli {
    /// A TOML file layered over the built-in defaults (ORDER_CDC__… variables win over it).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create or upgrade the reference schema in [database].url.
    Migrate,
    /// Serve the sales-order API ([server]) over the reference schema.
    Serve,
    /// Stream every configured pipeline to Kafka.
    Run {
        /// Drain every pipeline up to a fresh cutoff, then exit 0.
        #[arg(long)]
        once: bool,
        /// Run only these pipelines (repeatable).
        #[arg(long = "pipeline", value_name = "NAME")]
        pipelines: Vec<String>,
    },
    /// Inspect or move a pipeline's checkpoint.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// Print the configuration reference (every key, its type, default and environment
    /// variable) as Markdown.
    ConfigReference,
    /// Load demo orders into the reference schema in [database].url. Load before `run`:
    /// the orders are back-dated (see `store::demo::load`), so a daemon already running may
    /// have passed them.
    DemoLoad {
        #[arg(long, default_value_t = 1000)]
        orders: i64,
        #[arg(long, default_value_t = 3)]
        items_per_order: i32,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Print the checkpoint as JSON.
    Show {
        #[arg(long)]
        pipeline: String,
    },
    /// Make the next run start at TIME (any UTC datetime, e.g. 2024-01-01T00:00:00Z).
    Set {
        #[arg(long)]
        pipeline: String,
        #[arg(long, value_name = "TIME")]
        since: String,
    },
    /// Delete the checkpoint: the next run starts from initial_since.
    Reset {
        #[arg(long)]
        pipeline: String,
    },
}

impl CheckpointAction {
    fn pipeline(&self) -> &str {
        match self {
            Self::Show { pipeline } | Self::Set { pipeline, .. } | Self::Reset { pipeline } => pipeline,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::ConfigReference = cli.command {
        print!("{}", order_cdc::config::reference::markdown());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    logging::init(config.log.format, &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

async fn dispatch(command: Command, config: Config) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Migrate => {
            let mut client = store::connect(config.database_url()?, std::time::Duration::from_secs(10), "order-cdc/migrate").await?;
            let applied = store::schema::migrate(&mut client).await?;
            if applied.is_empty() {
                println!("schema is up to date");
            } else {
                println!("applied migrations: {applied:?}");
            }
        }
        Command::ConfigReference => unreachable!("answered before the configuration is loaded"),
        Command::Run { once, pipelines } => daemon::run(config, &pipelines, once).await?,
        Command::Serve => {
            let server = config.server()?;
            let metrics = Metrics::new();
            let (trigger, shutdown) = order_cdc::shutdown::channel();
            let _metrics = order_cdc::metrics::serve(metrics.clone(), config.metrics.listen, shutdown.clone())
                .await
                .map_err(|e| format!("metrics listener {}: {e}", config.metrics.listen))?;
            tokio::spawn(async move {
                order_cdc::shutdown::signal().await;
                trigger.trigger();
            });
            server::serve(server, metrics, shutdown).await?;
        }
        Command::DemoLoad { orders, items_per_order } => {
            let mut client = store::connect(config.database_url()?, std::time::Duration::from_secs(10), "order-cdc/demo-load").await?;
            let n = store::demo::load(&mut client, orders, items_per_order).await?;
            println!("loaded {n} orders with {items_per_order} items each");
        }
        Command::Checkpoint { action } => {
            let pipeline = action.pipeline().to_string();
            let (_, p) = config.select_pipelines(std::slice::from_ref(&pipeline))?[0];
            let store = checkpoint::store_for(&config, p);
            match action {
                CheckpointAction::Show { .. } => match store.load(&pipeline).await? {
                    None => println!("pipeline {pipeline} has no checkpoint: its next run starts at initial_since"),
                    Some(cp) => {
                        println!("{}", serde_json::to_string_pretty(&cp)?);
                        if cp.fingerprint != checkpoint::fingerprint(&source::identity(&p.source)) {
                            eprintln!("warning: this checkpoint belongs to another source than the configured one; `run` will refuse it");
                        }
                    }
                },
                CheckpointAction::Set { since, .. } => {
                    let since = timestamp::parse(&since).map_err(|e| format!("--since: {e}"))?;
                    let identity = source::identity(&p.source);
                    let cp = Checkpoint::new(&pipeline, &identity, source::position_since(&p.source, since));
                    store.write(&cp, p.replication_factor).await?;
                    println!("pipeline {pipeline} will start at {}", timestamp::format(since));
                }
                CheckpointAction::Reset { .. } => {
                    if store.reset(&pipeline).await? {
                        println!("pipeline {pipeline}: checkpoint deleted");
                    } else {
                        println!("pipeline {pipeline} had no checkpoint");
                    }
                }
            }
        }
    }
    Ok(())
}
