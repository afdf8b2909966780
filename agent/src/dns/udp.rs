//! The UDP side of every container resolver of the node, on dedicated
//! threads (not tokio workers): [`THREADS`] of them, each with its own
//! level-triggered epoll set holding the UDP sockets of all containers
//! (opened in each container's namespace, handed over as std sockets). For
//! each ready socket a thread takes a batch of queries ([`Batch`]: one
//! `recvmmsg`), answers cluster names and cached forwarded names inline
//! against one load of the table and of the scope, and sends the batch's
//! replies with one `sendmmsg`. Only cache misses leave the threads: each
//! becomes a tokio task (at most [`MAX_FORWARDS`] per container, SERVFAIL
//! at once beyond) that sends its reply on the same socket.
//!
//! Why: per query the cost was the receive and send system calls and the
//! runtime's wake-ups; a batch costs one `epoll_wait`, one `recvmmsg` and
//! one `sendmmsg` whatever its size, and the threads never share a core's
//! run queue with the runtime's tasks.
//!
//! Why more than one: a thread waiting for a CPU (behind a kernel thread or
//! any busy process on its core) would hold every query queued behind it.
//! The sockets are in every thread's set with `EPOLLEXCLUSIVE`: a datagram
//! wakes one waiting thread, the first one while it waits, another while
//! it is busy or stalled; that thread's `recvmmsg` then takes the whole
//! queue, earlier datagrams too, so the queue is served from whichever core
//! is free (docs/benchmarks.md, "A second resolver thread"). A woken thread
//! leaves the wait queue at once since Linux 6.0; the steering needs 6.6.
//!
//! Membership: a socket joins with [`UdpLoop::register`] and leaves when its
//! [`Registration`] is dropped. The members are held by `Arc`; the loop
//! looks a ready socket up by its token (never by fd number) and holds its
//! own `Arc` while serving it, and forward tasks hold one until they have
//! replied, so a descriptor is closed only when nobody can use it any more,
//! and a reused fd number is never mistaken for a member.
//!
//! [`MAX_FORWARDS`]: super::server::MAX_FORWARDS

// The kernel boundary: epoll and eventfd, which std and tokio do not wrap.
#![allow(unsafe_code)]

use std::{
    collections::HashMap,
    io,
    net::UdpSocket,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::JoinHandle,
    time::Duration,
};

use tokio::{runtime::Handle, sync::OwnedSemaphorePermit};

use super::{
    batch::{Batch, Peer},
    handler::{self, Action, Forward, Scratch, Transport},
    server::Context,
};

/// The receive buffer asked for each socket: room for a burst of some
/// thousands of queries (the default, about 200 KiB, holds a few hundred).
pub const RECEIVE_BUFFER: usize = 4 << 20;
/// Ready sockets taken per `epoll_wait`.
const MAX_EVENTS: usize = 64;
/// Resolver threads (fewer on a node with fewer CPUs).
pub const THREADS: usize = 2;
/// The token of the stop eventfd; members get 1 and up.
const WAKE: u64 = 0;
/// Pause after an unexpected `epoll_wait` failure, not to spin.
const FAILURE_BACKOFF: Duration = Duration::from_millis(100);

/// One container's UDP socket and what answering on it needs.
struct Member {
    socket: UdpSocket,
    ctx: Arc<Context>,
    runtime: Handle,
}

/// What the loop threads and the registrations share.
struct Poller {
    /// One epoll set per thread, each holding every member socket.
    epolls: Vec<OwnedFd>,
    /// An eventfd in every set, never drained: written once, it wakes every
    /// thread up to stop.
    wake: OwnedFd,
    stop: AtomicBool,
    members: Mutex<HashMap<u64, Arc<Member>>>,
    next_token: AtomicU64,
}

