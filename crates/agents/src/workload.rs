//! Validating uploaded workload rows (JSON arrays and NDJSON): every row is checked, every bad
//! row is named by its 1-based line with every problem it has, and the cost of a row that gives
//! none is computed from the price table.

use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_protocol::Timestamp;
use switchboard_store::{CallStatus, WorkloadEvent};

use crate::prices::PriceTable;

/// Longest text field of a row.
const MAX_TEXT: usize = 200;

/// A bad row: its 1-based line (array index + 1 for JSON arrays) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowError {
    /// The row's line.
    pub line: usize,
    /// Every problem of the row, in one sentence.
    pub error: String,
}

/// Why an upload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadError {
    /// The body as a whole is not what its content type says.
    Malformed(String),
    /// Some rows are bad; none is stored.
    Rows(Vec<RowError>),
}

fn text_field(row: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Option<String> {
    match row.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if !text.is_empty() && text.chars().count() <= MAX_TEXT => Some(text.clone()),
        Some(_) => {
            problems.push(format!(
                "{key} must be a non-empty text of at most {MAX_TEXT} characters"
            ));
            None
        }
    }
}

fn count_field(row: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> u64 {
    match row.get(key) {
        None | Some(Value::Null) => {
            problems.push(format!("{key} is required"));
            0
        }
        Some(value) => value.as_u64().unwrap_or_else(|| {
            problems.push(format!("{key} must be a whole number of 0 or more"));
            0
        }),
    }
}

fn amount_field(row: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> Option<f64> {
    match row.get(key) {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            Some(amount) if amount.is_finite() && amount >= 0.0 => Some(amount),
            _ => {
                problems.push(format!("{key} must be a number of 0 or more"));
                None
            }
        },
    }
}

/// Checks one row and turns it into a workload event.
pub fn parse_row(value: &Value, prices: &PriceTable) -> Result<WorkloadEvent, String> {
    let Value::Object(row) = value else {
        return Err("a row must be a JSON object".to_owned());
    };
    let mut problems = Vec::new();
    let timestamp = match row.get("timestamp") {
        None | Some(Value::Null) => {
            problems.push("timestamp is required".to_owned());
            None
        }
        Some(Value::String(text)) => Timestamp::parse(text).ok().or_else(|| {
            problems.push(format!(
                "timestamp `{text}` is not an RFC 3339 time such as 2026-11-01T12:00:00Z"
            ));
            None
        }),
        Some(_) => {
            problems.push("timestamp must be an RFC 3339 time such as 2026-11-01T12:00:00Z".to_owned());
            None
        }
    };
    let model = match row.get("model") {
        None | Some(Value::Null) => {
            problems.push("model is required".to_owned());
            None
        }
        Some(_) => text_field(row, "model", &mut problems),
    };
    let input_tokens = count_field(row, "input_tokens", &mut problems);
    let output_tokens = count_field(row, "output_tokens", &mut problems);
    let provider = text_field(row, "provider", &mut problems);
    let feature = text_field(row, "feature", &mut problems);
    let prompt_hash = text_field(row, "prompt_hash", &mut problems);
    let latency_ms = amount_field(row, "latency_ms", &mut problems);
    let status = match row.get("status") {
        None | Some(Value::Null) => CallStatus::Ok,
        Some(Value::String(s)) if s == "ok" => CallStatus::Ok,
        Some(Value::String(s)) if s == "error" => CallStatus::Error,
        Some(_) => {
            problems.push("status must be \"ok\" or \"error\"".to_owned());
            CallStatus::Ok
        }
    };
    let batch = match row.get("batch") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(batch)) => *batch,
        Some(_) => {
            problems.push("batch must be true or false".to_owned());
            false
        }
    };
    let given_cost = amount_field(row, "cost_usd", &mut problems);
    let cost_usd = match (given_cost, &model) {
        (Some(cost), _) => Some(cost),
        (None, Some(model)) => match prices.find(model) {
            Some(price) => Some(price.cost(input_tokens, output_tokens, batch)),
            None => {
                problems.push(format!(
                    "cost_usd is missing and the model `{model}` is not in the price table; give cost_usd or add the model to the price table"
                ));
                None
            }
        },
        (None, None) => None,
    };
    match (problems.is_empty(), timestamp, model, cost_usd) {
        (true, Some(timestamp), Some(model), Some(cost_usd)) => Ok(WorkloadEvent {
            timestamp,
            model,
            input_tokens,
            output_tokens,
            provider,
            latency_ms,
            status,
            feature,
            prompt_hash,
            cost_usd,
            batch,
        }),
        _ => Err(problems.join("; ")),
    }
}

fn collect(
    rows: impl Iterator<Item = (usize, Result<WorkloadEvent, String>)>,
) -> Result<Vec<WorkloadEvent>, UploadError> {
    let mut events = Vec::new();
    let mut errors = Vec::new();
    for (line, row) in rows {
        match row {
            Ok(event) => events.push(event),
            Err(error) => errors.push(RowError { line, error }),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(UploadError::Rows(errors))
    }
}

/// A JSON array of rows; line = index + 1.
pub fn parse_json_array(body: &[u8], prices: &PriceTable) -> Result<Vec<WorkloadEvent>, UploadError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| UploadError::Malformed(format!("the body is not valid JSON: {e}")))?;
    let Value::Array(rows) = value else {
        return Err(UploadError::Malformed(
            "the body must be a JSON array of rows (or NDJSON with Content-Type: application/x-ndjson)".to_owned(),
        ));
    };
    collect(
        rows.iter()
            .enumerate()
            .map(|(index, row)| (index + 1, parse_row(row, prices))),
    )
}

