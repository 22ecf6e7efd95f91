//! A typed client of the Switchboard protocol: HTTP sign-in and a WebSocket that speaks
//! `ClientFrame` and `ServerFrame`. Used by the commands of this crate, the server's tests and its
//! benchmarks.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use switchboard_protocol::http::{Credentials, DevLoginRequest, SignedIn};
use switchboard_protocol::{
    ClientFrame, ConnectionEstablished, Control, ControlFrame, PROTOCOL_NAME, ServerFrame, UserId,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A signed-in user's tokens.
#[derive(Debug, Clone)]
pub struct Session {
    /// The access token.
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// The user.
    pub user_id: UserId,
}

impl Session {
    /// The session of a sign-in's answer.
    fn from_body(body: Value) -> anyhow::Result<Self> {
        let signed_in: SignedIn =
            serde_json::from_value(body.clone()).with_context(|| format!("not a sign-in's answer: {body}"))?;
        Ok(Self::from(signed_in))
    }
}

impl From<SignedIn> for Session {
    fn from(signed_in: SignedIn) -> Self {
        Self {
            access_token: signed_in.access_token,
            refresh_token: signed_in.refresh_token,
            user_id: signed_in.user.id,
        }
    }
}

/// Which server to talk to and how to sign in, shared by the commands that talk to one.
#[derive(Debug, Clone, clap::Args)]
pub struct SignIn {
    /// The server's base URL.
    #[arg(long, env = "SWITCHBOARD_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Sign in with this email (needs --password) instead of dev-login.
    #[arg(long)]
    pub email: Option<String>,
    /// The password for --email.
    #[arg(long, env = "SWITCHBOARD_PASSWORD")]
    pub password: Option<String>,
}

impl SignIn {
    /// A client of the server, signed in with the password or, without one, through dev-login.
    pub async fn session(&self) -> anyhow::Result<(Client, Session)> {
        let client = Client::new(&self.server);
        let session = match (&self.email, &self.password) {
            (Some(email), Some(password)) => client.login(email, password).await?,
            (None, None) => client.dev_login(None).await?,
            _ => bail!("--email and --password go together"),
        };
        Ok((client, session))
    }
}

/// The server throttled a login (429 `rate_limited`): too many at once or failed from this
/// address or for this email.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login throttled by the server: {message} (retry after {} s)", retry_after.as_secs())]
pub struct Throttled {
    /// The server's `Retry-After`.
    pub retry_after: std::time::Duration,
    /// The server's sentence.
    pub message: String,
}

/// The HTTP side of a server.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client, for requests this type has no method for.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST {base}{path}` with a JSON body; the status and the JSON answer.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &(impl Serialize + ?Sized),
    ) -> anyhow::Result<(u16, Value)> {
        let request = self.http.post(format!("{}{path}", self.base)).json(body);
        answer(request, token, || format!("POST {path}")).await
    }

    /// `GET {base}{path}`; the status and the JSON answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let request = self.http.get(format!("{}{path}", self.base));
        answer(request, token, || format!("GET {path}")).await
    }

    /// Registers and signs in.
    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let credentials = Credentials {
            email: email.to_owned(),
            password: password.to_owned(),
        };
        let (status, body) = self.post("/api/auth/register", None, &credentials).await?;
        if status != 201 {
            bail!("register failed with {status}: {body}");
        }
        self.login(email, password).await
    }

    /// Signs in. A login the server throttles (429) is the error [`Throttled`], which says how
    /// long to wait.
    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<Session> {
        let credentials = Credentials {
            email: email.to_owned(),
            password: password.to_owned(),
        };
        let response = self
            .http
            .post(format!("{}/api/auth/login", self.base))
            .json(&credentials)
            .send()
            .await
            .context("POST /api/auth/login")?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
        if status == 429 {
            return Err(Throttled {
                retry_after: std::time::Duration::from_secs(retry_after.unwrap_or(1)),
                message,
            }
            .into());
        }
        if status != 200 {
            bail!("login failed with {status}: {message}");
        }
        Session::from_body(body)
    }

    /// Signs in through dev-login (dev mode only), as the dev user or as `email`.
    pub async fn dev_login(&self, email: Option<&str>) -> anyhow::Result<Session> {
        let body = DevLoginRequest {
            email: email.map(str::to_owned),
        };
        let (status, body) = self.post("/api/auth/dev-login", None, &body).await?;
        match status {
            200 => Session::from_body(body),
            404 => {
                bail!("dev-login is off on this server; start it with --dev, or sign in with --email and --password")
            }
            _ => bail!("dev-login failed with {status}: {body}"),
        }
    }

    /// `GET /metrics`: the server's metrics, as OpenMetrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self.http.get(format!("{}/metrics", self.base)).send().await?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// The WebSocket URL of the server.
    pub fn ws_url(&self, query: &str) -> String {
        let base = self
            .base
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1);
        if query.is_empty() {
            format!("{base}/ws")
        } else {
            format!("{base}/ws?{query}")
        }
    }

    /// Opens a socket as `connect` does, and reads its first frame, which must be
    /// `connection_established`.
    pub async fn connect_established(&self, token: &str, after_seq: Option<u64>) -> anyhow::Result<Socket> {
        let mut socket = self.connect(token, after_seq).await?;
        socket.established().await?;
        Ok(socket)
    }

    /// Opens a socket, offering the token as subprotocol `jwt.<token>` beside `switchboard.v1`.
    pub async fn connect(&self, token: &str, after_seq: Option<u64>) -> anyhow::Result<Socket> {
        let query = after_seq.map(|n| format!("after_seq={n}")).unwrap_or_default();
        let mut request = self.ws_url(&query).into_client_request()?;
        let offer = format!("{PROTOCOL_NAME}, jwt.{token}");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_str(&offer)?);
        Socket::open(request).await
    }
}

