//! Authentication: argon2 password hashes, HS256 JWTs (access and refresh), single-use
//! WebSocket tickets, and the extractor that turns `Authorization: Bearer` into a user.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{Timestamp, UserId};
use switchboard_redis::Redis;
use switchboard_store::{RefreshFamilyId, RefreshTokenId};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::app::AppState;
use crate::error::ApiError;

/// Which kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TokenType {
    /// Grants access to the API and the socket.
    Access,
    /// Only buys a new pair.
    Refresh,
}

impl TokenType {
    /// The kind with its article, for sentences: "an access token", "a refresh token".
    fn with_article(self) -> &'static str {
        match self {
            TokenType::Access => "an access token",
            TokenType::Refresh => "a refresh token",
        }
    }
}

/// The claims of a Switchboard JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The user id.
    pub(crate) sub: String,
    /// Expiry, seconds since the epoch.
    pub(crate) exp: i64,
    /// Issued at.
    pub(crate) iat: i64,
    /// Token id.
    pub(crate) jti: String,
    /// `access` or `refresh`.
    pub(crate) typ: TokenType,
    /// The refresh-token family (one sign-in's chain of refresh tokens); refresh tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) fam: Option<String>,
}

/// A token was refused; the text is for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TokenError {
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// A refresh token where an access token is needed, or the reverse (the kind expected).
    #[error("this is not {}", .0.with_article())]
    WrongType(TokenType),
    /// A refresh token signed before refresh tokens were rotated: it belongs to no family.
    #[error("it was issued before sign-ins were tracked; sign in again")]
    NoFamily,
    /// Bad signature, bad shape, unknown user.
    #[error("the token is not valid")]
    Invalid,
}

/// A verified refresh token: whose it is, its family and its own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefreshToken {
    /// The user.
    pub(crate) user: UserId,
    /// The sign-in it belongs to.
    pub(crate) family: RefreshFamilyId,
    /// Its `jti`.
    pub(crate) id: RefreshTokenId,
}

/// An access/refresh pair.
#[derive(Debug, Clone)]
pub(crate) struct TokenPair {
    /// The access token.
    pub(crate) access_token: String,
    /// The refresh token.
    pub(crate) refresh_token: String,
    /// Seconds until the access token expires.
    pub(crate) expires_in: u64,
}

/// Signs and checks tokens.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens")
    }
}

impl Tokens {
    /// Keys from a secret.
    pub(crate) fn new(secret: &[u8], access_ttl: Duration, refresh_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub", "iat"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
        }
    }

    fn sign(&self, user: &UserId, typ: TokenType, jti: &str, fam: Option<&RefreshFamilyId>) -> anyhow::Result<String> {
        let ttl = match typ {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let now = Timestamp::now().unix_millis() / 1000;
        let claims = Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs() as i64,
            iat: now,
            jti: jti.to_owned(),
            typ,
            fam: fam.map(ToString::to_string),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).context("signing a token")
    }

    /// A fresh pair for `user` whose refresh token belongs to `family`, and that refresh
    /// token's id, which the store must learn before the pair is handed out.
    pub(crate) fn issue(&self, user: &UserId, family: &RefreshFamilyId) -> anyhow::Result<(TokenPair, RefreshTokenId)> {
        let refresh = RefreshTokenId::parse(&uuid_like()).context("a refresh token id")?;
        Ok((self.pair(user, family, &refresh)?, refresh))
    }

    /// A pair for `user` whose refresh token is `refresh` of `family` (one the store knows
    /// already: the newest of its family, handed out again to a retried refresh), signed anew.
    pub(crate) fn pair(
        &self,
        user: &UserId,
        family: &RefreshFamilyId,
        refresh: &RefreshTokenId,
    ) -> anyhow::Result<TokenPair> {
        Ok(TokenPair {
            access_token: self.sign(user, TokenType::Access, &uuid_like(), None)?,
            refresh_token: self.sign(user, TokenType::Refresh, refresh.as_str(), Some(family))?,
            expires_in: self.access_ttl.as_secs(),
        })
    }

    /// Checks a refresh token's signature, expiry and type, and reads its family. A refresh
    /// token without a family (signed before sign-ins were tracked) is refused.
    pub(crate) fn verify_refresh(&self, token: &str) -> Result<RefreshToken, TokenError> {
        let (user, claims) = self.verify(token, TokenType::Refresh)?;
        let family = claims.fam.as_deref().ok_or(TokenError::NoFamily)?;
        Ok(RefreshToken {
            user,
            family: RefreshFamilyId::parse(family).map_err(|_| TokenError::Invalid)?,
            id: RefreshTokenId::parse(&claims.jti).map_err(|_| TokenError::Invalid)?,
        })
    }

    /// Checks a token's signature, expiry and type.
    pub(crate) fn verify(&self, token: &str, expected: TokenType) -> Result<(UserId, Claims), TokenError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        if data.claims.typ != expected {
            return Err(TokenError::WrongType(expected));
        }
        let user = UserId::parse(&data.claims.sub).map_err(|_| TokenError::Invalid)?;
        Ok((user, data.claims))
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn uuid_like() -> String {
    hex(&random_bytes::<16>())
}

