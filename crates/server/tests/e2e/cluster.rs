//! Several nodes on one PostgreSQL database and one Redis, each the real binary in a process
//! of its own: a user's tabs on any node see every event of every run, in
//! seq order, with no gap, whichever node runs it, and still when Redis is gone. Real clock:
//! PostgreSQL and Redis are other processes; the tests assert what arrives, never how fast.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use switchboard_engine::testkit::{check_gapless, check_run, final_status};
use switchboard_faultproxy::{Fault, FaultProxy};
use switchboard_protocol::{ClientFrame, Control, ErrorCode, Event, RunStatus, ServerFrame, StopAgent};

use crate::auth::open;
use crate::support::{
    address_of, events_until_final, message, next, postgres_database, redis_url, send, spawn_node, through,
    upload_with_keys,
};

/// Reads `socket` until the final event of `run` (at most 30 s: a lost event, not a slow one).
async fn until_final(socket: &mut switchboard_client::Socket, run: &switchboard_protocol::RunId) -> Vec<Event> {
    tokio::time::timeout(Duration::from_secs(30), events_until_final(socket, run))
        .await
        .expect("the run's final event arrives")
}

/// A ticket bought on `node`, as the query that opens a socket with it.
async fn ticket(node: &crate::support::TestApp, session: &switchboard_client::Session) -> String {
    let (_, body) = node
        .client
        .post("/api/ws-ticket", Some(&session.access_token), &serde_json::json!({}))
        .await
        .unwrap();
    format!("?ticket={}", body["ticket"].as_str().unwrap())
}

