//! Validating uploaded workload rows (JSON arrays and NDJSON): every row is checked, every bad
//! row is named by its 1-based line with every problem it has, and the cost of a row that gives
//! none is computed from the price table.
//!
//! Every figure must lie in the store's ranges ([`MAX_CALL_TOKENS`], [`MAX_CALL_LATENCY_MS`],
//! [`MAX_CALL_COST_USD`], [`EARLIEST_CALL_MS`] to [`LATEST_CALL_MS`]), defined once in
//! `switchboard-store`, whose summary leaves out stored calls outside them.

use serde_json::{Map, Value};
use switchboard_protocol::Timestamp;
use switchboard_store::{CallStatus, WorkloadEvent};
pub use switchboard_store::{
    EARLIEST_CALL_MS, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS,
};

use crate::prices::PriceTable;

/// Longest text field of a row.
const MAX_TEXT: usize = 200;
/// Longest a bad value is quoted in an error, in characters.
const MAX_QUOTED: usize = 40;

/// A bad row: its 1-based line (array index + 1 for JSON arrays) and what is wrong with it, as
/// the refusal of an upload names it.
pub use switchboard_protocol::http::RowError;

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

/// A bad value as the error quotes it: its JSON text (numbers as JSON writes them, `1e+308`, not
/// 309 digits), cut short when long.
fn quoted(value: &Value) -> String {
    cut(&value.to_string())
}

/// `text`, cut to its first `MAX_QUOTED` characters.
fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(MAX_QUOTED).collect::<String>())
    }
}

/// An instant of [`EARLIEST_CALL_MS`] or [`LATEST_CALL_MS`] as RFC 3339.
fn instant(ms: i64) -> String {
    Timestamp::from_unix_millis(ms).map_or_else(|| format!("{ms} ms after 1970"), |t| t.to_string())
}

fn count_field(row: &Map<String, Value>, key: &str, problems: &mut Vec<String>) -> u64 {
    match row.get(key) {
        None | Some(Value::Null) => {
            problems.push(format!("{key} is required"));
            0
        }
        Some(value) => match value.as_u64() {
            Some(count) if count <= MAX_CALL_TOKENS => count,
            _ => {
                problems.push(format!(
                    "{key} must be a whole number from 0 to {MAX_CALL_TOKENS}, not {}",
                    quoted(value)
                ));
                0
            }
        },
    }
}

