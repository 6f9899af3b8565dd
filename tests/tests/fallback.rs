//! The HTTP fallback transports, `GET /sse` and `GET /poll`: the same frames, tokens, ACLs,
//! limits, recovery and drain as the WebSocket, with the client's position in a cursor that
//! any replica accepts, so no request needs the replica that served the last one.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::{
    GatewayConfig, PollAnswer, Poller, SseEnd, SseMessage, SseStream, StatusCode, TestGateway,
    TestRedis, TokenBuilder, assert_event, assert_http_error, brief, decode_cursor, eventually,
    get_poll, http_client, metric_value, subscribe_outcome, token,
};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

const NAMESPACES: &str = r#"
[namespaces.default]
history_size = 10000
history_ttl = "10m"
[namespaces.personal]
history_size = 1000
history_ttl = "10m"
[namespaces.secret]
subscribe = "none"
[namespaces.small]
history_size = 5
history_ttl = "10m"
"#;

/// How long a test waits for events that are on their way.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(60);

fn config(redis: &TestRedis) -> GatewayConfig {
    GatewayConfig::new()
        .namespaces_toml(NAMESPACES)
        .redis_url(&redis.url())
}

async fn replicas(redis: &TestRedis, n: usize) -> Vec<TestGateway> {
    join_all((0..n).map(|_| TestGateway::spawn(config(redis)))).await
}

/// `GET /sse` on `gw` for `user` (its token in the query), `channels` each as `channel=`.
fn sse_request(gw: &TestGateway, user: &str, channels: &[&str]) -> reqwest::RequestBuilder {
    let mut query = vec![("token", token(user))];
    for channel in channels {
        query.push(("channel", (*channel).to_owned()));
    }
    http_client()
        .get(format!("{}/sse", gw.public_url()))
        .query(&query)
}

async fn open_sse(request: reqwest::RequestBuilder) -> SseStream {
    match SseStream::open(request).await {
        Ok(stream) => stream,
        Err(refused) => panic!("GET /sse refused: {refused:?}"),
    }
}

/// Opens an SSE stream and reads its head: `connection_established`, then `subscribed`.
/// Returns the stream and both head messages.
async fn sse_with_head(request: reqwest::RequestBuilder) -> (SseStream, SseMessage, SseMessage) {
    let mut stream = open_sse(request).await;
    let established = stream.expect_frame("connection_established").await;
    let subscribed = stream.expect_frame("subscribed").await;
    (stream, established, subscribed)
}

/// Publishes `tick` events with `data` = their sequence number, one request each.
async fn publish_ticks(gw: &TestGateway, channel: &str, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        let reply = gw
            .publish_ok(json!({"channel": channel, "event": "tick", "data": seq}))
            .await;
        assert!(
            reply["offset"].is_u64(),
            "every event gets an offset: {reply}"
        );
    }
}

/// A publisher beside the test: `tick` events `seqs` on `target` (`{"channel":…}` or
/// `{"user":…}`), through `gw`'s admin API, `pause` apart.
fn publish_in_background(
    gw: &TestGateway,
    target: Value,
    seqs: std::ops::RangeInclusive<u64>,
    pause: Duration,
) -> JoinHandle<()> {
    let url = format!("{}/api/publish", gw.admin_url());
    let key = gw.api_key().unwrap().to_owned();
    tokio::spawn(async move {
        let http = http_client();
        for seq in seqs {
            let mut body = target.clone();
            body["event"] = json!("tick");
            body["data"] = json!(seq);
            let response = http
                .post(&url)
                .bearer_auth(&key)
                .json(&body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "publish {seq}");
            tokio::time::sleep(pause).await;
        }
    })
}

async fn join(task: JoinHandle<()>, what: &str) {
    match tokio::time::timeout(EVENTS_TIMEOUT, task).await {
        Err(_) => panic!("{what} did not finish within {EVENTS_TIMEOUT:?}"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("{what} failed: {e}"),
        Ok(Ok(())) => {}
    }
}

/// The offset of an event frame of `channel`, checking that `data` is the offset (the ticks
/// published here start at 1 on a fresh channel).
fn tick_offset(frame: &Value, channel: &str) -> Option<u64> {
    if frame["channel"] != channel || frame["type"] != "tick" {
        return None;
    }
    let offset = frame["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("an event on a history channel has an offset: {frame}"));
    assert_eq!(frame["data"], offset, "tick data is its offset: {frame}");
    Some(offset)
}

/// Reads SSE frames until the event of `channel` with offset `last`; returns the offsets of
/// `channel` seen, in order. Panics on a `disconnect`, the stream's end, or after a minute.
async fn sse_offsets_until(stream: &mut SseStream, channel: &str, last: u64) -> Vec<u64> {
    let deadline = Instant::now() + EVENTS_TIMEOUT;
    let mut offsets = Vec::new();
    while offsets.last() != Some(&last) {
        assert!(
            Instant::now() < deadline,
            "offset {last} of {channel} never came; got {offsets:?}"
        );
        let message = stream.next_frame().await;
        let frame = message.frame();
        assert_ne!(frame["type"], "disconnect", "stream ended: {frame}");
        assert!(message.id.is_some(), "every frame has an id: {message:?}");
        offsets.extend(tick_offset(frame, channel));
    }
    offsets
}

fn offsets_of(frames: &[Value], channel: &str) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|frame| tick_offset(frame, channel))
        .collect()
}

fn assert_exactly(offsets: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(
        offsets,
        expected.as_slice(),
        "every offset {from}..={to} exactly once, in order"
    );
}

/// The offset a cursor holds for `channel`.
fn cursor_offset(cursor: &str, channel: &str) -> u64 {
    let positions = decode_cursor(cursor);
    match positions.get(channel) {
        Some((offset, _)) => *offset,
        None => panic!("the cursor has no position for {channel}: {positions:?}"),
    }
}

/// The entries of `GET /api/clients` (cluster-wide).
async fn clients(gw: &TestGateway) -> Vec<Value> {
    let (status, body) = gw.get_admin("/api/clients").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["clients"].as_array().cloned().unwrap_or_default()
}

/// Starts a 30 s poll on `gw` and returns once `asked` (any node) lists it among the clients.
async fn poll_in_flight(
    poller: &Poller,
    gw: &TestGateway,
    asked: &TestGateway,
) -> tokio::task::JoinHandle<PollAnswer> {
    let (base, node) = (gw.public_url(), gw.node_id().to_owned());
    let mut in_flight = poller.clone();
    let waiting = tokio::spawn(async move { in_flight.poll(&base, 30_000).await });
    eventually(Duration::from_secs(10), "the poll is in flight", || async {
        clients(asked)
            .await
            .iter()
            .any(|c| c["transport"] == "poll" && c["node_id"] == node.as_str())
    })
    .await;
    waiting
}

