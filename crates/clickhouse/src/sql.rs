//! The SQL this crate sends: the schema, the literals it writes values as, and the conditions
//! every query shares. ClickHouse 18.16 has no query parameters, so a value is written as a
//! literal in which every byte but a letter or digit is a `\xHH` escape: no value can end its
//! literal early, whatever it holds.
//!
//! Everything here exists in ClickHouse 18.16 and in current releases: MergeTree with
//! `ORDER BY`, `intDiv`, `log`, `ceil`, `hex`, `unhex`, `reinterpretAsFloat64`,
//! `reinterpretAsString`, `toDecimal128`, `countIf`/`sumIf`/`minIf`/`maxIf`, `HAVING`, and
//! the `TabSeparated` and `RowBinary` formats.

use std::fmt::Write;

use switchboard_store::{
    EARLIEST_CALL_MS, LATEST_CALL_MS, MAX_CALL_COST_USD, MAX_CALL_LATENCY_MS, MAX_CALL_TOKENS, SHORT_INPUT_TOKENS,
    SHORT_OUTPUT_TOKENS, Sketch,
};

/// The version of the schema below; a database of a newer one is refused.
pub(crate) const SCHEMA_VERSION: u32 = 1;

/// The versions a database's schema has been through (one row each).
pub(crate) const CREATE_SCHEMA_VERSION: &str = "CREATE TABLE IF NOT EXISTS schema_version \
     (version UInt32, written_at DateTime DEFAULT now()) ENGINE = MergeTree() ORDER BY version";

/// The calls, one row each, ordered by user and time so that a user's range is read alone.
/// One partition (no `PARTITION BY`): an insert of one block is then one part, stored whole or
/// not at all. Optional values have a flag beside them (`has_*`): `Nullable` columns are slower
/// and were limited in older releases, and `Some("")` is not `None`.
pub(crate) const CREATE_EVENTS: &str = "CREATE TABLE IF NOT EXISTS workload_events (
    user String,
    ts Int64,
    model String,
    has_provider UInt8,
    provider String,
    input_tokens UInt64,
    output_tokens UInt64,
    has_latency UInt8,
    latency_ms Float64,
    error UInt8,
    has_feature UInt8,
    feature String,
    has_prompt UInt8,
    prompt_hash String,
    cost_usd Float64,
    batch UInt8
) ENGINE = MergeTree() ORDER BY (user, ts)";

/// The columns in the order `RowBinary` rows give them.
pub(crate) const EVENT_COLUMNS: &str = "user, ts, model, has_provider, provider, input_tokens, output_tokens, \
     has_latency, latency_ms, error, has_feature, feature, has_prompt, prompt_hash, cost_usd, batch";

/// `value` as a string literal.
pub(crate) fn string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() {
            out.push(byte as char);
        } else {
            let _ = write!(out, "\\x{byte:02X}");
        }
    }
    out.push('\'');
    out
}

/// `value` as a Float64 expression of exactly its bits (older releases do not always parse a
/// decimal literal to the nearest double).
pub(crate) fn float(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 9e15 {
        return format!("{}", value as i64);
    }
    let hex: String = value.to_le_bytes().iter().map(|b| format!("{b:02X}")).collect();
    format!("reinterpretAsFloat64(unhex('{hex}'))")
}

/// The rows of `user` from `from` (inclusive) to `to` (exclusive), in milliseconds.
pub(crate) fn range(user: &str, from: Option<i64>, to: Option<i64>) -> String {
    let mut condition = format!("user = {}", string(user));
    if let Some(from) = from {
        let _ = write!(condition, " AND ts >= {from}");
    }
    if let Some(to) = to {
        let _ = write!(condition, " AND ts < {to}");
    }
    condition
}

/// Whether a row's figures are in range: `CallFigures::in_range` in SQL. A comparison with
/// NaN is false in ClickHouse as in Rust, so NaN is out of range here too.
pub(crate) fn in_range() -> String {
    format!(
        "(ts >= {EARLIEST_CALL_MS} AND ts <= {LATEST_CALL_MS} \
         AND input_tokens <= {MAX_CALL_TOKENS} AND output_tokens <= {MAX_CALL_TOKENS} \
         AND (has_latency = 0 OR (latency_ms >= 0 AND latency_ms <= {max_latency})) \
         AND cost_usd >= 0 AND cost_usd <= {max_cost})",
        max_latency = float(MAX_CALL_LATENCY_MS),
        max_cost = float(MAX_CALL_COST_USD),
    )
}

/// The scale of the decimals costs are summed in: 10⁻²⁰ dollars. Integer sums come out the
/// same in any order, so the same calls give the same cost to the last bit however ClickHouse
/// splits the work (a Float64 `sum` does not); a call's cost is off by at most its last bit.
/// A sum of up to 10¹⁸ dollars fits (Decimal128 holds 38 digits).
const COST_SCALE: u32 = 20;

/// The sum of `cost_usd` over the rows where `condition` holds, as a decimal's text; the cost
/// of rows out of range is never converted (it could overflow the decimal).
fn cost_sum(condition: &str) -> String {
    format!("toString(sumIf(toDecimal128(if(ok, cost_usd, 0), {COST_SCALE}), {condition}))")
}

