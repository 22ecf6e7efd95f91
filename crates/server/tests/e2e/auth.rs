//! Sign-in over HTTP and the credentials a socket is accepted with.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::{SECRET, TestApp, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_login_and_refresh_answer_with_the_documented_codes() {
    let app = spawn_app().await;
    let ok = json!({"email": "ann@example.com", "password": "correct horse"});
    let cases: Vec<(&str, Value, u16)> = vec![
        ("/api/auth/register", ok.clone(), 201),
        ("/api/auth/register", ok.clone(), 409),
        (
            "/api/auth/register",
            json!({"email": "ANN@example.com", "password": "another one"}),
            409,
        ),
        (
            "/api/auth/register",
            json!({"email": "not-an-email", "password": "correct horse"}),
            422,
        ),
        (
            "/api/auth/register",
            json!({"email": "bo@example.com", "password": "short"}),
            422,
        ),
        ("/api/auth/register", json!({"email": "bo@example.com"}), 422),
        ("/api/auth/login", ok.clone(), 200),
        (
            "/api/auth/login",
            json!({"email": "ann@example.com", "password": "wrong horse"}),
            401,
        ),
        (
            "/api/auth/login",
            json!({"email": "nobody@example.com", "password": "correct horse"}),
            401,
        ),
        ("/api/auth/refresh", json!({"refresh_token": "garbage"}), 401),
    ];
    for (path, body, status) in cases {
        let (got, answer) = app.client.post(path, None, &body).await.unwrap();
        assert_eq!(got, status, "{path} {body}: {answer}");
        if status >= 400 {
            assert!(
                answer["error"]["code"].is_string() && answer["error"]["message"].is_string(),
                "{answer}"
            );
        }
    }
    let session = app.client.login("ann@example.com", "correct horse").await.unwrap();
    let (status, pair) = app
        .client
        .post(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": session.refresh_token}),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(pair["token_type"], "Bearer");
    assert_eq!(pair["user"]["email"], "ann@example.com");
    let (status, _) = app
        .client
        .post(
            "/api/auth/refresh",
            None,
            &json!({"refresh_token": session.access_token}),
        )
        .await
        .unwrap();
    assert_eq!(status, 401, "an access token does not refresh");
    let (status, body) = app
        .client
        .get("/api/threads", Some(&session.refresh_token))
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "a refresh token is no access token"
    );
    let (status, _) = app
        .client
        .get("/api/threads", Some(&session.access_token))
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn dev_login_exists_only_in_dev_mode() {
    let app = spawn_app_with(|c| c.dev = false).await;
    let (status, body) = app.client.post("/api/auth/dev-login", None, &json!({})).await.unwrap();
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
}

fn token(secret: &str, sub: &str, typ: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": sub, "exp": now + exp_offset, "iat": now - 10, "jti": "j", "typ": typ});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Opens `/ws{query}` with these headers: the selected subprotocol, or the refusal's status and body.
pub(crate) async fn open(base: &str, query: &str, headers: &[(&str, String)]) -> Result<Option<String>, (u16, Value)> {
    let url = format!("{}/ws{query}", base.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).unwrap());
    }
    match tokio_tungstenite::connect_async_with_config(request, None, true).await {
        Ok((_, response)) => Ok(response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned())),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| serde_json::from_slice(b).unwrap())
                .unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("unexpected handshake failure: {other}"),
    }
}

/// A case of the credential table: name, query, headers, and the selected subprotocol or the
/// refusal's status.
type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, Result<Option<String>, u16>);

