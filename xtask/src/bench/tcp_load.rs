//! Short TCP connections for benchmarks: a tiny server and a load generator,
//! both threads of this process that enter a lab namespace first. Each
//! connection is connect, one request, the answer, close (the server closes
//! first, so the client keeps no TIME_WAIT and its ports free at once).

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
/// How often a server thread looks at its stop flag.
const ACCEPT_TIMEOUT: Duration = Duration::from_millis(200);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Moves the calling thread into network namespace `netns` (by name).
fn enter(netns: &str) -> Result<()> {
    let file = File::open(format!("/run/netns/{netns}"))
        .with_context(|| format!("opening namespace {netns}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering namespace {netns}"))
}

/// A server answering every connection on port `port` of every address of
/// namespace `netns`; stopped (threads joined) on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn start(netns: &str, port: u16, threads: usize) -> Result<Self> {
        let netns = netns.to_owned();
        // Bind on a thread inside the namespace; the socket stays there.
        let listener = thread::spawn(move || -> Result<TcpListener> {
            enter(&netns)?;
            let listener = TcpListener::bind(("0.0.0.0", port))
                .with_context(|| format!("binding port {port} in {netns}"))?;
            set_accept_timeout(&listener)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let listener = listener.try_clone().context("cloning the listener")?;
            let stop = stop.clone();
            handles.push(thread::spawn(move || serve(&listener, &stop)));
        }
        Ok(Self {
            stop,
            threads: handles,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.threads.drain(..) {
            let _ = handle.join();
        }
    }
}

/// accept() returns EAGAIN after ACCEPT_TIMEOUT, so the loop sees `stop`.
fn set_accept_timeout(listener: &TcpListener) -> Result<()> {
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: ACCEPT_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut stream, _)) = listener.accept() else {
            continue;
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        if matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            let _ = stream.write_all(RESPONSE);
        }
    }
}

/// One connection: connect (timed), request, answer until the server
/// closes, close.
fn one_connection(target: SocketAddr, buf: &mut [u8]) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(target)?;
    let connect = start.elapsed();
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(REQUEST)?;
    let mut got = 0;
    loop {
        match stream.read(buf)? {
            0 => break,
            n => got += n,
        }
    }
    if got < RESPONSE.len() {
        bail!("short answer ({got} bytes)");
    }
    Ok(connect)
}

/// Connect latencies of `count` connections made one after another from
/// `netns` (after `warmup` untimed ones), sorted.
pub fn latencies(
    netns: &str,
    target: SocketAddr,
    warmup: usize,
    count: usize,
) -> Result<Vec<Duration>> {
    let netns = netns.to_owned();
    thread::spawn(move || -> Result<Vec<Duration>> {
        enter(&netns)?;
        let mut buf = [0u8; 512];
        for _ in 0..warmup {
            one_connection(target, &mut buf).context("warm-up connection")?;
        }
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            samples.push(one_connection(target, &mut buf).context("timed connection")?);
        }
        samples.sort();
        Ok(samples)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("latency thread panicked"))?
}

/// Completed connections per second from `threads` threads in `netns`
/// making connections back to back for `duration`, and how many failed.
pub fn rate(
    netns: &str,
    target: SocketAddr,
    threads: usize,
    duration: Duration,
) -> Result<(f64, u64)> {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let netns = netns.to_owned();
            thread::spawn(move || -> Result<(u64, u64)> {
                enter(&netns)?;
                let mut buf = [0u8; 512];
                let (mut done, mut failed) = (0u64, 0u64);
                while start.elapsed() < duration {
                    match one_connection(target, &mut buf) {
                        Ok(_) => done += 1,
                        Err(_) => failed += 1,
                    }
                }
                Ok((done, failed))
            })
        })
        .collect();
    let (mut total, mut failures) = (0, 0);
    for handle in handles {
        let (done, failed) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        total += done;
        failures += failed;
    }
    Ok((total as f64 / start.elapsed().as_secs_f64(), failures))
}

/// The `q` quantile (0..=1) of sorted `samples`.
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let index = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[index.min(samples.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_sorted_samples() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_micros(51));
        assert_eq!(quantile(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_micros(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