/// A new refresh-token family: the chain a sign-in starts.
pub(crate) fn new_refresh_family() -> anyhow::Result<RefreshFamilyId> {
    RefreshFamilyId::parse(&uuid_like()).context("a refresh token family id")
}

/// The JWT secret: from the configuration, or the one kept in the data dir (generated on first
/// start, readable by the owner only), so tokens survive restarts.
pub(crate) fn load_secret(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => anyhow::bail!("{} is too short; delete it to generate a new secret", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = hex(&random_bytes::<32>());
    write_private(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// How long a sign-in waits for a free password check before it is refused as busy.
const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

/// Too many passwords are being hashed or checked at once.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    /// Every slot stayed taken for the queue timeout.
    #[error("too many sign-ins are being checked at once")]
    Busy,
    /// The hashing itself failed.
    #[error("hashing a password failed: {0}")]
    Failed(String),
}

/// Password hashing and checking with argon2id: each takes tens of milliseconds and about
/// 19 MiB, on the blocking pool, so only a few run at once (twice the cores) and the rest wait
/// their turn (for at most `PASSWORD_QUEUE_TIMEOUT`). Unknown emails are checked against a decoy
/// hash, so that they cost what a wrong password costs; `checks` counts every argon2 check.
pub(crate) struct Passwords {
    running: Arc<Semaphore>,
    decoy: Arc<str>,
    checks: Counter,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passwords")
    }
}

impl Passwords {
    /// Hashes the decoy (a random password nobody knows) and counts checks in `checks`.
    pub(crate) async fn new(checks: Counter) -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let running = Arc::new(Semaphore::new(2 * cores));
        let decoy = tokio::task::spawn_blocking(|| hash_blocking(uuid_like()))
            .await?
            .map_err(|e| anyhow::anyhow!(e))?
            .into();
        Ok(Self { running, decoy, checks })
    }

    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, PasswordError> {
        tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, Arc::clone(&self.running).acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|_| PasswordError::Busy)
    }

    /// The argon2id hash of `password`.
    pub(crate) async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let slot = self.slot().await?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            hash_blocking(password)
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))?
    }

    /// Whether `password` matches `hash`. `None` (an unknown email) and a hash that is not one
    /// (an account that only signs in through dev-login) are checked against the decoy and fail,
    /// so that they take as long as a wrong password.
    pub(crate) async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, PasswordError> {
        let slot = self.slot().await?;
        let (decoy, checks) = (Arc::clone(&self.decoy), self.checks.clone());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let check = |hash: &str| {
                let parsed = PasswordHash::new(hash).ok()?;
                checks.inc();
                Some(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
            };
            match hash.as_deref().and_then(check) {
                Some(matches) => matches,
                None => {
                    let _ = check(&decoy);
                    false
                }
            }
        })
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()))
    }
}

fn hash_blocking(password: String) -> Result<String, PasswordError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| PasswordError::Failed(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Failed(e.to_string()))
}

/// A hash that matches no password, for accounts that only log in through dev-login.
pub(crate) fn unusable_password_hash() -> String {
    format!("!dev-login-only-{}", uuid_like())
}

struct Ticket {
    user: UserId,
    expires: Instant,
    token_exp: i64,
}

