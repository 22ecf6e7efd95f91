//! `switchboard-faultproxy --listen 127.0.0.1:0 --upstream HOST:PORT`: a fault proxy for scripts.
//! It prints the address it listens on as its first line, then reads commands on its standard
//! input, one a line (`latency 300`, `stall`, `refuse`, `none`, `cut`, `quit`), and answers each
//! with a line starting `ok` on standard output or `error:` on standard error. It keeps serving
//! when its input ends, until `quit` or a signal.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use switchboard_faultproxy::{Command, Fault, FaultProxy};
use tokio::io::{AsyncBufReadExt, BufReader};

const USAGE: &str = "usage: switchboard-faultproxy [--listen ADDR:PORT] --upstream HOST:PORT";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    listen: String,
    upstream: String,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = String::from("127.0.0.1:0");
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--upstream" => upstream = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let upstream = upstream.ok_or_else(|| format!("--upstream is required\n{USAGE}"))?;
    Ok(Args { listen, upstream })
}

async fn resolve(what: &str, address: &str) -> Result<SocketAddr, String> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|error| format!("cannot resolve {what} `{address}`: {error}"))?
        .next()
        .ok_or_else(|| format!("{what} `{address}` resolves to no address"))
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let listen = resolve("--listen", &args.listen).await?;
    let upstream = resolve("--upstream", &args.upstream).await?;
    let proxy = FaultProxy::bind(listen, upstream)
        .await
        .map_err(|error| format!("cannot listen on {listen}: {error}"))?;
    say(&proxy.addr().to_string())?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|error| format!("cannot read standard input: {error}"))?;
        let Some(line) = line else {
            // No more commands: keep the fault in force until a signal ends the process.
            std::future::pending::<()>().await;
            return Ok(());
        };
        if line.trim().is_empty() {
            continue;
        }
        match line.parse::<Command>() {
            Ok(Command::Set(fault)) => {
                proxy.set(fault);
                say(&format!("ok {}", describe(fault)))?;
            }
            Ok(Command::Cut) => {
                proxy.cut_all();
                say("ok cut")?;
            }
            Ok(Command::Quit) => {
                say("ok quit")?;
                return Ok(());
            }
            Err(error) => eprintln!("error: {error}"),
        }
    }
}

fn describe(fault: Fault) -> String {
    match fault {
        Fault::None => "none".to_owned(),
        Fault::Latency(latency) => format!("latency {}", latency.as_millis()),
        Fault::Stall => "stall".to_owned(),
        Fault::Refuse => "refuse".to_owned(),
    }
}

/// One line of the proxy's own output, flushed at once for the script that reads it.
fn say(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|error| format!("cannot write standard output: {error}"))
}
