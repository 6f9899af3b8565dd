use clap::Parser;

use super::*;

fn with_file(toml: &str) -> Result<Config, ConfigError> {
    let path = std::env::temp_dir().join(format!("gw-config-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml).unwrap();
    let args = Args {
        config: Some(path.clone()),
        ..Args::default()
    };
    let result = Config::load(args);
    let _ = std::fs::remove_file(path);
    result
}

#[test]
fn defaults_are_development_mode_on_the_spec_ports() {
    let config = Config::load(Args::default()).unwrap();
    assert!(config.is_development());
    assert_eq!(config.listen.port(), 8080);
    assert_eq!(config.admin_listen.port(), 9090);
    assert_eq!(config.limits.max_message_bytes, 524_288);
    assert_eq!(config.redis_prefix, "gw");
    assert!(config.namespaces.get("default").is_some());
    assert!(config.namespaces.get("personal").is_some());
}

#[test]
fn namespaces_come_from_the_file_and_flags_win() {
    let config = with_file(
        r#"
        max_channels_per_connection = 7
        [namespaces.room]
        subscribe = "claims"
        client_publish = true
        presence = true
        history_size = 100
        history_ttl = "10m"
        "#,
    )
    .unwrap();
    let room = config.namespaces.get("room").unwrap();
    assert_eq!(room.subscribe, SubscribePolicy::Claims);
    assert!(room.client_publish);
    assert_eq!(room.history_ttl, Some(Duration::from_secs(600)));
    assert_eq!(config.limits.max_channels_per_connection, 7);
}

#[test]
fn contradictions_are_refused_with_a_clear_message() {
    let err = with_file("[namespaces.x]\nhistory_size = 5\n").unwrap_err();
    assert!(err.to_string().contains("history_ttl"), "{err}");
    let err = with_file("bogus = 1\n").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    let only_key = Args {
        api_key: Some("k".into()),
        ..Args::default()
    };
    assert!(
        Config::load(only_key)
            .unwrap_err()
            .to_string()
            .contains("token key")
    );
    let short_idle = Args {
        idle_timeout: Some(Duration::from_secs(1)),
        ..Args::default()
    };
    assert!(Config::load(short_idle).is_err());
}

#[test]
fn handshake_limits_have_defaults_and_are_validated() {
    let config = Config::load(Args::default()).unwrap();
    assert_eq!(config.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(config.limits.max_pending_handshakes, 4096);
    assert_eq!(config.limits.max_header_bytes, 65_536);
    let from_file = with_file("handshake_timeout = \"2s\"\nmax_header_bytes = 16384\n").unwrap();
    assert_eq!(from_file.limits.handshake_timeout, Duration::from_secs(2));
    assert_eq!(from_file.limits.max_header_bytes, 16_384);
    for (args, variable) in [
        (
            Args {
                handshake_timeout: Some(Duration::ZERO),
                ..Args::default()
            },
            "GATEWAY_HANDSHAKE_TIMEOUT",
        ),
        (
            Args {
                max_pending_handshakes: Some(0),
                ..Args::default()
            },
            "GATEWAY_MAX_PENDING_HANDSHAKES",
        ),
        (
            Args {
                max_header_bytes: Some(1024),
                ..Args::default()
            },
            "GATEWAY_MAX_HEADER_BYTES",
        ),
    ] {
        let error = Config::load(args).unwrap_err().to_string();
        assert!(error.contains(variable), "{error}");
    }
}

fn with_jwks_url(url: &str) -> Args {
    Args {
        jwks_url: Some(url.into()),
        api_key: Some("k".into()),
        ..Args::default()
    }
}

#[test]
fn a_jwks_url_is_a_token_key_with_a_five_minute_schedule() {
    let config = Config::load(with_jwks_url("https://idp.example/.well-known/jwks.json")).unwrap();
    assert!(!config.is_development());
    let schedule = config.auth.jwks_refresh;
    assert_eq!(schedule.interval, Duration::from_secs(300));
    assert_eq!(schedule.min_interval, Duration::from_secs(30));
    let without_api_key = Args {
        api_key: None,
        ..with_jwks_url("http://127.0.0.1:8000/jwks")
    };
    let err = Config::load(without_api_key).unwrap_err();
    assert!(err.to_string().contains("GATEWAY_API_KEY"), "{err}");
    // Like the other key sources, it combines with a secret and a JWKS file.
    let together = Args {
        jwt_secret: Some("s".into()),
        jwks_file: Some("/etc/gateway/jwks.json".into()),
        ..with_jwks_url("http://idp:8080/jwks")
    };
    assert!(Config::load(together).is_ok());
}

#[test]
fn a_jwks_url_must_be_http_or_https() {
    for (url, expected) in [
        ("", "set but empty"),
        ("not a url", "is not a URL"),
        ("ftp://idp.example/jwks", "http:// or https://"),
        ("file:///etc/jwks.json", "http:// or https://"),
    ] {
        let err = Config::load(with_jwks_url(url)).unwrap_err().to_string();
        assert!(err.contains("GATEWAY_JWKS_URL"), "{url}: {err}");
        assert!(err.contains(expected), "{url}: {err}");
    }
}

#[test]
fn jwks_refresh_intervals_must_be_positive_and_in_order() {
    let with = |every: u64, min: u64| Args {
        jwks_refresh_interval: Some(Duration::from_secs(every)),
        jwks_min_refresh_interval: Some(Duration::from_secs(min)),
        ..with_jwks_url("https://idp.example/jwks")
    };
    let err = Config::load(with(0, 0)).unwrap_err().to_string();
    assert!(err.contains("GATEWAY_JWKS_REFRESH_INTERVAL"), "{err}");
    let err = Config::load(with(10, 0)).unwrap_err().to_string();
    assert!(err.contains("GATEWAY_JWKS_MIN_REFRESH_INTERVAL"), "{err}");
    let err = Config::load(with(10, 60)).unwrap_err().to_string();
    assert!(
        err.contains("GATEWAY_JWKS_MIN_REFRESH_INTERVAL (1m)")
            && err.contains("GATEWAY_JWKS_REFRESH_INTERVAL (10s)"),
        "{err}"
    );
    let equal = Config::load(with(1, 1)).unwrap();
    assert_eq!(equal.auth.jwks_refresh.interval, Duration::from_secs(1));
}

#[test]
fn the_jwks_url_and_its_schedule_come_from_the_file_too() {
    let toml = r#"
        jwks_url = "https://idp.example/jwks"
        jwks_refresh_interval = "1m"
        jwks_min_refresh_interval = "10s"
        "#;
    let path = std::env::temp_dir().join(format!("gw-config-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, toml).unwrap();
    let args = Args {
        config: Some(path.clone()),
        api_key: Some("k".into()),
        ..Args::default()
    };
    let config = Config::load(args);
    let _ = std::fs::remove_file(path);
    let auth = config.unwrap().auth;
    assert_eq!(auth.jwks_url.as_deref(), Some("https://idp.example/jwks"));
    assert_eq!(auth.jwks_refresh.interval, Duration::from_secs(60));
    assert_eq!(auth.jwks_refresh.min_interval, Duration::from_secs(10));
}

#[test]
fn bus_canary_settings_have_defaults_and_are_validated() {
    let config = Config::load(Args::default()).unwrap();
    assert_eq!(config.bus_canary_interval, Duration::from_secs(5));
    assert_eq!(config.bus_canary_timeout, Duration::from_secs(3));
    let args = Args {
        bus_canary_timeout: Some(Duration::ZERO),
        ..Args::default()
    };
    let error = Config::load(args).unwrap_err().to_string();
    assert!(error.contains("GATEWAY_BUS_CANARY_TIMEOUT"), "{error}");
}

#[test]
fn compression_is_off_by_default_and_switched_on_by_flag_or_file() {
    assert_eq!(Config::load(Args::default()).unwrap().ws_compression, None);
    let on = Args::try_parse_from(["gateway", "--ws-compression", "on"]).unwrap();
    assert_eq!(Config::load(on).unwrap().ws_compression, Some(256));
    let off = Args::try_parse_from(["gateway", "--ws-compression", "OFF"]).unwrap();
    assert_eq!(Config::load(off).unwrap().ws_compression, None);
    let error = Args::try_parse_from(["gateway", "--ws-compression", "maybe"]).unwrap_err();
    assert!(
        error.to_string().contains("neither \"on\" nor \"off\""),
        "{error}"
    );
    let config = with_file("ws_compression = true\nws_compression_min_bytes = 64").unwrap();
    assert_eq!(config.ws_compression, Some(64));
}

#[test]
fn redis_modes_are_read_and_checked_with_clear_messages() {
    let seeds = "redis://10.0.0.1:6379,redis://10.0.0.2:6379";
    let cluster =
        Args::try_parse_from(["gateway", "--redis-mode", "cluster", "--redis-url", seeds]).unwrap();
    let config = Config::load(cluster).unwrap();
    let topology = config.redis_topology().unwrap().unwrap();
    assert_eq!(topology.mode(), RedisMode::Cluster);
    assert_eq!(topology.urls().len(), 2);
    let config =
        with_file("redis_mode = \"sentinel\"\nredis_url = \"redis://s1:26379\"\nredis_sentinel_master = \"main\"")
            .unwrap();
    assert_eq!(
        config.redis_topology().unwrap().unwrap().sentinel_master(),
        Some("main")
    );
    let refused = [
        (vec!["--redis-url", seeds], "GATEWAY_REDIS_MODE"),
        (
            vec![
                "--redis-mode",
                "sentinel",
                "--redis-url",
                "redis://s1:26379",
            ],
            "GATEWAY_REDIS_SENTINEL_MASTER",
        ),
        (vec!["--redis-mode", "cluster"], "needs GATEWAY_REDIS_URL"),
    ];
    for (flags, expected) in refused {
        let args = Args::try_parse_from(["gateway"].into_iter().chain(flags)).unwrap();
        let error = Config::load(args).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
    let error = Args::try_parse_from(["gateway", "--redis-mode", "clustered"]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("standalone, cluster or sentinel"),
        "{error}"
    );
    let error = with_file("redis_mode = \"shards\"")
        .unwrap_err()
        .to_string();
    assert!(error.contains("standalone, cluster or sentinel"), "{error}");
}