/// An open socket.
#[derive(Debug)]
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server selected.
    pub protocol: Option<String>,
}

impl Socket {
    /// Opens a socket with a prepared request (any headers).
    pub async fn open(request: tokio_tungstenite::tungstenite::handshake::client::Request) -> anyhow::Result<Self> {
        // Frames are small: send each at once rather than wait for an ACK (Nagle); and keep the
        // buffers small (tungstenite zero-fills the read buffer before each read).
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(8 * 1024);
        let (ws, response) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .context("opening the socket")?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self { ws, protocol })
    }

    /// Reads the first frame of a socket, which must be `connection_established`.
    pub async fn established(&mut self) -> anyhow::Result<ConnectionEstablished> {
        match self.next_frame().await? {
            Some(ServerFrame::Control(ControlFrame {
                body: Control::ConnectionEstablished(established),
                ..
            })) => Ok(established),
            other => anyhow::bail!("expected connection_established, got {other:?}"),
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        self.send_text(&serde_json::to_string(frame)?).await
    }

    /// Sends any text.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::text(text)).await.context("sending a frame")
    }

    /// Sends a raw message (binary, ping, close).
    pub async fn send_raw(&mut self, message: Message) -> anyhow::Result<()> {
        self.ws.send(message).await.context("sending a frame")
    }

    /// The next message as it came (pings and pongs included); `None` once the socket ended.
    pub async fn next_raw(&mut self) -> Option<anyhow::Result<Message>> {
        self.ws.next().await.map(|m| m.context("reading the socket"))
    }

    /// The next protocol frame, skipping pings and pongs; `Ok(None)` on close.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<ServerFrame>> {
        while let Some(message) = self.next_raw().await {
            match message? {
                Message::Text(text) => {
                    let frame = serde_json::from_str(text.as_str())
                        .with_context(|| format!("an unreadable frame: {}", text.as_str()))?;
                    return Ok(Some(frame));
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Closes the socket normally.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.ws.close(None).await.context("closing the socket")
    }
}

/// Sends `request` (with `token` as its bearer, if any); the status and the JSON answer (null
/// when it is not JSON). `what` names the request in an error.
async fn answer(
    mut request: reqwest::RequestBuilder,
    token: Option<&str>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<(u16, Value)> {
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(what)?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}