#[tokio::test]
async fn sse_recovers_exactly_across_two_replicas() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let (mut stream, _, subscribed) = sse_with_head(sse_request(&gws[0], "42", &["jobs"])).await;
    assert_eq!(subscribed.frame()["channels"], json!(["jobs"]));

    publish_ticks(&gws[1], "jobs", 1..=30).await;
    // The reader goes away in the middle of what was sent: the last id it got is where it is.
    let first = sse_offsets_until(&mut stream, "jobs", 20).await;
    assert_exactly(&first, 1, 20);
    let last_id = stream.last_event_id.clone().unwrap();
    assert_eq!(cursor_offset(&last_id, "jobs"), 20, "the id of event 20");
    drop(stream);

    let publisher = publish_in_background(
        &gws[0],
        json!({"channel": "jobs"}),
        31..=80,
        Duration::from_millis(5),
    );
    let request = sse_request(&gws[1], "42", &["jobs"]).header("Last-Event-ID", &last_id);
    let (mut resumed, established, subscribed) = sse_with_head(request).await;
    assert_eq!(established.frame()["node_id"], gws[1].node_id());
    assert_eq!(
        established.frame()["recovered"],
        true,
        "the personal channel recovers too: {}",
        brief(established.frame())
    );
    assert_eq!(
        subscribed.frame()["recovered"]["jobs"],
        true,
        "{}",
        brief(subscribed.frame())
    );
    let rest = sse_offsets_until(&mut resumed, "jobs", 80).await;
    join(publisher, "the publisher").await;
    assert_exactly(&rest, 21, 80);

    // Nothing more is delivered twice: the next event is 81.
    publish_ticks(&gws[0], "jobs", 81..=81).await;
    assert_exactly(&sse_offsets_until(&mut resumed, "jobs", 81).await, 81, 81);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_hops_between_replicas_on_every_poll_and_sees_each_event_once() {
    const EVENTS: u64 = 100;
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    let head = poller.poll_frames(&gws[0].public_url(), 0).await;
    assert_eq!(head[0]["type"], "connection_established", "{head:?}");
    assert_eq!(head[1]["type"], "subscribed", "{head:?}");

    let publisher = publish_in_background(
        &gws[1],
        json!({"channel": "jobs"}),
        1..=EVENTS,
        Duration::from_millis(10),
    );
    let deadline = Instant::now() + EVENTS_TIMEOUT;
    let mut seen = Vec::new();
    let mut polls = [0_u32; 2];
    let mut replica = 1;
    while seen.last() != Some(&EVENTS) {
        assert!(
            Instant::now() < deadline,
            "event {EVENTS} never came after {polls:?} polls; got {seen:?}"
        );
        let frames = poller.poll_frames(&gws[replica].public_url(), 5000).await;
        for frame in &frames {
            let kind = frame["type"].as_str().unwrap_or_default();
            assert!(
                kind == "tick",
                "a poll with a cursor carries only the events here: {}",
                brief(frame)
            );
        }
        seen.extend(offsets_of(&frames, "jobs"));
        polls[replica] += 1;
        replica = 1 - replica;
    }
    join(publisher, "the publisher").await;
    assert_exactly(&seen, 1, EVENTS);
    assert!(
        polls.iter().all(|&n| n >= 2),
        "both replicas served polls: {polls:?}"
    );
    // The cursor of the last answer is right on either replica: nothing more to deliver.
    for gw in &gws {
        let answer = poller.clone().poll(&gw.public_url(), 300).await;
        assert_eq!(answer.frames(), &[] as &[Value], "{}", answer.body);
    }
}

#[tokio::test]
async fn sse_and_poll_cursors_are_interchangeable() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.poll_frames(&gws[0].public_url(), 0).await;
    let poll_cursor = poller.cursor.clone().unwrap();
    publish_ticks(&gws[0], "jobs", 1..=5).await;

    // A poll's cursor resumes an SSE stream (here as ?cursor=, on the other replica).
    let request = sse_request(&gws[1], "42", &["jobs"]).query(&[("cursor", &poll_cursor)]);
    let (mut stream, _, subscribed) = sse_with_head(request).await;
    assert_eq!(
        subscribed.frame()["recovered"]["jobs"],
        true,
        "{}",
        brief(subscribed.frame())
    );
    assert_exactly(&sse_offsets_until(&mut stream, "jobs", 5).await, 1, 5);
    publish_ticks(&gws[1], "jobs", 6..=8).await;
    assert_exactly(&sse_offsets_until(&mut stream, "jobs", 8).await, 6, 8);
    let sse_cursor = stream.last_event_id.clone().unwrap();
    drop(stream);

    // An SSE id resumes polling.
    publish_ticks(&gws[1], "jobs", 9..=12).await;
    poller.cursor = Some(sse_cursor);
    let mut seen = Vec::new();
    let deadline = Instant::now() + EVENTS_TIMEOUT;
    while seen.last() != Some(&12) {
        assert!(Instant::now() < deadline, "got {seen:?}");
        seen.extend(offsets_of(
            &poller.poll_frames(&gws[0].public_url(), 2000).await,
            "jobs",
        ));
    }
    assert_exactly(&seen, 9, 12);
    assert_eq!(cursor_offset(poller.cursor.as_ref().unwrap(), "jobs"), 12);
}