/// Single-use tickets for `GET /ws?ticket=`, kept in memory; on a node of a cluster in Redis,
/// so that a ticket bought on one node opens a socket on any, once. While Redis cannot be
/// reached a node keeps the tickets it issues itself (they open sockets on it only).
#[derive(Default)]
pub(crate) struct Tickets {
    tickets: Mutex<HashMap<String, Ticket>>,
    shared: Option<SharedTickets>,
}

/// Tickets in Redis: `{prefix}ticket:{id}` holds `{user}\n{token_exp}` until it is taken or
/// expires.
struct SharedTickets {
    redis: Redis,
    prefix: String,
}

impl SharedTickets {
    fn key(&self, id: &str) -> String {
        format!("{}ticket:{id}", self.prefix)
    }
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tickets")
    }
}

impl Tickets {
    /// Tickets kept in `redis` under `prefix` (a node of a cluster).
    pub(crate) fn shared(redis: Redis, prefix: String) -> Self {
        Self {
            tickets: Mutex::default(),
            shared: Some(SharedTickets { redis, prefix }),
        }
    }

    /// A new ticket for `user`, valid for `ttl`; the socket it opens ends when `token_exp` does.
    /// In memory.
    pub(crate) fn issue(&self, user: &UserId, ttl: Duration, token_exp: i64) -> String {
        let id = uuid_like();
        let now = Instant::now();
        let mut tickets = self.tickets.lock().unwrap();
        tickets.retain(|_, t| t.expires > now);
        tickets.insert(
            id.clone(),
            Ticket {
                user: user.clone(),
                expires: now + ttl,
                token_exp,
            },
        );
        id
    }

    /// Takes a ticket of memory (once): its user and the expiry of the token it was bought with.
    pub(crate) fn redeem(&self, id: &str) -> Option<(UserId, i64)> {
        let ticket = self.tickets.lock().unwrap().remove(id)?;
        (ticket.expires > Instant::now()).then_some((ticket.user, ticket.token_exp))
    }

    /// A new ticket, as `issue`, kept where every node finds it.
    pub(crate) async fn issue_anywhere(&self, user: &UserId, ttl: Duration, token_exp: i64) -> String {
        let Some(shared) = &self.shared else {
            return self.issue(user, ttl, token_exp);
        };
        let id = uuid_like();
        match shared
            .redis
            .put_new(&shared.key(&id), &format!("{user}\n{token_exp}"), ttl)
            .await
        {
            Ok(true) => id,
            Ok(false) | Err(_) => {
                tracing::warn!("cannot keep a ticket in Redis; it opens sockets on this node only");
                self.issue(user, ttl, token_exp)
            }
        }
    }

    /// Takes a ticket, as `redeem`, wherever it was issued.
    pub(crate) async fn redeem_anywhere(&self, id: &str) -> Option<(UserId, i64)> {
        if let Some(found) = self.redeem(id) {
            return Some(found);
        }
        let shared = self.shared.as_ref()?;
        // Only what `uuid_like` makes is looked up.
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        match shared.redis.take(&shared.key(id)).await {
            Ok(value) => {
                let (user, exp) = value?.split_once('\n').map(|(u, e)| (u.to_owned(), e.to_owned()))?;
                Some((user.parse().ok()?, exp.parse().ok()?))
            }
            Err(error) => {
                tracing::warn!(%error, "cannot take a ticket from Redis");
                None
            }
        }
    }
}

/// The signed-in user of an HTTP request (`Authorization: Bearer <access token>`).
#[derive(Debug, Clone)]
pub(crate) struct AuthUser {
    /// The user.
    pub(crate) id: UserId,
    /// The token's claims.
    pub(crate) claims: Claims,
}

/// The token of an `Authorization` header value of the form `Bearer <token>`.
pub(crate) fn bearer_value(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub(crate) fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    bearer_value(value)
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError::unauthorized("Sign in first: send Authorization: Bearer <access token>."))?;
        let (id, claims) = state
            .tokens
            .verify(token, TokenType::Access)
            .map_err(|e| ApiError::unauthorized(format!("The access token was refused: {e}.")))?;
        Ok(AuthUser { id, claims })
    }
}
