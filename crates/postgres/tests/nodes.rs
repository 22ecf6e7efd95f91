//! Nodes of a cluster on one database: leases, and the runs of nodes that are gone taken over
//! once. Real clock and real PostgreSQL: a lease of 0 ms is one that ran out; no test sleeps.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{EventPayload, RunId, RunStatus, ThreadId, UserId};
use switchboard_store::testsuite::{append, entry, finished, new_message, started};
use switchboard_store::{RunState, Store, StoreError};

const LIVE: Duration = Duration::from_secs(60);
const GONE: Duration = Duration::ZERO;

async fn node(url: &str, name: &str) -> PgStore {
    PgStore::connect(url, PgOptions::default())
        .await
        .unwrap()
        .for_node(name)
}

/// `count` runs accepted by `store`, running.
async fn runs_of(store: &PgStore, count: usize) -> Vec<RunId> {
    let user = UserId::generate();
    let mut runs = Vec::new();
    for n in 0..count {
        let accepted = store
            .accept_message(new_message(&user, None, &format!("question {n}"), None))
            .await
            .unwrap();
        runs.push(accepted.run_id);
    }
    runs
}

fn ids(claimed: &[(switchboard_store::RunRecord, Option<String>)]) -> HashSet<RunId> {
    claimed.iter().map(|(run, _)| run.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runs_of_a_node_whose_lease_ran_out_are_taken_once_and_a_live_nodes_never() {
    let url = support::fresh_database().await;
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    a.renew_lease(LIVE).await.unwrap();
    b.renew_lease(LIVE).await.unwrap();
    let runs_a = runs_of(&a, 3).await;
    let runs_b = runs_of(&b, 2).await;
    assert!(
        b.claim_runs(false).await.unwrap().is_empty(),
        "A is alive: nothing of it is taken"
    );
    assert!(a.claim_runs(false).await.unwrap().is_empty(), "nor of B, nor A's own");

    // A's lease runs out: five survivors look at once; each of A's runs goes to one of them.
    a.renew_lease(GONE).await.unwrap();
    let mut survivors = Vec::new();
    for n in 0..5 {
        let survivor = node(&url, &format!("node-s{n}")).await;
        survivor.renew_lease(LIVE).await.unwrap();
        survivors.push(survivor);
    }
    let claims = futures_util::future::join_all(survivors.iter().map(|s| s.claim_runs(false))).await;
    let mut taken: Vec<RunId> = Vec::new();
    for claim in claims {
        let claim = claim.unwrap();
        assert!(
            claim.iter().all(|(_, was)| was.as_deref() == Some("node-a")),
            "{claim:?}"
        );
        taken.extend(ids(&claim));
    }
    taken.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let mut expected = runs_a.clone();
    expected.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    assert_eq!(taken, expected, "each of A's runs taken exactly once, none of B's");
    for survivor in &survivors {
        assert!(
            survivor.claim_runs(false).await.unwrap().is_empty(),
            "taken runs are a live node's"
        );
    }
    assert!(b.claim_runs(false).await.unwrap().is_empty());
    for run in runs_b {
        let record = b.run(&run_user(&b, &run).await, &run).await.unwrap().unwrap();
        assert_eq!(record.state, RunState::Running, "B's runs are left to B");
    }
}

/// The user of `run` (read back through the store's own queries).
async fn run_user(store: &PgStore, run: &RunId) -> UserId {
    for record in store.running_runs().await.unwrap() {
        if &record.id == run {
            return record.user_id;
        }
    }
    panic!("{run} is not running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_again_takes_its_own_runs_and_finished_runs_are_never_taken() {
    let url = support::fresh_database().await;
    let before = node(&url, "node-a").await;
    before.renew_lease(LIVE).await.unwrap();
    let runs = runs_of(&before, 2).await;
    // One of them ends.
    let user = run_user(&before, &runs[0]).await;
    let done = &runs[0];
    let record = before.run(&user, done).await.unwrap().unwrap();
    append(
        &before,
        entry(
            &user,
            done,
            &record.thread_id,
            finished(RunStatus::Completed, Some("done")),
            Some("done"),
        ),
    )
    .await;

    // The same name, started again (a process of its own): its lease is live, so a second
    // process under the name is told so; its own runs are taken only when asked for.
    let again = node(&url, "node-a").await;
    assert!(again.lease_left().await.unwrap().is_some_and(|left| left <= LIVE));
    assert!(
        again.claim_runs(false).await.unwrap().is_empty(),
        "its own runs, without `own`"
    );
    let claimed = again.claim_runs(true).await.unwrap();
    assert_eq!(ids(&claimed), HashSet::from([runs[1].clone()]), "the running one only");
    assert_eq!(claimed[0].1.as_deref(), Some("node-a"));

    // Its lease given up, its name is free.
    again.drop_lease().await.unwrap();
    assert_eq!(again.lease_left().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_no_node_are_taken_by_the_first_node_that_looks() {
    let url = support::fresh_database().await;
    // A server alone (no node) accepted it, then the database became a cluster's.
    let alone = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let runs = runs_of(&alone, 1).await;
    let a = node(&url, "node-a").await;
    a.renew_lease(LIVE).await.unwrap();
    let claimed = a.claim_runs(false).await.unwrap();
    assert_eq!(ids(&claimed), HashSet::from([runs[0].clone()]));
    assert_eq!(claimed[0].1, None);
    // A store of no node keeps no lease.
    assert!(alone.renew_lease(LIVE).await.is_err());
}

/// How many of `run`'s stored events are final.
async fn finals(store: &PgStore, user: &UserId, run: &RunId) -> usize {
    store
        .run_events(user, run)
        .await
        .unwrap()
        .iter()
        .filter(|event| matches!(&event.payload, EventPayload::AgentCompleted(done) if done.is_final))
        .count()
}

/// `run` (of `store`'s runs) and its user and thread.
async fn running(store: &PgStore, run: &RunId) -> (UserId, ThreadId) {
    let user = run_user(store, run).await;
    let record = store.run(&user, run).await.unwrap().unwrap();
    (user, record.thread_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_runs_were_taken_over_while_it_was_cut_off_stores_nothing_of_them_after() {
    let url = support::fresh_database().await;
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    a.renew_lease(LIVE).await.unwrap();
    b.renew_lease(LIVE).await.unwrap();
    let runs = runs_of(&a, 2).await;
    let (taken, kept) = (&runs[0], &runs[1]);
    let (user, thread) = running(&a, taken).await;
    append(&a, entry(&user, taken, &thread, started(), None)).await;

    // A cannot reach the database for longer than its lease: B takes its runs over and closes
    // the first.
    a.renew_lease(GONE).await.unwrap();
    assert_eq!(ids(&b.claim_runs(false).await.unwrap()), runs.iter().cloned().collect());
    let interrupted = entry(&user, taken, &thread, finished(RunStatus::Interrupted, None), None);
    append(&b, interrupted).await;

    // A is back, and its run ends (as it believes): nothing of it is stored, and it is told why.
    let late = a
        .append_events(&[entry(
            &user,
            taken,
            &thread,
            finished(RunStatus::Completed, Some("late")),
            Some("late"),
        )])
        .await;
    let Err(StoreError::Conflict(reason)) = late else {
        panic!("A's late end was not refused: {late:?}");
    };
    assert!(
        reason.contains(taken.as_str()) && reason.contains("no longer this node's"),
        "{reason}"
    );
    assert_eq!(finals(&b, &user, taken).await, 1, "one final event: B's");
    let record = b.run(&user, taken).await.unwrap().unwrap();
    assert_eq!(record.state, RunState::Finished(RunStatus::Interrupted));
    // Nor is anything of a batch that holds an event of a run taken over (all or nothing); nor
    // a run B has not closed yet: it is B's.
    let (kept_user, kept_thread) = running(&b, kept).await;
    let mixed = [
        entry(&kept_user, kept, &kept_thread, started(), None),
        entry(&user, taken, &thread, started(), None),
    ];
    assert!(matches!(a.append_events(&mixed).await, Err(StoreError::Conflict(_))));
    assert!(matches!(
        a.append_events(&mixed[..1]).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(
        b.run_events(&kept_user, kept).await.unwrap().is_empty(),
        "nothing of A's stored"
    );
    // B, whose runs they are, stores them.
    assert_eq!(b.append_events(&mixed[..1]).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_again_under_a_nodes_name_fences_the_one_before() {
    let url = support::fresh_database().await;
    let before = node(&url, "node-a").await;
    before.renew_lease(LIVE).await.unwrap();
    let runs = runs_of(&before, 1).await;
    let (user, thread) = running(&before, &runs[0]).await;
    let again = node(&url, "node-a").await;
    assert_eq!(
        ids(&again.claim_runs(true).await.unwrap()),
        HashSet::from([runs[0].clone()])
    );
    let end = entry(
        &user,
        &runs[0],
        &thread,
        finished(RunStatus::Completed, Some("late")),
        Some("late"),
    );
    assert!(matches!(
        before.append_events(std::slice::from_ref(&end)).await,
        Err(StoreError::Conflict(_))
    ));
    let interrupted = entry(&user, &runs[0], &thread, finished(RunStatus::Interrupted, None), None);
    append(&again, interrupted).await;
    assert_eq!(finals(&again, &user, &runs[0]).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ending_on_its_node_while_another_takes_it_over_gets_one_final_event() {
    let url = support::fresh_database().await;
    let (a, b) = (node(&url, "node-a").await, node(&url, "node-b").await);
    b.renew_lease(LIVE).await.unwrap();
    let runs = runs_of(&a, 20).await;
    a.renew_lease(GONE).await.unwrap();
    let mut users = Vec::new();
    for run in &runs {
        users.push(running(&a, run).await);
    }
    // A ends each run while B, which finds A's lease run out, takes them over and closes them
    // (from the moment A's first end is stored, so that the two overlap): each run is ended by
    // one of them, never both.
    let (first_stored, mut a_storing) = tokio::sync::mpsc::unbounded_channel();
    let ends = runs.iter().zip(&users).map(|(run, (user, thread))| {
        let (a, first_stored) = (a.clone(), first_stored.clone());
        let end = entry(
            user,
            run,
            thread,
            finished(RunStatus::Completed, Some("done")),
            Some("done"),
        );
        tokio::spawn(async move {
            let stored = a.append_events(&[end]).await.is_ok();
            let _ = first_stored.send(());
            stored
        })
    });
    let ends: Vec<_> = ends.collect();
    let takeover = async {
        a_storing.recv().await;
        let mut closed = Vec::new();
        loop {
            let claimed = b.claim_runs(false).await.unwrap();
            if claimed.is_empty() {
                // Nothing taken: done once none of A's runs is running (a run A is ending is
                // locked, and passed over, until A's end is stored).
                let still = b.running_runs().await.unwrap();
                if still.iter().all(|record| !runs.contains(&record.id)) {
                    break;
                }
            }
            for (record, _) in claimed {
                let end = entry(
                    &record.user_id,
                    &record.id,
                    &record.thread_id,
                    finished(RunStatus::Interrupted, None),
                    None,
                );
                b.append_events(&[end]).await.unwrap();
                closed.push(record.id);
            }
        }
        closed
    };
    let (stored_on_a, closed_by_b) = tokio::join!(futures_util::future::try_join_all(ends), takeover);
    let stored_on_a = stored_on_a.unwrap();
    for (n, (run, (user, _))) in runs.iter().zip(&users).enumerate() {
        assert_eq!(finals(&b, user, run).await, 1, "{run}: exactly one final event");
        assert_ne!(
            stored_on_a[n],
            closed_by_b.contains(run),
            "{run}: ended by A or by B, not both"
        );
    }
}
