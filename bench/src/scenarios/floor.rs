//! The socket floor: what the kernel charges a process for writing one small frame to one of
//! many loopback TCP sockets, with nothing else in the way (no gateway, no WebSocket, no
//! Redis). It is the bound under the gateway's own cost per delivery: on loopback the writer
//! also pays for the receiving side's TCP processing and for waking the reader.
//!
//! One thread writes with plain blocking `write(2)` calls on `TCP_NODELAY` sockets; another
//! thread reads every socket with tokio, as a client would. Two patterns of writes:
//! - burst: one frame to every socket in turn, as one event to a hot channel's subscribers;
//! - spread: frames to random sockets at a steady rate, as events to many small channels.
//!
//! A third pattern is the floor under a connect: a TCP connect and accept, then the bytes
//! of a WebSocket handshake and one subscribe (request, 101 response, `connection_established`,
//! `subscribe`, `subscribed`) written and read as plain bytes, one connection at a time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};
use tokio::io::AsyncReadExt;

use super::{Bench, progress};
use crate::report::{Report, Unit};

/// Options of the socket-floor scenario.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloorArgs {
    /// Connected socket pairs (each costs two open files) [default: 9500; smoke: 200].
    #[arg(long)]
    sockets: Option<usize>,
    /// Bytes per frame (a 100-byte event's text frame is ~190).
    #[arg(long, default_value_t = 190)]
    frame_bytes: usize,
    /// Bursts, each one frame to every socket [default: 50; smoke: 3].
    #[arg(long)]
    bursts: Option<usize>,
    /// Writes per second of the spread pattern.
    #[arg(long, default_value_t = 50_000.0)]
    rate: f64,
    /// How long the spread pattern runs [default: 5s; smoke: 1s].
    #[arg(long)]
    duration: Option<humantime::Duration>,
    /// Connections opened (and held) by the connect pattern [default: 5000; smoke: 100].
    #[arg(long)]
    connects: Option<usize>,
}

const LABEL: &str = "socket-floor";

pub(crate) async fn run(bench: &Bench, args: &FloorArgs) -> Result<Report> {
    let sockets = bench.pick(args.sockets, 9_500, 200).max(1);
    let bursts = bench.pick(args.bursts, 50, 3).max(1);
    let duration = bench.pick(
        args.duration.map(Into::into),
        Duration::from_secs(5),
        Duration::from_secs(1),
    );
    let frame = vec![b'x'; args.frame_bytes.max(1)];
    let rate = args.rate.max(1.0);
    progress(
        LABEL,
        &format!("connecting {sockets} loopback socket pairs"),
    );
    let figures =
        tokio::task::spawn_blocking(move || measure(sockets, &frame, bursts, rate, duration))
            .await
            .context("the writer thread")??;
    let connects = bench.pick(args.connects, 5_000, 100).max(1);
    progress(
        LABEL,
        &format!("{connects} connects with handshake-sized exchanges"),
    );
    let connect = tokio::task::spawn_blocking(move || measure_connects(connects))
        .await
        .context("the connecting thread")??;

    let mut report = Report::new(
        LABEL,
        format!(
            "{sockets} loopback TCP sockets, plain write(2) of one frame; {connects} plain \
             connects; no gateway"
        ),
        bench.smoke,
    );
    report.param("sockets", sockets);
    report.param("frame_bytes", args.frame_bytes);
    report.param("bursts", bursts);
    report.param("spread_rate", rate);
    report.add(
        "burst: writer CPU per write",
        figures.burst_cpu_per_write * 1e6,
        Unit::Micros,
    );
    report.add(
        "burst: reader CPU per frame",
        figures.burst_reader_cpu_per_write * 1e6,
        Unit::Micros,
    );
    report.add(
        "burst: time to write to every socket",
        figures.burst_wall.as_secs_f64() * 1e3,
        Unit::Millis,
    );
    report.add(
        "spread: writes",
        figures.spread_writes_per_s,
        Unit::PerSecond,
    );
    report.add(
        "spread: writer CPU per write",
        figures.spread_cpu_per_write * 1e6,
        Unit::Micros,
    );
    report.add(
        "spread: reader CPU per frame",
        figures.spread_reader_cpu_per_write * 1e6,
        Unit::Micros,
    );
    report.param("connects", connects);
    report.add(
        "connect: client side CPU per connect",
        connect.client * 1e6,
        Unit::Micros,
    );
    report.add(
        "connect: server side CPU per connect",
        connect.server * 1e6,
        Unit::Micros,
    );
    report.add(
        "connect: most connects/s two cores allow",
        2.0 / (connect.client + connect.server).max(1e-12),
        Unit::PerSecond,
    );
    Ok(report)
}

/// Bytes of each step of a WebSocket connect with one subscribe, as the idle scenario's
/// clients and the gateway exchange them (a token in the URL; a group channel).
const HANDSHAKE: [(Side, usize); 5] = [
    (Side::Client, 420), // GET /ws?token=… with its headers
    (Side::Server, 130), // 101 Switching Protocols
    (Side::Server, 190), // connection_established
    (Side::Client, 60),  // subscribe (masked)
    (Side::Server, 100), // subscribed
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// What one connect costs each side, in CPU seconds.
struct ConnectFigures {
    client: f64,
    server: f64,
}

/// Opens `connects` loopback connections one at a time, each exchanging [`HANDSHAKE`]'s bytes
/// between a client thread and a server thread, and holds them all until the end.
fn measure_connects(connects: usize) -> Result<ConnectFigures> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let address = listener.local_addr()?;
    let server = std::thread::spawn(move || -> Result<(f64, Vec<TcpStream>)> {
        let cpu = thread_cpu()?;
        let mut held = Vec::with_capacity(connects);
        for _ in 0..connects {
            let (mut socket, _) = listener.accept().context("accepting")?;
            socket.set_nodelay(true)?;
            exchange(&mut socket, Side::Server)?;
            held.push(socket);
        }
        Ok((thread_cpu()? - cpu, held))
    });
    let cpu = thread_cpu()?;
    let mut held = Vec::with_capacity(connects);
    for _ in 0..connects {
        let mut socket = TcpStream::connect(address).context("connecting")?;
        socket.set_nodelay(true)?;
        exchange(&mut socket, Side::Client)?;
        held.push(socket);
    }
    let client = thread_cpu()? - cpu;
    let (server, accepted) = server
        .join()
        .map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;
    drop((held, accepted));
    Ok(ConnectFigures {
        client: client / connects as f64,
        server: server / connects as f64,
    })
}

