//! Credentials: JWTs (`Authorization: Bearer`, `jwt.` subprotocol, refresh) and WebSocket tickets.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| switchboard::fuzzing::check_credentials(bytes));
