//! `switchboard-redis` against a real Redis server (`SWITCHBOARD_TEST_REDIS_URL`, set by
//! `scripts/test`), made slow or absent through `switchboard-faultproxy`. Real clock: the server
//! is another process.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_faultproxy::{Fault, FaultProxy};
use switchboard_redis::{Incoming, Pushed, Redis, RedisOptions, connect};
use switchboard_store::{StoreError, Tier};

fn server_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "SWITCHBOARD_TEST_REDIS_URL is not set: run the tests through scripts/test, which starts a \
             throw-away Redis server and sets it (e.g. redis://127.0.0.1:PORT/)"
        )
    })
}

fn server_addr() -> SocketAddr {
    let url = server_url();
    let rest = url.trim_start_matches("redis://");
    let host_port = rest.split('/').next().unwrap();
    host_port.parse().unwrap()
}

fn channel() -> String {
    format!("test:{}", uuid::Uuid::new_v4().simple())
}

/// The next message, skipping confirmations; fails after 10 s (a lost message, not a slow one).
async fn next_message(incoming: &mut Incoming) -> (String, Vec<u8>) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), incoming.next()).await {
            Ok(Some(Pushed::Message { channel, payload })) => return (channel, payload),
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscriber is gone"),
            Err(_) => panic!("no message within 10 s"),
        }
    }
}

