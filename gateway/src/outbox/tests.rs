use std::future::poll_fn;

use tokio::io::{AsyncReadExt, DuplexStream, duplex};

use super::cork::SPLIT_ABOVE;
use super::frame::text_frame;
use super::*;
use crate::protocol::Format;

fn outbox(pipe: usize, limit: usize) -> (Outbox, DuplexStream, Arc<Metrics>) {
    let (ours, theirs) = duplex(pipe);
    let metrics = Arc::new(Metrics::new().unwrap());
    let outbox = Outbox::new(ours, limit, Arc::clone(&metrics), Encoding::default());
    outbox.release();
    (outbox, theirs, metrics)
}

async fn read_exactly(peer: &mut DuplexStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    peer.read_exact(&mut buf).await.unwrap();
    buf
}

#[test]
fn frames_have_the_shortest_length_header() {
    let short = text_frame(b"hi");
    assert_eq!(&short[..], b"\x81\x02hi");
    let medium = text_frame(&[b'x'; 300]);
    assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
    assert_eq!(medium.len(), 304);
    let long = text_frame(&[b'x'; 70_000]);
    assert_eq!(&long[..2], &[0x81, 127]);
    assert_eq!(&long[2..10], &70_000u64.to_be_bytes());
    for len in [0, 125, 126, 65_535, 65_536] {
        let json = "x".repeat(len);
        assert_eq!(OutFrame::reply(&json).json(), json);
    }
}

#[tokio::test]
async fn an_idle_socket_is_written_at_once() {
    let (outbox, mut peer, metrics) = outbox(1024, 100);
    outbox.push(&OutFrame::reply("hello")).unwrap();
    assert_eq!(outbox.queued_bytes(), 0);
    assert_eq!(read_exactly(&mut peer, 7).await, b"\x81\x05hello");
    assert_eq!(metrics.messages_sent.get(), 1);
}

#[tokio::test]
async fn a_full_socket_gets_a_backlog_that_drains_in_order() {
    let (outbox, mut peer, metrics) = outbox(10, 1000);
    for word in ["first", "second", "third"] {
        outbox.push(&OutFrame::reply(word)).unwrap();
    }
    assert!(outbox.queued_bytes() > 0, "the pipe takes only 10 bytes");
    assert_eq!(
        metrics.outbox_bytes.get(),
        gauge_bytes(outbox.queued_bytes())
    );
    let reader = tokio::spawn(async move { read_exactly(&mut peer, 7 + 8 + 7).await });
    poll_fn(|cx| outbox.poll_drain(cx)).await.unwrap();
    assert_eq!(
        reader.await.unwrap(),
        b"\x81\x05first\x81\x06second\x81\x05third"
    );
    assert_eq!(outbox.queued_bytes(), 0);
    assert_eq!(metrics.outbox_bytes.get(), 0);
    assert_eq!(metrics.messages_sent.get(), 3);
}

#[tokio::test]
async fn a_corked_round_writes_each_socket_once_at_its_end() {
    let (outbox, mut peer, metrics) = outbox(1024, 100);
    corked(|| {
        outbox.push(&OutFrame::reply("one")).unwrap();
        outbox.push(&OutFrame::reply("two")).unwrap();
        assert_eq!(
            outbox.queued_bytes(),
            10,
            "nothing written during the round"
        );
    });
    assert_eq!(outbox.queued_bytes(), 0);
    assert_eq!(read_exactly(&mut peer, 10).await, b"\x81\x03one\x81\x03two");
    assert_eq!(metrics.messages_sent.get(), 2);
    outbox.push(&OutFrame::reply("three")).unwrap();
    assert_eq!(
        outbox.queued_bytes(),
        0,
        "outside a round, frames go straight out"
    );
}

#[tokio::test]
async fn held_frames_wait_behind_the_first() {
    let (ours, mut peer) = duplex(1024);
    let metrics = Arc::new(Metrics::new().unwrap());
    let outbox = Outbox::new(ours, 100, metrics, Encoding::default());
    outbox.push(&OutFrame::reply("event")).unwrap();
    outbox.push_first(&OutFrame::reply("hello"));
    outbox.release();
    outbox.backlog_signal().await;
    poll_fn(|cx| outbox.poll_drain(cx)).await.unwrap();
    assert_eq!(
        read_exactly(&mut peer, 14).await,
        b"\x81\x05hello\x81\x05event"
    );
}

#[tokio::test]
async fn overflow_closes_as_slow_consumer_once() {
    let (outbox, _peer, _) = outbox(4, 20);
    outbox.push(&OutFrame::reply("0123456789")).unwrap();
    assert_eq!(outbox.queued_bytes(), 8, "the pipe took 4 of 12 bytes");
    outbox.push(&OutFrame::reply("0123456789")).unwrap();
    assert_eq!(outbox.push(&OutFrame::reply("x")), Err(PushError::Overflow));
    assert_eq!(outbox.push(&OutFrame::reply("x")), Err(PushError::Closed));
    assert_eq!(outbox.closing().await, CloseCode::SlowConsumer);
    assert!(!outbox.close(CloseCode::ShuttingDown), "first code wins");
}

