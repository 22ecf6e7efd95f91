//! [`Grouped`]: requests served in groups, the requests that arrive while one group is served
//! forming the next (group commit). Many users sending at once then wait for a few commits or
//! queries, not for one each; one user alone waits for one, as without it.

use std::future::Future;
use std::sync::{Arc, Mutex};

use switchboard_protocol::TierTimes;
use tokio::sync::oneshot;

/// A queue of requests `I`, each answered `O`, served a group at a time by one task at most.
pub struct Grouped<I, O> {
    state: Arc<Mutex<State<I, O>>>,
    /// The most requests one group holds.
    most: usize,
}

impl<I, O> Clone for Grouped<I, O> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            most: self.most,
        }
    }
}

impl<I, O> std::fmt::Debug for Grouped<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grouped")
            .field("most", &self.most)
            .finish_non_exhaustive()
    }
}

/// A request waiting: what it asks, where its answer goes, and the times of the run it is for.
type Waiting<I, O> = (I, oneshot::Sender<O>, Option<TierTimes>);

struct State<I, O> {
    pending: Vec<Waiting<I, O>>,
    serving: bool,
}

/// The server of a group stopped (it panicked) before it answered the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server of the request's group stopped before it answered")]
pub struct Stopped;

impl<I: Send + 'static, O: Send + 'static> Grouped<I, O> {
    /// A queue whose groups hold up to `most` requests (at least one).
    pub fn new(most: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                pending: Vec::new(),
                serving: false,
            })),
            most: most.max(1),
        }
    }

    /// Queues `request` and waits for its answer. When no group is being served, a task is
    /// started that serves groups with `serve` until none is left: `serve` gets the requests of
    /// a group in the order they came and answers each, in that order (a request it leaves
    /// unanswered is told [`Stopped`]). The task runs on when the caller stops waiting, so a
    /// request once queued is served; the caller may bound its own wait. The time the group's
    /// tier operations took counts for the run of each request in it (its [`TierTimes`]):
    /// each waited for all of them.
    pub async fn submit<S, F>(&self, request: I, serve: S) -> Result<O, Stopped>
    where
        S: Fn(Vec<I>) -> F + Send + 'static,
        F: Future<Output = Vec<O>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.pending.push((request, reply, TierTimes::current()));
            !std::mem::replace(&mut state.serving, true)
        };
        if start {
            let (state, most) = (Arc::clone(&self.state), self.most);
            tokio::spawn(serve_all(state, most, serve));
        }
        answer.await.map_err(|_| Stopped)
    }
}

