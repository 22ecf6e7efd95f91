//! `switchboard`: `serve` runs the server; `chat`, `ingest`, `loadtest` and `doctor` talk to one.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::demo_data::DemoDataArgs;
use switchboard::{Application, Config, ServeArgs, telemetry};
use switchboard_client::chat::ChatArgs;
use switchboard_client::doctor::DoctorArgs;
use switchboard_client::ingest::IngestArgs;
use switchboard_client::loadtest::LoadtestArgs;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "A real-time AI-agent chat server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server.
    Serve(Box<ServeArgs>),
    /// A terminal client: sends each line you type and shows the run as a live timeline.
    Chat(ChatArgs),
    /// Uploads workload data (NDJSON, a JSON array, or CSV with a header) to a running server.
    Ingest(IngestArgs),
    /// Writes a realistic synthetic month of model calls as NDJSON, to try the product with.
    DemoData(DemoDataArgs),
    /// Drives users against a running server, checks every run's events, and exits 1 when an
    /// SLA threshold is violated.
    Loadtest(Box<LoadtestArgs>),
    /// Reads a running server's SLA report and readiness checks and says, in sentences, what is
    /// wrong and which tier is to blame; exits 1 unless all is well.
    Doctor(DoctorArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            // A sentence and its causes; never a backtrace, which `anyhow` would print from
            // `main` when RUST_BACKTRACE is set, as it is in many shells.
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  because: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let done = match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args)?;
            let telemetry = telemetry::init(&config)?;
            let served = runtime.block_on(async {
                let app = Application::build(config).await?;
                app.run_until_stopped().await
            });
            // Outside the runtime: the exporter's last batch goes out from a thread of its own.
            telemetry.shutdown();
            served
        }
        Command::Chat(args) => runtime.block_on(switchboard_client::chat::run(args)),
        Command::Ingest(args) => runtime.block_on(switchboard_client::ingest::ingest(args)),
        Command::DemoData(args) => switchboard::demo_data::demo_data(args),
        Command::Loadtest(args) => runtime.block_on(switchboard_client::loadtest::command(*args)),
        // Not healthy: what is wrong is printed; the exit code says it too.
        Command::Doctor(args) => {
            let healthy = runtime.block_on(switchboard_client::doctor::command(args))?;
            return Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    };
    done.map(|()| ExitCode::SUCCESS)
}
