//! Channel history, the same from memory and from Redis: offsets, epochs, reads, trimming,
//! expiry, idempotency; and the idempotency window the gateways give every publisher.

use std::time::Duration;

use bytes::Bytes;
use gateway::broker::MemoryBus;
use gateway::history::{
    History, HistoryError, HistoryPolicy, MemoryHistory, Page, Policies, Published, RedisHistory,
};
use publisher::wire::{ChannelName, IDEMPOTENCY_WINDOW_FIELD, Position, Topics, with_position};
use publisher::{Event, Publisher};
use tokio::sync::watch;

/// A history under test, and what keeps it running.
struct Subject {
    history: Box<dyn History>,
    _bus_up: Option<watch::Sender<bool>>,
}

/// Makes the history under test.
trait Store {
    fn history(&self, policies: Policies, window: Duration) -> Subject;
}

struct Memory;

impl Store for Memory {
    fn history(&self, policies: Policies, window: Duration) -> Subject {
        let history = MemoryHistory::new(MemoryBus::new(), Topics::new("gw"), policies, window);
        Subject {
            history: Box::new(history),
            _bus_up: None,
        }
    }
}

impl Store for crate::Redis {
    fn history(&self, policies: Policies, window: Duration) -> Subject {
        let (bus_up, status) = watch::channel(true);
        let history = RedisHistory::new(
            self.connection(),
            self.topics.clone(),
            policies,
            window,
            status,
        );
        Subject {
            history: Box::new(history),
            _bus_up: Some(bus_up),
        }
    }
}

const WINDOW: Duration = Duration::from_secs(60);

/// History of `size` events kept for `ttl` in the namespace `room`.
fn room(size: usize, ttl: Duration) -> Policies {
    [("room".to_owned(), HistoryPolicy { size, ttl })]
        .into_iter()
        .collect()
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("a valid channel name")
}

