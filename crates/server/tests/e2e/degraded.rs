//! A store that stops answering: runs still end by their limits, their users are told in a
//! sentence naming the tier and the wait, and once the store answers again everything comes
//! through, in order, once.

use std::time::Duration;

use switchboard_protocol::{Control, ServerFrame};

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn a_run_that_ends_while_the_store_hangs_is_told_at_once_and_shown_whole_once_the_store_answers() {
    let app = spawn_app_with(|c| c.model_latency = Duration::from_millis(300)).await;
    let session = app.user("stalled").await;
    let mut socket = app.connect(&session).await;
    let accepted = send(&mut socket, "where does my money go?").await;
    app.store.set_hanging(true);
    let hung = tokio::time::Instant::now();

    // Whatever was stored before the store hung arrives; then, once the run has ended, the
    // notice of its end.
    let mut events = Vec::new();
    let notice = loop {
        match next(&mut socket).await {
            ServerFrame::Event(event) => events.push(event),
            ServerFrame::Control(frame) => match frame.body {
                Control::StoreDelayed(notice) => break notice,
                other => panic!("unexpected {other:?}"),
            },
        }
    };
    assert_eq!(
        (
            &notice.run_id,
            &notice.thread_id,
            notice.status.as_str(),
            notice.tier.as_str()
        ),
        (&accepted.run_id, &accepted.thread_id, "completed", "sqlite")
    );
    assert!(
        notice.message.starts_with("The run finished after ")
            && notice.message.contains("but SQLite has not answered for ")
            && notice.message.ends_with("will be shown as soon as SQLite answers."),
        "{}",
        notice.message
    );
    let told = hung.elapsed();
    assert!(
        Duration::from_millis(notice.duration_ms) + Duration::from_secs(1) >= told,
        "told {told:?} after the hang, the run took {} ms",
        notice.duration_ms
    );
    assert!(events.iter().all(|e| !e.is_final()), "the end is not stored yet");

    // The store answers again: the rest of the run follows, in order, each event once.
    app.store.set_hanging(false);
    events.extend(events_until_final(&mut socket, &accepted.run_id).await);
    let seqs = seqs(&events);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gapless, no duplicate"
    );
    assert!(events.last().unwrap().is_final());
}