/// Plays `side`'s part of [`HANDSHAKE`] on a blocking socket.
fn exchange(socket: &mut TcpStream, side: Side) -> Result<()> {
    let mut buffer = [0u8; 512];
    for (writer, bytes) in HANDSHAKE {
        if writer == side {
            socket.write_all(&buffer[..bytes]).context("writing")?;
        } else {
            socket.read_exact(&mut buffer[..bytes]).context("reading")?;
        }
    }
    Ok(())
}

/// What the two patterns measured, in seconds.
struct Figures {
    burst_cpu_per_write: f64,
    burst_reader_cpu_per_write: f64,
    burst_wall: Duration,
    spread_writes_per_s: f64,
    spread_cpu_per_write: f64,
    spread_reader_cpu_per_write: f64,
}

/// Connects the pairs, starts the reader and runs both patterns on this thread.
fn measure(
    sockets: usize,
    frame: &[u8],
    bursts: usize,
    rate: f64,
    duration: Duration,
) -> Result<Figures> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let address = listener.local_addr()?;
    let mut writers = Vec::with_capacity(sockets);
    let mut readers = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        let reader = TcpStream::connect(address).context("connecting a loopback socket")?;
        let (writer, _) = listener.accept().context("accepting a loopback socket")?;
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        writers.push(writer);
        readers.push(reader);
    }
    let reader = Reader::start(readers)?;

    let total = (sockets * bursts) as u64 * frame.len() as u64;
    let cpu = thread_cpu()?;
    let reader_cpu = reader.cpu();
    let mut burst_wall = Duration::ZERO;
    for _ in 0..bursts {
        let started = Instant::now();
        for writer in &mut writers {
            writer.write_all(frame).context("writing a frame")?;
        }
        burst_wall += started.elapsed();
    }
    let burst_cpu = thread_cpu()? - cpu;
    reader.wait_for(total)?;
    let burst_reader_cpu = reader.cpu() - reader_cpu;

    let cpu = thread_cpu()?;
    let reader_cpu = reader.cpu();
    let started = Instant::now();
    let mut written = 0u64;
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while written < due {
            let k = rand::random_range(0..writers.len());
            writers[k].write_all(frame).context("writing a frame")?;
            written += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = started.elapsed();
    let spread_cpu = thread_cpu()? - cpu;
    reader.wait_for(total + written * frame.len() as u64)?;
    let spread_reader_cpu = reader.cpu() - reader_cpu;
    reader.stop();

    let burst_writes = (sockets * bursts) as f64;
    let spread_writes = written.max(1) as f64;
    Ok(Figures {
        burst_cpu_per_write: burst_cpu / burst_writes,
        burst_reader_cpu_per_write: burst_reader_cpu / burst_writes,
        burst_wall: burst_wall / bursts as u32,
        spread_writes_per_s: written as f64 / elapsed.as_secs_f64(),
        spread_cpu_per_write: spread_cpu / spread_writes,
        spread_reader_cpu_per_write: spread_reader_cpu / spread_writes,
    })
}

/// The reading side: one tokio thread that reads every socket and counts the bytes.
struct Reader {
    received: Arc<AtomicU64>,
    cpu_micros: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Reader {
    fn start(sockets: Vec<TcpStream>) -> Result<Self> {
        let received = Arc::new(AtomicU64::new(0));
        let cpu_micros = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("the reader's runtime")?;
        let (counted, cpu, stopped) = (received.clone(), cpu_micros.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                for socket in sockets {
                    let Ok(mut socket) = tokio::net::TcpStream::from_std(socket) else {
                        continue;
                    };
                    let counted = counted.clone();
                    tokio::spawn(async move {
                        let mut buffer = [0u8; 4096];
                        while let Ok(n @ 1..) = socket.read(&mut buffer).await {
                            counted.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    });
                }
                // Publishes this thread's CPU time for the writer to read.
                while !stopped.load(Ordering::Relaxed) {
                    if let Ok(seconds) = thread_cpu() {
                        cpu.store((seconds * 1e6) as u64, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        });
        Ok(Self {
            received,
            cpu_micros,
            stop,
            thread,
        })
    }

    /// The reader thread's CPU time so far, in seconds (updated every 5 ms).
    fn cpu(&self) -> f64 {
        self.cpu_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Waits until `bytes` have been read in all, and a little longer so that `cpu` is fresh.
    fn wait_for(&self, bytes: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.received.load(Ordering::Relaxed) < bytes {
            if Instant::now() > deadline {
                bail!(
                    "the reader got {} of {bytes} bytes in 30 s",
                    self.received.load(Ordering::Relaxed)
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The calling thread's CPU time (user and system), in seconds.
pub(crate) fn thread_cpu() -> Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).context("getrusage")?;
    let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(seconds(usage.user_time()) + seconds(usage.system_time()))
}
