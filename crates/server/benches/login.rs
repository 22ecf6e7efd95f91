//! What a failed login costs, against the real release binary on loopback: a wrong password for
//! a registered email against an email nobody registered (which must cost the same, or the time
//! tells which emails exist), and the right password as the baseline of the same run.
//!
//! `cargo bench -p switchboard --bench login`

#![allow(clippy::print_stdout)]

#[path = "support/server.rs"]
mod server;

use std::time::Instant;

use serde_json::json;

const ATTEMPTS: usize = 60;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The throttle would refuse the attempts after the tenth failure; here only their cost counts.
    let (_server, client) = server::start_server(dir.path(), &["--login-max-failures", "1000000"], &[]).await?;
    client.register("known@bench.example", "the right password").await?;
    let cases = [
        ("right password (baseline)", "known@bench.example", "the right password"),
        ("wrong password", "known@bench.example", "a wrong password"),
        ("unknown email", "nobody@bench.example", "a wrong password"),
    ];
    println!("| login | attempts | p50 (ms) | p90 (ms) |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, email, password) in cases {
        let mut times = Vec::with_capacity(ATTEMPTS);
        for _ in 0..ATTEMPTS {
            let started = Instant::now();
            let (status, _) = client
                .post(
                    "/api/auth/login",
                    None,
                    &json!({ "email": email, "password": password }),
                )
                .await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(status == 200 || status == 401, "{name}: status {status}");
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!("| {name} | {ATTEMPTS} | {:.1} | {:.1} |", at(0.5), at(0.9));
    }
    Ok(())
}
