//! A CSV file for `switchboard ingest`: read into rows, which are then uploaded as NDJSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_client::ingest::parse_csv;
use switchboard_agents::workload::parse_ndjson;
use switchboard_fuzz::{check_upload, prices};

fuzz_target!(|file: &[u8]| {
    let Ok(rows) = parse_csv(file) else { return };
    assert!(
        rows.windows(2).all(|w| w[0].0 <= w[1].0),
        "rows are not in file order: {:?}",
        rows.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let mut body = String::new();
    for (line, row) in &rows {
        assert!(*line >= 1, "a row at line {line}");
        let Value::Object(cells) = row else {
            panic!("a row that is not an object: {row}")
        };
        for (column, value) in cells {
            match value {
                Value::String(cell) => assert!(
                    !cell.is_empty() && cell.trim() == cell,
                    "column {column}: the cell `{cell}` is empty or not trimmed"
                ),
                Value::Number(_) | Value::Bool(_) => {}
                other => panic!("column {column}: a cell read as {other}"),
            }
        }
        // As `ingest` sends it: one JSON row per line.
        let text = row.to_string();
        assert!(!text.contains('\n'), "a row's JSON spans lines: {text}");
        body.push_str(&text);
        body.push('\n');
    }
    let numbered: Vec<(usize, Value)> = (1..=rows.len()).map(|i| (i, Value::Null)).collect();
    check_upload(&parse_ndjson(body.as_bytes(), prices()), Some(&numbered));
});