#[tokio::test]
async fn the_personal_channel_is_always_included_and_recovered() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    // No channel asked for: the stream still carries the user's personal channel.
    let mut stream = open_sse(sse_request(&gws[0], "42", &[])).await;
    let established = stream.expect_frame("connection_established").await;
    assert_eq!(established.frame()["user_id"], "42");
    assert_eq!(established.frame()["position"]["offset"], 0);
    for seq in 1..=3 {
        gws[1]
            .publish_ok(json!({"user": "42", "event": "tick", "data": seq}))
            .await;
    }
    gws[1]
        .publish_ok(json!({"user": "43", "event": "tick", "data": 1}))
        .await;
    assert_exactly(&sse_offsets_until(&mut stream, "#42", 3).await, 1, 3);
    let last_id = stream.last_event_id.clone().unwrap();
    assert_eq!(cursor_offset(&last_id, "#42"), 3);
    drop(stream);

    for seq in 4..=6 {
        gws[0]
            .publish_ok(json!({"user": "42", "event": "tick", "data": seq}))
            .await;
    }
    // Resumed elsewhere with a channel this time; the personal channel recovers from the id
    // (its replay may come before or after the `subscribed` reply for the other channel).
    let request = sse_request(&gws[1], "42", &["jobs"]).header("Last-Event-ID", &last_id);
    let mut resumed = open_sse(request).await;
    let established = resumed.expect_frame("connection_established").await;
    assert_eq!(
        established.frame()["recovered"],
        true,
        "{}",
        brief(established.frame())
    );
    let mut replayed = Vec::new();
    let mut subscribed = None;
    while subscribed.is_none() || replayed.last() != Some(&6) {
        let message = resumed.next_frame().await;
        let frame = message.frame();
        if frame["type"] == "subscribed" {
            assert!(subscribed.is_none(), "one subscribed: {frame}");
            subscribed = Some(frame.clone());
        } else {
            replayed
                .push(tick_offset(frame, "#42").unwrap_or_else(|| panic!("unexpected {frame}")));
        }
    }
    assert_eq!(subscribed.unwrap()["channels"], json!(["jobs"]));
    assert_exactly(&replayed, 4, 6);
    let cursor = resumed.last_event_id.clone().unwrap();
    drop(resumed);

    // And a poll goes on from the SSE id, for the personal channel too.
    gws[0]
        .publish_ok(json!({"user": "42", "event": "tick", "data": 7}))
        .await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.cursor = Some(cursor);
    let frames = poller.poll_frames(&gws[0].public_url(), 5000).await;
    assert_eq!(offsets_of(&frames, "#42"), vec![7], "{frames:?}");

    // Another user's poll never sees user 42's channel, whatever its cursor says.
    let mut other = Poller::new(&token("43"), &[]);
    other.cursor = poller.cursor.clone();
    let frames = other.poll_frames(&gws[1].public_url(), 1000).await;
    assert!(
        frames.iter().all(|f| f["channel"] != "#42"),
        "user 43 got user 42's events: {frames:?}"
    );
    let first = Poller::new(&token("43"), &[])
        .poll_frames(&gws[1].public_url(), 0)
        .await;
    assert_eq!(first[0]["type"], "connection_established");
    assert_eq!(first[0]["user_id"], "43");
    assert_eq!(first[0]["position"]["offset"], 1, "user 43 has one event");
}

