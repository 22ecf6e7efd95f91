//! A workload upload as a JSON array (`POST /api/workload-events`, `application/json`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_agents::workload::parse_json_array;
use switchboard_fuzz::{check_upload, prices};

fuzz_target!(|body: &[u8]| {
    let upload = parse_json_array(body, prices());
    let rows: Option<Vec<(usize, Value)>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(rows)) => Some(rows.into_iter().enumerate().map(|(i, row)| (i + 1, row)).collect()),
        _ => None,
    };
    check_upload(&upload, rows.as_deref());
});
