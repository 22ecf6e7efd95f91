//! One user's heavy analysis against another user's chat, on the real release binary over
//! loopback: user A has 900 000 uploaded calls (the demo month, scaled) and asks "How can we cut
//! our LLM costs?" again and again; user B sends "hello, what can you do?" and waits for each
//! answer. B's time from sending to the final event, alone (the baseline, in the same run) and
//! while A's analyses run.
//!
//! `cargo bench -p switchboard --bench isolation`

#![allow(clippy::print_stdout)]

#[path = "support/server.rs"]
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_agents::demo::demo_month_of_about;
use switchboard_client::{Client, Session, Socket};
use switchboard_protocol::{ClientFrame, Control, ServerFrame, UserMessage};

const CALLS: u32 = 900_000;
/// Trivial runs measured alone, at least as many while the analyses run.
const TRIVIAL_RUNS: usize = 200;
/// Analyses B's runs must overlap with.
const ANALYSES: usize = 3;
/// Upload bodies stay under the server's 10 MB limit.
const UPLOAD_BYTES: usize = 9 * 1024 * 1024;

async fn open(client: &Client, session: &Session) -> anyhow::Result<Socket> {
    let mut socket = client.connect(&session.access_token, None).await?;
    match socket.next_frame().await? {
        Some(ServerFrame::Control(c)) if matches!(c.body, Control::ConnectionEstablished(_)) => Ok(socket),
        other => bail!("expected connection_established, got {other:?}"),
    }
}

/// Sends `text` and waits for its run's final event: the time that took.
async fn one_run(socket: &mut Socket, text: &str) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    let message = ClientFrame::UserMessage(UserMessage {
        text: text.into(),
        thread_id: None,
        client_message_id: None,
    });
    socket.send(&message).await?;
    loop {
        match socket.next_frame().await?.context("the socket closed")? {
            ServerFrame::Event(event) if event.is_final() => return Ok(sent.elapsed()),
            ServerFrame::Control(c) => {
                if let Control::Error(error) = c.body {
                    bail!("refused: {}", error.message);
                }
            }
            ServerFrame::Event(_) => {}
        }
    }
}

/// Uploads the demo month scaled to about `calls` calls; how many were stored.
async fn upload(client: &Client, session: &Session, calls: u32) -> anyhow::Result<u64> {
    let rows = demo_month_of_about(calls);
    let mut body = String::new();
    let mut stored = 0;
    for (index, row) in rows.iter().enumerate() {
        body.push_str(&row.to_string());
        body.push('\n');
        if body.len() >= UPLOAD_BYTES || index + 1 == rows.len() {
            let response = client
                .http()
                .post(format!("{}/api/workload-events", client.base()))
                .bearer_auth(&session.access_token)
                .header("content-type", "application/x-ndjson")
                .body(std::mem::take(&mut body))
                .send()
                .await?;
            let status = response.status();
            let answer: serde_json::Value = response.json().await?;
            anyhow::ensure!(status.is_success(), "upload refused: {answer}");
            stored += answer["accepted"].as_u64().context("no accepted count")?;
        }
    }
    Ok(stored)
}

fn row(label: &str, times: &mut [Duration]) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0;
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} |",
        times.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let long = "600000";
    let (_server, client) = server::start_server(
        dir.path(),
        &[
            "--rate-limit-per-minute",
            "1000000",
            "--run-timeout-ms",
            long,
            "--agent-timeout-ms",
            long,
            "--tool-timeout-ms",
            long,
        ],
        &[],
    )
    .await?;
    let heavy = client.dev_login(Some("heavy@bench.example")).await?;
    let light = client.dev_login(Some("light@bench.example")).await?;
    let started = Instant::now();
    let stored = upload(&client, &heavy, CALLS).await?;
    let took = started.elapsed().as_secs_f64();
    println!(
        "isolation: release server on loopback, SQLite, offline model; {stored} calls uploaded in {took:.1} s \
         ({:.0} calls/s over HTTP)",
        stored as f64 / took
    );
    println!();
    println!("| user B's trivial runs | runs | p50 (ms) | p99 (ms) | max (ms) |");
    println!("| --- | ---: | ---: | ---: | ---: |");

    let mut light_socket = open(&client, &light).await?;
    let mut alone = Vec::new();
    for _ in 0..TRIVIAL_RUNS {
        alone.push(one_run(&mut light_socket, "hello, what can you do?").await?);
    }
    row("alone (baseline)", &mut alone);

    let stop = Arc::new(AtomicBool::new(false));
    let mut heavy_socket = open(&client, &heavy).await?;
    let analyses = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut times = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                times.push(one_run(&mut heavy_socket, "How can we cut our LLM costs?").await?);
            }
            anyhow::Ok(times)
        }
    });
    let mut during = Vec::new();
    let since = Instant::now();
    // B keeps going until A has had time for its analyses (the first one is measured below).
    while during.len() < TRIVIAL_RUNS || since.elapsed() < Duration::from_secs(3 * ANALYSES as u64) {
        during.push(one_run(&mut light_socket, "hello, what can you do?").await?);
    }
    stop.store(true, Ordering::SeqCst);
    let mut heavy_times = analyses.await??;
    row("while A's analyses run", &mut during);
    println!();
    heavy_times.sort();
    println!(
        "user A's analyses meanwhile: {} (median {:.0} ms)",
        heavy_times.len(),
        heavy_times[heavy_times.len() / 2].as_secs_f64() * 1000.0
    );
    Ok(())
}
