//! Nodes of a cluster on one database: leases, and the runs of nodes that are gone taken over
//! once. Real clock and real PostgreSQL: a lease of 0 ms is one that ran out; no test sleeps.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use switchboard_postgres::{PgOptions, PgStore};
use switchboard_protocol::{RunId, RunStatus, UserId};
use switchboard_store::testsuite::{append, entry, finished, new_message};
use switchboard_store::{RunState, Store};

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