/// Newline-delimited JSON: one row per line; blank lines are skipped but counted.
pub fn parse_ndjson(body: &[u8], prices: &PriceTable) -> Result<Vec<WorkloadEvent>, UploadError> {
    let text = std::str::from_utf8(body).map_err(|e| UploadError::Malformed(format!("the body is not UTF-8: {e}")))?;
    collect(
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                let row = serde_json::from_str::<Value>(line)
                    .map_err(|e| format!("the line is not valid JSON: {e}"))
                    .and_then(|value| parse_row(&value, prices));
                (index + 1, row)
            }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn good() -> Value {
        json!({"timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 200})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut row = good();
        row[key] = value;
        row
    }

    fn without(key: &str) -> Value {
        let mut row = good();
        row.as_object_mut().unwrap().remove(key);
        row
    }

    #[test]
    fn each_kind_of_bad_row_is_named_with_its_problem() {
        let prices = PriceTable::embedded();
        let cases: Vec<(Value, &str)> = vec![
            (json!([1]), "a row must be a JSON object"),
            (without("timestamp"), "timestamp is required"),
            (
                with("timestamp", json!("yesterday")),
                "timestamp `yesterday` is not an RFC 3339 time",
            ),
            (
                with("timestamp", json!(1700000000)),
                "timestamp must be an RFC 3339 time",
            ),
            (without("model"), "model is required"),
            (with("model", json!("")), "model must be a non-empty text"),
            (
                with("model", json!("x".repeat(201))),
                "model must be a non-empty text of at most 200 characters",
            ),
            (without("input_tokens"), "input_tokens is required"),
            (
                with("input_tokens", json!(-5)),
                "input_tokens must be a whole number of 0 or more",
            ),
            (
                with("output_tokens", json!(2.5)),
                "output_tokens must be a whole number of 0 or more",
            ),
            (
                with("output_tokens", json!("200")),
                "output_tokens must be a whole number of 0 or more",
            ),
            (
                with("latency_ms", json!(-1)),
                "latency_ms must be a number of 0 or more",
            ),
            (with("status", json!("failed")), "status must be \"ok\" or \"error\""),
            (with("batch", json!("yes")), "batch must be true or false"),
            (with("cost_usd", json!(-0.5)), "cost_usd must be a number of 0 or more"),
            (with("feature", json!(5)), "feature must be a non-empty text"),
            (
                with("model", json!("our-finetune")),
                "the model `our-finetune` is not in the price table",
            ),
            (
                json!({"model": "gpt-4o"}),
                "timestamp is required; input_tokens is required; output_tokens is required",
            ),
        ];
        for (row, expected) in cases {
            let error = parse_row(&row, &prices).unwrap_err();
            assert!(
                error.contains(expected),
                "row {row}: got `{error}`, expected `{expected}`"
            );
        }
    }

    #[test]
    fn a_good_row_is_read_with_its_defaults_and_its_cost() {
        let prices = PriceTable::embedded();
        let event = parse_row(&good(), &prices).unwrap();
        assert_eq!(
            (event.status, event.batch, event.feature.as_deref()),
            (CallStatus::Ok, false, None)
        );
        assert!((event.cost_usd - (1000.0 * 2.5 + 200.0 * 10.0) / 1e6).abs() < 1e-12);
        let batch = parse_row(&with("batch", json!(true)), &prices).unwrap();
        assert!((batch.cost_usd - event.cost_usd / 2.0).abs() < 1e-12);
        let given = parse_row(
            &with("model", json!("our-finetune"))
                .as_object()
                .cloned()
                .map(|mut o| {
                    o.insert("cost_usd".into(), json!(0.25));
                    Value::Object(o)
                })
                .unwrap(),
            &prices,
        )
        .unwrap();
        assert_eq!(
            given.cost_usd, 0.25,
            "a given cost wins, also for models the table does not know"
        );
        let full = json!({"timestamp": "2026-11-01T12:00:00+02:00", "model": "claude-3-5-haiku", "input_tokens": 10,
            "output_tokens": 5, "provider": "anthropic", "latency_ms": 812.5, "status": "error", "feature": "search",
            "prompt_hash": "h1", "batch": false, "unknown_field": "ignored"});
        let full = parse_row(&full, &prices).unwrap();
        assert_eq!(full.timestamp.to_string(), "2026-11-01T10:00:00.000Z");
        assert_eq!(
            (full.status, full.latency_ms, full.prompt_hash.as_deref()),
            (CallStatus::Error, Some(812.5), Some("h1"))
        );
    }

    #[test]
    fn uploads_name_every_bad_row_by_its_line() {
        let prices = PriceTable::embedded();
        let body = serde_json::to_vec(&json!([good(), without("model"), good(), with("status", json!(1))])).unwrap();
        let Err(UploadError::Rows(errors)) = parse_json_array(&body, &prices) else {
            panic!("accepted")
        };
        assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [2, 4]);
        let ndjson = format!("{}\n\nnot json\n{}\n{}\n", good(), good(), without("timestamp"));
        let Err(UploadError::Rows(errors)) = parse_ndjson(ndjson.as_bytes(), &prices) else {
            panic!("accepted")
        };
        assert_eq!(
            errors
                .iter()
                .map(|e| (e.line, e.error.split(':').next().unwrap()))
                .collect::<Vec<_>>(),
            [(3, "the line is not valid JSON"), (5, "timestamp is required")]
        );
        assert_eq!(
            parse_ndjson(format!("{}\n{}", good(), good()).as_bytes(), &prices)
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            parse_json_array(b"{\"rows\": []}", &prices),
            Err(UploadError::Malformed(_))
        ));
        assert!(matches!(
            parse_json_array(b"[1,", &prices),
            Err(UploadError::Malformed(_))
        ));
        assert_eq!(parse_json_array(b"[]", &prices).unwrap().len(), 0);
    }
}