#[tokio::test]
async fn discarding_keeps_a_frame_already_started() {
    let (outbox, mut peer, metrics) = outbox(4, 100);
    outbox.push(&OutFrame::reply("0123456789")).unwrap();
    outbox.push(&OutFrame::reply("abc")).unwrap();
    outbox.discard_backlog();
    assert_eq!(outbox.queued_bytes(), 8);
    let reader = tokio::spawn(async move { read_exactly(&mut peer, 12).await });
    poll_fn(|cx| outbox.poll_drain(cx)).await.unwrap();
    assert_eq!(reader.await.unwrap(), b"\x81\x0a0123456789");
    outbox.shut();
    assert_eq!(metrics.outbox_bytes.get(), 0);
    assert_eq!(outbox.push(&OutFrame::reply("x")), Err(PushError::Closed));
}

#[tokio::test]
async fn the_gauge_forgets_a_backlog_left_behind() {
    let (outbox, _peer, metrics) = outbox(2, 100);
    outbox.push(&OutFrame::reply("0123456789")).unwrap();
    assert_eq!(metrics.outbox_bytes.get(), 10);
    drop(outbox);
    assert_eq!(metrics.outbox_bytes.get(), 0);
}

const MSGPACK: Encoding = Encoding {
    format: Format::Msgpack,
    compress_from: None,
};

#[test]
fn a_frame_is_packed_once_however_many_msgpack_connections_take_it() {
    let frame = OutFrame::event(r#"{"type":"e","channel":"jobs","data":{"a":1}}"#, None);
    let first = frame.wire(MSGPACK).clone();
    assert_eq!(first.as_ptr(), frame.wire(MSGPACK).as_ptr());
    // FIN and binary, a 3-entry map.
    assert_eq!(&first[..3], &[0x82, first.len() as u8 - 2, 0x83]);
    assert_eq!(frame.wire(Encoding::default())[0], 0x81);
    let ping = OutFrame::control(&[0x89, 0x00]);
    assert_eq!(&ping.wire(MSGPACK)[..], &[0x89, 0x00]);
}

#[test]
fn a_frame_is_compressed_once_per_format_and_only_from_the_minimum_size() {
    let json = format!(
        r#"{{"type":"e","channel":"jobs","data":"{}"}}"#,
        "ab".repeat(200)
    );
    let frame = OutFrame::event(&json, None);
    for format in [Format::Json, Format::Msgpack] {
        let deflate = Encoding {
            format,
            compress_from: Some(256),
        };
        let compressed = frame.wire(deflate).clone();
        assert_eq!(compressed.as_ptr(), frame.wire(deflate).as_ptr());
        let opcode = if format == Format::Json { 0x1 } else { 0x2 };
        // FIN, RSV1 and the format's opcode.
        assert_eq!(compressed[0], 0xc0 | opcode);
        let payload = &compressed[2..];
        let mut inflater = crate::protocol::deflate::Inflater::new(1 << 16);
        inflater.feed(payload).unwrap();
        let plain = frame.wire(Encoding {
            format,
            compress_from: None,
        });
        assert_eq!(inflater.finish().unwrap(), plain[4..]);
        let too_small = Encoding {
            format,
            compress_from: Some(100_000),
        };
        assert_eq!(frame.wire(too_small).as_ptr(), plain.as_ptr());
    }
    let ping = OutFrame::control(&[0x89, 0x00]);
    let always = Encoding {
        format: Format::Json,
        compress_from: Some(0),
    };
    assert_eq!(&ping.wire(always)[..], &[0x89, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_on_many_sockets_is_split_among_workers_and_keeps_each_sockets_order() {
    let (outboxes, peers): (Vec<_>, Vec<_>) = (0..SPLIT_ABOVE * 2)
        .map(|_| {
            let (outbox, peer, _) = outbox(4096, 4096);
            (outbox, peer)
        })
        .unzip();
    let words = ["one", "two", "six"];
    for word in words {
        let frame = OutFrame::reply(word);
        corked(|| {
            for outbox in &outboxes {
                outbox.push(&frame).unwrap();
            }
        });
    }
    let expected: Vec<u8> = words
        .iter()
        .flat_map(|word| text_frame(word.as_bytes()).to_vec())
        .collect();
    let readers: Vec<_> = peers
        .into_iter()
        .map(|mut peer| {
            let expected = expected.clone();
            tokio::spawn(async move { read_exactly(&mut peer, expected.len()).await == expected })
        })
        .collect();
    for reader in readers {
        assert!(
            reader.await.unwrap(),
            "every socket gets its frames whole and in order"
        );
    }
    assert!(outboxes.iter().all(|outbox| outbox.queued_bytes() == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_round_counts_every_frame_sent_and_its_latency_once() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let (outboxes, mut peers): (Vec<_>, Vec<_>) = (0..SPLIT_ABOVE + 100)
        .map(|_| {
            let (ours, theirs) = duplex(4096);
            let outbox = Outbox::new(ours, 4096, Arc::clone(&metrics), Encoding::default());
            outbox.release();
            (outbox, theirs)
        })
        .unzip();
    let published_at = SystemTime::now() - std::time::Duration::from_secs(1);
    let frame = OutFrame::event("{}", Some(published_at));
    corked(|| {
        outboxes
            .iter()
            .for_each(|outbox| outbox.push(&frame).unwrap())
    });
    for peer in &mut peers {
        assert_eq!(read_exactly(peer, 4).await, b"\x81\x02{}");
    }
    let sockets = outboxes.len() as u64;
    // The last part adds its tally once all its writes are done, just after its peers read.
    for _ in 0..100 {
        if metrics.messages_sent.get() == sockets {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.messages_sent.get(), sockets);
    let latency = &metrics.delivery_latency;
    assert_eq!(latency.get_sample_count(), sockets);
    assert!(
        latency.get_sample_sum() >= sockets as f64,
        "each took a second or more"
    );
}
