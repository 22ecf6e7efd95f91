//! A workload upload as NDJSON (`POST /api/workload-events`, `application/x-ndjson`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_agents::workload::parse_ndjson;
use switchboard_fuzz::{check_upload, prices};

fuzz_target!(|body: &[u8]| {
    let upload = parse_ndjson(body, prices());
    // Every non-blank line is a row, by its 1-based line; its content does not matter here.
    let rows: Option<Vec<(usize, Value)>> = std::str::from_utf8(body).ok().map(|text| {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, _)| (i + 1, Value::Null))
            .collect()
    });
    check_upload(&upload, rows.as_deref());
});
