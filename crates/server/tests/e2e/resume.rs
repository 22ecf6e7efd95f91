//! Resume: by `?after_seq` on connect and by the `resume` frame, while runs are active and after
//! they finished, with no gap and no duplicate.

use std::time::Duration;

use switchboard_engine::testkit::{check_gapless, check_run};
use switchboard_protocol::{ClientFrame, Control, Event, Resume, Seq, ServerFrame};

use crate::support::{events_until_final, next, send, spawn_app, spawn_app_with};

async fn resumed(socket: &mut switchboard_client::Socket) -> (u64, u64) {
    match next(socket).await {
        ServerFrame::Control(c) => match c.body {
            Control::Resumed(r) => (r.from_seq.get(), r.to_seq.get()),
            other => panic!("expected resumed, got {other:?}"),
        },
        ServerFrame::Event(e) => panic!("expected resumed, got {}", e.type_name()),
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reconnects_mid_run_gets_the_rest_with_no_gap_and_no_duplicate() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_millis(300)).await;
    let session = app.user("roamer").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "cut costs").await;
    let mut seen: Vec<Event> = Vec::new();
    while seen.len() < 4 {
        if let ServerFrame::Event(e) = next(&mut socket).await {
            seen.push(e);
        }
    }
    drop(socket);
    let last = seen.last().unwrap().seq.get();
    let mut socket = app.client.connect(&session.access_token, Some(last)).await.unwrap();
    next(&mut socket).await; // connection_established
    let (from, to) = resumed(&mut socket).await;
    assert_eq!(from, last);
    assert!(to >= last);
    seen.extend(events_until_final(&mut socket, &accepted.run_id).await);
    check_gapless(&seen).unwrap();
    check_run(&seen).unwrap();
}

#[tokio::test]
async fn replay_racing_live_events_still_delivers_each_event_once_in_order() {
    let app = spawn_app().await;
    let session = app.user("racer").await;
    let mut writer = app.connect(&session).await;
    let runs = [
        send(&mut writer, "one").await,
        send(&mut writer, "two").await,
        send(&mut writer, "three").await,
    ];
    // Connect while the runs are producing events: replay and live events overlap.
    let mut reader = app.client.connect(&session.access_token, Some(0)).await.unwrap();
    next(&mut reader).await;
    resumed(&mut reader).await;
    let mut events: Vec<Event> = Vec::new();
    let mut finals = 0;
    while finals < runs.len() {
        if let ServerFrame::Event(e) = next(&mut reader).await {
            finals += usize::from(e.is_final());
            events.push(e);
        }
    }
    check_gapless(&events).unwrap();
    for run in &runs {
        let of_run: Vec<Event> = events.iter().filter(|e| e.run_id == run.run_id).cloned().collect();
        check_run(&of_run).unwrap();
    }
}

#[tokio::test]
async fn the_resume_frame_replays_from_any_point_after_runs_finished() {
    let app = spawn_app().await;
    let session = app.user("rewind").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "question").await;
    let all = events_until_final(&mut socket, &accepted.run_id).await;
    for after in [0, 3, all.len() as u64] {
        socket
            .send(&ClientFrame::Resume(Resume {
                after_seq: Seq::new(after),
            }))
            .await
            .unwrap();
        let (from, to) = resumed(&mut socket).await;
        assert_eq!((from, to), (after, all.len() as u64));
        let mut replayed = Vec::new();
        while replayed.len() < all.len() - after as usize {
            if let ServerFrame::Event(e) = next(&mut socket).await {
                replayed.push(e);
            }
        }
        assert_eq!(replayed, all[after as usize..]);
    }
    socket.send(&ClientFrame::Ping(Default::default())).await.unwrap();
    assert!(
        matches!(next(&mut socket).await, ServerFrame::Control(c) if matches!(c.body, Control::Pong(_))),
        "nothing more was replayed"
    );
    let (_, page) = app
        .client
        .get("/api/events?after_seq=2&limit=3", Some(&session.access_token))
        .await
        .unwrap();
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [3, 4, 5]);
}
