//! A client that speaks bytes: HTTP requests and WebSocket frames that no well-behaved client
//! sends (half-sent headers, unmasked frames, reserved bits), and what came back, read as the
//! wire has it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TestApp;

/// What the server did with a connection, as far as a reader of its bytes can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// An HTTP response with this status.
    Status(u16),
    /// A WebSocket text frame (a JSON frame of the protocol).
    Text(String),
    /// A WebSocket pong.
    Pong,
    /// A WebSocket close frame with this code.
    Close(u16),
    /// The connection ended (EOF or reset) with nothing more.
    Ended,
    /// Nothing within the time given.
    Silence,
}

/// A TCP connection to the app.
pub(crate) struct Raw {
    tcp: TcpStream,
    read: Vec<u8>,
}

/// The WebSocket key of RFC 6455's example; the server's answer to it is not checked here.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Raw {
    /// A fresh connection.
    pub(crate) async fn connect(app: &TestApp) -> Raw {
        let address = app.client.base().trim_start_matches("http://").to_owned();
        let tcp = TcpStream::connect(address).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        Raw { tcp, read: Vec::new() }
    }

    /// A connection upgraded to a WebSocket with `token`, past `connection_established`.
    pub(crate) async fn websocket(app: &TestApp, token: &str) -> Raw {
        let mut raw = Raw::connect(app).await;
        raw.send(upgrade_request("/ws", &format!("Authorization: Bearer {token}\r\n")).as_bytes())
            .await;
        assert_eq!(raw.next(Duration::from_secs(5)).await, Seen::Status(101));
        match raw.next(Duration::from_secs(5)).await {
            Seen::Text(text) if text.contains("connection_established") => raw,
            other => panic!("expected connection_established, got {other:?}"),
        }
    }

    /// Writes bytes (a write the server refused counts as written: what it answered is read next).
    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        let _ = self.tcp.write_all(bytes).await;
    }

    /// The next thing the server did, waiting at most `wait`. After a 101 the bytes are read as
    /// WebSocket frames; before it, as an HTTP response (whose body is skipped).
    pub(crate) async fn next(&mut self, wait: Duration) -> Seen {
        match tokio::time::timeout(wait, self.next_unbounded()).await {
            Ok(seen) => seen,
            Err(_) => Seen::Silence,
        }
    }

    async fn next_unbounded(&mut self) -> Seen {
        if self.read.starts_with(b"HTTP/") || self.read.is_empty() && self.looks_like_http().await {
            return self.response().await;
        }
        self.frame().await
    }

    /// Whether the first bytes the server sends are an HTTP response (only asked before any was
    /// read).
    async fn looks_like_http(&mut self) -> bool {
        self.fill(1).await && self.read.starts_with(b"H")
    }

    /// Reads until `self.read` holds `n` bytes; false at EOF.
    async fn fill(&mut self, n: usize) -> bool {
        let mut buffer = [0u8; 4096];
        while self.read.len() < n {
            match self.tcp.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(read) => self.read.extend_from_slice(&buffer[..read]),
            }
        }
        true
    }

    async fn response(&mut self) -> Seen {
        loop {
            if let Some(end) = find(&self.read, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.read[..end]).into_owned();
                let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_owned())
                    })
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let body_end = end + 4 + if status == 101 { 0 } else { length };
                self.fill(body_end).await;
                self.read.drain(..body_end.min(self.read.len()));
                return Seen::Status(status);
            }
            let before = self.read.len();
            if !self.fill(before + 1).await {
                return Seen::Ended;
            }
        }
    }

    async fn frame(&mut self) -> Seen {
        if !self.fill(2).await {
            return Seen::Ended;
        }
        let (opcode, length) = (self.read[0] & 0x0f, (self.read[1] & 0x7f) as usize);
        let (header, length) = match length {
            126 => {
                if !self.fill(4).await {
                    return Seen::Ended;
                }
                (4, u16::from_be_bytes([self.read[2], self.read[3]]) as usize)
            }
            127 => {
                if !self.fill(10).await {
                    return Seen::Ended;
                }
                (10, u64::from_be_bytes(self.read[2..10].try_into().unwrap()) as usize)
            }
            short => (2, short),
        };
        if !self.fill(header + length).await {
            return Seen::Ended;
        }
        let payload: Vec<u8> = self.read.drain(..header + length).skip(header).collect();
        match opcode {
            0x1 => Seen::Text(String::from_utf8_lossy(&payload).into_owned()),
            0x8 => Seen::Close(payload.get(..2).map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]))),
            0xA => Seen::Pong,
            other => Seen::Text(format!("<opcode {other}>")),
        }
    }

    /// Reads until the server closes or `wait` passes: the close code (if a close frame came) and
    /// whether the connection then ended.
    pub(crate) async fn until_closed(&mut self, wait: Duration) -> (Option<u16>, bool) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut code = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Seen::Close(c) => code = Some(c),
                Seen::Ended => return (code, true),
                Seen::Silence => return (code, false),
                _ => {}
            }
        }
    }
}

/// A WebSocket upgrade request for `path` with extra header lines.
pub(crate) fn upgrade_request(path: &str, headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
}

/// A client frame: `first` is the first byte (FIN, RSV1-3, opcode); masked unless `masked` is
/// false (which a client must never do).
pub(crate) fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut bytes = vec![first];
    match payload.len() {
        n if n < 126 => bytes.push(mask_bit | n as u8),
        n if n <= u16::MAX as usize => {
            bytes.push(mask_bit | 126);
            bytes.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            bytes.push(mask_bit | 127);
            bytes.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        bytes.extend_from_slice(&key);
        bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        bytes.extend_from_slice(payload);
    }
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
