//! The server out of file descriptors: a flood of idle connections takes every descriptor the
//! process may open, the accept loop keeps going through `EMFILE`, and once the header deadline
//! closes the flood the server serves again by itself. A test binary of its own, because it
//! lowers the process's open-file limit.

use std::time::Duration;

use rustix::process::{Resource, Rlimit, setrlimit};
use switchboard::{Application, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Descriptors the test leaves itself beyond those open before the flood.
const HEADROOM: u64 = 48;
/// Descriptors the test holds back during the flood, to connect with afterwards.
const RESERVE: usize = 4;

fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(start_paused = true)]
async fn after_a_flood_that_exhausts_the_file_limit_the_server_serves_again_within_the_header_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_owned(),
        jwt_secret: Some("a-test-secret-that-is-long-enough-0123456789".to_owned()),
        // Past the file limit on purpose: the flood must run into EMFILE.
        max_open_connections: Some(100_000),
        ..Config::default()
    };
    let header_timeout = config.header_timeout;
    let app = Application::build(config).await.unwrap();
    let address = app.local_addr();
    let stop = app.stop_handle();
    let server = tokio::spawn(app.run_until_stopped());
    // Let the server start serving before the limit falls.
    assert_eq!(get_health(TcpStream::connect(address).await.unwrap()).await, Some(200));

    let limit = open_descriptors() + HEADROOM;
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .unwrap();
    let reserve: Vec<_> = (0..RESERVE)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let mut flood = Vec::new();
    let exhausted = loop {
        match TcpStream::connect(address).await {
            Ok(tcp) => flood.push(tcp),
            Err(error) => break error,
        }
        assert!(flood.len() < 1000, "the file limit never ran out");
    };
    assert_eq!(exhausted.raw_os_error(), Some(24), "EMFILE: {exhausted}");

    // Connect while nothing else can run (the runtime has one thread), so that the server's
    // accept loop cannot take the freed descriptors first.
    drop(reserve);
    let fresh = std::net::TcpStream::connect(address).unwrap();
    fresh.set_nonblocking(true).unwrap();
    let started = tokio::time::Instant::now();
    let status = tokio::time::timeout(header_timeout * 3, get_health(TcpStream::from_std(fresh).unwrap()))
        .await
        .expect("the server answers again");
    assert_eq!(status, Some(200));
    assert!(
        started.elapsed() <= header_timeout + Duration::from_secs(1),
        "served again after {:?}",
        started.elapsed()
    );

    drop(flood);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Sends `GET /health/live` and returns the response's status (`None` when the connection ended
/// first).
async fn get_health(mut tcp: TcpStream) -> Option<u16> {
    tcp.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&response).split(' ').nth(1)?.parse().ok()
}
