//! Entry points for the fuzz targets in `fuzz/` that need the server's private readers of
//! credentials. Each takes any bytes, hands them to the reader and panics when one of the
//! reader's properties breaks; a panic is what the fuzzer reports. Not part of the server's API.

use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use switchboard_protocol::{Timestamp, UserId};

use crate::auth::{Claims, Tickets, TokenError, TokenType, Tokens, bearer_value, new_refresh_family};

/// The key every token here is signed with; the fuzzer's seed tokens are signed with it too.
pub const SECRET: &[u8] = b"switchboard-fuzzing-secret-0123456789abcdef";

const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
const TICKET_TTL: Duration = Duration::from_secs(30);

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(SECRET, ACCESS_TTL, REFRESH_TTL))
}

fn type_name(typ: TokenType) -> &'static str {
    match typ {
        TokenType::Access => "access",
        TokenType::Refresh => "refresh",
    }
}

/// Checks what `Tokens::verify` accepted: the user is the token's subject, the type the one
/// asked for, and the token has not expired.
fn check_accepted(result: &Result<(UserId, Claims), TokenError>, expected: TokenType) {
    if let Ok((user, claims)) = result {
        assert_eq!(user.as_str(), claims.sub, "the user is not the token's subject");
        assert_eq!(claims.typ, expected, "a token of the wrong type was accepted");
        assert!(
            claims.exp >= Timestamp::now().unix_millis() / 1000 - 1,
            "an expired token was accepted"
        );
    }
}

/// Verifies `token` as both types: a token is never both, and what is accepted is consistent.
fn verify_both(token: &str) -> [Result<(UserId, Claims), TokenError>; 2] {
    let results = [TokenType::Access, TokenType::Refresh].map(|typ| {
        let result = tokens().verify(token, typ);
        check_accepted(&result, typ);
        result
    });
    assert!(
        !(results[0].is_ok() && results[1].is_ok()),
        "a token was accepted as access and as refresh token: {token}"
    );
    if let Ok(read) = tokens().verify_refresh(token) {
        let (user, claims) = results[1]
            .as_ref()
            .expect("a refresh token that has a family is a refresh token");
        assert_eq!(&read.user, user);
        assert_eq!(claims.fam.as_deref(), Some(read.family.as_str()));
        assert_eq!(claims.jti, read.id.as_str());
    }
    results
}

/// Feeds `bytes` to every reader of credentials: as a token (and as a bearer header) to
/// `Tokens::verify`, as a ticket id to `Tickets::redeem`, as JSON claims signed with the right
/// key to `Tokens::verify`, and as a user id whose own tokens and ticket must round-trip.
pub fn check_credentials(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);

    // Whatever a client sends as a token.
    let _ = verify_both(&text);
    if let Some(token) = bearer_value(&text) {
        assert!(
            !token.is_empty() && token == token.trim(),
            "bearer token `{token}` is empty or not trimmed"
        );
        let _ = verify_both(token);
    }

    // Claims that are signed with the right key: only their content decides.
    if let Ok(claims) = serde_json::from_slice::<Value>(bytes) {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("any JSON value can be signed");
        for (typ, result) in [TokenType::Access, TokenType::Refresh]
            .into_iter()
            .zip(verify_both(&token))
        {
            if let Ok((user, verified)) = result {
                assert_eq!(claims.get("sub").and_then(Value::as_str), Some(user.as_str()));
                assert_eq!(claims.get("typ").and_then(Value::as_str), Some(type_name(typ)));
                assert_eq!(claims.get("exp").and_then(Value::as_i64), Some(verified.exp));
            }
        }
    }

    // Tokens the server signs itself verify as their own type only; changed ones not at all.
    let user = UserId::parse(text.trim()).unwrap_or_else(|_| UserId::parse("usr_fuzz").expect("a valid user id"));
    let family = new_refresh_family().expect("a family id");
    let (pair, refresh_id) = tokens().issue(&user, &family).expect("signing works");
    let [access, refresh] = verify_both(&pair.access_token);
    let (verified, claims) = access.expect("the server's own access token is accepted");
    assert_eq!(verified, user);
    assert!(matches!(refresh, Err(TokenError::WrongType(TokenType::Refresh))));
    let [access, refresh] = verify_both(&pair.refresh_token);
    assert!(matches!(access, Err(TokenError::WrongType(TokenType::Access))));
    assert_eq!(refresh.expect("the server's own refresh token is accepted").0, user);
    let read = tokens()
        .verify_refresh(&pair.refresh_token)
        .expect("the server's own refresh token has a family");
    assert_eq!((read.user, read.family, read.id), (user.clone(), family, refresh_id));
    if !text.is_empty() {
        let appended = format!("{}{text}", pair.access_token);
        assert!(
            verify_both(&appended).iter().all(Result::is_err),
            "a token with bytes appended was accepted: {appended}"
        );
    }
    let (signed, signature) = pair.access_token.rsplit_once('.').expect("a JWT has three parts");
    if text != signature {
        let forged = format!("{signed}.{text}");
        assert!(
            verify_both(&forged).iter().all(Result::is_err),
            "a token with another signature was accepted: {forged}"
        );
    }

    // Tickets: any text redeems nothing; an issued ticket redeems once.
    let tickets = Tickets::default();
    let id = tickets.issue(&user, TICKET_TTL, claims.exp);
    if text != id {
        assert_eq!(tickets.redeem(&text), None, "an unknown ticket was redeemed");
    }
    assert_eq!(tickets.redeem(&id), Some((user, claims.exp)));
    assert_eq!(tickets.redeem(&id), None, "a ticket was redeemed twice");
}
