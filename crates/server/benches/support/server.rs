//! Shared by the server's benchmarks: the real release binary on loopback.

use std::path::Path;
use std::process::Stdio;

use anyhow::Context;
use switchboard_client::Client;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the release binary in dev mode on a free port with `args` added and `env` in its
/// environment, and a client of it. Warnings and errors the server logs are passed on, marked
/// with its `--node-id` when it has one.
pub(crate) async fn start_server(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Child, Client)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("SWITCHBOARD_LOG", "warn,switchboard=info")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let mut lines = BufReader::new(child.stderr.take().context("no stderr")?).lines();
    let addr = loop {
        let line = lines.next_line().await?.context("the server exited before listening")?;
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().context("no address")?.to_owned();
        }
    };
    let name = args
        .iter()
        .position(|&arg| arg == "--node-id")
        .and_then(|at| args.get(at + 1))
        .map_or_else(|| "server".to_owned(), |node| (*node).to_owned());
    // Pass on what the server warns about: a benchmark that hides errors measures nothing.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("{name}: {line}");
            }
        }
    });
    Ok((child, Client::new(&format!("http://{addr}"))))
}