fn message(n: u64) -> Bytes {
    Bytes::from(format!(r#"{{"channel":"room:1","event":"e","data":{n}}}"#))
}

async fn publish(
    history: &dyn History,
    name: &str,
    n: u64,
    key: Option<&str>,
) -> Result<Published, HistoryError> {
    history.publish(&channel(name), message(n), key).await
}

async fn read(history: &dyn History, name: &str, since: Option<u64>) -> Result<Page, HistoryError> {
    history.read(&channel(name), since).await
}

fn offsets(page: &Page) -> Vec<u64> {
    page.events.iter().map(|(offset, _)| *offset).collect()
}

async fn offsets_count_from_one_in_one_epoch(store: impl Store) -> Result<(), HistoryError> {
    let subject = store.history(room(10, WINDOW), WINDOW);
    let history = subject.history.as_ref();
    let mut positions = Vec::new();
    for n in 1..=3 {
        let published = publish(history, "room:1", n, None).await?;
        assert!(!published.duplicate);
        positions.push(published.position.expect("a position"));
    }
    let epoch = positions[0].epoch.clone();
    assert!(!epoch.is_empty());
    let offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [1, 2, 3]);
    assert!(positions.iter().all(|p| p.epoch == epoch));
    let top = read(history, "room:1", None).await?;
    assert_eq!(top.top, positions[2]);
    assert!(top.events.is_empty(), "no events without since");
    let other = publish(history, "room:2", 1, None)
        .await?
        .position
        .expect("a position");
    assert_eq!(other.offset, 1, "each channel counts its own");
    Ok(())
}

async fn a_read_since_an_offset_continues_it(store: impl Store) -> Result<(), HistoryError> {
    let subject = store.history(room(10, WINDOW), WINDOW);
    let history = subject.history.as_ref();
    for n in 1..=3 {
        publish(history, "room:1", n, None).await?;
    }
    let page = read(history, "room:1", Some(1)).await?;
    let epoch = page.top.epoch.clone();
    assert_eq!(offsets(&page), [2, 3]);
    for (offset, stored) in &page.events {
        let expected = with_position(&message(*offset), *offset, &epoch);
        assert_eq!(&stored[..], &expected[..], "the position is spliced in");
    }
    let at = |offset| Position {
        offset,
        epoch: epoch.clone(),
    };
    assert!(page.continues(&at(1)));
    let other_epoch = Position {
        offset: 1,
        epoch: "another".into(),
    };
    assert!(!page.continues(&other_epoch));
    let from_start = read(history, "room:1", Some(0)).await?;
    assert_eq!(offsets(&from_start), [1, 2, 3]);
    let unknown = Position {
        offset: 0,
        epoch: String::new(),
    };
    assert!(from_start.continues(&unknown));
    let at_top = read(history, "room:1", Some(3)).await?;
    assert!(at_top.events.is_empty());
    assert!(at_top.continues(&at(3)));
    assert!(!at_top.continues(&at(4)), "ahead of the top");
    Ok(())
}

async fn history_is_trimmed_to_its_size(store: impl Store) -> Result<(), HistoryError> {
    let subject = store.history(room(3, WINDOW), WINDOW);
    let history = subject.history.as_ref();
    for n in 1..=5 {
        publish(history, "room:1", n, None).await?;
    }
    let page = read(history, "room:1", Some(0)).await?;
    assert_eq!(offsets(&page), [3, 4, 5]);
    assert_eq!(page.top.offset, 5);
    let epoch = page.top.epoch.clone();
    assert!(
        !page.continues(&Position { offset: 1, epoch }),
        "2 was trimmed"
    );
    let page = read(history, "room:1", Some(2)).await?;
    assert!(page.continues(&Position {
        offset: 2,
        epoch: page.top.epoch.clone(),
    }));
    Ok(())
}

async fn expired_history_starts_a_new_epoch(store: impl Store) -> Result<(), HistoryError> {
    let subject = store.history(room(10, Duration::from_millis(300)), WINDOW);
    let history = subject.history.as_ref();
    let first = publish(history, "room:1", 1, None)
        .await?
        .position
        .expect("a position");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let page = read(history, "room:1", Some(0)).await?;
    assert_eq!(page.top.offset, 0, "expired with its last event");
    assert!(page.events.is_empty());
    let again = publish(history, "room:1", 2, None)
        .await?
        .position
        .expect("a position");
    assert_eq!(again.offset, 1);
    assert_ne!(again.epoch, first.epoch);
    Ok(())
}

async fn a_repeated_key_is_a_duplicate_within_the_window(
    store: impl Store,
) -> Result<(), HistoryError> {
    let window = Duration::from_millis(500);
    let subject = store.history(room(10, WINDOW), window);
    let history = subject.history.as_ref();
    let first = publish(history, "room:1", 1, Some("k")).await?;
    assert!(!first.duplicate);
    let repeat = publish(history, "room:1", 2, Some("k")).await?;
    assert!(repeat.duplicate);
    assert_eq!(
        repeat.position, first.position,
        "the first publish's position"
    );
    let other_key = publish(history, "room:1", 3, Some("k2")).await?;
    assert!(!other_key.duplicate);
    let other_channel = publish(history, "room:2", 4, Some("k")).await?;
    assert!(!other_channel.duplicate, "keys are per channel");
    assert_eq!(offsets(&read(history, "room:1", Some(0)).await?), [1, 2]);
    tokio::time::sleep(window * 2).await;
    let later = publish(history, "room:1", 5, Some("k")).await?;
    assert!(!later.duplicate, "the window has passed");
    assert_eq!(later.position.expect("a position").offset, 3);
    Ok(())
}

async fn without_a_policy_nothing_is_kept(store: impl Store) -> Result<(), HistoryError> {
    let subject = store.history(room(10, WINDOW), WINDOW);
    let history = subject.history.as_ref();
    let published = publish(history, "plain", 1, None).await?;
    assert_eq!(published.position, None);
    assert!(!published.duplicate);
    let page = read(history, "plain", Some(0)).await?;
    assert!(page.events.is_empty());
    assert_eq!(page.top.offset, 0);
    assert_eq!(page.top.epoch, "");
    let keyed = publish(history, "plain", 2, Some("k")).await?;
    assert!(!keyed.duplicate);
    let repeat = publish(history, "plain", 3, Some("k")).await?;
    assert!(repeat.duplicate, "idempotency needs no history");
    assert_eq!(repeat.position, None);
    Ok(())
}

crate::conformance!(
    super::Memory;
    offsets_count_from_one_in_one_epoch,
    a_read_since_an_offset_continues_it,
    history_is_trimmed_to_its_size,
    expired_history_starts_a_new_epoch,
    a_repeated_key_is_a_duplicate_within_the_window,
    without_a_policy_nothing_is_kept,
);

/// The gateways' idempotency window holds for every publisher: the Rust one here, and those
/// in other languages that pass the same empty window argument.
#[tokio::test]
async fn publishers_get_the_gateways_idempotency_window() {
    let redis = crate::Redis::start().await;
    let window = Duration::from_secs(1);
    let _gateway = redis.history(room(10, WINDOW), window);
    let namespaces = redis.topics.keys().namespaces();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while redis
        .server
        .cli(&["HGET", &namespaces, IDEMPOTENCY_WINDOW_FIELD])
        .await
        .trim()
        != "1000"
    {
        assert!(tokio::time::Instant::now() < deadline, "window not written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let publisher = Publisher::connect(&redis.url())
        .unwrap()
        .with_prefix(redis.topics.prefix());
    let event = Event::to_channel("room:1", "e", &1)
        .unwrap()
        .idempotent("k");
    let first = publisher.publish(&event).await.unwrap();
    assert!(!first[0].duplicate);
    let repeat = publisher.publish(&event).await.unwrap();
    assert!(repeat[0].duplicate, "within the window");
    assert_eq!(repeat[0].position, first[0].position);
    tokio::time::sleep(2 * window).await;
    let later = publisher.publish(&event).await.unwrap();
    assert!(
        !later[0].duplicate,
        "the gateways' window of 1 s has passed"
    );
    assert_eq!(later[0].position.as_ref().unwrap().offset, 2);
}
