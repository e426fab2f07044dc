//! A TCP proxy in front of a real broker that forwards bytes both ways and can swallow them
//! ([`Proxy::blackhole`]): connections stay open but nothing reaches the other side, as with a
//! broker that stops acknowledging; or drop a connection right after the broker's first packet
//! ([`Proxy::cut_after_connack`]: the CONNACK reaches the client, nothing the client sends
//! after it reaches the broker); or close every open connection at once ([`Proxy::reset`]); or
//! pass what the broker sends at a limited rate ([`Proxy::throttle_downlink`]), as a weak
//! cellular link does. A tool for injecting a fault, not a broker.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream`; stops on drop.
pub struct Proxy {
    pub port: u16,
    blackhole: Arc<AtomicBool>,
    /// Connections still to cut after their CONNACK; and how many were cut.
    cuts: Arc<(AtomicU32, AtomicU32)>,
    resets: tokio::sync::watch::Sender<u32>,
    /// Bytes per second from the broker to the clients; 0: no limit.
    downlink_rate: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new((AtomicU32::new(0), AtomicU32::new(0)));
        let (resets, reset_rx) = tokio::sync::watch::channel(0u32);
        let downlink_rate = Arc::new(AtomicU32::new(0));
        let task = {
            let blackhole = blackhole.clone();
            let cuts = cuts.clone();
            let downlink_rate = downlink_rate.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        continue;
                    };
                    // Small packets (PUBACKs) must not wait for Nagle's algorithm.
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let cut = take_one(&cuts.0).then(|| {
                        cuts.1.fetch_add(1, Ordering::SeqCst);
                        Arc::new(AtomicBool::new(false))
                    });
                    let (r1, r2) = (reset_rx.clone(), reset_rx.clone());
                    let unlimited = Arc::new(AtomicU32::new(0));
                    tokio::spawn(pipe(
                        cr,
                        sw,
                        blackhole.clone(),
                        cut.clone(),
                        false,
                        r1,
                        unlimited,
                    ));
                    tokio::spawn(pipe(
                        sr,
                        cw,
                        blackhole.clone(),
                        cut,
                        true,
                        r2,
                        downlink_rate.clone(),
                    ));
                }
            })
        };
        Self {
            port,
            blackhole,
            cuts,
            resets,
            downlink_rate,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// While on, bytes are read and dropped in both directions.
    pub fn blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }

    /// The next `n` connections are closed right after the broker's first packet (its CONNACK)
    /// reached the client; what the client sends after it (its SUBSCRIBE) is dropped.
    pub fn cut_after_connack(&self, n: u32) {
        self.cuts.0.store(n, Ordering::SeqCst);
    }

    /// Closes every connection open now (both sides see it end; new ones are accepted).
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Passes at most `bytes_per_second` from the broker to each client (0: no limit); what
    /// waits stays in the sockets' buffers, nothing is lost.
    pub fn throttle_downlink(&self, bytes_per_second: u32) {
        self.downlink_rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// How many connections were cut so far.
    pub fn cut(&self) -> u32 {
        self.cuts.1.load(Ordering::SeqCst)
    }
}

fn take_one(left: &AtomicU32) -> bool {
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`. With `cut`: the broker side (`from_broker`) raises it before the
/// first chunk goes to the client and then closes; the client side drops everything it reads
/// once it is raised.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
    cut: Option<Arc<AtomicBool>>,
    from_broker: bool,
    mut reset: tokio::sync::watch::Receiver<u32>,
    rate: Arc<AtomicU32>,
) {
    let mut buf = vec![0u8; 16 << 10];
    reset.borrow_and_update();
    loop {
        let limit = rate.load(Ordering::SeqCst);
        // Throttled: small reads, each followed by the time its bytes take at the rate.
        let room = if limit == 0 { buf.len() } else { 1024 };
        let n = tokio::select! {
            read = from.read(&mut buf[..room]) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = reset.changed() => break,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(cut) = &cut {
            if from_broker {
                cut.store(true, Ordering::SeqCst);
                let _ = to.write_all(&buf[..n]).await;
                break;
            }
            if cut.load(Ordering::SeqCst) {
                break;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if limit > 0 {
            let pause = std::time::Duration::from_secs_f64(n as f64 / f64::from(limit));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = reset.changed() => break,
            }
        }
    }
    let _ = to.shutdown().await;
}
