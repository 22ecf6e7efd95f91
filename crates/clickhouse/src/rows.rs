//! The rows this crate exchanges: calls written as `RowBinary` (exact floats, strings of any
//! bytes, no escaping), answers read as `TabSeparated` whose every field is a number or hex, so
//! that an answer that is not what was asked for fails to read instead of giving a figure.

use switchboard_store::WorkloadEvent;

/// Appends `events` of `user` as `RowBinary` rows of [`crate::sql::EVENT_COLUMNS`], and with
/// `upload` its id after each (the column `upload`).
pub(crate) fn write_events(out: &mut Vec<u8>, user: &str, events: &[WorkloadEvent], upload: Option<u64>) {
    for event in events {
        put_string(out, user);
        out.extend_from_slice(&event.timestamp.unix_millis().to_le_bytes());
        put_string(out, &event.model);
        put_optional(out, event.provider.as_deref());
        out.extend_from_slice(&event.input_tokens.to_le_bytes());
        out.extend_from_slice(&event.output_tokens.to_le_bytes());
        out.push(u8::from(event.latency_ms.is_some()));
        out.extend_from_slice(&event.latency_ms.unwrap_or(0.0).to_le_bytes());
        out.push(u8::from(event.status == switchboard_store::CallStatus::Error));
        put_optional(out, event.feature.as_deref());
        put_optional(out, event.prompt_hash.as_deref());
        out.extend_from_slice(&event.cost_usd.to_le_bytes());
        out.push(u8::from(event.batch));
        if let Some(upload) = upload {
            out.extend_from_slice(&upload.to_le_bytes());
        }
    }
}

fn put_optional(out: &mut Vec<u8>, value: Option<&str>) {
    out.push(u8::from(value.is_some()));
    put_string(out, value.unwrap_or(""));
}

fn put_string(out: &mut Vec<u8>, value: &str) {
    let mut length = value.len() as u64;
    while length >= 0x80 {
        out.push((length as u8) | 0x80);
        length >>= 7;
    }
    out.push(length as u8);
    out.extend_from_slice(value.as_bytes());
}

/// The rows of a `TabSeparated` answer, each with exactly `columns` fields.
pub(crate) fn rows(answer: &[u8], columns: usize) -> Result<Vec<Row<'_>>, String> {
    let text = std::str::from_utf8(answer).map_err(|_| "the answer is not text".to_owned())?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = text.strip_suffix('\n') else {
        return Err("the answer does not end with a line end".to_owned());
    };
    body.split('\n')
        .enumerate()
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() == columns {
                Ok(Row {
                    line: index + 1,
                    fields,
                })
            } else {
                Err(format!(
                    "line {} has {} fields, not {columns}: {}",
                    index + 1,
                    fields.len(),
                    crate::http::quote(line.as_bytes())
                ))
            }
        })
        .collect()
}

/// One row of an answer.
#[derive(Debug)]
pub(crate) struct Row<'a> {
    line: usize,
    fields: Vec<&'a str>,
}