#[tokio::test]
async fn bad_cursor_is_400_on_both_transports() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let http = http_client();
    let base = gw.public_url();
    let t = token("42");
    // {"jobs":[1,"has space"]}: well-formed base64url, but not a position map we accept.
    let forged = format!("1.{}", e2e::base64url(br#"{"jobs":[1,"has space"]}"#));
    for cursor in ["garbage", "1.***", "2.e30", forged.as_str()] {
        let answer = get_poll(
            &http,
            &base,
            &[("token", &t), ("channels", "jobs"), ("cursor", cursor)],
            &[],
        )
        .await;
        let code = assert_http_error(answer.status, &answer.body, StatusCode::BAD_REQUEST);
        assert_eq!(code, "bad_request", "poll cursor {cursor:?}");

        let by_header =
            SseStream::open(sse_request(&gw, "42", &["jobs"]).header("Last-Event-ID", cursor))
                .await
                .err()
                .unwrap_or_else(|| panic!("SSE accepted Last-Event-ID {cursor:?}"));
        let code = assert_http_error(by_header.status, &by_header.body, StatusCode::BAD_REQUEST);
        assert_eq!(code, "bad_request", "SSE Last-Event-ID {cursor:?}");

        let by_query =
            SseStream::open(sse_request(&gw, "42", &["jobs"]).query(&[("cursor", cursor)]))
                .await
                .err()
                .unwrap_or_else(|| panic!("SSE accepted ?cursor={cursor:?}"));
        assert_http_error(by_query.status, &by_query.body, StatusCode::BAD_REQUEST);
    }
    let answer = get_poll(
        &http,
        &base,
        &[
            ("token", &t),
            ("channels", "jobs"),
            ("cursor", "1.e30"),
            ("timeout_ms", "soon"),
        ],
        &[],
    )
    .await;
    assert_http_error(answer.status, &answer.body, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn bad_token_is_401_on_both_transports() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let http = http_client();
    let base = gw.public_url();
    let expired = TokenBuilder::new("42").expires_in(-3600).sign();
    let wrong_key = TokenBuilder::new("42").sign_hs256(b"not-the-gateway-secret-0123456789abcdef");
    for bad in ["garbage", expired.as_str(), wrong_key.as_str()] {
        let answer = get_poll(&http, &base, &[("token", bad), ("channels", "jobs")], &[]).await;
        assert_http_error(answer.status, &answer.body, StatusCode::UNAUTHORIZED);
        let bearer = format!("Bearer {bad}");
        let answer = get_poll(
            &http,
            &base,
            &[("channels", "jobs")],
            &[("Authorization", &bearer)],
        )
        .await;
        assert_http_error(answer.status, &answer.body, StatusCode::UNAUTHORIZED);

        let refused = SseStream::open(
            http.get(format!("{base}/sse"))
                .query(&[("token", bad), ("channels", "jobs")]),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("SSE accepted token {bad:?}"));
        assert_http_error(refused.status, &refused.body, StatusCode::UNAUTHORIZED);
    }
    let answer = get_poll(&http, &base, &[("channels", "jobs")], &[]).await;
    assert_http_error(answer.status, &answer.body, StatusCode::UNAUTHORIZED);
    let refused = SseStream::open(http.get(format!("{base}/sse?channels=jobs")))
        .await
        .expect_err("SSE without a token is refused");
    assert_http_error(refused.status, &refused.body, StatusCode::UNAUTHORIZED);

    // A good token in the header works.
    let answer = get_poll(
        &http,
        &base,
        &[("channels", "jobs")],
        &[("Authorization", &format!("Bearer {}", token("42")))],
    )
    .await;
    assert_eq!(answer.frames()[0]["type"], "connection_established");
}

#[tokio::test]
async fn refused_channels_are_reported_in_subscribed_rejected() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let channels = [
        "jobs",
        "secret:x",
        "nope:y",
        "notifications#42,43",
        "notifications#7,8",
    ];
    let expect = |frame: &Value| {
        let (accepted, rejected) = subscribe_outcome(frame);
        assert_eq!(accepted, vec!["jobs", "notifications#42,43"], "{frame}");
        let rejected: Vec<(&str, &str)> = rejected
            .iter()
            .map(|(c, code)| (c.as_str(), code.as_str()))
            .collect();
        assert_eq!(
            rejected.iter().copied().collect::<BTreeMap<_, _>>(),
            BTreeMap::from([
                ("nope:y", "unknown_namespace"),
                ("notifications#7,8", "forbidden"),
                ("secret:x", "forbidden"),
            ]),
            "{frame}"
        );
    };

    let (mut stream, _, subscribed) = sse_with_head(sse_request(&gw, "42", &channels)).await;
    expect(subscribed.frame());

    let mut poller = Poller::new(&token("42"), &channels);
    let head = poller.poll_frames(&gw.public_url(), 0).await;
    assert_eq!(head.len(), 2, "{head:?}");
    expect(&head[1]);
    // A poll with a cursor says again what was refused, at the head of its frames.
    gw.publish_ok(json!({"channel": "notifications#42,43", "event": "tick", "data": 1}))
        .await;
    let frames = poller.poll_frames(&gw.public_url(), 5000).await;
    let subscribed = frames
        .iter()
        .find(|f| f["type"] == "subscribed")
        .unwrap_or_else(|| panic!("the refusals are repeated: {frames:?}"));
    expect(subscribed);
    assert_eq!(
        offsets_of(&frames, "notifications#42,43"),
        vec![1],
        "{frames:?}"
    );
    assert_exactly(
        &sse_offsets_until(&mut stream, "notifications#42,43", 1).await,
        1,
        1,
    );
}

#[tokio::test]
async fn sigterm_ends_an_sse_stream_with_disconnect_4200_and_the_advised_retry() {
    let redis = TestRedis::start().await;
    let mut gw = TestGateway::spawn(
        config(&redis)
            .env("GATEWAY_DRAIN_TIMEOUT", "10s")
            .env("GATEWAY_DRAIN_RECONNECT_MAX", "3s"),
    )
    .await;
    let (mut stream, _, _) = sse_with_head(sse_request(&gw, "42", &["jobs"])).await;
    publish_ticks(&gw, "jobs", 1..=3).await;
    assert_exactly(&sse_offsets_until(&mut stream, "jobs", 3).await, 1, 3);

    gw.terminate();
    let (frames, end) = stream.frames_until_end(Duration::from_secs(20)).await;
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before the end ({end:?})"));
    let frame = last.frame();
    assert_eq!(frame["type"], "disconnect", "{frame}");
    assert_eq!(frame["code"], 4200, "{frame}");
    let after = frame["reconnect_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("reconnect_after_ms is a number: {frame}"));
    assert!(after <= 3000, "within GATEWAY_DRAIN_RECONNECT_MAX: {frame}");
    assert_eq!(
        last.retry,
        Some(after),
        "EventSource is told to wait as long: {last:?}"
    );
    assert_eq!(
        frames
            .iter()
            .filter(|m| m.frame()["type"] == "disconnect")
            .count(),
        1,
        "one disconnect frame: {frames:?}"
    );
    assert_eq!(end, SseEnd::Eof, "the stream ends cleanly");
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the gateway exited with {status}");
}

#[tokio::test]
async fn a_poll_in_flight_during_drain_answers_early_with_the_disconnect_frame() {
    let redis = TestRedis::start().await;
    let mut gws = join_all((0..2).map(|_| {
        TestGateway::spawn(
            config(&redis)
                .env("GATEWAY_DRAIN_TIMEOUT", "10s")
                .env("GATEWAY_DRAIN_RECONNECT_MAX", "2s"),
        )
    }))
    .await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.poll_frames(&gws[0].public_url(), 0).await;

    let waiting = poll_in_flight(&poller, &gws[0], &gws[1]).await;

    let told = Instant::now();
    gws[0].terminate();
    let answer = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the poll answers")
        .unwrap();
    assert!(
        told.elapsed() < Duration::from_secs(10),
        "the poll answered {:?} after SIGTERM; it asked to wait 30 s",
        told.elapsed()
    );
    let frames = answer.frames();
    let disconnect = frames
        .iter()
        .find(|f| f["type"] == "disconnect")
        .unwrap_or_else(|| panic!("a disconnect frame: {frames:?}"));
    assert_eq!(disconnect["code"], 4200, "{disconnect}");
    assert!(disconnect["reconnect_after_ms"].as_u64().unwrap() <= 2000);
    let status = gws[0].wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "the gateway exited with {status}");

    // The client goes on elsewhere with the cursor it was given.
    poller.cursor = Some(answer.cursor().to_owned());
    publish_ticks(&gws[1], "jobs", 1..=1).await;
    let frames = poller.poll_frames(&gws[1].public_url(), 5000).await;
    assert_eq!(offsets_of(&frames, "jobs"), vec![1], "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_loses_nothing_for_the_sse_client() {
    const EVENTS: u64 = 100;
    let redis = TestRedis::start().await;
    let mut gws = replicas(&redis, 2).await;
    let (mut stream, _, _) = sse_with_head(sse_request(&gws[0], "42", &["jobs"])).await;
    let publisher = publish_in_background(
        &gws[1],
        json!({"channel": "jobs"}),
        1..=EVENTS,
        Duration::from_millis(10),
    );
    let mut seen = sse_offsets_until(&mut stream, "jobs", 20).await;
    gws[0].kill().await;
    let (frames, end) = stream.frames_until_end(Duration::from_secs(15)).await;
    let frames: Vec<Value> = frames.iter().map(|m| m.frame().clone()).collect();
    seen.extend(offsets_of(&frames, "jobs"));
    eprintln!(
        "the killed replica's stream ended with {end:?} after offset {:?}",
        seen.last()
    );
    let last_id = stream.last_event_id.clone().unwrap();
    assert_eq!(cursor_offset(&last_id, "jobs"), *seen.last().unwrap());

    let request = sse_request(&gws[1], "42", &["jobs"]).header("Last-Event-ID", &last_id);
    let (mut resumed, _, subscribed) = sse_with_head(request).await;
    assert_eq!(
        subscribed.frame()["recovered"]["jobs"],
        true,
        "{}",
        brief(subscribed.frame())
    );
    seen.extend(sse_offsets_until(&mut resumed, "jobs", EVENTS).await);
    join(publisher, "the publisher").await;
    assert_exactly(&seen, 1, EVENTS);
}

#[tokio::test]
async fn poll_waits_then_answers_empty_with_the_same_positions() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    publish_ticks(&gw, "jobs", 1..=2).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    let head = poller.poll(&gw.public_url(), 0).await;
    assert!(
        head.elapsed < Duration::from_secs(5),
        "a first poll answers at once"
    );
    let cursor = poller.cursor.clone().unwrap();
    assert_eq!(cursor_offset(&cursor, "jobs"), 2);

    let answer = poller.poll(&gw.public_url(), 500).await;
    assert_eq!(answer.frames(), &[] as &[Value], "{}", answer.body);
    assert!(
        answer.elapsed >= Duration::from_millis(490),
        "it waited only {:?} of its 500 ms",
        answer.elapsed
    );
    assert!(
        answer.elapsed < Duration::from_secs(10),
        "{:?}",
        answer.elapsed
    );
    assert_eq!(decode_cursor(answer.cursor()), decode_cursor(&cursor));
    assert_eq!(
        answer
            .headers
            .get("cache-control")
            .map(|v| v.to_str().unwrap()),
        Some("no-store")
    );
}

#[tokio::test]
async fn a_refused_channel_alone_does_not_end_a_polls_wait() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let mut poller = Poller::new(&token("42"), &["jobs", "nope:1"]);
    poller.poll(&gw.public_url(), 0).await;
    let answer = poller.poll(&gw.public_url(), 500).await;
    assert!(
        answer.elapsed >= Duration::from_millis(490),
        "a poll whose only news is a refused channel answered after {:?}: {}",
        answer.elapsed,
        answer.body
    );
    let frames = answer.frames();
    assert_eq!(frames.len(), 1, "{}", answer.body);
    assert_eq!(
        frames[0]["rejected"][0]["channel"], "nope:1",
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn poll_answers_as_soon_as_an_event_is_published_during_its_wait() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.poll(&gw.public_url(), 0).await;
    let base = gw.public_url();
    let mut waiting = poller.clone();
    let task = tokio::spawn(async move { waiting.poll(&base, 20_000).await });
    eventually(
        Duration::from_secs(10),
        "the poll is subscribed",
        || async {
            clients(&gw)
                .await
                .iter()
                .any(|c| c["transport"] == "poll" && c["channels"].to_string().contains("\"jobs\""))
        },
    )
    .await;
    let data = json!({"job_id": "abc", "progress": 100});
    let published = Instant::now();
    gw.publish_ok(json!({"channel": "jobs", "event": "job_done", "data": data}))
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the poll answers")
        .unwrap();
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "answered {:?} after the publish",
        published.elapsed()
    );
    let frames = answer.frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_event(&frames[0], "job_done", Some("jobs"), &data);
    assert_eq!(frames[0]["offset"], 1);
    assert_eq!(cursor_offset(answer.cursor(), "jobs"), 1);
}