/// Waits until `incoming` says `what` happened, skipping anything else.
async fn until(incoming: &mut Incoming, what: impl Fn(&Pushed) -> bool) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), incoming.next()).await {
            Ok(Some(pushed)) if what(&pushed) => return,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the subscriber is gone"),
            Err(_) => panic!("not within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_published_in_one_call_arrive_in_order_on_their_channels_only() {
    let (redis, subscriber, mut incoming) = connect(&server_url(), RedisOptions::default()).await.unwrap();
    let (mine, other) = (channel(), channel());
    subscriber.subscribe(&mine).await.unwrap();
    let messages: Vec<(String, Vec<u8>)> = (0..50u32)
        .map(|n| {
            let channel = if n % 2 == 0 { &mine } else { &other };
            (channel.clone(), n.to_be_bytes().to_vec())
        })
        .collect();
    redis.publish(&messages).await.unwrap();
    for n in (0..50u32).step_by(2) {
        assert_eq!(
            next_message(&mut incoming).await,
            (mine.clone(), n.to_be_bytes().to_vec())
        );
    }
    subscriber.unsubscribe(&mine).await.unwrap();
    redis.publish(&[(mine.clone(), b"after".to_vec())]).await.unwrap();
    subscriber.subscribe(&other).await.unwrap();
    redis.publish(&[(other.clone(), b"last".to_vec())]).await.unwrap();
    assert_eq!(
        next_message(&mut incoming).await,
        (other, b"last".to_vec()),
        "nothing of a channel left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_told_and_comes_back_subscribed_again() {
    let proxy = FaultProxy::start(server_addr()).await.unwrap();
    let url = format!("redis://{}/", proxy.addr());
    let (redis, subscriber, mut incoming) = connect(&url, RedisOptions::default()).await.unwrap();
    let direct = connect(&server_url(), RedisOptions::default()).await.unwrap().0;
    let mine = channel();
    subscriber.subscribe(&mine).await.unwrap();
    proxy.cut_all();
    until(&mut incoming, |p| *p == Pushed::Disconnected).await;
    until(&mut incoming, |p| *p == Pushed::Subscribed(mine.clone())).await;
    direct.publish(&[(mine.clone(), b"again".to_vec())]).await.unwrap();
    assert_eq!(next_message(&mut incoming).await, (mine, b"again".to_vec()));
    redis.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_server_times_out_within_the_deadline_and_serves_again_after() {
    let proxy = FaultProxy::start(server_addr()).await.unwrap();
    let url = format!("redis://{}/", proxy.addr());
    let timeout = Duration::from_millis(300);
    let (redis, _subscriber, _incoming) = connect(&url, RedisOptions { timeout }).await.unwrap();
    proxy.set(Fault::Stall);
    let error = redis.ping().await.unwrap_err();
    assert_eq!(
        error,
        StoreError::TimedOut {
            tier: Tier::Redis,
            after: timeout
        }
    );
    proxy.set(Fault::None);
    // The connection the stall held may be dropped and made anew: a few tries.
    let mut answered = false;
    for _ in 0..20 {
        if redis.ping().await.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(answered, "Redis answers again once the stall ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_to_connect_names_redis_and_the_address_never_the_password() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = connect(&format!("redis://:s3cret@{closed}/2"), RedisOptions::default())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::Unavailable { tier: Tier::Redis, .. }),
        "{error:?}"
    );
    assert!(
        message.contains("Redis") && message.contains(&format!("{closed}/2")),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_garbage_is_not_taken_for_redis() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let error = connect(&format!("redis://{addr}/"), RedisOptions::default())
        .await
        .unwrap_err();
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
}

/// A `Redis` is cheap to clone and every clone works (they share the connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_the_connection() {
    let (redis, _subscriber, _incoming) = connect(&server_url(), RedisOptions::default()).await.unwrap();
    let clones: Vec<Redis> = (0..8).map(|_| redis.clone()).collect();
    for clone in clones {
        clone.ping().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_are_taken_up_to_the_limit_given_back_and_gone_once_out_of_time() {
    let (redis, _subscriber, _incoming) = connect(&server_url(), RedisOptions::default()).await.unwrap();
    let key = channel();
    let minute = Duration::from_secs(60);
    assert_eq!(redis.take_place(&key, 2, minute, "a").await.unwrap(), None);
    assert_eq!(redis.take_place(&key, 2, minute, "b").await.unwrap(), None);
    let wait = redis.take_place(&key, 2, minute, "c").await.unwrap().expect("full");
    assert!(wait <= minute && wait > Duration::from_secs(50), "{wait:?}");
    assert!(
        redis.renew_place(&key, minute, "b").await.unwrap(),
        "a place held is renewed"
    );
    assert!(
        !redis.renew_place(&key, minute, "nobody").await.unwrap(),
        "one not held is not"
    );
    redis.give_back(&key, "a").await.unwrap();
    assert_eq!(
        redis.take_place(&key, 2, minute, "c").await.unwrap(),
        None,
        "a place given back is free"
    );
    redis.forget(&key).await.unwrap();

    // Places taken at once from many tasks: exactly the limit get one.
    let key = channel();
    let tries = (0..20).map(|n| {
        let (redis, key) = (redis.clone(), key.clone());
        async move { redis.take_place(&key, 5, minute, &n.to_string()).await.unwrap() }
    });
    let taken = futures_util::future::join_all(tries)
        .await
        .iter()
        .filter(|w| w.is_none())
        .count();
    assert_eq!(taken, 5);

    // A place of a millisecond is gone soon after: the set is never full for long.
    let key = channel();
    assert_eq!(
        redis
            .take_place(&key, 1, Duration::from_millis(1), "brief")
            .await
            .unwrap(),
        None
    );
    let mut tries = 0;
    while redis.take_place(&key, 1, minute, "next").await.unwrap().is_some() {
        tries += 1;
        assert!(tries < 100_000, "a place out of time is still held");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_set_of_held_places_first_loses_the_places_of_holders_that_are_gone() {
    let (redis, _subscriber, _incoming) = connect(&server_url(), RedisOptions::default()).await.unwrap();
    let (key, alive) = (channel(), format!("{}:alive:", channel()));
    let minute = Duration::from_secs(60);
    redis.put(&format!("{alive}live"), "1", minute).await.unwrap();
    let take = |member: &'static str, holder: &'static str| {
        let (redis, key, alive) = (redis.clone(), key.clone(), alive.clone());
        async move {
            redis
                .take_held_place(&key, 3, minute, member, (&alive, holder))
                .await
                .unwrap()
        }
    };
    assert_eq!(take("dead/1", "dead").await, None);
    assert_eq!(take("live/1", "live").await, None);
    assert_eq!(take("me/1", "me").await, None);
    // Full: the places of `dead` (no key) go; `live`'s stay, and so do the taker's own.
    assert_eq!(take("me/2", "me").await, None, "the dead holder's place was freed");
    assert!(take("me/3", "me").await.is_some(), "live and own places stay");
    assert!(
        redis.take_place(&key, 3, minute, "counted").await.unwrap().is_some(),
        "a plain take frees nothing"
    );
    // A place without a holder is never taken for one that died.
    let plain = channel();
    assert_eq!(redis.take_place(&plain, 1, minute, "no-holder").await.unwrap(), None);
    assert!(
        redis
            .take_held_place(&plain, 1, minute, "me/1", (&alive, "me"))
            .await
            .unwrap()
            .is_some()
    );
}