/// What reached `app`'s connections from other nodes `via` Redis or the log (its metrics).
async fn from_other_nodes(app: &crate::support::TestApp, via: &str) -> u64 {
    let text = app.metrics().await;
    let name = format!("switchboard_from_other_nodes_total{{via=\"{via}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&name))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// The stream is `expected`, event for event: each once, in order, consecutive seqs.
fn assert_same_stream(seen: &[Event], expected: &[Event]) {
    assert!(
        seen.windows(2).all(|w| w[1].seq.get() == w[0].seq.get() + 1),
        "consecutive seqs"
    );
    let seqs = |events: &[Event]| events.iter().map(|e| e.seq.get()).collect::<Vec<_>>();
    assert_eq!(seqs(seen), seqs(expected), "the same events, in the same order");
    assert_eq!(seen, expected, "the same events, byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_one_node_streams_to_the_users_tabs_on_every_node_in_order_without_a_gap() {
    let (database, redis) = (postgres_database().await, redis_url());
    let a = spawn_node(&database, &redis, "node-a", &[]).await;
    let b = spawn_node(&database, &redis, "node-b", &[]).await;
    let c = spawn_node(&database, &redis, "node-c", &[]).await;
    // Signed in on A; the token is good on every node (one secret).
    let session = a.user("ann").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;
    let mut on_c = c.connect(&session).await;
    // Someone else on B sees nothing of it.
    let other = b.user("eve").await;
    let mut eves = b.connect(&other).await;

    let first = send(&mut on_a, "How can we cut our LLM costs?").await;
    let from_a = until_final(&mut on_a, &first.run_id).await;
    check_gapless(&from_a).unwrap();
    check_run(&from_a).unwrap();
    assert_same_stream(&until_final(&mut on_b, &first.run_id).await, &from_a);
    assert_same_stream(&until_final(&mut on_c, &first.run_id).await, &from_a);

    // A run accepted on C streams back to A and B, its seqs after the first run's.
    let second = send(&mut on_c, "And latency?").await;
    let from_c = until_final(&mut on_c, &second.run_id).await;
    assert_eq!(from_c[0].seq.get(), from_a.last().unwrap().seq.get() + 1);
    assert_same_stream(&until_final(&mut on_a, &second.run_id).await, &from_c);
    assert_same_stream(&until_final(&mut on_b, &second.run_id).await, &from_c);

    // They came through Redis.
    assert!(
        from_other_nodes(&b, "redis").await > 0 && from_other_nodes(&c, "redis").await > 0,
        "{}",
        b.metrics().await
    );

    // Eve's own run: hers alone, from seq 1.
    let hers = send(&mut eves, "hello").await;
    let eves_events = until_final(&mut eves, &hers.run_id).await;
    assert_eq!(eves_events[0].seq.get(), 1);
    assert!(eves_events.iter().all(|e| e.run_id == hers.run_id));
    for app in [a, b, c] {
        app.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_for_one_node_its_tabs_still_get_every_event_from_the_log_and_readiness_says_why() {
    let (database, redis) = (postgres_database().await, redis_url());
    let proxy = FaultProxy::start(address_of(&redis)).await.unwrap();
    let a = spawn_node(&database, &redis, "node-a", &[]).await;
    let b = spawn_node(
        &database,
        &through(&redis, proxy.addr()),
        "node-b",
        &["--redis-timeout-ms", "200"],
    )
    .await;
    let session = a.user("ann").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;

    proxy.set(Fault::Refuse);
    let ready: serde_json::Value = b
        .client
        .http()
        .get(format!("{}/health/ready", b.client.base()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["checks"]["redis"]["status"], "degraded", "{ready}");
    assert!(
        ready["checks"]["redis"]["error"].as_str().unwrap().contains("Redis"),
        "{ready}"
    );

    // A ticket bought on B meanwhile is kept by B, and opens a socket there.
    let query = ticket(&b, &session).await;
    assert!(open(b.client.base(), &query, &[]).await.is_ok(), "a ticket of B's own");

    // An upload with a key is stored, then replayed, with B's own lock alone.
    let rows = serde_json::json!([{"timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o", "input_tokens": 1200,
                                   "output_tokens": 300, "feature": "search", "latency_ms": 850}]);
    let body = serde_json::to_vec(&rows).unwrap();
    let accepted = serde_json::json!({"accepted": 1});
    let keys: &[&[u8]] = &[b"while-redis-is-gone"];
    let first_upload = upload_with_keys(&b, &session.access_token, keys, "application/json", body.clone()).await;
    assert_eq!(first_upload, (200, None, accepted.clone()));
    let again = upload_with_keys(&b, &session.access_token, keys, "application/json", body).await;
    assert_eq!(again, (200, Some("true".to_owned()), accepted));

    // A run on A reaches B's tab through the log alone; and one on B reaches A.
    let first = send(&mut on_a, "How can we cut our LLM costs?").await;
    let from_a = until_final(&mut on_a, &first.run_id).await;
    assert_same_stream(&until_final(&mut on_b, &first.run_id).await, &from_a);
    let second = send(&mut on_b, "And latency?").await;
    let from_b = until_final(&mut on_b, &second.run_id).await;
    assert_eq!(final_status(&from_b), Some(RunStatus::Completed));
    assert_same_stream(&until_final(&mut on_a, &second.run_id).await, &from_b);

    assert!(
        from_other_nodes(&b, "log").await > 0,
        "B learnt of A's events from the log"
    );

    // Redis back: the same through it.
    proxy.set(Fault::None);
    let third = send(&mut on_a, "Once more").await;
    let again = until_final(&mut on_a, &third.run_id).await;
    assert_same_stream(&until_final(&mut on_b, &third.run_id).await, &again);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_check_that_timed_out_on_a_slow_redis_leaves_no_place_taken_once_redis_answers() {
    let (database, redis) = (postgres_database().await, redis_url());
    let proxy = FaultProxy::start(address_of(&redis)).await.unwrap();
    let a = spawn_node(
        &database,
        &through(&redis, proxy.addr()),
        "node-a",
        &["--redis-timeout-ms", "200"],
    )
    .await;
    let session = a.user("lia").await;
    let mut socket = a.connect(&session).await;
    // Slower than the deadline: the run's places in Redis are taken after the node gave up on
    // them (its own limits count meanwhile).
    proxy.set(Fault::Latency(Duration::from_millis(600)));
    let accepted = send(&mut socket, "How can we cut our LLM costs?").await;
    assert_eq!(
        final_status(&until_final(&mut socket, &accepted.run_id).await),
        Some(RunStatus::Completed)
    );
    proxy.set(Fault::None);

    // Once Redis answers in time, the places the late takes hold are given back: the user, who
    // runs nothing, holds none (else they would count against it for the run deadline).
    let cluster = switchboard_postgres::PgStore::connect(&database, switchboard_postgres::PgOptions::default())
        .await
        .unwrap()
        .cluster_id()
        .await
        .unwrap();
    let mut redis = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = [
        format!("sb:{cluster}:limit:runs:{}", session.user_id),
        format!("sb:{cluster}:limit:runs"),
    ];
    let held = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let mut held = 0;
            for key in &keys {
                let count: u64 = redis::cmd("ZCARD").arg(key).query_async(&mut redis).await.unwrap();
                held += count;
            }
            if held == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        held.is_ok(),
        "places in {keys:?} are still held for a user who runs nothing"
    );
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_bought_on_one_node_opens_one_socket_on_any_node_once() {
    let (database, redis) = (postgres_database().await, redis_url());
    let a = spawn_node(&database, &redis, "node-a", &[]).await;
    let b = spawn_node(&database, &redis, "node-b", &[]).await;
    let session = a.user("tia").await;
    let query = ticket(&a, &session).await;
    assert!(open(b.client.base(), &query, &[]).await.is_ok(), "opened on B");
    assert_eq!(
        open(a.client.base(), &query, &[]).await.unwrap_err().0,
        401,
        "not again on A"
    );
    assert_eq!(open(b.client.base(), &query, &[]).await.unwrap_err().0, 401, "nor on B");
    let made_up = format!("?ticket={}", "0".repeat(32));
    assert_eq!(open(b.client.base(), &made_up, &[]).await.unwrap_err().0, 401);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_stopped_from_any_node_by_stop_agent_or_the_cancel_route() {
    let (database, redis) = (postgres_database().await, redis_url());
    // Each model call takes a minute: the runs are still going when they are stopped.
    let slow = &["--model-latency-ms", "60000"];
    let a = spawn_node(&database, &redis, "node-a", slow).await;
    let c = spawn_node(&database, &redis, "node-c", slow).await;
    let session = a.user("sam").await;
    let mut on_a = a.connect(&session).await;
    let mut on_c = c.connect(&session).await;

    // stop_agent on C's socket ends the run A runs.
    let first = send(&mut on_a, "slow").await;
    on_c.send(&ClientFrame::StopAgent(StopAgent {
        run_id: first.run_id.clone(),
    }))
    .await
    .unwrap();
    let events = until_final(&mut on_a, &first.run_id).await;
    assert_eq!(final_status(&events), Some(RunStatus::Cancelled));
    assert_same_stream(&until_final(&mut on_c, &first.run_id).await, &events);

    // The cancel route on C: 202, and the run on A ends cancelled.
    let second = send(&mut on_a, "slow again").await;
    let (status, body) = c
        .client
        .post(
            &format!("/api/runs/{}/cancel", second.run_id),
            Some(&session.access_token),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let events = until_final(&mut on_a, &second.run_id).await;
    assert_eq!(final_status(&events), Some(RunStatus::Cancelled));

    // Another user cannot stop it from any node.
    let third = send(&mut on_a, "mine").await;
    let eve = c.user("eve").await;
    let (status, _) = c
        .client
        .post(
            &format!("/api/runs/{}/cancel", third.run_id),
            Some(&eve.access_token),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    on_a.send(&ClientFrame::StopAgent(StopAgent {
        run_id: third.run_id.clone(),
    }))
    .await
    .unwrap();
    until_final(&mut on_a, &third.run_id).await;
    a.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_has_its_run_closed_once_by_another_and_started_again_it_serves_on() {
    let (database, redis) = (postgres_database().await, redis_url());
    let mut a = spawn_node(&database, &redis, "node-a", &["--model-latency-ms", "60000"]).await;
    let b = spawn_node(&database, &redis, "node-b", &[]).await;
    let c = spawn_node(&database, &redis, "node-c", &[]).await;
    let session = a.user("kim").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;
    let mut on_c = c.connect(&session).await;
    let accepted = send(&mut on_a, "will node A survive?").await;
    // B sees the run going, then A is killed.
    loop {
        if let ServerFrame::Event(event) = next(&mut on_b).await
            && event.type_name() == "tool_completed"
        {
            break;
        }
    }
    a.kill().await;

    // Within the lease and a claim or two, B or C closes it: one final event, on both tabs.
    let seen_b = until_final(&mut on_b, &accepted.run_id).await;
    let seen_c = until_final(&mut on_c, &accepted.run_id).await;
    assert_eq!(final_status(&seen_b), Some(RunStatus::Interrupted));
    // B read the run's first events before A was killed; C all of them.
    assert_same_stream(&seen_c[seen_c.len() - seen_b.len()..], &seen_b);
    // The whole run, replayed on C from the start: the contract, and one final event.
    let mut replay = c.client.connect(&session.access_token, Some(0)).await.unwrap();
    let whole = until_final(&mut replay, &accepted.run_id).await;
    check_gapless(&whole).unwrap();
    check_run(&whole).unwrap();
    assert_eq!(whole.iter().filter(|e| e.is_final()).count(), 1);
    let told = serde_json::to_string(&whole).unwrap();
    assert!(
        told.contains("because the node that ran it (node-a) stopped answering"),
        "the closing names the node that stopped: {told}"
    );

    // A started again under its name serves on, its seqs after the run's.
    let a = spawn_node(&database, &redis, "node-a", &[]).await;
    let mut on_a = a.connect(&session).await;
    let again = send(&mut on_a, "and now?").await;
    let after = until_final(&mut on_a, &again.run_id).await;
    assert_eq!(after[0].seq.get(), whole.last().unwrap().seq.get() + 1);
    assert_eq!(final_status(&after), Some(RunStatus::Completed));
    for node in [a, b, c] {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_postgresql_past_its_lease_adds_nothing_to_its_run_once_another_closed_it() {
    let (database, redis) = (postgres_database().await, redis_url());
    let proxy = FaultProxy::start(address_of(&database)).await.unwrap();
    let slow = &["--model-latency-ms", "60000"];
    let a = spawn_node(&through(&database, proxy.addr()), &redis, "node-a", slow).await;
    let b = spawn_node(&database, &redis, "node-b", &[]).await;
    let session = a.user("lee").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;
    let accepted = send(&mut on_a, "will node A be fenced?").await;
    loop {
        if let ServerFrame::Event(event) = next(&mut on_b).await
            && event.type_name() == "tool_completed"
        {
            break;
        }
    }
    // A loses PostgreSQL (and not Redis, nor its users): past its lease, B closes A's run.
    proxy.set(Fault::Refuse);
    let seen_b = until_final(&mut on_b, &accepted.run_id).await;
    assert_eq!(final_status(&seen_b), Some(RunStatus::Interrupted));

    // A reaches PostgreSQL again, its run still going there; stopped on A, it ends (as A
    // believes): nothing of that end is stored, and A says why.
    proxy.set(Fault::None);
    let (status, body) = a
        .client
        .post(
            &format!("/api/runs/{}/cancel", accepted.run_id),
            Some(&session.access_token),
            &serde_json::json!({}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "A still runs it: {body}");
    let line = a
        .logged(&["given up", accepted.run_id.as_str(), "no longer this node's"])
        .await;
    assert!(line.contains("another node took it over"), "{line}");
    let refused = a.metrics().await;
    assert!(
        refused
            .lines()
            .any(|l| l.starts_with("switchboard_events_refused_total ") && !l.ends_with(" 0")),
        "{refused}"
    );

    // The run, replayed from the start on either node: B's end, the only one.
    let mut wholes = Vec::new();
    for node in [&a, &b] {
        let mut replay = node.client.connect(&session.access_token, Some(0)).await.unwrap();
        let whole = until_final(&mut replay, &accepted.run_id).await;
        check_gapless(&whole).unwrap();
        check_run(&whole).unwrap();
        assert_eq!(whole.iter().filter(|e| e.is_final()).count(), 1);
        assert_eq!(final_status(&whole), Some(RunStatus::Interrupted));
        wholes.push(whole);
    }
    assert_same_stream(&wholes[0], &wholes[1]);
    // Nor anything of it after its end: a run started now (on B, whose model answers at once)
    // is the next thing in the user's log.
    let after = send(&mut on_b, "after the fence").await;
    let next_run = until_final(&mut on_b, &after.run_id).await;
    assert_eq!(next_run[0].seq.get(), wholes[1].last().unwrap().seq.get() + 1);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// The answer to a message: its acceptance, or the error's code.
async fn answer(socket: &mut switchboard_client::Socket) -> Result<switchboard_protocol::RunId, ErrorCode> {
    loop {
        match next(socket).await {
            ServerFrame::Control(frame) => match frame.body {
                Control::MessageAccepted(accepted) => return Ok(accepted.run_id),
                Control::Error(error) => return Err(error.code),
                _ => {}
            },
            ServerFrame::Event(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_racing_on_three_nodes_keep_the_users_limits_of_active_runs_and_of_messages() {
    let (database, redis) = (postgres_database().await, redis_url());
    let limits = &[
        "--model-latency-ms",
        "60000",
        "--max-active-runs-per-user",
        "2",
        "--rate-limit-per-minute",
        "4",
    ];
    let nodes = [
        spawn_node(&database, &redis, "node-a", limits).await,
        spawn_node(&database, &redis, "node-b", limits).await,
        spawn_node(&database, &redis, "node-c", limits).await,
    ];
    let session = nodes[0].user("ray").await;
    let mut sockets = Vec::new();
    for n in 0..5 {
        sockets.push(nodes[n % 3].connect(&session).await);
    }
    // Five messages at once, on three nodes: two runs start, three are refused.
    for (n, socket) in sockets.iter_mut().enumerate() {
        socket
            .send(&message(&format!("question {n}"), None, None))
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    for socket in &mut sockets {
        answers.push(answer(socket).await);
    }
    let started: Vec<_> = answers.iter().filter_map(|a| a.clone().ok()).collect();
    let refused: Vec<_> = answers.iter().filter_map(|a| a.clone().err()).collect();
    assert_eq!(started.len(), 2, "{answers:?}");
    assert_eq!(refused, vec![ErrorCode::TooManyActiveRuns; 3], "{answers:?}");

    // Both stopped: places free again on every node; the messages counted are the two that
    // got past the run limit, so two more pass the rate limit of 4 a minute, and a fifth not.
    for run in &started {
        sockets[0]
            .send(&ClientFrame::StopAgent(StopAgent { run_id: run.clone() }))
            .await
            .unwrap();
        until_final(&mut sockets[0], run).await;
    }
    let mut more = Vec::new();
    for n in [1, 2] {
        sockets[n].send(&message("again", None, None)).await.unwrap();
        more.push(answer(&mut sockets[n]).await.expect("a run"));
    }
    for run in &more {
        sockets[0]
            .send(&ClientFrame::StopAgent(StopAgent { run_id: run.clone() }))
            .await
            .unwrap();
        until_final(&mut sockets[0], run).await;
    }
    sockets[3].send(&message("one too many", None, None)).await.unwrap();
    assert_eq!(answer(&mut sockets[3]).await, Err(ErrorCode::RateLimited));
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_across_the_nodes() {
    let (database, redis) = (postgres_database().await, redis_url());
    let three = &["--login-max-failures", "3"];
    let nodes = [
        spawn_node(&database, &redis, "node-a", three).await,
        spawn_node(&database, &redis, "node-b", three).await,
        spawn_node(&database, &redis, "node-c", three).await,
    ];
    nodes[0]
        .client
        .register("lou@test.example", "the right password")
        .await
        .unwrap();
    let login = |node: usize, password: &'static str| {
        let client = &nodes[node].client;
        async move {
            client
                .post(
                    "/api/auth/login",
                    None,
                    &serde_json::json!({ "email": "lou@test.example", "password": password }),
                )
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(login(0, "guess 1").await, 401);
    assert_eq!(login(1, "guess 2").await, 401);
    assert_eq!(login(2, "guess 3").await, 401);
    // Three failures, on three nodes: the fourth try is refused on any, the right password too.
    assert_eq!(login(0, "the right password").await, 429);
    assert_eq!(login(2, "guess 4").await, 429);
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_connections_are_counted_across_the_nodes() {
    let (database, redis) = (postgres_database().await, redis_url());
    let two = &["--max-connections-per-user", "2"];
    let nodes = [
        spawn_node(&database, &redis, "node-a", two).await,
        spawn_node(&database, &redis, "node-b", two).await,
        spawn_node(&database, &redis, "node-c", two).await,
    ];
    let session = nodes[0].user("cat").await;
    let header = vec![("authorization", format!("Bearer {}", session.access_token))];
    let on_a = nodes[0].connect(&session).await;
    let _on_b = nodes[1].connect(&session).await;
    let (status, body) = open(nodes[2].client.base(), "", &header).await.unwrap_err();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections"))
    );
    // Another user is not counted with her.
    let other = nodes[2].user("dan").await;
    nodes[2].connect(&other).await;
    // One closed on A: a place is free on C (once A has given it back).
    on_a.close().await.unwrap();
    let mut tries = 0;
    while open(nodes[2].client.base(), "", &header).await.is_err() {
        tries += 1;
        assert!(tries < 200, "the place of the closed socket was not given back");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_places_of_a_node_killed_are_free_well_before_they_would_run_out() {
    let (database, redis) = (postgres_database().await, redis_url());
    let two = &["--max-connections-per-user", "2"];
    let mut a = spawn_node(&database, &redis, "node-a", two).await;
    let b = spawn_node(&database, &redis, "node-b", two).await;
    let session = a.user("eve").await;
    let header = vec![("authorization", format!("Bearer {}", session.access_token))];
    let _first = a.connect(&session).await;
    let _second = a.connect(&session).await;
    let (status, _) = open(b.client.base(), "", &header).await.unwrap_err();
    assert_eq!(status, 429, "both places are A's");
    let killed = std::time::Instant::now();
    a.kill().await;
    // A's places would count for their whole time (30 s, renewed every 10 s); they go once
    // A's key among the holders has run out (6 s) and B finds the set full.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        match open(b.client.base(), "", &header).await {
            Ok(_) => break,
            Err((429, _)) => assert!(
                killed.elapsed() < Duration::from_secs(20),
                "the places of the dead node still count {:?} after it was killed",
                killed.elapsed()
            ),
            Err((status, body)) => panic!("{status}: {body}"),
        }
    }
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_for_every_node_during_runs_and_back_loses_doubles_and_hangs_nothing() {
    let (database, redis) = (postgres_database().await, redis_url());
    let proxy = FaultProxy::start(address_of(&redis)).await.unwrap();
    let through_proxy = through(&redis, proxy.addr());
    let settings = &["--redis-timeout-ms", "200", "--model-latency-ms", "300"];
    let a = spawn_node(&database, &through_proxy, "node-a", settings).await;
    let b = spawn_node(&database, &through_proxy, "node-b", settings).await;
    let session = a.user("zoe").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;

    // Runs going on both nodes when Redis goes (its connections cut, new ones refused).
    let first = send(&mut on_a, "first").await;
    let second = send(&mut on_b, "second").await;
    proxy.set(Fault::Refuse);
    proxy.cut_all();
    // One more started while it is gone; every run ends on both tabs.
    let third = send(&mut on_a, "third").await;
    for run in [&first.run_id, &second.run_id, &third.run_id] {
        until_final(&mut on_a, run).await;
        until_final(&mut on_b, run).await;
    }
    // Redis back: one more through it.
    proxy.set(Fault::None);
    let fourth = send(&mut on_b, "fourth").await;
    until_final(&mut on_a, &fourth.run_id).await;
    until_final(&mut on_b, &fourth.run_id).await;
    // The whole log, replayed on each node: every run once, whole, in order.
    let mut replayed = Vec::new();
    for node in [&a, &b] {
        let mut socket = node.client.connect(&session.access_token, Some(0)).await.unwrap();
        let seen = until_final(&mut socket, &fourth.run_id).await;
        check_gapless(&seen).unwrap();
        assert_eq!(
            seen.iter().filter(|e| e.is_final()).count(),
            4,
            "one final event per run"
        );
        for run in [&first.run_id, &second.run_id, &third.run_id, &fourth.run_id] {
            let of_run: Vec<Event> = seen.iter().filter(|e| &e.run_id == run).cloned().collect();
            check_run(&of_run).unwrap();
            assert_eq!(final_status(&of_run), Some(RunStatus::Completed));
        }
        replayed.push(seen);
    }
    assert_same_stream(&replayed[1], &replayed[0]);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_finishes_its_runs_while_the_others_serve_on() {
    let (database, redis) = (postgres_database().await, redis_url());
    let slowish = &["--model-latency-ms", "500"];
    let a = spawn_node(&database, &redis, "node-a", slowish).await;
    let b = spawn_node(&database, &redis, "node-b", slowish).await;
    let session = a.user("ivy").await;
    let mut on_a = a.connect(&session).await;
    let mut on_b = b.connect(&session).await;
    let draining = send(&mut on_a, "one on A").await;
    let stopped = tokio::spawn(a.shutdown());
    // B serves meanwhile; A's run ends completed, told on B's tab too.
    let meanwhile = send(&mut on_b, "one on B").await;
    let events = until_final(&mut on_b, &draining.run_id).await;
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    let events = until_final(&mut on_b, &meanwhile.run_id).await;
    assert_eq!(final_status(&events), Some(RunStatus::Completed));
    stopped.await.unwrap().unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_from_a_node_without_redis_is_refused_with_a_sentence_and_works_once_redis_is_back() {
    let (database, redis) = (postgres_database().await, redis_url());
    let proxy = FaultProxy::start(address_of(&redis)).await.unwrap();
    let slow = &["--model-latency-ms", "60000", "--redis-timeout-ms", "200"];
    let a = spawn_node(&database, &redis, "node-a", slow).await;
    let b = spawn_node(&database, &through(&redis, proxy.addr()), "node-b", slow).await;
    let session = a.user("rob").await;
    let mut on_a = a.connect(&session).await;
    let run = send(&mut on_a, "slow").await.run_id;
    let cancel = || async {
        b.client
            .post(
                &format!("/api/runs/{run}/cancel"),
                Some(&session.access_token),
                &serde_json::json!({}),
            )
            .await
            .unwrap()
    };
    proxy.set(Fault::Refuse);
    let (status, body) = cancel().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Redis") && message.contains("could not be asked to stop it"),
        "{message}"
    );
    proxy.set(Fault::None);
    // Once Redis answers (the connection comes back within a few tries), the stop goes through.
    let mut tries = 0;
    while cancel().await.0 != 202 {
        tries += 1;
        assert!(tries < 100, "the stop never went through");
    }
    let events = until_final(&mut on_a, &run).await;
    assert_eq!(final_status(&events), Some(RunStatus::Cancelled));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_start_beside_a_server_alone_on_its_database_nor_one_alone_beside_nodes() {
    let (database, redis) = (postgres_database().await, redis_url());
    let serve = |flags: Vec<String>| async move {
        let dir = tempfile::tempdir().unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(flags)
            .env("SWITCHBOARD_JWT_SECRET", crate::support::SECRET)
            .output()
            .await
            .unwrap()
    };
    let node = spawn_node(&database, &redis, "node-a", &[]).await;
    let alone = serve(vec!["--database-url".into(), database.clone()]).await;
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another Switchboard server is serving from the database"),
        "{stderr}"
    );
    node.shutdown().await.unwrap();

    // A server alone on a database: a node refuses to start beside it.
    let database = postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut first = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(["--database-url", &database])
        .env("SWITCHBOARD_JWT_SECRET", crate::support::SECRET)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(first.stderr.take().unwrap()).lines();
    while !lines
        .next_line()
        .await
        .unwrap()
        .expect("it listens")
        .contains("listening on ")
    {}
    let beside = serve(vec![
        "--database-url".into(),
        database.clone(),
        "--redis-url".into(),
        redis.clone(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&beside.stderr);
    assert_eq!(beside.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a Switchboard server without --redis-url is serving alone from the database"),
        "{stderr}"
    );
    first.start_kill().unwrap();
    first.wait().await.unwrap();
}

#[tokio::test]
async fn one_upload_key_sent_to_two_nodes_at_the_same_moment_is_stored_once() {
    use switchboard_store::AnalyticsStore;

    let (database, redis) = (postgres_database().await, redis_url());
    let analytics = crate::support::clickhouse_database().await;
    // Both nodes on one ClickHouse database, where the same calls stored twice would count
    // twice; Redis given time enough that neither falls back to its own lock on a busy machine.
    let flags = ["--analytics-url", analytics.as_str(), "--redis-timeout-ms", "5000"];
    let a = spawn_node(&database, &redis, "node-a", &flags).await;
    let b = spawn_node(&database, &redis, "node-b", &flags).await;
    let session = a.user("ann").await;
    let rows: Vec<serde_json::Value> = (0..50)
        .map(|n| {
            serde_json::json!({"timestamp": "2026-11-01T12:00:00Z", "model": "gpt-4o", "input_tokens": 1000 + n,
                               "output_tokens": 300, "feature": "search", "latency_ms": 850})
        })
        .collect();
    let body = serde_json::to_vec(&rows).unwrap();
    const KEYS: usize = 12;
    for n in 0..KEYS {
        // A client that sent its upload twice at once, the load balancer giving one to each node.
        let key = format!("nightly-{n}");
        let keys: &[&[u8]] = &[key.as_bytes()];
        let (on_a, on_b) = tokio::join!(
            upload_with_keys(&a, &session.access_token, keys, "application/json", body.clone()),
            upload_with_keys(&b, &session.access_token, keys, "application/json", body.clone()),
        );
        let answers = [on_a, on_b];
        let stored = answers
            .iter()
            .filter(|(status, replayed, _)| *status == 200 && replayed.is_none());
        assert_eq!(
            stored.count(),
            1,
            "one of the two stores the upload of {key}: {answers:?}"
        );
        for (status, replayed, answer) in &answers {
            match (status, replayed.as_deref()) {
                (200, None | Some("true")) => {
                    assert_eq!(answer, &serde_json::json!({"accepted": 50}), "{answers:?}");
                }
                (409, None) => assert!(
                    answer["error"]["message"]
                        .as_str()
                        .unwrap()
                        .starts_with("An upload with this Idempotency-Key is still being stored"),
                    "{answers:?}"
                ),
                _ => panic!("the upload of {key} was answered {status}: {answers:?}"),
            }
        }
    }
    let store = switchboard_clickhouse::ClickHouseAnalytics::connect(&analytics, Default::default())
        .await
        .unwrap();
    assert_eq!(
        store.workload_event_count(&session.user_id).await.unwrap(),
        (KEYS * rows.len()) as u64,
        "each upload counted once"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
