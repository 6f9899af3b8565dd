//! The registry's three parts, the same from memory and from Redis: leases, presence records,
//! user slots.

use std::time::Duration;

use gateway::cluster::{PresenceRecord, Registry, RegistryError};
use gateway::view::PresenceEntry;

/// Makes the registry under test.
trait Store {
    fn registry(&self) -> Registry;
}

struct Memory;

impl Store for Memory {
    fn registry(&self) -> Registry {
        Registry::memory()
    }
}

impl Store for crate::Redis {
    fn registry(&self) -> Registry {
        Registry::redis(&self.connection(), &self.topics)
    }
}

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(200);

/// Long enough for a [`SHORT`] lease to have expired.
async fn until_short_leases_expire() {
    tokio::time::sleep(SHORT * 3).await;
}

fn entry(client_id: &str) -> PresenceEntry {
    PresenceEntry {
        client_id: client_id.into(),
        user_id: "u1".into(),
        client_type: Some("gui".into()),
    }
}

fn sorted(mut records: Vec<PresenceRecord>) -> Vec<PresenceRecord> {
    records.sort_by(|a, b| (&a.0, &a.1.client_id).cmp(&(&b.0, &b.1.client_id)));
    records
}

async fn renewed_nodes_are_live(store: impl Store) -> Result<(), RegistryError> {
    let leases = store.registry().leases;
    leases.renew("b", LONG).await?;
    leases.renew("a", LONG).await?;
    leases.renew("a", LONG).await?;
    let mut live = leases.live().await?;
    live.sort();
    assert_eq!(live, ["a", "b"]);
    assert!(leases.expired().await?.is_empty());
    Ok(())
}

async fn expired_leases_are_reported_until_forgotten(
    store: impl Store,
) -> Result<(), RegistryError> {
    let leases = store.registry().leases;
    leases.renew("gone", SHORT).await?;
    leases.renew("alive", LONG).await?;
    until_short_leases_expire().await;
    assert_eq!(leases.live().await?, ["alive"]);
    assert_eq!(leases.expired().await?, ["gone"]);
    leases.forget("gone").await?;
    assert!(leases.expired().await?.is_empty());
    assert_eq!(leases.live().await?, ["alive"]);
    Ok(())
}

async fn a_renewed_lease_is_live_again(store: impl Store) -> Result<(), RegistryError> {
    let leases = store.registry().leases;
    leases.renew("a", SHORT).await?;
    until_short_leases_expire().await;
    leases.renew("a", LONG).await?;
    assert_eq!(leases.live().await?, ["a"]);
    assert!(leases.expired().await?.is_empty());
    Ok(())
}

async fn one_survivor_claims_a_dead_node(store: impl Store) -> Result<(), RegistryError> {
    let leases = store.registry().leases;
    assert!(leases.claim("dead", "b").await?);
    assert!(!leases.claim("dead", "c").await?);
    assert!(!leases.claim("dead", "b").await?, "a claim is made once");
    assert!(leases.claim("other", "c").await?);
    Ok(())
}

async fn presence_records_are_taken_once_per_node(store: impl Store) -> Result<(), RegistryError> {
    let presence = store.registry().presence;
    presence.add("n1", "room:1", &entry("c1")).await?;
    presence.add("n1", "room:2", &entry("c1")).await?;
    presence.add("n1", "room:1", &entry("c2")).await?;
    presence.add("n2", "room:1", &entry("c3")).await?;
    presence.remove("n1", "room:2", "c1").await?;
    presence.remove("n1", "room:9", "c1").await?;
    let taken = sorted(presence.take("n1").await?);
    let expected = [
        ("room:1".to_owned(), entry("c1")),
        ("room:1".to_owned(), entry("c2")),
    ];
    assert_eq!(taken, expected);
    assert!(presence.take("n1").await?.is_empty());
    assert_eq!(
        presence.take("n2").await?,
        [("room:1".to_owned(), entry("c3"))]
    );
    Ok(())
}

async fn user_slots_are_capped_across_live_nodes(store: impl Store) -> Result<(), RegistryError> {
    let registry = store.registry();
    registry.leases.renew("n1", LONG).await?;
    registry.leases.renew("n2", LONG).await?;
    let slots = registry.user_slots;
    assert!(slots.acquire("n1", "u", 2).await?);
    assert!(slots.acquire("n2", "u", 2).await?);
    assert!(!slots.acquire("n1", "u", 2).await?, "at the cap");
    assert!(slots.acquire("n1", "other", 2).await?, "per user");
    slots.release("n2", "u").await?;
    assert!(slots.acquire("n2", "u", 2).await?, "a slot was given back");
    assert!(!slots.acquire("n2", "u", 2).await?);
    Ok(())
}

async fn user_slots_on_expired_nodes_do_not_count(store: impl Store) -> Result<(), RegistryError> {
    let registry = store.registry();
    registry.leases.renew("gone", SHORT).await?;
    registry.leases.renew("alive", LONG).await?;
    let slots = registry.user_slots;
    assert!(slots.acquire("gone", "u", 1).await?);
    assert!(!slots.acquire("alive", "u", 1).await?);
    until_short_leases_expire().await;
    assert!(slots.acquire("alive", "u", 1).await?);
    Ok(())
}

async fn a_forgotten_node_gives_its_user_slots_back(
    store: impl Store,
) -> Result<(), RegistryError> {
    let registry = store.registry();
    registry.leases.renew("n1", LONG).await?;
    registry.leases.renew("n2", LONG).await?;
    let slots = registry.user_slots;
    assert!(slots.acquire("n1", "u", 1).await?);
    assert!(slots.acquire("n1", "v", 1).await?);
    assert!(!slots.acquire("n2", "u", 1).await?);
    slots.forget("n1").await?;
    assert!(slots.acquire("n2", "u", 1).await?);
    assert!(slots.acquire("n2", "v", 1).await?);
    Ok(())
}

crate::conformance!(
    super::Memory;
    renewed_nodes_are_live,
    expired_leases_are_reported_until_forgotten,
    a_renewed_lease_is_live_again,
    one_survivor_claims_a_dead_node,
    presence_records_are_taken_once_per_node,
    user_slots_are_capped_across_live_nodes,
    user_slots_on_expired_nodes_do_not_count,
    a_forgotten_node_gives_its_user_slots_back,
);