impl Row<'_> {
    fn field(&self, index: usize) -> &str {
        self.fields.get(index).copied().unwrap_or("")
    }

    fn bad(&self, index: usize, what: &str) -> String {
        format!(
            "line {}, field {}: {} is not {what}",
            self.line,
            index + 1,
            crate::http::quote(self.field(index).as_bytes())
        )
    }

    pub(crate) fn u64(&self, index: usize) -> Result<u64, String> {
        let text = self.field(index);
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad(index, "a count"));
        }
        text.parse().map_err(|_| self.bad(index, "a count"))
    }

    pub(crate) fn i64(&self, index: usize) -> Result<i64, String> {
        let text = self.field(index);
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.bad(index, "an integer"));
        }
        text.parse().map_err(|_| self.bad(index, "an integer"))
    }

    pub(crate) fn flag(&self, index: usize) -> Result<bool, String> {
        match self.field(index) {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(self.bad(index, "0 or 1")),
        }
    }

    /// A sum of decimals, written as digits with an optional fraction: not negative, finite.
    pub(crate) fn amount(&self, index: usize) -> Result<f64, String> {
        let text = self.field(index);
        let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !(digits(whole) && digits(fraction)) {
            return Err(self.bad(index, "an amount"));
        }
        text.parse::<f64>()
            .ok()
            .filter(|value| value.is_finite())
            .ok_or_else(|| self.bad(index, "an amount"))
    }

    /// An array of integers, `[1,-2,3]`.
    pub(crate) fn integers(&self, index: usize) -> Result<Vec<i64>, String> {
        let text = self.field(index);
        let inner = text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .ok_or_else(|| self.bad(index, "an array"))?;
        if inner.is_empty() {
            return Ok(Vec::new());
        }
        inner
            .split(',')
            .map(|item| {
                let digits = item.strip_prefix('-').unwrap_or(item);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(self.bad(index, "an array of integers"));
                }
                item.parse().map_err(|_| self.bad(index, "an array of integers"))
            })
            .collect()
    }

    /// The text whose bytes are given in hex.
    pub(crate) fn hex_text(&self, index: usize) -> Result<String, String> {
        String::from_utf8(self.hex_bytes(index)?).map_err(|_| self.bad(index, "hex of UTF-8 text"))
    }

    /// A Float64 given as the hex of its eight little-endian bytes, the zero bytes at the end
    /// left out (as `reinterpretAsString` leaves them).
    pub(crate) fn float_bits(&self, index: usize) -> Result<f64, String> {
        let mut bytes = self.hex_bytes(index)?;
        if bytes.len() > 8 {
            return Err(self.bad(index, "at most eight bytes"));
        }
        bytes.resize(8, 0);
        let bytes: [u8; 8] = bytes.try_into().map_err(|_| self.bad(index, "eight bytes"))?;
        Ok(f64::from_le_bytes(bytes))
    }

    fn hex_bytes(&self, index: usize) -> Result<Vec<u8>, String> {
        let text = self.field(index).as_bytes();
        let nibble = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if !text.len().is_multiple_of(2) {
            return Err(self.bad(index, "hex"));
        }
        text.chunks(2)
            .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| self.bad(index, "hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reads_as_rows_of_the_fields_asked_for_or_says_what_is_wrong() {
        let good = rows(
            b"1\t-2\t0.5\t676F\t7B14AE47E17A843F\t\t0000000000C072\t0000000000C0724000\n",
            8,
        )
        .unwrap();
        let row = &good[0];
        assert_eq!(
            (
                row.u64(0),
                row.i64(1),
                row.amount(2),
                row.hex_text(3),
                row.float_bits(4)
            ),
            (Ok(1), Ok(-2), Ok(0.5), Ok("go".to_owned()), Ok(0.01))
        );
        assert_eq!(
            (row.float_bits(5), row.float_bits(6)),
            (Ok(0.0), Ok(f64::from_le_bytes([0, 0, 0, 0, 0, 0xC0, 0x72, 0])))
        );
        assert!(row.float_bits(7).unwrap_err().contains("at most eight bytes"));
        assert!(rows(b"", 3).unwrap().is_empty());
        let arrays = rows(b"[1,-2,3]\t[]\t[1,x]\t1,2\n", 4).unwrap();
        assert_eq!(
            (arrays[0].integers(0), arrays[0].integers(1)),
            (Ok(vec![1, -2, 3]), Ok(vec![]))
        );
        assert!(arrays[0].integers(2).unwrap_err().contains("not an array of integers"));
        assert!(arrays[0].integers(3).unwrap_err().contains("not an array"));
        let cases: [(&[u8], &str); 4] = [
            (b"1\t2\n", "has 2 fields, not 3"),
            (b"1\t2\t3", "line end"),
            (b"\xff\n", "not text"),
            (b"<html>\n", "has 1 fields"),
        ];
        for (answer, expected) in cases {
            let error = rows(answer, 3).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let odd = rows(b"x\t-\t1e400\t6\tZZ\n", 5).unwrap();
        let row = &odd[0];
        assert!(row.u64(0).unwrap_err().contains("not a count"));
        assert!(row.i64(1).unwrap_err().contains("not an integer"));
        assert!(row.amount(2).unwrap_err().contains("not an amount"));
        assert!(row.hex_text(3).unwrap_err().contains("not hex"));
        assert!(row.float_bits(4).unwrap_err().contains("not hex"));
        assert!(row.flag(0).unwrap_err().contains("not 0 or 1"));
    }
}
