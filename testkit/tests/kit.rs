//! The kit's promises: scratch directories that outlive a failing test, distinct free ports,
//! and a real `redis-server` that can be killed and restarted on its port.

use std::time::Duration;

use testkit::{RedisServer, TempDir, free_addrs, free_port, profile_dir, with_redis};

#[test]
fn temp_dir_is_removed_on_drop() {
    let dir = TempDir::new("testkit");
    let file = dir.write("a.txt", "a");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "a");
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists(), "{} outlived its TempDir", path.display());
}

#[test]
fn temp_dir_is_kept_when_its_thread_panics_or_when_asked() {
    let failed = std::thread::spawn(|| {
        let dir = TempDir::new("testkit-panic");
        let path = dir.path().to_path_buf();
        std::panic::panic_any(path);
    })
    .join()
    .unwrap_err();
    let path = failed.downcast::<std::path::PathBuf>().unwrap();
    assert!(path.is_dir(), "{} was removed on a panic", path.display());
    std::fs::remove_dir_all(*path).unwrap();

    let mut kept = TempDir::create("testkit-kept").unwrap();
    kept.keep();
    let path = kept.path().to_path_buf();
    drop(kept);
    assert!(path.is_dir(), "{} was removed though kept", path.display());
    std::fs::remove_dir_all(path).unwrap();
}

#[test]
fn free_addrs_are_distinct_loopback_ports() {
    let addrs: [_; 4] = free_addrs().unwrap();
    for (i, a) in addrs.iter().enumerate() {
        assert!(a.ip().is_loopback() && a.port() != 0, "{a}");
        assert!(addrs[i + 1..].iter().all(|b| b != a), "{addrs:?}");
    }
    assert_ne!(free_port(), 0);
}

#[tokio::test]
async fn redis_comes_back_empty_on_its_port_after_restart() {
    let mut redis = RedisServer::start().await;
    assert_ne!(redis.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.cli(&["SET", "k", "v"]).await.trim(), "OK");
    assert_eq!(redis.cli(&["GET", "k"]).await.trim(), "v");
    let first = redis.pid().unwrap();

    redis.kill().await;
    assert_eq!(redis.pid(), None);
    assert_eq!(redis.cli(&["PING"]).await.trim(), "", "answers after kill");

    let port = redis.port();
    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), Some(first));
    assert_eq!(redis.cli(&["PING"]).await.trim(), "PONG");
    assert_eq!(
        redis.cli(&["GET", "k"]).await.trim(),
        "",
        "data survived a restart"
    );
}

#[tokio::test]
async fn redis_takes_extra_arguments_and_dies_with_its_handle() {
    let redis = RedisServer::start_with(&["--maxclients", "123"])
        .await
        .unwrap();
    let reply = redis.cli(&["CONFIG", "GET", "maxclients"]).await;
    assert_eq!(reply.lines().nth(1), Some("123"), "{reply}");
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "save"]).await.lines().nth(1),
        Some("")
    );
    let port = redis.port();
    drop(redis);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still answers on {port}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn redis_that_cannot_start_is_an_error() {
    let error = RedisServer::start_with(&["--no-such-option", "1"])
        .await
        .unwrap_err();
    assert!(error.to_string().contains("redis-server exited"), "{error}");
}

#[test]
#[should_panic(expected = "the example failed")]
fn with_redis_panics_when_the_example_fails() {
    with_redis(|_url| async { Err::<(), _>("no") });
}

#[test]
fn profile_dir_is_where_cargo_put_this_test() {
    let dir = profile_dir().unwrap();
    assert!(dir.join("deps").is_dir(), "{}", dir.display());
}
