//! `switchboard demo-data` writes a realistic synthetic month of model calls as NDJSON, to try
//! the product with (`switchboard ingest` uploads it).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use switchboard_agents::demo::{DemoSpec, demo_rows};
use switchboard_protocol::Timestamp;

/// Options of `switchboard demo-data`.
#[derive(Debug, Clone, Args)]
pub struct DemoDataArgs {
    /// Where to write the NDJSON (standard output when not given).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// Days of data, ending today.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Interactive calls on an average day.
    #[arg(long, default_value_t = 2000)]
    pub calls_per_day: u32,
    /// Seed: the same seed gives the same data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Writes the demo month.
pub fn demo_data(args: DemoDataArgs) -> anyhow::Result<()> {
    if args.days == 0 || args.days > 366 {
        bail!("--days must be from 1 to 366");
    }
    let today = Timestamp::now().unix_millis().div_euclid(86_400_000) * 86_400_000;
    let rows = demo_rows(DemoSpec {
        seed: args.seed,
        days: args.days,
        calls_per_day: args.calls_per_day,
        end_unix_ms: today,
    });
    let mut out: Box<dyn Write> = match &args.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for row in &rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if let Some(path) = &args.out {
        eprintln!(
            "wrote {} calls over {} days to {}",
            rows.len(),
            args.days,
            path.display()
        );
    }
    Ok(())
}
