//! `switchboard ingest FILE` uploads workload data (NDJSON, a JSON array, or CSV with a header)
//! to a running server in chunks, with a progress bar.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Map, Number, Value};

use crate::SignIn;

/// Rows per upload request.
const CHUNK_ROWS: usize = 10_000;
/// Bytes per upload request, well under the server's 10 MB.
const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Options of `switchboard ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// The file: `.csv` (with a header), `.json` (an array), anything else NDJSON.
    pub file: PathBuf,
    /// The server and how to sign in.
    #[command(flatten)]
    pub sign_in: SignIn,
}

/// A CSV cell as the JSON value the server expects for its column.
fn csv_value(column: &str, cell: &str) -> Value {
    let number = |text: &str| text.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number);
    match column {
        "input_tokens" | "output_tokens" => cell.parse::<u64>().map(Value::from).unwrap_or_else(|_| cell.into()),
        "latency_ms" | "cost_usd" => number(cell).unwrap_or_else(|| cell.into()),
        "batch" => match cell.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => cell.into(),
        },
        _ => cell.into(),
    }
}

/// The rows of CSV with a header, each with its line in the text: a row maps each column to its
/// trimmed cell, leaving out empty cells, with numbers and `batch` read as the server expects.
pub fn parse_csv(bytes: &[u8]) -> Result<Vec<(u64, Value)>, csv::Error> {
    let mut reader = csv::Reader::from_reader(bytes);
    let headers: Vec<String> = reader.headers()?.iter().map(|h| h.trim().to_owned()).collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let line = record.position().map_or(0, |p| p.line());
        let mut row = Map::new();
        for (column, cell) in headers.iter().zip(record.iter()) {
            if !cell.trim().is_empty() {
                row.insert(column.clone(), csv_value(column, cell.trim()));
            }
        }
        rows.push((line, Value::Object(row)));
    }
    Ok(rows)
}

/// The file's rows with their line numbers in the file.
fn read_rows(args: &IngestArgs) -> anyhow::Result<Vec<(u64, Value)>> {
    let path = &args.file;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "csv" => parse_csv(text.as_bytes()).with_context(|| format!("{} is not valid CSV", path.display())),
        "json" => {
            let value: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?;
            let Value::Array(rows) = value else {
                bail!("{} must hold a JSON array of calls", path.display());
            };
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, row)| (i as u64 + 1, row))
                .collect())
        }
        _ => {
            let mut rows = Vec::new();
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let row = serde_json::from_str(line)
                    .with_context(|| format!("line {} of {} is not valid JSON", index + 1, path.display()))?;
                rows.push((index as u64 + 1, row));
            }
            Ok(rows)
        }
    }
}

/// Uploads the file; on refused rows, names them by their line in the file.
pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let rows = read_rows(&args)?;
    let (client, session) = args.sign_in.session().await?;
    let progress = indicatif::ProgressBar::new(rows.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} calls ({per_sec}, {eta} left)")
            .expect("a valid template"),
    );
    let url = format!("{}/api/workload-events", client.base());
    let mut stored = 0u64;
    let mut start = 0;
    while start < rows.len() {
        let mut body = String::new();
        let mut end = start;
        while end < rows.len() && end - start < CHUNK_ROWS && body.len() < CHUNK_BYTES {
            body.push_str(&rows[end].1.to_string());
            body.push('\n');
            end += 1;
        }
        let response = client
            .http()
            .post(&url)
            .bearer_auth(&session.access_token)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .send()
            .await
            .context("uploading to the server")?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        if status != 200 {
            progress.abandon();
            let mut report = format!(
                "the server refused calls {}..{} ({status}): {}",
                start + 1,
                end,
                answer["error"]["message"].as_str().unwrap_or("no message")
            );
            for row in answer["error"]["rows"].as_array().into_iter().flatten().take(20) {
                let in_chunk = row["line"].as_u64().unwrap_or(1).max(1) as usize - 1;
                let line = rows.get(start + in_chunk).map_or(0, |r| r.0);
                report.push_str(&format!("\n  line {line}: {}", row["error"].as_str().unwrap_or("")));
            }
            if stored > 0 {
                report.push_str(&format!("\n{stored} calls before them were stored."));
            }
            bail!(report);
        }
        stored += answer["accepted"].as_u64().unwrap_or(0);
        progress.set_position((end) as u64);
        start = end;
    }
    progress.finish();
    println!("stored {stored} calls from {}", args.file.display());
    Ok(())
}
