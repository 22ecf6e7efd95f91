//! The proxy in front of a local echo server, on the real clock: each test asserts what arrives
//! and in which order, and uses timeouts only to bound a wait (a read that must not complete
//! under a stall is given a short one; everything else a generous one).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use switchboard_faultproxy::{CHUNK_SIZE, Fault, FaultProxy, MAX_HELD_BYTES_PER_DIRECTION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

/// A bound on every wait that must complete; only a broken proxy reaches it.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a read that a stall must hold is given to (wrongly) complete.
const HELD_FOR: Duration = Duration::from_millis(300);

/// An echo server on a loopback port: every connection gets its bytes back, until it closes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A server that reads its one connection to the end and reports how many bytes came, checking
/// that they are `pattern`'s bytes in order.
async fn counting_server() -> (SocketAddr, oneshot::Receiver<io::Result<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, received) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut total = 0;
        let mut buffer = vec![0; 64 * 1024];
        let result = loop {
            match socket.read(&mut buffer).await {
                Ok(0) => break Ok(total),
                Ok(read) => {
                    if buffer[..read] != pattern(total, read)[..] {
                        break Err(io::Error::other(format!("wrong bytes after {total}")));
                    }
                    total += read;
                }
                Err(error) => break Err(error),
            }
        };
        let _ = report.send(result);
    });
    (addr, received)
}

/// `len` bytes of a stream whose byte number `i` is `i % 251`, starting at `offset`.
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    timeout(DEADLINE, TcpStream::connect(proxy.addr()))
        .await
        .expect("connecting to the proxy timed out")
        .unwrap()
}

/// Sends `message` and reads back exactly as many bytes.
async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0; message.len()];
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("the echo did not come back")
        .unwrap();
    back
}

/// True when the proxy has closed `stream`: a read ends (EOF) or fails (reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0; 1];
    match timeout(DEADLINE, stream.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the connection stayed open"),
    }
}

#[tokio::test]
async fn bytes_pass_unchanged_without_a_fault() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    assert_eq!(proxy.fault(), Fault::None);
    let mut stream = connect(&proxy).await;
    let message = pattern(0, 3 * CHUNK_SIZE + 17);
    assert_eq!(round_trip(&mut stream, &message).await, message);
}

#[tokio::test]
async fn latency_delays_each_direction_and_keeps_bytes_and_order() {
    let latency = Duration::from_millis(50);
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = connect(&proxy).await;
    proxy.set(Fault::Latency(latency));

    let started = Instant::now();
    let messages: Vec<Vec<u8>> = (0..20).map(|n| format!("message {n};").into_bytes()).collect();
    for message in &messages {
        stream.write_all(message).await.unwrap();
    }
    let expected = messages.concat();
    let mut back = vec![0; expected.len()];
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("the echo did not come back")
        .unwrap();
    assert_eq!(back, expected);
    // The way there and the way back each waited the latency at least.
    assert!(started.elapsed() >= 2 * latency, "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_stall_holds_an_open_connection_and_delivers_the_exact_bytes_when_it_ends() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"before").await, b"before");

    proxy.set(Fault::Stall);
    stream.write_all(b"held one, ").await.unwrap();
    stream.write_all(b"held two").await.unwrap();
    let mut back = vec![0; b"held one, held two".len()];
    let early = timeout(HELD_FOR, stream.read_exact(&mut back)).await;
    assert!(early.is_err(), "a read completed through a stall");

    proxy.set(Fault::None);
    let mut back = vec![0; b"held one, held two".len()];
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("the held bytes did not come after the stall")
        .unwrap();
    assert_eq!(back, b"held one, held two");
    assert_eq!(round_trip(&mut stream, b"after").await, b"after");
}

#[tokio::test]
async fn a_new_connection_during_a_stall_is_accepted_and_held() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    proxy.set(Fault::Stall);
    let mut stream = connect(&proxy).await;
    stream.write_all(b"hello").await.unwrap();
    let mut back = [0; 5];
    assert!(timeout(HELD_FOR, stream.read_exact(&mut back)).await.is_err());

    proxy.set(Fault::None);
    timeout(DEADLINE, stream.read_exact(&mut back))
        .await
        .expect("the held bytes did not come after the stall")
        .unwrap();
    assert_eq!(&back, b"hello");
}

#[tokio::test]
async fn a_held_stall_stops_reading_at_its_bound_and_loses_nothing() {
    // More than the kernel's socket buffers can absorb, so the writer must feel backpressure.
    const TOTAL: usize = 64 * 1024 * 1024;
    let (upstream, received) = counting_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    proxy.set(Fault::Stall);
    let mut stream = connect(&proxy).await;
    let writer = tokio::spawn(async move {
        let mut sent = 0;
        while sent < TOTAL {
            let len = (TOTAL - sent).min(1024 * 1024);
            stream.write_all(&pattern(sent, len)).await?;
            sent += len;
        }
        stream.shutdown().await
    });
    tokio::pin!(writer);

    assert!(
        timeout(HELD_FOR, &mut writer).await.is_err(),
        "all {TOTAL} bytes were taken during a stall"
    );
    let held = proxy.held_bytes();
    assert!(held <= MAX_HELD_BYTES_PER_DIRECTION, "{held} bytes held");

    proxy.set(Fault::None);
    timeout(DEADLINE, &mut writer)
        .await
        .expect("the writer did not finish after the stall")
        .unwrap()
        .unwrap();
    let total = timeout(DEADLINE, received)
        .await
        .expect("the upstream did not see the end")
        .unwrap()
        .unwrap();
    assert_eq!(total, TOTAL);
    assert_eq!(proxy.held_bytes(), 0);
}

#[tokio::test]
async fn refuse_closes_new_connections_and_cuts_open_ones_until_it_is_lifted() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = connect(&proxy).await;
    assert_eq!(round_trip(&mut open, b"ping").await, b"ping");

    proxy.set(Fault::Refuse);
    assert!(closed(&mut open).await, "an open connection survived Refuse");
    let mut refused = connect(&proxy).await;
    assert!(closed(&mut refused).await, "a new connection was kept under Refuse");

    proxy.set(Fault::None);
    let mut again = connect(&proxy).await;
    assert_eq!(round_trip(&mut again, b"pong").await, b"pong");
}

#[tokio::test]
async fn cut_all_closes_open_connections_and_later_ones_work() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut first = connect(&proxy).await;
    let mut second = connect(&proxy).await;
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    assert_eq!(round_trip(&mut second, b"two").await, b"two");

    proxy.cut_all();
    assert!(closed(&mut first).await);
    assert!(closed(&mut second).await);

    let mut later = connect(&proxy).await;
    assert_eq!(round_trip(&mut later, b"three").await, b"three");
}

#[tokio::test]
async fn cut_all_also_closes_a_stalled_connection() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = connect(&proxy).await;
    // A round trip first: a connection still in the kernel's backlog is not open to the proxy.
    assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
    proxy.set(Fault::Stall);
    stream.write_all(b"never answered").await.unwrap();
    proxy.cut_all();
    assert!(closed(&mut stream).await);
}

#[tokio::test]
async fn a_half_close_reaches_the_upstream_and_its_close_comes_back() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = connect(&proxy).await;
    stream.write_all(b"last words").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    timeout(DEADLINE, stream.read_to_end(&mut back))
        .await
        .expect("the echo server's close did not come back")
        .unwrap();
    assert_eq!(back, b"last words");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = connect(&proxy).await;
    assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
    drop(proxy);
    assert!(closed(&mut stream).await);
}
