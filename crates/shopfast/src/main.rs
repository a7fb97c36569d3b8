//! `shopfast <service>`: every service of the platform from one binary, each run
//! as its own process.
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use kit::server::RunningService;
use kit::telemetry::LogFormat;

#[derive(Parser)]
#[command(name = "shopfast", version, about = "A microservices platform and the shop that runs on it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Users service (accounts, login, profiles).
    Users(ServiceArgs),
    /// Run the Products service (catalog, search, inventory reservations).
    Products(ServiceArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Json,
    Pretty,
}

/// Flags every service takes; they override the config file and `SHOPFAST_*` env.
#[derive(Args, Serialize)]
struct ServiceArgs {
    /// TOML file with a table per service ([users], [products], …).
    #[arg(long, env = "SHOPFAST_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// gRPC listen address (port 0 = pick a free port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<SocketAddr>,
    /// Admin HTTP address: /health/live, /health/ready, /metrics.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_addr: Option<SocketAddr>,
    /// sqlite://path?mode=rwc or postgres://user@host/db (default: <data-dir>/<service>.db).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    /// Where SQLite files live.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "json")]
    #[serde(skip)]
    log_format: LogFormatArg,
}

impl ServiceArgs {
    fn log_format(&self) -> LogFormat {
        match self.log_format {
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Pretty => LogFormat::Pretty,
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Users(args) => {
            kit::telemetry::init_logging(users::SERVICE, "info", args.log_format());
            let config: users::UsersConfig = kit::config::load(users::SERVICE, args.config.as_deref(), &args)?;
            run(users::start(config, kit::shutdown::on_signals()).await.context("users failed to start")?).await
        }
        Command::Products(args) => {
            kit::telemetry::init_logging(products::SERVICE, "info", args.log_format());
            let config: products::ProductsConfig = kit::config::load(products::SERVICE, args.config.as_deref(), &args)?;
            run(products::start(config, kit::shutdown::on_signals()).await.context("products failed to start")?).await
        }
    }
}

async fn run(service: RunningService) -> anyhow::Result<()> {
    let name = service.name;
    service.wait().await.with_context(|| format!("{name} stopped with an error"))
}
