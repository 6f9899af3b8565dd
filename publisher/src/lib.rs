//! Emit events to the gateway's bus from worker services and APIs.
//!
//! ```
//! # testkit::with_redis(|url| async move {
//! use publisher::{Event, Publisher};
//!
//! let publisher = Publisher::connect(&url)?;
//! let event = Event::to_user("42", "face_detection_done", &serde_json::json!({"photo": "p1"}))?;
//! publisher.publish(&event).await?;
//! # Ok::<(), publisher::PublishError>(())
//! # });
//! ```
//!
//! [`wire`] defines the bus message that every publisher writes and every gateway reads, and
//! the rest of the Redis contract: topic and key names, and the publish script with its
//! arguments. It is the one place where that contract lives (`docs/redis.md` describes it for
//! other languages).

mod publish;
pub mod shared;
pub mod topology;
pub mod wire;

pub use publish::{Event, PublishError, Publisher, Receipt, Recipients};
pub use shared::{Connection, SharedConnection};
pub use topology::{RedisMode, RedisTopology};
pub use wire::{
    ChannelName, ClientType, Envelope, EventName, PUBLISH_SCRIPT, Position, Target, Topics, UserId,
    WireError,
};