/// An optional number from 0 to `max`; `unit` says what `max` is counted in.
fn amount_field(row: &Map<String, Value>, key: &str, max: f64, unit: &str, problems: &mut Vec<String>) -> Option<f64> {
    match row.get(key) {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64() {
            Some(amount) if (0.0..=max).contains(&amount) => Some(amount),
            _ => {
                problems.push(format!(
                    "{key} must be a number from 0 to {max} ({unit}), not {}",
                    quoted(value)
                ));
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
        Some(Value::String(text)) => match Timestamp::parse(text) {
            Ok(at) if (EARLIEST_CALL_MS..=LATEST_CALL_MS).contains(&at.unix_millis()) => Some(at),
            Ok(_) => {
                problems.push(format!(
                    "timestamp must be from {} to {}, not `{}`",
                    instant(EARLIEST_CALL_MS),
                    instant(LATEST_CALL_MS),
                    cut(text)
                ));
                None
            }
            Err(_) => {
                problems.push(format!(
                    "timestamp `{}` is not an RFC 3339 time such as 2026-11-01T12:00:00Z",
                    cut(text)
                ));
                None
            }
        },
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
    let latency_ms = amount_field(
        row,
        "latency_ms",
        MAX_CALL_LATENCY_MS,
        "milliseconds, a day",
        &mut problems,
    );
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
    let given_cost = amount_field(
        row,
        "cost_usd",
        MAX_CALL_COST_USD,
        "US dollars for the call",
        &mut problems,
    );
    let cost_usd = match (given_cost, &model) {
        (Some(cost), _) => Some(cost),
        (None, Some(model)) => match prices.find(model) {
            Some(price) => {
                let cost = price.cost(input_tokens, output_tokens, batch);
                if (0.0..=MAX_CALL_COST_USD).contains(&cost) {
                    Some(cost)
                } else {
                    problems.push(format!(
                        "cost_usd is missing and the price table makes the call cost {} US dollars, above the \
                         limit of {MAX_CALL_COST_USD} for one call",
                        serde_json::Number::from_f64(cost)
                            .map_or_else(|| "infinitely many".to_owned(), |n| n.to_string())
                    ));
                    None
                }
            }
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
            Err(error) => errors.push(RowError {
                line: line as u64,
                error,
            }),
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
            (
                with("timestamp", json!("x".repeat(100_000))),
                "timestamp `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…` is not an RFC 3339 time",
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
                "input_tokens must be a whole number from 0 to 10000000, not -5",
            ),
            (
                with("output_tokens", json!(2.5)),
                "output_tokens must be a whole number from 0 to 10000000, not 2.5",
            ),
            (
                with("output_tokens", json!("200")),
                "output_tokens must be a whole number from 0 to 10000000, not \"200\"",
            ),
            (
                with("latency_ms", json!(-1)),
                "latency_ms must be a number from 0 to 86400000 (milliseconds, a day), not -1",
            ),
            (with("status", json!("failed")), "status must be \"ok\" or \"error\""),
            (with("batch", json!("yes")), "batch must be true or false"),
            (
                with("cost_usd", json!(-0.5)),
                "cost_usd must be a number from 0 to 10000 (US dollars for the call), not -0.5",
            ),
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

    /// Checks that `row` is refused with exactly `expected`, or accepted when it is `None`.
    fn check(row: &Value, prices: &PriceTable, expected: Option<&str>) {
        match (parse_row(row, prices), expected) {
            (Ok(_), None) => {}
            (Err(error), Some(expected)) => assert_eq!(error, expected, "row {row}"),
            (got, expected) => panic!("row {row}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn every_figure_must_lie_in_its_range_and_the_error_names_the_field_the_value_and_the_bound() {
        let prices = PriceTable::embedded();
        let tokens = |key: &str, shown: &str| format!("{key} must be a whole number from 0 to 10000000, not {shown}");
        let latency =
            |shown: &str| format!("latency_ms must be a number from 0 to 86400000 (milliseconds, a day), not {shown}");
        let cost =
            |shown: &str| format!("cost_usd must be a number from 0 to 10000 (US dollars for the call), not {shown}");
        let time = |shown: &str| {
            format!("timestamp must be from 2000-01-01T00:00:00.000Z to 2100-12-31T23:59:59.999Z, not `{shown}`")
        };
        let cases: Vec<(Value, Option<String>)> = vec![
            (with("input_tokens", json!(MAX_CALL_TOKENS)), None),
            (
                with("input_tokens", json!(10_000_001)),
                Some(tokens("input_tokens", "10000001")),
            ),
            (
                with("output_tokens", json!(u64::MAX)),
                Some(tokens("output_tokens", "18446744073709551615")),
            ),
            (
                with("output_tokens", json!(1e20)),
                Some(tokens("output_tokens", "1e+20")),
            ),
            (with("input_tokens", json!(-1)), Some(tokens("input_tokens", "-1"))),
            (
                with("input_tokens", json!(i64::MIN)),
                Some(tokens("input_tokens", "-9223372036854775808")),
            ),
            (with("latency_ms", json!(MAX_CALL_LATENCY_MS)), None),
            (with("latency_ms", json!(0)), None),
            (with("latency_ms", json!(86_400_001)), Some(latency("86400001"))),
            (with("latency_ms", json!(1e308)), Some(latency("1e+308"))),
            (with("latency_ms", json!(-1)), Some(latency("-1"))),
            (with("cost_usd", json!(MAX_CALL_COST_USD)), None),
            (with("cost_usd", json!(0)), None),
            (with("cost_usd", json!(10_000.01)), Some(cost("10000.01"))),
            (with("cost_usd", json!(1e308)), Some(cost("1e+308"))),
            (with("cost_usd", json!(-1)), Some(cost("-1"))),
            (with("cost_usd", json!(-1e308)), Some(cost("-1e+308"))),
            (with("cost_usd", json!(u64::MAX)), Some(cost("18446744073709551615"))),
            (
                with("cost_usd", json!("x".repeat(100))),
                Some(cost(&format!("\"{}…", "x".repeat(39)))),
            ),
            (with("timestamp", json!("2000-01-01T00:00:00Z")), None),
            (with("timestamp", json!("2100-12-31T23:59:59.999Z")), None),
            (
                with("timestamp", json!("1999-12-31T23:59:59Z")),
                Some(time("1999-12-31T23:59:59Z")),
            ),
            (
                with("timestamp", json!("2101-01-01T00:00:00Z")),
                Some(time("2101-01-01T00:00:00Z")),
            ),
            (
                with("timestamp", json!("0001-01-01T00:00:00Z")),
                Some(time("0001-01-01T00:00:00Z")),
            ),
            (
                with("timestamp", json!("9999-12-31T23:59:59Z")),
                Some(time("9999-12-31T23:59:59Z")),
            ),
            (
                json!({"timestamp": "1970-01-01T00:00:00Z", "model": "gpt-4o", "input_tokens": 1e30,
                       "output_tokens": 5, "latency_ms": 1e300, "cost_usd": 1e308}),
                Some(format!(
                    "{}; {}; {}; {}",
                    time("1970-01-01T00:00:00Z"),
                    tokens("input_tokens", "1e+30"),
                    latency("1e+300"),
                    cost("1e+308")
                )),
            ),
        ];
        for (row, expected) in &cases {
            check(row, &prices, expected.as_deref());
        }
    }

    #[test]
    fn a_cost_computed_from_the_price_table_must_lie_in_its_range_too() {
        let prices = PriceTable::parse(
            "as_of = \"x\"\nsources = []\n[[model]]\nname = \"dear\"\nprovider = \"p\"\ninput_per_mtok = 1e308\noutput_per_mtok = 2000.0\n",
        )
        .unwrap();
        let row = |input: u64, output: u64| json!({"timestamp": "2026-11-01T12:00:00Z", "model": "dear", "input_tokens": input, "output_tokens": output});
        // 5,000,000 answer tokens at $2,000 per million: exactly the limit.
        check(&row(0, 5_000_000), &prices, None);
        check(
            &row(0, 5_000_001),
            &prices,
            Some(
                "cost_usd is missing and the price table makes the call cost 10000.002 US dollars, above the limit of 10000 for one call",
            ),
        );
        check(
            &row(10_000_000, 0),
            &prices,
            Some(
                "cost_usd is missing and the price table makes the call cost infinitely many US dollars, above the limit of 10000 for one call",
            ),
        );
    }

    #[test]
    fn numbers_json_cannot_hold_refuse_their_row_or_the_body() {
        let prices = PriceTable::embedded();
        let line =
            |figures: &str| format!("{{\"timestamp\": \"2026-11-01T12:00:00Z\", \"model\": \"gpt-4o\", {figures}}}");
        // JSON numbers beyond f64 (1e400) are not read as infinity: the line is not valid JSON.
        // Integers beyond u64 are read as floats, and are above the token limit.
        let cases: [(&str, &str); 4] = [
            (
                "\"input_tokens\": 1, \"output_tokens\": 1, \"cost_usd\": 1e400",
                "the line is not valid JSON: number out of range",
            ),
            (
                "\"input_tokens\": 1, \"output_tokens\": 1, \"latency_ms\": -1e400",
                "the line is not valid JSON: number out of range",
            ),
            (
                "\"input_tokens\": 100000000000000000000000, \"output_tokens\": 1",
                "input_tokens must be a whole number from 0 to 10000000, not 1e+23",
            ),
            (
                "\"input_tokens\": 1, \"output_tokens\": -100000000000000000000000",
                "output_tokens must be a whole number from 0 to 10000000, not -1e+23",
            ),
        ];
        for (figures, expected) in cases {
            let body = format!(
                "{}\n{}\n",
                line("\"input_tokens\": 1, \"output_tokens\": 1"),
                line(figures)
            );
            let Err(UploadError::Rows(errors)) = parse_ndjson(body.as_bytes(), &prices) else {
                panic!("accepted: {figures}")
            };
            assert_eq!(errors.len(), 1, "{figures}");
            assert_eq!(errors[0].line, 2, "{figures}");
            assert!(
                errors[0].error.starts_with(expected),
                "{figures}: got `{}`, expected `{expected}`",
                errors[0].error
            );
        }
        // In a JSON array such a number makes the whole body unreadable.
        let body = format!(
            "[{}]",
            line("\"input_tokens\": 1, \"output_tokens\": 1, \"cost_usd\": 1e400")
        );
        let Err(UploadError::Malformed(message)) = parse_json_array(body.as_bytes(), &prices) else {
            panic!("accepted")
        };
        assert!(message.contains("number out of range"), "{message}");
        let body = format!(
            "[{}]",
            line("\"input_tokens\": 1, \"output_tokens\": 1, \"cost_usd\": 1e308")
        );
        let Err(UploadError::Rows(errors)) = parse_json_array(body.as_bytes(), &prices) else {
            panic!("accepted")
        };
        assert_eq!(
            errors,
            [RowError {
                line: 1,
                error: "cost_usd must be a number from 0 to 10000 (US dollars for the call), not 1e+308".to_owned()
            }]
        );
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