#[tokio::test]
async fn sockets_open_with_a_subprotocol_token_a_bearer_header_or_a_ticket_and_nothing_else() {
    let app = spawn_app().await;
    let session = app.user("sam").await;
    let base = app.client.base().to_owned();
    let access = session.access_token.clone();
    let user = session.user_id.to_string();
    let (_, ticket) = app
        .client
        .post("/api/ws-ticket", Some(&access), &json!({}))
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap().to_owned();
    let protocol = "sec-websocket-protocol";
    let ok = |p: &str| Ok(Some(p.to_owned()));
    let cases: Vec<Case> = vec![
        (
            "jwt subprotocol with switchboard.v1",
            String::new(),
            vec![(protocol, format!("switchboard.v1, jwt.{access}"))],
            ok("switchboard.v1"),
        ),
        (
            "jwt subprotocol alone",
            String::new(),
            vec![(protocol, format!("jwt.{access}"))],
            ok(&format!("jwt.{access}")),
        ),
        (
            "bearer subprotocol",
            String::new(),
            vec![(protocol, format!("bearer.{access}"))],
            ok(&format!("bearer.{access}")),
        ),
        (
            "Authorization header",
            String::new(),
            vec![("authorization", format!("Bearer {access}"))],
            Ok(None),
        ),
        (
            "header and switchboard.v1",
            String::new(),
            vec![
                ("authorization", format!("Bearer {access}")),
                (protocol, "switchboard.v1".into()),
            ],
            ok("switchboard.v1"),
        ),
        ("a ticket", format!("?ticket={ticket}"), vec![], Ok(None)),
        ("the same ticket again", format!("?ticket={ticket}"), vec![], Err(401)),
        ("a made-up ticket", "?ticket=nope".into(), vec![], Err(401)),
        (
            "a token in the query",
            format!("?token={access}&access_token={access}"),
            vec![],
            Err(401),
        ),
        ("no credential", String::new(), vec![], Err(401)),
        (
            "a malformed token",
            String::new(),
            vec![(protocol, "jwt.not-a-token".into())],
            Err(401),
        ),
        (
            "an expired token",
            String::new(),
            vec![(protocol, format!("jwt.{}", token(SECRET, &user, "access", -5)))],
            Err(401),
        ),
        (
            "a refresh token",
            String::new(),
            vec![(protocol, format!("jwt.{}", session.refresh_token))],
            Err(401),
        ),
        (
            "another server's token",
            String::new(),
            vec![(
                protocol,
                format!(
                    "jwt.{}",
                    token("some-other-secret-that-is-32-chars-long", &user, "access", 600)
                ),
            )],
            Err(401),
        ),
        (
            "a bad Authorization scheme",
            String::new(),
            vec![("authorization", format!("Basic {access}"))],
            Err(401),
        ),
    ];
    for (name, query, headers, expected) in cases {
        let got = open(&base, &query, &headers).await;
        match (got, expected) {
            (Ok(protocol), Ok(expected)) => assert_eq!(protocol, expected, "case: {name}"),
            (Err((status, body)), Err(expected)) => {
                assert_eq!(status, expected, "case: {name}");
                assert_eq!(body["error"]["code"], "unauthorized", "case: {name}: {body}");
            }
            (got, expected) => panic!("case {name}: got {got:?}, expected {expected:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_ticket_expires_after_sixty_seconds() {
    let app = spawn_app().await;
    let session = app.user("tia").await;
    let (_, body) = app
        .client
        .post("/api/ws-ticket", Some(&session.access_token), &json!({}))
        .await
        .unwrap();
    assert_eq!(body["expires_in"], 60);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let query = format!("?ticket={}", body["ticket"].as_str().unwrap());
    assert_eq!(open(app.client.base(), &query, &[]).await.unwrap_err().0, 401);
}

#[tokio::test(start_paused = true)]
async fn an_eleventh_connection_of_a_user_is_refused_until_one_closes() {
    let app = spawn_app().await;
    let session = app.user("many").await;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(app.connect(&session).await);
    }
    let header = vec![("authorization", format!("Bearer {}", session.access_token))];
    let (status, body) = open(app.client.base(), "", &header).await.unwrap_err();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_connections"))
    );
    let other = app.user("other").await;
    app.connect(&other).await;
    sockets.pop().unwrap().close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(open(app.client.base(), "", &header).await.is_ok());
}

/// `POST /api/auth/refresh` with this refresh token: the status and the answer.
async fn refresh(app: &TestApp, refresh_token: &str) -> (u16, Value) {
    app.client
        .post("/api/auth/refresh", None, &json!({ "refresh_token": refresh_token }))
        .await
        .unwrap()
}

/// Asserts a 401 `unauthorized` whose sentence contains `words`.
fn assert_refused(answer: (u16, Value), words: &str) {
    let (status, body) = answer;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(words), "`{message}` does not say `{words}`");
}

#[tokio::test]
async fn a_refresh_token_buys_one_pair_and_using_it_again_revokes_its_whole_chain() {
    let app = spawn_app().await;
    let first = app.client.register("rae@example.com", "correct horse").await.unwrap();
    let (status, second) = refresh(&app, &first.refresh_token).await;
    assert_eq!(status, 200, "{second}");
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(
        second, first.refresh_token,
        "each refresh hands out a new refresh token"
    );
    let (status, third) = refresh(&app, &second).await;
    assert_eq!(status, 200, "the new refresh token buys the next pair: {third}");
    let third = third["refresh_token"].as_str().unwrap().to_owned();

    assert_refused(refresh(&app, &first.refresh_token).await, "it was used before");
    assert_refused(refresh(&app, &third).await, "its sign-in has ended");
    assert_refused(refresh(&app, &second).await, "its sign-in has ended");

    let again = app.client.login("rae@example.com", "correct horse").await.unwrap();
    let (status, body) = refresh(&app, &again.refresh_token).await;
    assert_eq!(status, 200, "a fresh sign-in starts a new chain: {body}");
}

