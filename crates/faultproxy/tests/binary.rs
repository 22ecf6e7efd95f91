//! The `switchboard-faultproxy` binary driven as a script would: its first line is its address,
//! each command line is answered, and the fault it sets reaches an open connection.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{ChildStdout, Command};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(10);
const HELD_FOR: Duration = Duration::from_millis(300);

async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    timeout(DEADLINE, lines.next_line())
        .await
        .expect("the proxy did not answer")
        .unwrap()
        .expect("the proxy closed its output")
}

#[tokio::test]
async fn the_binary_prints_its_address_and_applies_each_command_to_open_connections() {
    let upstream = echo_server().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-faultproxy"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut commands = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = next_line(&mut lines).await;

    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let mut back = [0; 4];
    stream.write_all(b"ping").await.unwrap();
    timeout(DEADLINE, stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"ping");

    commands.write_all(b"stall\n").await.unwrap();
    assert_eq!(next_line(&mut lines).await, "ok stall");
    stream.write_all(b"held").await.unwrap();
    assert!(timeout(HELD_FOR, stream.read_exact(&mut back)).await.is_err());

    commands.write_all(b"bogus\nlatency 20\n").await.unwrap();
    assert_eq!(next_line(&mut lines).await, "ok latency 20");
    timeout(DEADLINE, stream.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(&back, b"held");

    commands.write_all(b"cut\n").await.unwrap();
    assert_eq!(next_line(&mut lines).await, "ok cut");
    let mut byte = [0; 1];
    let read = timeout(DEADLINE, stream.read(&mut byte))
        .await
        .expect("the cut connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)));

    commands.write_all(b"quit\n").await.unwrap();
    assert_eq!(next_line(&mut lines).await, "ok quit");
    let status = timeout(DEADLINE, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    let mut errors = String::new();
    child.stderr.take().unwrap().read_to_string(&mut errors).await.unwrap();
    assert!(errors.contains("error: unknown command `bogus`"), "{errors}");
}

#[tokio::test]
async fn the_binary_says_what_is_wrong_with_its_arguments() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-faultproxy"))
        .arg("--listen")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let errors = String::from_utf8(output.stderr).unwrap();
    assert!(errors.starts_with("error: --listen needs a value"), "{errors}");
    assert!(!errors.contains("stack backtrace"), "{errors}");
}
