//! Every benchmark scenario, shrunk with `--smoke` to a few seconds, against the gateway
//! built with this test's profile: each must exit 0 and print its figures. The figures
//! themselves are never asserted; they depend on the machine and what else runs on it.

use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest one smoke run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The scenarios share two cores: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `bench <args> --smoke` and returns its stdout; panics with its output if it fails.
fn smoke(args: &[&str]) -> String {
    let gateway = testkit::binary("gateway");
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .arg("--smoke")
        .arg("--no-build")
        .arg("--gateway-bin")
        .arg(&gateway)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting bench");
    // Read both pipes on threads so that neither can fill up and stall the child.
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(stdout));
    let stderr = read(Box::new(stderr));
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for bench") {
            break status;
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench {args:?} --smoke ran over {RUN_TIMEOUT:?}\n{}",
                stderr.join().expect("stderr reader")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert!(
        status.success(),
        "bench {args:?} --smoke failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!(
        "bench {args:?} --smoke took {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    stdout
}

fn assert_figures(stdout: &str, figures: &[&str]) {
    for figure in figures {
        assert!(
            stdout.contains(figure),
            "no {figure:?} in the output:\n{stdout}"
        );
    }
}

#[test]
fn idle() {
    let out = smoke(&["idle"]);
    assert_figures(
        &out,
        &[
            "SMOKE RUN",
            "gateway RSS per connection",
            "connect rate",
            "handshake + subscribe p99",
        ],
    );
}

#[test]
fn hot_channel() {
    let out = smoke(&["hot-channel"]);
    assert_figures(
        &out,
        &[
            "highest delivery rate with p99 <",
            "p99 at 2,000 deliveries/s",
            "gateway CPU per million deliveries",
        ],
    );
}

#[test]
fn many_channels() {
    let out = smoke(&["many-channels"]);
    assert_figures(
        &out,
        &[
            "channels",
            "deliveries",
            "publish → client p99",
            "Redis CPU",
        ],
    );
}

#[test]
fn many_channels_on_a_redis_cluster() {
    let out = smoke(&["many-channels", "--redis-cluster", "3"]);
    assert_figures(
        &out,
        &[
            "deliveries",
            "delivered / expected",
            "Redis CPU, master 1 (of one core)",
            "Redis CPU, master 3 (of one core)",
        ],
    );
}

#[test]
fn storm() {
    let out = smoke(&["storm"]);
    assert_figures(
        &out,
        &[
            "clients reconnected and resubscribed",
            "all resubscribed",
            "all recovered",
        ],
    );
}

#[test]
fn slow_consumers() {
    let out = smoke(&["slow-consumers"]);
    assert_figures(
        &out,
        &[
            "slow clients closed with 4100",
            "time to first 4100",
            "gateway RSS growth per slow client",
            "healthy clients while slow ones stuck",
        ],
    );
}

/// Also checks `--json`: one JSON object with the scenario's figures.
#[test]
fn publisher_as_json() {
    let out = smoke(&["publisher", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["scenario"], "publisher");
    assert_eq!(report["smoke"], true);
    let figures: Vec<&str> = report["figures"]
        .as_array()
        .expect("figures")
        .iter()
        .filter_map(|f| f["figure"].as_str())
        .collect();
    for depth in [1, 16, 64] {
        for figure in [
            format!("depth {depth}: publisher"),
            format!("depth {depth}: redis-benchmark"),
            format!("depth {depth}: publisher / redis-benchmark"),
        ] {
            assert!(
                figures.contains(&figure.as_str()),
                "no {figure:?} in {report}"
            );
        }
    }
}

#[test]
fn socket_floor() {
    let out = smoke(&["socket-floor"]);
    assert_figures(
        &out,
        &[
            "burst: writer CPU per write",
            "burst: time to write to every socket",
            "spread: writer CPU per write",
        ],
    );
}

#[test]
fn fallback() {
    let out = smoke(&["fallback"]);
    assert_figures(
        &out,
        &[
            "WebSocket: gateway RSS per connection",
            "SSE: gateway RSS per stream",
            "long-poll: gateway RSS per waiting poll",
            "SSE: gateway CPU per delivery",
            "long-poll: first polls per second",
            "long-poll: polls per gateway CPU-second (per core)",
        ],
    );
}

#[test]
fn soak() {
    let out = smoke(&["soak"]);
    assert_figures(
        &out,
        &[
            "RSS drift over the last",
            "open files at the end",
            "runtime tasks at the end",
            "churn: connections",
            "RSS MiB",
        ],
    );
}

#[test]
fn encodings() {
    let out = smoke(&["encodings"]);
    assert_figures(
        &out,
        &[
            "100 B json: bytes on the wire per delivery",
            "4 KiB msgpack+deflate: bytes vs JSON",
            "4 KiB json+deflate: gateway CPU per delivery",
            "4 KiB msgpack: delivered / expected",
            "B vs JSON",
        ],
    );
}

/// Through `--json`: every shape at both thread counts has its rows and delivered something.
#[test]
fn scaling() {
    let out = smoke(&["scaling", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["scenario"], "scaling");
    let figures = report["figures"].as_array().expect("figures");
    let value = |figure: &str| {
        figures
            .iter()
            .find(|f| f["figure"] == figure)
            .unwrap_or_else(|| panic!("no {figure:?} in {report}"))["value"]
            .as_f64()
    };
    for (shape, limit) in [("hot-channel", 250), ("many-channels", 50)] {
        for threads in ["1 thread", "2 threads"] {
            let cell = format!("{shape} @ {threads}");
            value(&format!("{cell}: highest rate with p99 < {limit} ms"));
            value(&format!("{cell}: gateway cores used at saturation"));
            value(&format!("{cell}: p99 at saturation"));
            let delivered = value(&format!("{cell}: saturated delivered"));
            assert!(
                delivered.is_some_and(|d| d > 0.0),
                "{cell} delivered nothing: {report}"
            );
        }
        value(&format!("{shape}: speed-up 2 threads vs 1"));
    }
}
