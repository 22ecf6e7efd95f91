//! How long `GET /api/sla` takes to build its report (`Sla::report`), from memory: with 15
//! minutes of figures (every 10 s slot of the ring full: 5 tiers of 1 000 operations, 100
//! responses and first events, 10 readiness checks a slot), against the baseline of an empty
//! report, in the same run. Prints the figures; asserts nothing.
//!
//! `cargo bench -p switchboard --bench sla`

// A benchmark reports on standard output.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use switchboard::sla::Sla;
use switchboard_protocol::Tier;

const REPORTS: usize = 200;

/// The report's time, p50 and max, over `REPORTS` reports.
fn timed(sla: &Sla) -> (Duration, Duration) {
    let mut took: Vec<Duration> = (0..REPORTS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(sla.report());
            started.elapsed()
        })
        .collect();
    took.sort();
    (took[REPORTS / 2], took[REPORTS - 1])
}

fn main() {
    // The report's clock is tokio's: paused, it moves 15 minutes in no time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let tiers = [Tier::Postgres, Tier::Redis, Tier::ClickHouse, Tier::Model];
        let empty = Sla::new(&tiers);
        let full = Sla::new(&tiers);
        let mut recorded = 0u64;
        for slot in 0..90u64 {
            for n in 0..1000u64 {
                for tier in [Tier::Postgres, Tier::Redis, Tier::ClickHouse, Tier::Model, Tier::Sqlite] {
                    full.operation(
                        tier,
                        None,
                        Duration::from_micros(100 + (n * 37 + slot) % 250_000),
                        n % 97 == 0,
                    );
                    recorded += 1;
                }
            }
            for n in 0..100u64 {
                full.response(Duration::from_millis(200 + (n * 53) % 3500));
                full.first_event(Duration::from_millis(1 + n % 40));
            }
            for _ in 0..10 {
                full.readiness(Duration::from_millis(3), Vec::new());
            }
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        let (empty_p50, empty_max) = timed(&empty);
        let (full_p50, full_max) = timed(&full);
        let per_op = {
            let started = Instant::now();
            for n in 0..100_000u64 {
                full.operation(Tier::Postgres, None, Duration::from_micros(500 + n % 1000), false);
            }
            started.elapsed() / 100_000
        };
        println!("sla report, {REPORTS} reports each (p50 / max):");
        println!("  empty (baseline):                 {empty_p50:?} / {empty_max:?}");
        println!("  15 minutes full ({recorded} operations): {full_p50:?} / {full_max:?}");
        println!("one operation recorded: {per_op:?}");
    });
}
