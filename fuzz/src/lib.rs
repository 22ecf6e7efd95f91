//! What the workload targets check on every upload the parsers accept or refuse: nothing panics,
//! the verdict fits the body, every accepted call lies in the store's ranges, and an accepted
//! call written back as a row is read as the same call.

use std::sync::OnceLock;

use serde_json::{Value, json};
use switchboard_agents::PriceTable;
use switchboard_agents::workload::{
    EARLIEST_CALL_MS, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS, UploadError, parse_row,
};
use switchboard_store::WorkloadEvent;

/// Longest text field of a row (the validator's `MAX_TEXT`).
const MAX_TEXT: usize = 200;

/// What the parsers return.
pub type Upload = Result<Vec<WorkloadEvent>, UploadError>;

/// The shipped price table, read once.
pub fn prices() -> &'static PriceTable {
    static PRICES: OnceLock<PriceTable> = OnceLock::new();
    PRICES.get_or_init(PriceTable::embedded)
}

fn check_text(name: &str, text: Option<&str>) {
    if let Some(text) = text {
        let chars = text.chars().count();
        assert!(
            (1..=MAX_TEXT).contains(&chars),
            "{name} of {chars} characters was accepted"
        );
    }
}

/// Checks an upload's verdict. `rows` holds the body's rows by line (`None` when the body as a
/// whole must be refused); `Malformed` must come exactly then.
pub fn check_upload(upload: &Upload, rows: Option<&[(usize, Value)]>) {
    let rows = match (upload, rows) {
        (Err(UploadError::Malformed(message)), None) => {
            assert!(!message.is_empty());
            return;
        }
        (_, Some(rows)) => rows,
        (upload, None) => panic!("a malformed body was not refused as such: {upload:?}"),
    };
    match upload {
        Err(UploadError::Malformed(message)) => panic!("a readable body was refused as malformed: {message}"),
        Err(UploadError::Rows(errors)) => {
            assert!(!errors.is_empty(), "refused with no bad row");
            assert!(
                errors.windows(2).all(|w| w[0].line < w[1].line),
                "bad rows are not named in order, once each: {errors:?}"
            );
            for error in errors {
                assert!(
                    rows.iter().any(|(line, _)| *line as u64 == error.line),
                    "line {} is named but holds no row",
                    error.line
                );
                assert!(
                    !error.error.is_empty(),
                    "line {} is refused without a reason",
                    error.line
                );
            }
        }
        Ok(events) => {
            assert_eq!(
                events.len(),
                rows.len(),
                "accepted a different number of calls than rows"
            );
            for event in events {
                check_event(event);
            }
        }
    }
}

/// An accepted call lies in the store's ranges, and reads back as itself.
pub fn check_event(event: &WorkloadEvent) {
    let at = event.timestamp.unix_millis();
    assert!(
        (EARLIEST_CALL_MS..=LATEST_CALL_MS).contains(&at),
        "accepted a call at {at} ms"
    );
    assert!(
        event.input_tokens <= MAX_CALL_TOKENS,
        "accepted {} input tokens",
        event.input_tokens
    );
    assert!(
        event.output_tokens <= MAX_CALL_TOKENS,
        "accepted {} output tokens",
        event.output_tokens
    );
    if let Some(latency) = event.latency_ms {
        assert!(
            (0.0..=MAX_CALL_LATENCY_MS).contains(&latency),
            "accepted a latency of {latency} ms"
        );
    }
    assert!(
        (0.0..=MAX_CALL_COST_USD).contains(&event.cost_usd),
        "accepted a cost of {} USD",
        event.cost_usd
    );
    check_text("model", Some(&event.model));
    check_text("provider", event.provider.as_deref());
    check_text("feature", event.feature.as_deref());
    check_text("prompt_hash", event.prompt_hash.as_deref());

    let row = json!({
        "timestamp": event.timestamp.to_string(),
        "model": event.model,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "provider": event.provider,
        "latency_ms": event.latency_ms,
        "status": event.status.as_str(),
        "feature": event.feature,
        "prompt_hash": event.prompt_hash,
        "cost_usd": event.cost_usd,
        "batch": event.batch,
    });
    let again = parse_row(&row, prices()).unwrap_or_else(|e| panic!("an accepted call written back is refused: {e}"));
    // The row format keeps milliseconds; the call may have come with finer time.
    assert_eq!(again.timestamp.unix_millis(), at);
    let mut event = event.clone();
    event.timestamp = again.timestamp;
    assert_eq!(again, event, "an accepted call written back reads differently");
}
