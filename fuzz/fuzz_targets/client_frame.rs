//! A client's text frame on the WebSocket (PROTOCOL.md section 5), into `ClientFrame::parse`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use switchboard_protocol::{ClientFrame, ErrorCode};

/// The longest sentence an `error` frame may answer with: it quotes at most a short piece of the
/// frame, whatever the frame holds.
const MAX_MESSAGE: usize = 512;

fuzz_target!(|bytes: &[u8]| {
    // Text frames are UTF-8 (the WebSocket layer refuses others).
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let value = serde_json::from_str::<Value>(text).ok();
    let kind = value.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str);
    match ClientFrame::parse(text) {
        Ok(frame) => {
            let kind = kind.expect("a parsed frame has a string type");
            assert!(ClientFrame::TYPES.contains(&kind), "accepted the type `{kind}`");
            let json = serde_json::to_string(&frame).expect("a frame serializes");
            let again = ClientFrame::parse(&json).unwrap_or_else(|e| panic!("its own JSON {json} is refused: {e}"));
            assert_eq!(again, frame, "{json} parses to another frame");
            let through_serde: ClientFrame = serde_json::from_str(&json).expect("Deserialize agrees with parse");
            assert_eq!(through_serde, frame);
        }
        Err(error) => {
            assert!(
                error.message.chars().count() <= MAX_MESSAGE,
                "an error message of {} characters",
                error.message.chars().count()
            );
            match error.code {
                ErrorCode::InvalidJson => assert!(
                    kind.is_none(),
                    "invalid_json for a JSON object with a string type: {}",
                    error.message
                ),
                ErrorCode::UnknownType => {
                    let kind = kind.expect("unknown_type only for a string type");
                    assert!(!ClientFrame::TYPES.contains(&kind), "`{kind}` is not unknown");
                }
                ErrorCode::InvalidPayload => assert!(kind.is_some(), "invalid_payload without a type"),
                other => panic!("parse answered {other:?}"),
            }
        }
    }
});
