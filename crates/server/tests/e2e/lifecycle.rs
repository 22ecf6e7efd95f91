//! Shutdown and restarts: graceful stop in process, and the real binary killed with SIGKILL
//! and stopped with SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use switchboard_client::Client;
use switchboard_engine::testkit::{check_gapless, check_run, final_status, summary};
use switchboard_protocol::{ErrorCode, Event, RunStatus, ServerFrame};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    SECRET, close_frame, error, events_until_final, message, next, postgres_database, send, spawn_app_with, tier_args,
};

#[tokio::test(start_paused = true)]
async fn shutdown_lets_runs_end_within_the_grace_period_then_interrupts_them_and_closes_sockets() {
    let app = spawn_app_with(|c| {
        c.model_latency = Duration::from_secs(60);
        c.engine.model_timeout = Duration::from_secs(120);
        c.engine.agent_timeout = Duration::from_secs(120);
        c.engine.run_timeout = Duration::from_secs(300);
    })
    .await;
    let session = app.user("late").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "a slow question").await;
    app.stop.cancel();
    tokio::time::sleep(Duration::from_millis(10)).await;
    socket.send(&message("too late", None, None)).await.unwrap();
    assert_eq!(error(&mut socket).await.code, ErrorCode::ShuttingDown);
    let events = events_until_final(&mut socket, &accepted.run_id).await;
    let of_run: Vec<Event> = events.into_iter().filter(|e| e.run_id == accepted.run_id).collect();
    assert_eq!(final_status(&of_run), Some(RunStatus::Interrupted));
    let close = close_frame(&mut socket).await;
    assert_eq!(close.code, CloseCode::Away);
    app.shutdown().await.unwrap();
}

/// The real binary on a data dir, with the bound address read from its log.
struct Server {
    child: Child,
    client: Client,
}

async fn start(data_dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        // In the pass on the tiers, unless the test names its own database.
        .args(if extra.contains(&"--database-url") {
            Vec::new()
        } else {
            tier_args(data_dir).await
        })
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("SWITCHBOARD_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the server exited before listening");
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        client: Client::new(&format!("http://{addr}")),
    }
}

#[tokio::test]
async fn after_kill_9_and_a_restart_nothing_acknowledged_is_lost_and_seq_continues() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--model-latency-ms", "60000"]).await;
    let session = server.client.dev_login(Some("crash@test.example")).await.unwrap();
    let mut socket = server.client.connect(&session.access_token, None).await.unwrap();
    next(&mut socket).await;
    let accepted = send(&mut socket, "will the server survive?").await;
    loop {
        if let ServerFrame::Event(e) = next(&mut socket).await
            && e.type_name() == "tool_completed"
        {
            break;
        }
    }
    server.child.start_kill().unwrap();
    server.child.wait().await.unwrap();

    let server = start(dir.path(), &[]).await;
    let mut socket = server.client.connect(&session.access_token, Some(0)).await.unwrap();
    next(&mut socket).await;
    next(&mut socket).await; // resumed
    let before = events_until_final(&mut socket, &accepted.run_id).await;
    check_gapless(&before).unwrap();
    check_run(&before).unwrap();
    assert_eq!(final_status(&before), Some(RunStatus::Interrupted));
    assert_eq!(
        summary(&before).last().unwrap(),
        "supervisor agent_completed interrupted final"
    );
    let (_, messages) = server
        .client
        .get(
            &format!("/api/threads/{}/messages", accepted.thread_id),
            Some(&session.access_token),
        )
        .await
        .unwrap();
    assert_eq!(messages["messages"][0]["text"], "will the server survive?");

    let again = send(&mut socket, "and now?").await;
    let after = events_until_final(&mut socket, &again.run_id).await;
    assert_eq!(
        after.first().unwrap().seq.get(),
        before.last().unwrap().seq.get() + 1,
        "seq continues"
    );
    assert_eq!(final_status(&after), Some(RunStatus::Completed));
}

#[tokio::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &["--shutdown-grace-ms", "200"]).await;
    let session = server.client.dev_login(None).await.unwrap();
    let mut socket = server.client.connect(&session.access_token, None).await.unwrap();
    next(&mut socket).await;
    let pid = server.child.id().unwrap().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(status.success());
    let close = close_frame(&mut socket).await;
    assert_eq!(close.code, CloseCode::Away);
    let exit = tokio::time::timeout(Duration::from_secs(20), server.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn the_chat_client_prints_the_timeline_then_the_answer() {
    let app = crate::support::spawn_app().await;
    let mut chat = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["chat", "--server", app.client.base()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"How can we cut our costs on gpt-4o?\n")
        .await
        .unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), chat.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "Connected to",
        "accepted: run run_",
        "▶ triage: classifying the request and choosing the plan",
        "⚙ extract_entities",
        "✓ extract_entities",
        "■ supervisor completed in",
        "timings (ms): queue",
        "model call: offline by triage, ",
        "model call: offline by reporting, ",
        "I read this as **a cost question**. You mentioned models: gpt-4o.",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
}

#[tokio::test]
async fn a_second_server_on_the_same_postgresql_database_refuses_to_start_and_leaves_the_first_ones_runs_alone() {
    let database = postgres_database().await;
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let flags = ["--database-url", database.as_str()];
    let first = start(
        first_dir.path(),
        &[&flags[..], &["--model-latency-ms", "60000"]].concat(),
    )
    .await;
    let session = first.client.dev_login(Some("shared@test.example")).await.unwrap();
    let mut socket = first.client.connect(&session.access_token, None).await.unwrap();
    next(&mut socket).await;
    let accepted = send(&mut socket, "a long one").await;

    let second = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(second_dir.path())
        .args(flags)
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot serve from PostgreSQL at postgres://")
            && stderr.contains("another Switchboard server is serving from the database"),
        "{stderr}"
    );
    // The first server's run is still its own: stopping it gives its one final event.
    socket
        .send(&switchboard_protocol::ClientFrame::StopAgent(
            switchboard_protocol::StopAgent {
                run_id: accepted.run_id.clone(),
            },
        ))
        .await
        .unwrap();
    let events = events_until_final(&mut socket, &accepted.run_id).await;
    let of_run: Vec<Event> = events.into_iter().filter(|e| e.run_id == accepted.run_id).collect();
    assert_eq!(of_run.iter().filter(|e| e.is_final()).count(), 1);
    assert_eq!(final_status(&of_run), Some(RunStatus::Cancelled));
}