/// The `jti` of a token the server signed (checked with the test server's secret).
fn token_id(token: &str) -> String {
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
    let claims = jsonwebtoken::decode::<Value>(token, &key, &jsonwebtoken::Validation::default()).unwrap();
    claims.claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_refresh_retried_after_its_answer_was_lost_gets_the_newest_token_of_its_chain_again() {
    let app = spawn_app().await;
    let first = app.user("ria").await;
    let (status, lost) = refresh(&app, &first.refresh_token).await;
    assert_eq!(status, 200, "{lost}");
    let lost = lost["refresh_token"].as_str().unwrap().to_owned();

    // The client never saw `lost` (say the answer timed out) and tries again with its token.
    let (status, retried) = refresh(&app, &first.refresh_token).await;
    assert_eq!(status, 200, "a retry within the window is answered: {retried}");
    let retried = retried["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        token_id(&retried),
        token_id(&lost),
        "the retry is told the chain's newest token, not a new one"
    );
    let access = {
        let (status, again) = refresh(&app, &first.refresh_token).await;
        assert_eq!(status, 200, "retrying again changes nothing: {again}");
        again["access_token"].as_str().unwrap().to_owned()
    };
    let (status, body) = app.client.get("/api/threads", Some(&access)).await.unwrap();
    assert_eq!(status, 200, "the retry's access token works: {body}");

    // The chain goes on from the newest token, whichever copy of it is presented.
    let (status, next) = refresh(&app, &retried).await;
    assert_eq!(status, 200, "{next}");
    let next = next["refresh_token"].as_str().unwrap().to_owned();
    // Now the first token is two rotations old: using it is a reuse, and revokes the chain.
    assert_refused(refresh(&app, &first.refresh_token).await, "it was used before");
    assert_refused(refresh(&app, &next).await, "its sign-in has ended");
}

#[tokio::test]
async fn without_a_retry_window_a_spent_refresh_token_revokes_its_chain_at_once() {
    let app = spawn_app_with(|config| config.refresh_retry = Duration::ZERO).await;
    let first = app.user("sid").await;
    let (status, second) = refresh(&app, &first.refresh_token).await;
    assert_eq!(status, 200, "{second}");
    assert_refused(refresh(&app, &first.refresh_token).await, "it was used before");
    let second = second["refresh_token"].as_str().unwrap();
    assert_refused(refresh(&app, second).await, "its sign-in has ended");
}

#[tokio::test]
async fn each_sign_in_starts_a_chain_of_its_own() {
    let app = spawn_app_with(|config| config.refresh_retry = Duration::ZERO).await;
    let (laptop, phone) = (app.user("dee").await, app.user("dee").await);
    assert_eq!(laptop.user_id, phone.user_id);
    assert_eq!(refresh(&app, &laptop.refresh_token).await.0, 200);
    assert_refused(refresh(&app, &laptop.refresh_token).await, "it was used before");
    let (status, body) = refresh(&app, &phone.refresh_token).await;
    assert_eq!(status, 200, "the other sign-in's chain is untouched: {body}");
}

#[tokio::test]
async fn a_token_of_the_wrong_kind_is_refused_in_a_grammatical_sentence() {
    let app = spawn_app().await;
    let session = app.user("kim").await;
    assert_refused(
        refresh(&app, &session.access_token).await,
        "this is not a refresh token",
    );
    let answer = app
        .client
        .get("/api/threads", Some(&session.refresh_token))
        .await
        .unwrap();
    assert_refused(answer, "this is not an access token");
}

#[tokio::test]
async fn a_refresh_token_without_a_known_chain_is_refused_with_a_request_to_sign_in_again() {
    let app = spawn_app().await;
    let session = app.user("lou").await;
    let user = session.user_id.to_string();
    // Signed before refresh tokens were rotated: no `fam` claim.
    let old = token(SECRET, &user, "refresh", 600);
    assert_refused(
        refresh(&app, &old).await,
        "issued before sign-ins were tracked; sign in again",
    );
    // Signed with the right key, but naming a chain this server never started.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"sub": user, "exp": now + 600, "iat": now, "jti": "j1", "typ": "refresh", "fam": "nofamily"});
    let stranger = jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_refused(refresh(&app, &stranger).await, "not known here; sign in again");
    assert_eq!(
        refresh(&app, &session.refresh_token).await.0,
        200,
        "the user's own chain still works"
    );
}

#[tokio::test]
async fn signing_out_revokes_the_chain_of_that_sign_in_only() {
    let app = spawn_app().await;
    let (laptop, phone) = (app.user("sid").await, app.user("sid").await);
    let (status, next) = refresh(&app, &laptop.refresh_token).await;
    assert_eq!(status, 200, "{next}");
    let newest = next["refresh_token"].as_str().unwrap().to_owned();
    let client = &app.client;
    let logout = |token: String| async move {
        client
            .post("/api/auth/logout", None, &json!({ "refresh_token": token }))
            .await
            .unwrap()
    };
    // Any token of the chain ends it, the spent first one too.
    assert_eq!(logout(laptop.refresh_token.clone()).await.0, 204);
    assert_refused(refresh(&app, &newest).await, "its sign-in has ended");
    assert_eq!(logout(newest.clone()).await.0, 204, "signing out twice is no error");
    let (status, body) = refresh(&app, &phone.refresh_token).await;
    assert_eq!(status, 200, "the other sign-in is untouched: {body}");
    for bad in [
        json!({"refresh_token": "garbage"}),
        json!({"refresh_token": laptop.access_token}),
    ] {
        let (status, body) = app.client.post("/api/auth/logout", None, &bad).await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{body}"
        );
    }
    let (status, body) = app.client.post("/api/auth/logout", None, &json!({})).await.unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_request")),
        "{body}"
    );
}
