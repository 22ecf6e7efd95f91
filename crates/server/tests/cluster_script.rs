//! `scripts/cluster` with the binary this build made (`--binary`): it starts its nodes on its own
//! throw-away tiers, a user signed in on one node is served by every other, and `stop` leaves no
//! process of it running. A test binary of its own: it runs the script once, not once per tier
//! pass of the end-to-end suite.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchboard_client::{Client, Socket};
use switchboard_protocol::{ClientFrame, Control, Event, EventPayload, RunId, ServerFrame, UserMessage};
use tokio::process::Command;

/// Generous: the first start may install Debian's servers.
const START_DEADLINE: Duration = Duration::from_secs(300);
/// The script waits for every node (SIGTERM, then up to 15 s each) and then the tiers.
const STOP_DEADLINE: Duration = Duration::from_secs(120);
/// A lost event, not a slow one.
const EVENT_DEADLINE: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

/// Runs `scripts/cluster ARGS` and returns its standard output; panics with its error output
/// when it fails.
async fn cluster(args: &[&str], deadline: Duration) -> String {
    let output = tokio::time::timeout(deadline, Command::new(script()).args(args).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("scripts/cluster {args:?} took more than {deadline:?}"))
        .expect("scripts/cluster runs");
    assert!(
        output.status.success(),
        "scripts/cluster {args:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Stops the cluster when the test ends, however it ends (a second stop does nothing).
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script()).arg("stop").arg(&self.0).status();
    }
}

/// True while `pid` is a live process; a zombie (exited, not yet reaped by its new parent) is
/// gone.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("State:"))
            .is_some_and(|state| !state.trim_start().starts_with('Z'))
    })
}

fn pid_in(file: &Path) -> u32 {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", file.display()))
}

async fn open(client: &Client, token: &str) -> Socket {
    let mut socket = client.connect(token, None).await.expect("the socket opens");
    match socket.next_frame().await.unwrap() {
        Some(ServerFrame::Control(c)) if matches!(c.body, Control::ConnectionEstablished(_)) => socket,
        other => panic!("expected connection_established, got {other:?}"),
    }
}

/// The events of `run` on `socket`, up to its final event.
async fn until_final(socket: &mut Socket, run: &RunId) -> Vec<Event> {
    let read = async {
        let mut events = Vec::new();
        loop {
            if let Some(ServerFrame::Event(event)) = socket.next_frame().await.unwrap()
                && event.run_id == *run
            {
                let last = matches!(&event.payload, EventPayload::AgentCompleted(done) if done.is_final);
                events.push(event);
                if last {
                    return events;
                }
            }
        }
    };
    tokio::time::timeout(EVENT_DEADLINE, read)
        .await
        .expect("the run's final event arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_nodes_that_serve_one_users_sign_in_and_its_stop_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let stop = StopOnDrop(dir.path().to_owned());
    let printed = cluster(
        &[
            "start",
            "--nodes",
            "3",
            "--dev",
            "--binary",
            env!("CARGO_BIN_EXE_switchboard"),
            dir_arg,
        ],
        START_DEADLINE,
    )
    .await;

    // DIR/nodes names node-1 to node-3, each with its address; the script prints them too.
    let listed = std::fs::read_to_string(dir.path().join("nodes")).unwrap();
    let nodes: Vec<(&str, Client)> = listed
        .lines()
        .map(|line| {
            let (name, url) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
            (name, Client::new(url))
        })
        .collect();
    let names: Vec<&str> = nodes.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"], "{listed}");
    assert!(printed.contains(&listed), "printed:\n{printed}");

    // Each is ready, and on Redis.
    for (name, client) in &nodes {
        let (status, body) = client.get("/health/ready", None).await.unwrap();
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["checks"]["redis"]["status"], "ok", "{name}: {body}");
    }

    // Signed in on node-1; the token opens a socket on node-3, and a run sent there reaches
    // the socket on node-1.
    let session = nodes[0].1.dev_login(Some("ada@cluster.example")).await.unwrap();
    let mut on_1 = open(&nodes[0].1, &session.access_token).await;
    let mut on_3 = open(&nodes[2].1, &session.access_token).await;
    on_3.send(&ClientFrame::UserMessage(UserMessage {
        text: "How can we cut our LLM costs?".into(),
        thread_id: None,
        client_message_id: None,
    }))
    .await
    .unwrap();
    let run = loop {
        match on_3.next_frame().await.unwrap().expect("the socket stays open") {
            ServerFrame::Control(c) => match c.body {
                Control::MessageAccepted(accepted) => break accepted.run_id,
                Control::Error(error) => panic!("refused: {}", error.message),
                _ => {}
            },
            ServerFrame::Event(_) => {}
        }
    };
    let seqs = |events: Vec<Event>| events.iter().map(|e| e.seq.get()).collect::<Vec<_>>();
    let from_3 = seqs(until_final(&mut on_3, &run).await);
    assert_eq!(
        seqs(until_final(&mut on_1, &run).await),
        from_3,
        "the same events on node-1"
    );
    drop((on_1, on_3));

    // Every process the script started, by its PID files: the nodes and the tiers.
    let mut pid_files: Vec<PathBuf> = (1..=3).map(|k| dir.path().join(format!("node-{k}.pid"))).collect();
    for tier in ["postgres", "redis", "clickhouse"] {
        pid_files.push(dir.path().join("tiers").join(format!("{tier}.pid")));
    }
    let pids: BTreeSet<u32> = pid_files.iter().map(|file| pid_in(file)).collect();
    assert_eq!(pids.len(), pid_files.len(), "one process each: {pids:?}");
    assert!(pids.iter().all(|&pid| alive(pid)), "all running: {pids:?}");

    cluster(&["stop", dir_arg], STOP_DEADLINE).await;
    let running: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(running.is_empty(), "still running after stop: {running:?}");
    assert!(!dir.path().join("nodes").exists(), "stop removes DIR/nodes");
    drop(stop);
}