/// The first query of a summary: per clock hour, model, feature and batch flag, the sums of a
/// roll-up cell over the rows in range, and the rows left out. Its columns, in order: hour,
/// hex(model), has_feature, hex(feature), batch, calls, input tokens, output tokens, cost,
/// errors, failed cost, short calls, their input and output tokens and cost, first and last
/// time, calls with a latency, calls with a prompt hash, calls left out.
pub(crate) fn cells(range: &str) -> String {
    let short = format!("input_tokens <= {SHORT_INPUT_TOKENS} AND output_tokens <= {SHORT_OUTPUT_TOKENS}");
    format!(
        "SELECT intDiv(ts, 3600000) AS hour, hex(model), has_feature, hex(feature), batch, \
             countIf(ok), sumIf(input_tokens, ok), sumIf(output_tokens, ok), {cost}, \
             countIf(ok AND error = 1), {failed_cost}, \
             countIf(ok AND {short}), sumIf(input_tokens, ok AND {short}), sumIf(output_tokens, ok AND {short}), \
             {short_cost}, minIf(ts, ok), maxIf(ts, ok), countIf(ok AND has_latency = 1), \
             countIf(ok AND has_prompt = 1), countIf(NOT ok) \
         FROM (SELECT ts, model, has_feature, feature, batch, input_tokens, output_tokens, cost_usd, error, \
                      has_latency, has_prompt, {in_range} AS ok \
               FROM workload_events WHERE {range}) \
         GROUP BY hour, model, has_feature, feature, batch \
         FORMAT TabSeparated",
        cost = cost_sum("ok"),
        failed_cost = cost_sum("ok AND error = 1"),
        short_cost = cost_sum(&format!("ok AND {short}")),
        in_range = in_range(),
    )
}

/// Which values a sketch query counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sketched {
    Latency,
    PromptTokens,
}

/// The bin a value's zero bin is given as in answers (no value's bin is this low).
pub(crate) const ZERO_BIN: i32 = -1_000_000;

/// The second and third queries of a summary: per hour of the day, model, feature and batch
/// flag, the sketch bins of latency or of prompt tokens over the rows in range, each bin's
/// count and its values' exact minimum and maximum (the bits of a Float64, in hex). The bin
/// is [`Sketch::bin_of`] in SQL; at the very edge of a bin ClickHouse's logarithm may round
/// the other way, which the sketch's bound allows (see there). Columns: hour of the day,
/// hex(model), has_feature, hex(feature), batch, bin, count, min, max.
pub(crate) fn sketch_bins(range: &str, values: Sketched) -> String {
    let (value, only) = match values {
        Sketched::Latency => ("latency_ms", " AND has_latency = 1"),
        Sketched::PromptTokens => ("toFloat64(input_tokens)", ""),
    };
    format!(
        "SELECT intDiv(ts, 3600000) % 24 AS hour_of_day, hex(model), has_feature, hex(feature), batch, \
             if(v <= {zero}, {ZERO_BIN}, toInt32(ceil(log(v) / {ln_gamma}))) AS bin, count(), \
             hex(reinterpretAsString(min(v))), hex(reinterpretAsString(max(v))) \
         FROM (SELECT ts, model, has_feature, feature, batch, {value} AS v FROM workload_events \
               WHERE {range} AND {in_range}{only}) \
         GROUP BY hour_of_day, model, has_feature, feature, batch, bin \
         FORMAT TabSeparated",
        zero = float(Sketch::ZERO_LIMIT),
        ln_gamma = float(Sketch::ln_gamma()),
        in_range = in_range(),
    )
}

/// The fourth query of a summary: the calls in range with a prompt hash, the calls that repeat
/// an earlier prompt (n − 1 for a prompt called n times) and their share of the cost
/// ((n − 1) / n of the prompt's cost, summed as decimals).
pub(crate) fn repeated_prompts(range: &str) -> String {
    format!(
        "SELECT sum(calls), sumIf(calls - 1, calls > 1), toString(sumIf(cost / calls * (calls - 1), calls > 1)) \
         FROM (SELECT count() AS calls, sum(toDecimal128(cost_usd, {COST_SCALE})) AS cost \
               FROM workload_events WHERE {range} AND {in_range} AND has_prompt = 1 GROUP BY prompt_hash) \
         FORMAT TabSeparated",
        in_range = in_range(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_holds_only_letters_digits_and_escapes() {
        for (value, expected) in [
            ("gpt-4o", "'gpt\\x2D4o'"),
            ("a'b", "'a\\x27b'"),
            ("\\", "'\\x5C'"),
            ("é", "'\\xC3\\xA9'"),
            ("", "''"),
        ] {
            assert_eq!(string(value), expected);
        }
    }

    #[test]
    fn a_float_is_written_exactly() {
        assert_eq!(float(86_400_000.0), "86400000");
        assert_eq!(float(0.01), "reinterpretAsFloat64(unhex('7B14AE47E17A843F'))");
    }
}