impl Poller {
    fn members(&self) -> MutexGuard<'_, HashMap<u64, Arc<Member>>> {
        crate::sync::lock(&self.members)
    }

    /// Adds `fd` to every thread's set, or to none.
    fn add(&self, fd: RawFd, token: u64, events: libc::c_int) -> io::Result<()> {
        for (added, epoll) in self.epolls.iter().enumerate() {
            if let Err(error) = control(epoll, libc::EPOLL_CTL_ADD, fd, token, events) {
                for epoll in &self.epolls[..added] {
                    let _ = control(epoll, libc::EPOLL_CTL_DEL, fd, token, 0);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Takes `fd` out of every thread's set; the first failure is returned
    /// once all were tried.
    fn remove(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut outcome = Ok(());
        for epoll in &self.epolls {
            let result = control(epoll, libc::EPOLL_CTL_DEL, fd, token, 0);
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }
}

fn control(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    token: u64,
    events: libc::c_int,
) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: events as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open (the caller holds them); the event
    // is read during the call only.
    let result = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The resolver threads; stopped (and joined) when dropped.
pub struct UdpLoop {
    poller: Arc<Poller>,
    threads: Vec<JoinHandle<()>>,
}

/// A socket's membership in the loop: dropping it takes the socket out.
pub struct Registration {
    poller: Arc<Poller>,
    token: u64,
}

fn check(result: libc::c_int) -> io::Result<RawFd> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

impl UdpLoop {
    pub fn start() -> io::Result<Self> {
        let count = std::thread::available_parallelism().map_or(1, |cpus| cpus.get().min(THREADS));
        let epolls = (0..count)
            .map(|_| {
                // SAFETY: a plain system call; the new descriptor is owned
                // at once, here only.
                Ok(unsafe {
                    OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?)
                })
            })
            .collect::<io::Result<Vec<_>>>()?;
        // SAFETY: as above.
        let wake = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(
                0,
                libc::EFD_CLOEXEC | libc::EFD_NONBLOCK,
            ))?)
        };
        let poller = Arc::new(Poller {
            epolls,
            wake,
            stop: AtomicBool::new(false),
            members: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(WAKE + 1),
        });
        // Not exclusive: stopping wakes every thread.
        poller.add(poller.wake.as_raw_fd(), WAKE, libc::EPOLLIN)?;
        let mut udp = UdpLoop {
            poller,
            threads: Vec::with_capacity(count),
        };
        for (index, epoll) in udp.poller.epolls.iter().enumerate() {
            let (poller, epoll) = (udp.poller.clone(), epoll.as_raw_fd());
            // On failure `udp` is dropped: the threads started stop.
            let thread = std::thread::Builder::new()
                .name(format!("dns-udp-{index}"))
                .spawn(move || run(&poller, epoll))?;
            udp.threads.push(thread);
        }
        Ok(udp)
    }

    /// Adds `socket` to the loop: from now on its queries are answered with
    /// `ctx`, forwards run on `runtime`.
    pub fn register(
        &self,
        socket: UdpSocket,
        ctx: Arc<Context>,
        runtime: Handle,
    ) -> io::Result<Registration> {
        socket.set_nonblocking(true)?;
        size_receive_buffer(&socket);
        let fd = socket.as_raw_fd();
        let token = self.poller.next_token.fetch_add(1, Ordering::Relaxed);
        let mut members = self.poller.members();
        members.insert(
            token,
            Arc::new(Member {
                socket,
                ctx,
                runtime,
            }),
        );
        // Exclusive: a datagram wakes one waiting thread, not all.
        if let Err(error) = self
            .poller
            .add(fd, token, libc::EPOLLIN | libc::EPOLLEXCLUSIVE)
        {
            let member = members.remove(&token);
            drop(members);
            drop(member);
            return Err(error);
        }
        Ok(Registration {
            poller: self.poller.clone(),
            token,
        })
    }
}

