//! Datagrams in and out by the batch: one `recvmmsg` takes up to [`BATCH`]
//! queries with their senders, one `sendmmsg` sends the replies back. The
//! buffers are allocated once, by the thread that owns them: no query
//! allocates here.

// The kernel boundary: recvmmsg/sendmmsg and their C message headers.
#![allow(unsafe_code)]

use std::{
    io, mem,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6},
    os::fd::RawFd,
    ptr,
};

/// Datagrams taken per system call.
pub const BATCH: usize = 32;
/// A datagram longer than this is cut (and then answered FORMERR).
pub const MAX_DATAGRAM: usize = 4096;

/// A sender's address as the kernel gave it; a reply goes back to it as is.
#[derive(Clone, Copy)]
pub struct Peer {
    addr: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl Peer {
    fn empty() -> Self {
        Peer {
            // SAFETY: sockaddr_storage is plain bytes; all zeroes is valid.
            addr: unsafe { mem::zeroed() },
            len: 0,
        }
    }

    /// The address as std knows it (IPv4 or IPv6), for the forward path
    /// and for logs.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        let at = ptr::from_ref(&self.addr);
        match i32::from(self.addr.ss_family) {
            libc::AF_INET if self.len as usize >= mem::size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family and length
                // say so) and sockaddr_storage is large and aligned enough.
                let v4 = unsafe { &*at.cast::<libc::sockaddr_in>() };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                    u16::from_be(v4.sin_port),
                )))
            }
            libc::AF_INET6 if self.len as usize >= mem::size_of::<libc::sockaddr_in6>() => {
                // SAFETY: as above, for a sockaddr_in6.
                let v6 = unsafe { &*at.cast::<libc::sockaddr_in6>() };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(v6.sin6_addr.s6_addr),
                    u16::from_be(v6.sin6_port),
                    v6.sin6_flowinfo,
                    v6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// The buffers of one batch: the queries received, their senders, and one
/// reply buffer per query (a reply left empty is not sent).
pub struct Batch {
    requests: Box<[u8]>,
    lens: [usize; BATCH],
    peers: [Peer; BATCH],
    replies: Vec<Vec<u8>>,
    received: usize,
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            requests: vec![0; BATCH * MAX_DATAGRAM].into_boxed_slice(),
            lens: [0; BATCH],
            peers: [Peer::empty(); BATCH],
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(MAX_DATAGRAM))
                .collect(),
            received: 0,
            iovecs: [libc::iovec {
                iov_base: ptr::null_mut(),
                iov_len: 0,
            }; BATCH],
            // SAFETY: mmsghdr is plain data (null pointers, zero lengths).
            headers: unsafe { mem::zeroed() },
        }
    }
}

impl Batch {
    /// Takes what `socket` (non-blocking) holds, up to [`BATCH`] datagrams;
    /// `WouldBlock` when there is nothing. Empties every reply buffer.
    pub fn receive(&mut self, socket: RawFd) -> io::Result<usize> {
        for (index, chunk) in self.requests.chunks_exact_mut(MAX_DATAGRAM).enumerate() {
            self.iovecs[index] = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let header = &mut self.headers[index];
            header.msg_hdr.msg_name = ptr::from_mut(&mut self.peers[index].addr).cast();
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovecs[index]);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = ptr::null_mut();
            header.msg_hdr.msg_controllen = 0;
            header.msg_hdr.msg_flags = 0;
            header.msg_len = 0;
        }
        self.received = 0;
        let received = loop {
            // SAFETY: every header points into buffers self owns, which
            // outlive the call; the lengths are those of the buffers.
            let received = unsafe {
                libc::recvmmsg(
                    socket,
                    self.headers.as_mut_ptr(),
                    BATCH as _,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                )
            };
            match usize::try_from(received) {
                Ok(received) => break received,
                Err(_) => {
                    let error = io::Error::last_os_error();
                    if error.kind() != io::ErrorKind::Interrupted {
                        return Err(error);
                    }
                }
            }
        };
        for index in 0..received {
            let header = &self.headers[index];
            self.lens[index] = (header.msg_len as usize).min(MAX_DATAGRAM);
            self.peers[index].len = header.msg_hdr.msg_namelen;
            self.replies[index].clear();
        }
        self.received = received;
        Ok(received)
    }

    /// Query `index` of the last batch, its sender and its (empty) reply.
    pub fn slot(&mut self, index: usize) -> (&[u8], Peer, &mut Vec<u8>) {
        let start = index * MAX_DATAGRAM;
        (
            &self.requests[start..start + self.lens[index]],
            self.peers[index],
            &mut self.replies[index],
        )
    }

    /// Sends every non-empty reply of the last batch to its sender; returns
    /// how many the kernel took. A reply the kernel refuses (the socket's
    /// buffer full, an unreachable sender) is dropped, as a datagram may be:
    /// the client asks again.
    pub fn send(&mut self, socket: RawFd) -> usize {
        let mut count = 0;
        for index in 0..self.received {
            let reply = &mut self.replies[index];
            if reply.is_empty() {
                continue;
            }
            self.iovecs[count] = libc::iovec {
                iov_base: reply.as_mut_ptr().cast(),
                iov_len: reply.len(),
            };
            let header = &mut self.headers[count];
            header.msg_hdr.msg_name = ptr::from_mut(&mut self.peers[index].addr).cast();
            header.msg_hdr.msg_namelen = self.peers[index].len;
            header.msg_hdr.msg_iov = ptr::from_mut(&mut self.iovecs[count]);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_len = 0;
            count += 1;
        }
        let mut sent = 0;
        let mut done = 0;
        while done < count {
            // SAFETY: headers[done..count] point into buffers self owns.
            let result = unsafe {
                libc::sendmmsg(
                    socket,
                    self.headers[done..].as_mut_ptr(),
                    (count - done) as _,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(result) {
                Ok(0) => break,
                Ok(taken) => {
                    sent += taken;
                    done += taken;
                }
                Err(_) => {
                    let error = io::Error::last_os_error();
                    match error.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => {
                            tracing::debug!(dropped = count - done, "dns: UDP send buffer full");
                            break;
                        }
                        _ => {
                            // The first reply failed alone: skip it.
                            tracing::debug!(%error, "dns: UDP send failed");
                            done += 1;
                        }
                    }
                }
            }
        }
        sent
    }
}