#[tokio::test]
async fn sse_and_poll_appear_in_api_clients_with_their_transport() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let _ws = gw.connect_as("ws-user").await;
    let (_stream, established, _) = sse_with_head(sse_request(&gw, "sse-user", &["jobs"])).await;
    let sse_id = established.frame()["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut poller = Poller::new(&token("poll-user"), &["photos"]);
    poller.poll(&gw.public_url(), 0).await;
    let base = gw.public_url();
    let mut waiting = poller.clone();
    let task = tokio::spawn(async move { waiting.poll(&base, 3000).await });

    let transport_of = |list: &[Value], user: &str| -> Vec<String> {
        list.iter()
            .filter(|c| c["user_id"] == user)
            .map(|c| c["transport"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    eventually(Duration::from_secs(10), "the poll is listed", || async {
        transport_of(&clients(&gw).await, "poll-user") == ["poll"]
    })
    .await;
    let list = clients(&gw).await;
    assert_eq!(transport_of(&list, "ws-user"), ["websocket"], "{list:?}");
    assert_eq!(transport_of(&list, "sse-user"), ["sse"], "{list:?}");
    let sse = list.iter().find(|c| c["user_id"] == "sse-user").unwrap();
    assert_eq!(sse["client_id"], sse_id.as_str());
    let channels = sse["channels"].to_string();
    assert!(
        channels.contains("\"jobs\"") && channels.contains("\"#sse-user\""),
        "{sse}"
    );
    let (_, by_channel) = gw.get_admin("/api/clients?channel=jobs").await;
    assert_eq!(
        by_channel["clients"][0]["client_id"],
        sse_id.as_str(),
        "{by_channel}"
    );

    // The poll is a connection only while it is in flight.
    let answer = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    eventually(Duration::from_secs(10), "the poll is gone", || async {
        transport_of(&clients(&gw).await, "poll-user").is_empty()
    })
    .await;
    assert_eq!(transport_of(&clients(&gw).await, "sse-user"), ["sse"]);
}

#[tokio::test]
async fn cors_answers_allowed_origins_and_refuses_others() {
    let redis = TestRedis::start().await;
    let gw =
        TestGateway::spawn(config(&redis).env("GATEWAY_ALLOWED_ORIGINS", "https://app.example"))
            .await;
    let http = http_client();
    let base = gw.public_url();
    let t = token("42");
    let allow_origin = |headers: &reqwest::header::HeaderMap| {
        headers
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };

    let answer = get_poll(
        &http,
        &base,
        &[("token", &t), ("channels", "jobs")],
        &[("Origin", "https://app.example")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        allow_origin(&answer.headers).as_deref(),
        Some("https://app.example")
    );
    let stream =
        open_sse(sse_request(&gw, "42", &["jobs"]).header("Origin", "https://app.example")).await;
    assert_eq!(
        allow_origin(stream.headers()).as_deref(),
        Some("https://app.example")
    );
    drop(stream);

    // A request without Origin (not a browser) is served, without CORS headers.
    let answer = get_poll(&http, &base, &[("token", &t), ("channels", "jobs")], &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(allow_origin(&answer.headers), None);

    let answer = get_poll(
        &http,
        &base,
        &[("token", &t), ("channels", "jobs")],
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_http_error(answer.status, &answer.body, StatusCode::FORBIDDEN);
    let refused =
        SseStream::open(sse_request(&gw, "42", &["jobs"]).header("Origin", "https://evil.example"))
            .await
            .expect_err("SSE from another origin is refused");
    assert_http_error(refused.status, &refused.body, StatusCode::FORBIDDEN);

    for path in ["/poll", "/sse"] {
        let preflight = http
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "GET")
            .header(
                "Access-Control-Request-Headers",
                "authorization,last-event-id",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), StatusCode::NO_CONTENT, "OPTIONS {path}");
        let headers = preflight.headers();
        assert_eq!(
            allow_origin(headers).as_deref(),
            Some("https://app.example")
        );
        let methods = headers
            .get("access-control-allow-methods")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(methods.contains("GET"), "OPTIONS {path}: {headers:?}");
        let allowed_headers = headers
            .get("access-control-allow-headers")
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
            .unwrap_or_default();
        assert!(
            allowed_headers.contains("authorization") && allowed_headers.contains("last-event-id"),
            "OPTIONS {path}: {headers:?}"
        );
        let refused = http
            .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("Origin", "https://evil.example")
            .header("Access-Control-Request-Method", "GET")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "OPTIONS {path}");
    }
}

#[tokio::test]
async fn an_idle_sse_stream_gets_heartbeat_comments_and_outlives_the_idle_timeout() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(
        config(&redis)
            .env("GATEWAY_HEARTBEAT_INTERVAL", "1s")
            .env("GATEWAY_IDLE_TIMEOUT", "3s"),
    )
    .await;
    let (mut stream, established, _) = sse_with_head(sse_request(&gw, "42", &["jobs"])).await;
    assert_eq!(established.retry, Some(2000), "{established:?}");
    assert_eq!(established.frame()["heartbeat_interval_ms"], 1000);
    let until = Instant::now() + Duration::from_secs(6);
    let mut pings = 0;
    while Instant::now() < until {
        match stream.next_within(Duration::from_secs(3)).await {
            Ok(Some(message)) if message.is_comment() => pings += 1,
            Ok(Some(message)) => panic!("an idle stream sent {message:?}"),
            Ok(None) => panic!("no heartbeat for 3 s"),
            Err(end) => panic!("the idle stream ended: {end:?}"),
        }
    }
    assert!(pings >= 3, "{pings} heartbeats in 6 s at 1 s");
    publish_ticks(&gw, "jobs", 1..=1).await;
    assert_exactly(&sse_offsets_until(&mut stream, "jobs", 1).await, 1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_reader_is_closed_as_a_slow_consumer_and_others_keep_receiving() {
    const MAX_EVENTS: u64 = 3000;
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(
        config(&redis)
            .env("GATEWAY_OUTBOX_MAX_BYTES", "16384")
            // Heartbeats keep the fast reader's reads alive between bursts; a slow consumer's
            // close waits for it to read at most the idle timeout, then its session ends.
            .env("GATEWAY_HEARTBEAT_INTERVAL", "2s")
            .env("GATEWAY_IDLE_TIMEOUT", "15s"),
    )
    .await;

    // The slow reader sends its request and then never reads.
    let slow = stalled_sse_client(&gw, "slow", "feed").await;

    let (mut fast, _, _) = sse_with_head(sse_request(&gw, "fast", &["feed"])).await;
    eventually(
        Duration::from_secs(10),
        "both readers are subscribed",
        || async {
            clients(&gw)
                .await
                .iter()
                .filter(|c| {
                    c["transport"] == "sse" && c["channels"].to_string().contains("\"feed\"")
                })
                .count()
                == 2
        },
    )
    .await;
    let (last_tx, last_rx) = tokio::sync::watch::channel(0_u64);
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let message = fast.next_frame().await;
            let frame = message.frame();
            assert_ne!(
                frame["type"],
                "disconnect",
                "the fast reader was closed: {}",
                brief(frame)
            );
            if frame["type"] == "tick" {
                seen.push(frame["offset"].as_u64().unwrap());
            }
            let wanted = *last_rx.borrow();
            if wanted != 0 && seen.last() == Some(&wanted) {
                return (fast, seen);
            }
        }
    });

    let padding = "x".repeat(8 * 1024);
    let mut published = 0;
    let disconnections = |metrics: &str| {
        metric_value(metrics, "gateway_disconnections_total", &[("code", "4100")]).unwrap_or(0.0)
    };
    while published < MAX_EVENTS {
        published += 1;
        gw.publish_ok(json!({"channel": "feed", "event": "tick", "data": {"padding": padding}}))
            .await;
        if published % 25 == 0 && disconnections(&gw.metrics().await) >= 1.0 {
            break;
        }
    }
    eprintln!("the slow reader was closed after {published} events of 8 KiB");
    eventually(
        Duration::from_secs(30),
        "gateway_disconnections_total{code=\"4100\"} counts the slow reader",
        || async { disconnections(&gw.metrics().await) >= 1.0 },
    )
    .await;
    // One more event after the close; the fast reader gets every one, in order.
    published += 1;
    last_tx.send(published).unwrap();
    gw.publish_ok(json!({"channel": "feed", "event": "tick", "data": {"padding": ""}}))
        .await;
    let (mut fast, seen) = match tokio::time::timeout(EVENTS_TIMEOUT, fast_reader).await {
        Err(_) => panic!("the fast reader did not get all {published} events"),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("the fast reader failed: {e}"),
        Ok(Ok(done)) => done,
    };
    assert_exactly(&seen, 1, published);
    // The slow reader's session is gone from the node (once its close waited the idle
    // timeout for it to read); the fast one's is still there.
    eventually(
        Duration::from_secs(40),
        "only the fast reader is listed",
        || async {
            let users: Vec<String> = clients(&gw)
                .await
                .iter()
                .map(|c| c["user_id"].as_str().unwrap_or_default().to_owned())
                .collect();
            users == ["fast"]
        },
    )
    .await;
    // And it still receives.
    published += 1;
    gw.publish_ok(json!({"channel": "feed", "event": "tick", "data": {"padding": ""}}))
        .await;
    let last = fast.next_frame().await;
    assert_eq!(last.frame()["offset"], published, "{}", brief(last.frame()));
    drop(slow);
}

#[tokio::test]
async fn a_node_holds_nothing_for_a_poller_between_polls() {
    const POLLS: u64 = 200;
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    let base = gw.public_url();
    let mut poller = Poller::new(&token("42"), &["jobs", "photos"]);
    poller.poll_frames(&base, 0).await;
    let mut seen = Vec::new();
    let mut events = 0;
    for n in 1..POLLS {
        if n % 20 == 0 {
            events += 1;
            publish_ticks(&gw, "jobs", events..=events).await;
        }
        seen.extend(offsets_of(&poller.poll_frames(&base, 20).await, "jobs"));
    }
    while seen.last() != Some(&events) {
        let frames = poller.poll_frames(&base, 2000).await;
        assert!(
            !frames.is_empty(),
            "event {events} never came; got {seen:?}"
        );
        seen.extend(offsets_of(&frames, "jobs"));
    }
    assert_exactly(&seen, 1, events);

    eventually(Duration::from_secs(10), "no poller is listed", || async {
        clients(&gw).await.is_empty()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "gateway_connections is 0",
        || async { metric_value(&gw.metrics().await, "gateway_connections", &[]) == Some(0.0) },
    )
    .await;
    let metrics = gw.metrics().await;
    let accepted = metric_value(&metrics, "gateway_connections_accepted_total", &[]).unwrap_or(0.0);
    assert!(
        accepted >= POLLS as f64,
        "each poll was a connection: {accepted} accepted"
    );
    for gauge in ["gateway_users", "gateway_subscriptions"] {
        assert_eq!(metric_value(&metrics, gauge, &[]), Some(0.0), "{gauge}");
    }
}

/// A browser from an origin that is not allowed gets a 403 it cannot read: no
/// `Access-Control-Allow-Origin` naming that origin (and no credentials allowed for it).
#[tokio::test]
async fn a_refused_origin_gets_no_cors_headers() {
    let redis = TestRedis::start().await;
    let gw =
        TestGateway::spawn(config(&redis).env("GATEWAY_ALLOWED_ORIGINS", "https://app.example"))
            .await;
    let http = http_client();
    let t = token("42");
    let answer = get_poll(
        &http,
        &gw.public_url(),
        &[("token", &t), ("channels", "jobs")],
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_http_error(answer.status, &answer.body, StatusCode::FORBIDDEN);
    let refused =
        SseStream::open(sse_request(&gw, "42", &["jobs"]).header("Origin", "https://evil.example"))
            .await
            .expect_err("SSE from another origin is refused");
    assert_http_error(refused.status, &refused.body, StatusCode::FORBIDDEN);
    let mut carried = Vec::new();
    for (transport, headers) in [("poll", &answer.headers), ("sse", &refused.headers)] {
        for name in [
            "access-control-allow-origin",
            "access-control-allow-credentials",
        ] {
            if let Some(value) = headers.get(name) {
                carried.push(format!("/{transport}: {name}: {value:?}"));
            }
        }
    }
    assert!(
        carried.is_empty(),
        "the 403 for a refused origin carries CORS headers for it: {carried:?}"
    );
}

/// A raw TCP client of `GET /sse` with a small receive buffer that sends its request and then
/// never reads.
async fn stalled_sse_client(gw: &TestGateway, user: &str, channel: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = gw
        .public_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /sse?channels={channel}&token={} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
        token(user)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A client that stopped reading its SSE stream cannot hold a draining node up: the node
/// exits within its drain timeout (plus the slow consumer's close), not when the client goes.
#[tokio::test]
async fn sigterm_exits_even_with_an_sse_client_that_stopped_reading() {
    let redis = TestRedis::start().await;
    let mut gw = TestGateway::spawn(
        config(&redis)
            .env("GATEWAY_OUTBOX_MAX_BYTES", "16384")
            .env("GATEWAY_HEARTBEAT_INTERVAL", "2s")
            .env("GATEWAY_IDLE_TIMEOUT", "5s")
            .env("GATEWAY_DRAIN_TIMEOUT", "5s"),
    )
    .await;
    let stalled = stalled_sse_client(&gw, "stalled", "feed").await;
    eventually(
        Duration::from_secs(10),
        "the stalled reader is subscribed",
        || async {
            clients(&gw)
                .await
                .iter()
                .any(|c| c["channels"].to_string().contains("\"feed\""))
        },
    )
    .await;
    let padding = "x".repeat(8 * 1024);
    for _ in 0..2000 {
        gw.publish_ok(json!({"channel": "feed", "event": "tick", "data": {"padding": padding}}))
            .await;
        let metrics = gw.metrics().await;
        if metric_value(
            &metrics,
            "gateway_disconnections_total",
            &[("code", "4100")],
        )
        .is_some_and(|n| n >= 1.0)
        {
            break;
        }
    }
    eventually(
        Duration::from_secs(30),
        "the stalled reader's session ended",
        || async { clients(&gw).await.is_empty() },
    )
    .await;
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the gateway exited with {status}");
    drop(stalled);
}

#[tokio::test]
async fn one_cursor_recovers_every_channel_of_the_stream() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let (mut stream, _, _) = sse_with_head(sse_request(&gws[0], "42", &["jobs", "photos"])).await;
    for seq in 1..=5 {
        publish_ticks(&gws[1], "jobs", seq..=seq).await;
        publish_ticks(&gws[1], "photos", seq..=seq).await;
    }
    let mut jobs = Vec::new();
    let mut photos = Vec::new();
    while jobs.last() != Some(&5) || photos.last() != Some(&5) {
        let message = stream.next_frame().await;
        jobs.extend(tick_offset(message.frame(), "jobs"));
        photos.extend(tick_offset(message.frame(), "photos"));
    }
    let last_id = stream.last_event_id.clone().unwrap();
    drop(stream);
    publish_ticks(&gws[0], "jobs", 6..=8).await;
    publish_ticks(&gws[0], "photos", 6..=7).await;
    publish_ticks(&gws[0], "news", 1..=2).await;

    // Resumed with one channel less and one more: the kept one recovers, the new one starts
    // now, the dropped one leaves the cursor.
    let request = sse_request(&gws[1], "42", &["jobs", "news"]).header("Last-Event-ID", &last_id);
    let (mut resumed, _, subscribed) = sse_with_head(request).await;
    let frame = subscribed.frame();
    assert_eq!(frame["recovered"]["jobs"], true, "{frame}");
    assert_eq!(frame["positions"]["news"]["offset"], 2, "{frame}");
    assert_exactly(&sse_offsets_until(&mut resumed, "jobs", 8).await, 6, 8);
    publish_ticks(&gws[0], "news", 3..=3).await;
    assert_exactly(&sse_offsets_until(&mut resumed, "news", 3).await, 3, 3);
    let positions = decode_cursor(resumed.last_event_id.as_ref().unwrap());
    let channels: Vec<&str> = positions.keys().map(String::as_str).collect();
    assert_eq!(channels, ["#42", "jobs", "news"], "{positions:?}");

    // Both transports resume the same cursor with photos again: it starts from now.
    let mut poller = Poller::new(&token("42"), &["jobs", "photos"]);
    poller.cursor = Some(last_id);
    let frames = poller.poll_frames(&gws[0].public_url(), 2000).await;
    assert_eq!(offsets_of(&frames, "jobs"), [6, 7, 8], "{frames:?}");
    assert_eq!(offsets_of(&frames, "photos"), [6, 7], "{frames:?}");
}

#[tokio::test]
async fn a_cursor_past_the_history_window_says_recovered_false_then_goes_on_from_now() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis)).await;
    publish_ticks(&gw, "small:feed", 1..=1).await;
    let mut poller = Poller::new(&token("42"), &["small:feed"]);
    poller.poll_frames(&gw.public_url(), 0).await;
    let stale = poller.cursor.clone().unwrap();
    assert_eq!(cursor_offset(&stale, "small:feed"), 1);
    publish_ticks(&gw, "small:feed", 2..=50).await;

    // Poll: the loss is reported at the head of the frames, with the current position.
    let frames = poller.poll_frames(&gw.public_url(), 2000).await;
    assert_eq!(frames[0]["type"], "subscribed", "{frames:?}");
    assert_eq!(frames[0]["recovered"]["small:feed"], false, "{}", frames[0]);
    assert_eq!(frames[0]["positions"]["small:feed"]["offset"], 50);
    assert_eq!(
        cursor_offset(poller.cursor.as_ref().unwrap(), "small:feed"),
        50
    );
    // Once: the next poll recovers from the position it was given.
    let answer = poller.poll(&gw.public_url(), 300).await;
    assert_eq!(answer.frames(), &[] as &[Value], "{}", answer.body);
    publish_ticks(&gw, "small:feed", 51..=51).await;
    let frames = poller.poll_frames(&gw.public_url(), 5000).await;
    assert_eq!(offsets_of(&frames, "small:feed"), [51], "{frames:?}");

    // SSE: the same, in the stream's subscribed.
    let request = sse_request(&gw, "42", &["small:feed"]).header("Last-Event-ID", &stale);
    let (mut stream, _, subscribed) = sse_with_head(request).await;
    let frame = subscribed.frame();
    assert_eq!(frame["recovered"]["small:feed"], false, "{frame}");
    assert_eq!(
        cursor_offset(subscribed.cursor(), "small:feed"),
        51,
        "the id after a loss is the current position"
    );
    publish_ticks(&gw, "small:feed", 52..=52).await;
    assert_exactly(
        &sse_offsets_until(&mut stream, "small:feed", 52).await,
        52,
        52,
    );
}

