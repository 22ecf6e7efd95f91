//! A WebSocket echo server on the server's own socket code (its accept loop, its socket
//! settings, and the close codes a broken frame is answered with), for the Autobahn
//! conformance cases (`kosoku -m fuzzingclient`). Only tests start it; the product's router has
//! no echo route.

use std::time::Duration;

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{Message, WebSocket};
use axum::response::Response;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{self, ConnectionLimits};
use crate::ws::{close_for_read_error, close_message, socket_settings};

/// The largest message the echo takes: Autobahn's section 9 sends messages of 16 MiB.
const MAX_MESSAGE: usize = 32 << 20;

/// Serves the echo on every path of `listener` until `stop` is cancelled.
pub async fn serve_echo(listener: TcpListener, stop: CancellationToken) {
    let router = Router::new().fallback(get(upgrade));
    let limits = ConnectionLimits {
        max_open: 1024,
        header_timeout: Duration::from_secs(10),
    };
    listener::serve(listener, router, limits, stop).await;
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    socket_settings(ws, MAX_MESSAGE).on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(received) = socket.recv().await {
        let reply = match received {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue, // tungstenite answers pings
            // Keep reading after a close: that sends tungstenite's close reply.
            Ok(Message::Close(_)) => continue,
            Ok(message) => message,
            Err(error) => match close_for_read_error(error) {
                Some((code, reason)) => close_message(code, reason),
                None => break,
            },
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}
