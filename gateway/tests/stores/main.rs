//! Conformance suites for the stores behind a node: channel history, and the registry's
//! leases, presence records and user slots. Every suite runs against the in-memory
//! implementation and against Redis (a real `redis-server` per test, a unique key prefix per
//! test), as the broker's does.

mod history;
mod registry;

use std::time::Duration;

// The one place these suites get their Redis from.
use publisher::SharedConnection;
use publisher::wire::Topics;
use testkit::RedisServer as TestRedis;

/// A fresh `redis-server` and a key prefix of this test's own.
struct Redis {
    server: TestRedis,
    topics: Topics,
}

impl Redis {
    async fn start() -> Self {
        Self {
            server: TestRedis::start().await,
            topics: Topics::new(format!("t{}", uuid::Uuid::new_v4().simple())),
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn connection(&self) -> SharedConnection {
        let pool = publisher::shared::pool(&self.url(), 4, Duration::from_secs(3))
            .expect("a pool for the test Redis");
        SharedConnection::new(pool)
    }
}

/// Runs each named suite function against memory (`$memory`) and Redis; a suite fails on its
/// first store error.
macro_rules! conformance {
    ($memory:expr; $($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test($memory).await.expect("the store answers");
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $test() {
                    let redis = crate::Redis::start().await;
                    super::$test(redis).await.expect("the store answers");
                }
            )*
        }
    };
}
pub(crate) use conformance;