/// Serves the queued requests a group at a time until none is left.
async fn serve_all<I, O, S, F>(state: Arc<Mutex<State<I, O>>>, most: usize, serve: S)
where
    S: Fn(Vec<I>) -> F,
    F: Future<Output = Vec<O>>,
{
    /// If the server panics (or its task is dropped, with its runtime): the requests waiting
    /// behind it are told at once (their senders dropped) instead of waiting for the next
    /// request to start a server, and the next request starts one again.
    struct Serving<'a, I, O> {
        state: &'a Mutex<State<I, O>>,
        ended: bool,
    }
    impl<I, O> Drop for Serving<'_, I, O> {
        fn drop(&mut self) {
            if !self.ended {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                state.serving = false;
                state.pending.clear();
            }
        }
    }
    let mut serving = Serving {
        state: &state,
        ended: false,
    };
    loop {
        let group = {
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            if state.pending.is_empty() {
                state.serving = false;
                serving.ended = true;
                return;
            }
            let take = state.pending.len().min(most);
            let rest = state.pending.split_off(take);
            std::mem::replace(&mut state.pending, rest)
        };
        let mut requests = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for (request, reply, times) in group {
            requests.push(request);
            waiting.push((reply, times));
        }
        let spent = TierTimes::default();
        let started = tokio::time::Instant::now();
        let answers = spent.clone().scope(serve(requests)).await;
        let wall = started.elapsed();
        for ((reply, times), answer) in waiting.into_iter().zip(answers) {
            if let Some(times) = times {
                times.add_all(&spent, wall);
            }
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_that_come_while_a_group_is_served_form_the_next_group() {
        let grouped: Grouped<u32, u32> = Grouped::new(100);
        let (release, released) = tokio::sync::watch::channel(false);
        let groups = Arc::new(Mutex::new(Vec::new()));
        let serve = {
            let groups = Arc::clone(&groups);
            move |group: Vec<u32>| {
                let (groups, mut released) = (Arc::clone(&groups), released.clone());
                async move {
                    groups.lock().unwrap().push(group.clone());
                    // The first group waits until the others are queued.
                    let _ = released.wait_for(|r| *r).await;
                    group.into_iter().map(|n| n * 10).collect()
                }
            }
        };
        let first = tokio::spawn({
            let (grouped, serve) = (grouped.clone(), serve.clone());
            async move { grouped.submit(1, serve).await }
        });
        while groups.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=4)
            .map(|n| {
                let (grouped, serve) = (grouped.clone(), serve.clone());
                tokio::spawn(async move { grouped.submit(n, serve).await })
            })
            .collect();
        while grouped.state.lock().unwrap().pending.len() < 3 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(10));
        for (task, n) in rest.into_iter().zip(2..) {
            assert_eq!(task.await.unwrap(), Ok(n * 10));
        }
        assert_eq!(*groups.lock().unwrap(), vec![vec![1], vec![2, 3, 4]]);
    }

    #[tokio::test]
    async fn a_group_holds_at_most_its_limit_and_the_rest_follow_in_order() {
        let grouped: Grouped<u32, u32> = Grouped::new(2);
        let groups = Arc::new(Mutex::new(Vec::new()));
        // Queued before any server runs: the first request starts it after the rest are in.
        let tasks: Vec<_> = (1..=5)
            .map(|n| {
                let (grouped, groups) = (grouped.clone(), Arc::clone(&groups));
                async move {
                    grouped
                        .submit(n, move |group: Vec<u32>| {
                            let groups = Arc::clone(&groups);
                            async move {
                                groups.lock().unwrap().push(group.clone());
                                group
                            }
                        })
                        .await
                }
            })
            .collect();
        // Polled together on this task: all are queued before the server, a spawned task, runs.
        let answers = futures_util::future::join_all(tasks).await;
        assert_eq!(answers, (1..=5).map(Ok).collect::<Vec<_>>());
        let groups = groups.lock().unwrap().clone();
        assert!(groups.iter().all(|g| g.len() <= 2), "{groups:?}");
        assert_eq!(groups.concat(), vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_server_that_panics_tells_its_group_and_the_next_request_starts_a_new_one() {
        let grouped: Grouped<u32, u32> = Grouped::new(10);
        let calls = Arc::new(AtomicUsize::new(0));
        let serve = {
            let calls = Arc::clone(&calls);
            move |group: Vec<u32>| {
                let calls = Arc::clone(&calls);
                async move {
                    if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("the first group fails");
                    }
                    group
                }
            }
        };
        assert_eq!(grouped.submit(1, serve.clone()).await, Err(Stopped));
        assert_eq!(grouped.submit(2, serve).await, Ok(2));
    }

    #[tokio::test]
    async fn a_request_left_unanswered_is_told_the_server_stopped() {
        let grouped: Grouped<u32, u32> = Grouped::new(10);
        let answer = grouped.submit(1, |_group: Vec<u32>| async { Vec::new() }).await;
        assert_eq!(answer, Err(Stopped));
    }

    #[tokio::test(start_paused = true)]
    async fn each_run_in_a_group_is_told_the_time_of_the_group_s_tier_operations() {
        use switchboard_protocol::{Tier, TierClock};
        let grouped: Grouped<u32, u32> = Grouped::new(10);
        let clock = TierClock::new(Tier::Postgres);
        let (release, released) = tokio::sync::watch::channel(false);
        let serve = move |group: Vec<u32>| {
            let (clock, mut released) = (clock.clone(), released.clone());
            async move {
                let _ = released.wait_for(|r| *r).await;
                let commit = async {
                    tokio::time::sleep(std::time::Duration::from_millis(40)).await;
                    Ok::<_, ()>(())
                };
                clock.time("commit", commit, |_| true).await.unwrap();
                group
            }
        };
        let (first, second) = (TierTimes::default(), TierTimes::default());
        let a = tokio::spawn(first.clone().scope({
            let (grouped, serve) = (grouped.clone(), serve.clone());
            async move { grouped.submit(1, serve).await }
        }));
        let b = tokio::spawn(second.clone().scope({
            let (grouped, serve) = (grouped.clone(), serve.clone());
            async move { grouped.submit(2, serve).await }
        }));
        // Outside any run: served, counted for nobody.
        let c = tokio::spawn({
            let grouped = grouped.clone();
            async move { grouped.submit(3, serve).await }
        });
        tokio::task::yield_now().await;
        release.send(true).unwrap();
        assert_eq!(
            (a.await.unwrap(), b.await.unwrap(), c.await.unwrap()),
            (Ok(1), Ok(2), Ok(3))
        );
        // However the requests were grouped, each run waited for one commit of 40 ms.
        for times in [first, second] {
            assert_eq!(times.of(Tier::Postgres), (std::time::Duration::from_millis(40), 1));
        }
    }
}