impl Drop for UdpLoop {
    fn drop(&mut self) {
        self.poller.stop.store(true, Ordering::SeqCst);
        wake(&self.poller.wake);
        for thread in self.threads.drain(..) {
            // The last owner may be a loop thread itself (through a member
            // it is serving): it stops on its own then.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut members = self.poller.members();
        let member = members.remove(&self.token);
        if let Some(member) = &member {
            // The descriptor is still open: `member` holds it.
            if let Err(error) = self.poller.remove(member.socket.as_raw_fd(), self.token) {
                tracing::debug!(%error, "dns: removing a socket from the UDP loop");
            }
        }
        // Unlocked first: the member may be the last owner of what owns the
        // loop, whose drop waits for the threads, which may wait for the lock.
        drop(members);
        drop(member);
    }
}

fn wake(eventfd: &OwnedFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an open eventfd.
    unsafe { libc::write(eventfd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Asks for [`RECEIVE_BUFFER`]: `SO_RCVBUFFORCE` (the agent has
/// CAP_NET_ADMIN) passes the system's `rmem_max`; without it, `SO_RCVBUF`
/// gets what the system allows.
fn size_receive_buffer(socket: &UdpSocket) {
    let size = RECEIVE_BUFFER as libc::c_int;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: an int option on an open socket.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if result == 0 {
            return;
        }
    }
    tracing::debug!(error = %io::Error::last_os_error(), "dns: cannot size the UDP receive buffer");
}

/// One thread: wait for ready sockets in its set `epoll` (one of
/// `poller`'s, kept open by it), serve a batch of each, until stopped.
fn run(poller: &Poller, epoll: RawFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    let mut ready: Vec<Arc<Member>> = Vec::with_capacity(MAX_EVENTS);
    let mut batch = Batch::default();
    let mut scratch = Scratch::default();
    while !poller.stop.load(Ordering::SeqCst) {
        // SAFETY: the buffer holds MAX_EVENTS events and lives across the call.
        let count =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), MAX_EVENTS as libc::c_int, -1) };
        let Ok(count) = usize::try_from(count) else {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!(%error, "dns: the UDP loop cannot wait for queries");
                std::thread::sleep(FAILURE_BACKOFF);
            }
            continue;
        };
        {
            let members = poller.members();
            for event in &events[..count] {
                match event.u64 {
                    // Stopping: the loop condition ends this thread.
                    WAKE => {}
                    token => ready.extend(members.get(&token).cloned()),
                }
            }
        }
        for member in ready.drain(..) {
            member.serve(&mut batch, &mut scratch);
        }
    }
}

impl Member {
    /// One batch: receive, answer what can be answered here, send.
    fn serve(self: &Arc<Self>, batch: &mut Batch, scratch: &mut Scratch) {
        let fd = self.socket.as_raw_fd();
        let received = match batch.receive(fd) {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) => {
                tracing::debug!(%error, "dns: UDP receive failed");
                return;
            }
        };
        let ctx = &self.ctx;
        // One load for the whole batch: a table swapped meanwhile shows on
        // the next one.
        let (table, scope) = (ctx.answers.table(), ctx.scope.load());
        for index in 0..received {
            let (request, peer, out) = batch.slot(index);
            match handler::answer(request, &table, &scope, Transport::Udp, out, scratch) {
                Action::Reply | Action::Drop => {}
                Action::Forward(query) if ctx.answers.cached(request, query, out) => {}
                Action::Forward(query) => match ctx.forwards.clone().try_acquire_owned() {
                    Ok(permit) => self.forward(request.to_vec(), query, peer, permit),
                    Err(_) => {
                        tracing::debug!(peer = ?peer.socket_addr(), "dns: too many queries in flight, SERVFAIL");
                        handler::server_failure(request, query, out);
                    }
                },
            }
        }
        drop((table, scope));
        batch.send(fd);
    }

    /// A cache miss: the upstream's answer, sent from a task on the runtime.
    fn forward(
        self: &Arc<Self>,
        request: Vec<u8>,
        query: Forward,
        peer: Peer,
        permit: OwnedSemaphorePermit,
    ) {
        let member = self.clone();
        self.runtime.spawn(async move {
            let answer = member.ctx.answers.forward(&request, query).await;
            match peer.socket_addr() {
                Some(addr) => {
                    if let Err(error) = member.socket.send_to(&answer, addr) {
                        tracing::debug!(%addr, %error, "dns: UDP send failed");
                    }
                }
                None => tracing::debug!("dns: a query came from an address that is not IP"),
            }
            drop(permit);
        });
    }
}