#[tokio::test]
async fn an_operator_disconnect_ends_sse_and_poll_with_the_disconnect_frame() {
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let (mut stream, _, _) = sse_with_head(sse_request(&gws[0], "42", &["jobs"])).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.poll_frames(&gws[1].public_url(), 0).await;
    let task = poll_in_flight(&poller, &gws[1], &gws[0]).await;

    // Asked on one node, done on every node.
    let (status, reply) = gws[0]
        .post_admin("/api/disconnect", json!({"user": "42"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (frames, end) = stream.frames_until_end(Duration::from_secs(15)).await;
    let last = frames.last().map(|m| m.frame().clone()).unwrap_or_default();
    assert_eq!(last["type"], "disconnect", "{frames:?}");
    assert_eq!(last["code"], 4004, "{last}");
    assert_eq!(end, SseEnd::Eof);

    let answer = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("the poll answers at once")
        .unwrap();
    let frames = answer.frames();
    let disconnect = frames
        .iter()
        .find(|f| f["type"] == "disconnect")
        .unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(disconnect["code"], 4004, "{disconnect}");
}

#[tokio::test]
async fn an_expiring_token_ends_the_sse_stream_with_4002_and_a_poll_with_it_is_401() {
    let redis = TestRedis::start().await;
    let gw = TestGateway::spawn(config(&redis).env("GATEWAY_JWT_LEEWAY", "0s")).await;
    let short = TokenBuilder::new("42").expires_in(3).sign();
    let request = http_client()
        .get(format!("{}/sse", gw.public_url()))
        .query(&[("channels", "jobs")])
        .bearer_auth(&short);
    let (mut stream, _, _) = sse_with_head(request).await;
    let (frames, end) = stream.frames_until_end(Duration::from_secs(15)).await;
    let last = frames.last().map(|m| m.frame().clone()).unwrap_or_default();
    assert_eq!(last["type"], "disconnect", "{frames:?}");
    assert_eq!(last["code"], 4002, "{last}");
    assert_eq!(end, SseEnd::Eof);
    // JWT `exp` has whole seconds; past that second the token is refused at the door.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = get_poll(
        &http_client(),
        &gw.public_url(),
        &[("token", &short), ("channels", "jobs")],
        &[],
    )
    .await;
    assert_http_error(answer.status, &answer.body, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_per_user_connection_cap_counts_sse_streams_and_polls() {
    let redis = TestRedis::start().await;
    let gws =
        join_all((0..2).map(|_| {
            TestGateway::spawn(config(&redis).env("GATEWAY_MAX_CONNECTIONS_PER_USER", "1"))
        }))
        .await;
    let (stream, _, _) = sse_with_head(sse_request(&gws[0], "42", &["jobs"])).await;
    let answer = get_poll(
        &http_client(),
        &gws[1].public_url(),
        &[("token", &token("42")), ("channels", "jobs")],
        &[],
    )
    .await;
    assert_http_error(answer.status, &answer.body, StatusCode::TOO_MANY_REQUESTS);
    let refused = SseStream::open(sse_request(&gws[1], "42", &["jobs"]))
        .await
        .expect_err("a second stream of the same user is refused");
    assert_http_error(refused.status, &refused.body, StatusCode::TOO_MANY_REQUESTS);
    // Another user is not affected; once the stream is gone, the user may poll.
    let other = get_poll(
        &http_client(),
        &gws[1].public_url(),
        &[("token", &token("43")), ("channels", "jobs")],
        &[],
    )
    .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.body);
    drop(stream);
    eventually(
        Duration::from_secs(15),
        "the slot is free again",
        || async {
            get_poll(
                &http_client(),
                &gws[1].public_url(),
                &[("token", &token("42")), ("channels", "jobs")],
                &[],
            )
            .await
            .status
                == StatusCode::OK
        },
    )
    .await;
}

#[tokio::test]
async fn a_large_backlog_is_delivered_across_polls_exactly_once() {
    const EVENTS: u64 = 1500;
    let redis = TestRedis::start().await;
    let gws = replicas(&redis, 2).await;
    let mut poller = Poller::new(&token("42"), &["jobs"]);
    poller.poll_frames(&gws[0].public_url(), 0).await;
    for start in (1..=EVENTS).step_by(100) {
        let items: Vec<Value> = (start..start + 100)
            .map(|seq| json!({"channel": "jobs", "event": "tick", "data": seq}))
            .collect();
        let (status, reply) = gws[0].publish_batch(json!(items)).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let mut seen = Vec::new();
    let mut polls = 0;
    while seen.last() != Some(&EVENTS) {
        assert!(polls < 20, "{polls} polls, got up to {:?}", seen.last());
        let frames = poller.poll_frames(&gws[polls % 2].public_url(), 5000).await;
        seen.extend(offsets_of(&frames, "jobs"));
        polls += 1;
    }
    assert_exactly(&seen, 1, EVENTS);
    // And the same backlog over SSE from the first cursor.
    let mut fresh = Poller::new(&token("42"), &["jobs"]);
    fresh.cursor = Some(format!("1.{}", e2e::base64url(br#"{"jobs":[0,""]}"#)));
    let request =
        sse_request(&gws[1], "42", &["jobs"]).query(&[("cursor", fresh.cursor.as_ref().unwrap())]);
    let (mut stream, _, _) = sse_with_head(request).await;
    assert_exactly(
        &sse_offsets_until(&mut stream, "jobs", EVENTS).await,
        1,
        EVENTS,
    );
}
