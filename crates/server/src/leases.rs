//! A node's lease: a node of a cluster renews its lease in PostgreSQL every second, to run
//! [`LEASE_TTL`] on (by the database's clock), and every two seconds takes over, and closes as
//! `interrupted`, the running runs of nodes whose lease ran out (`PgStore::claim_runs`: each run
//! taken by one node only, however many look at once). At its start a node closes its own runs
//! from before it started again, and refuses to start under the name of a live node.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use switchboard_postgres::PgStore;
use switchboard_store::{RunRecord, StoreError};

use crate::log::EventLog;
use crate::recovery;

/// How long a lease runs after it was renewed: a node gone (killed, cut off) for this long is
/// taken for dead and its runs are closed by the others.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(5);

/// How often a node renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How often a node looks for runs of nodes that are gone.
const CLAIM_EVERY: Duration = Duration::from_secs(2);

/// Runs this node took over and has still to close (closing one failed: it is tried again).
#[derive(Debug, Default)]
struct Taken(Vec<(RunRecord, String)>);

/// Starts node `store.node()`: waits for a lease under its name to run out (a node of that
/// name killed a moment ago), refuses when a live node renews it meanwhile, takes its lease,
/// and closes its own runs from before it started again, and those of nodes that are gone.
pub(crate) async fn join(store: &PgStore, log: &EventLog) -> anyhow::Result<()> {
    let node = store.node().unwrap_or_default().to_owned();
    if let Some(left) = store.lease_left().await? {
        tracing::info!(node = %node, left_ms = left.as_millis() as u64,
            "a lease under this node's name still runs; waiting for it to run out");
        tokio::time::sleep(left + RENEW_EVERY).await;
        if let Some(left) = store.lease_left().await? {
            bail!(
                "the node name {node} is taken by a live node (it renewed its lease, which runs {} ms more): give \
                 this node another --node-id, or start it again once that node has stopped",
                left.as_millis()
            );
        }
    }
    store.renew_lease(LEASE_TTL).await?;
    let mut taken = Taken::default();
    take_over(store, true, &mut taken).await?;
    let closed = close_taken(log, &mut taken).await?;
    if closed > 0 {
        tracing::warn!(runs = closed, node = %node, "closed runs left active by this node's last stop or by nodes that are gone");
    }
    Ok(())
}

/// Renews the lease and closes the runs of nodes that are gone, until the future is dropped.
pub(crate) async fn keep(store: PgStore, log: Arc<EventLog>) {
    let mut renew = tokio::time::interval(RENEW_EVERY);
    let mut claim = tokio::time::interval(CLAIM_EVERY);
    for interval in [&mut renew, &mut claim] {
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut taken = Taken::default();
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = renew.tick() => match store.renew_lease(LEASE_TTL).await {
                Ok(()) => renewed = tokio::time::Instant::now(),
                Err(error) => {
                    let since = renewed.elapsed();
                    if since >= LEASE_TTL {
                        tracing::error!(%error, since_ms = since.as_millis() as u64,
                            "this node's lease ran out: other nodes may close its runs");
                    } else {
                        tracing::warn!(%error, "cannot renew this node's lease; trying again in a second");
                    }
                }
            },
            _ = claim.tick() => {
                if let Err(error) = take_over(&store, false, &mut taken).await {
                    tracing::warn!(%error, "cannot look for runs of nodes that are gone; trying again");
                }
                match close_taken(&log, &mut taken).await {
                    Ok(0) => {}
                    Ok(closed) => tracing::warn!(runs = closed, "closed the runs of nodes that are gone"),
                    Err(error) => tracing::warn!(%error, runs = taken.0.len(), "cannot close runs of nodes that are gone; trying again"),
                }
            }
        }
    }
}

/// Takes over the runs of nodes that are gone (and this node's own from before, when `own`),
/// each with the sentence its closing gives.
async fn take_over(store: &PgStore, own: bool, taken: &mut Taken) -> Result<(), StoreError> {
    let me = store.node().unwrap_or_default();
    for (run, was) in store.claim_runs(own).await? {
        let why = match was {
            Some(node) if node == me => format!("this node ({node}) stopped while the run was active"),
            Some(node) => format!("the node that ran it ({node}) stopped answering"),
            None => "the server that ran it stopped".to_owned(),
        };
        taken.0.push((run, why));
    }
    Ok(())
}

/// Closes the runs taken over, the first failure leaving the rest for the next try; how many
/// were closed.
async fn close_taken(log: &EventLog, taken: &mut Taken) -> Result<usize, StoreError> {
    let mut closed = 0;
    while let Some((run, why)) = taken.0.first() {
        match recovery::close_runs(log, std::slice::from_ref(run), why).await {
            Ok(()) => closed += 1,
            // Another node took it over since (this node could not renew its lease for that
            // long): closing it is that node's now.
            Err(StoreError::Conflict(reason)) => {
                tracing::warn!(run_id = %run.id, %reason, "a run taken over is another node's now; that node closes it");
            }
            Err(error) => return Err(error),
        }
        taken.0.remove(0);
    }
    Ok(closed)
}
