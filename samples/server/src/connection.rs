//! One client connection: its read and write buffers, and the handling of each request.

use std::alloc::{Layout, alloc, handle_alloc_error};
use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::protocol::{self, Parsed, Request};
use crate::reply;
use crate::server::Shared;

/// Size each buffer starts at and, unless `--grow-buffers`, shrinks back to after a larger
/// message. Larger than `protocol::MAX_LINE`, so a request line always fits.
pub const BASE_BUFFER: usize = 4096;

/// Serves one connection until the client closes it, SHUTDOWN, or an error.
pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut connection = Connection::new(stream, &shared);
    let served = tokio::select! {
        served = connection.run() => served,
        () = shared.shutting_down() => Ok(()),
    };
    if let Err(err) = served {
        // A client that goes away mid-request is not the server's problem.
        if !matches!(
            err.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ) {
            eprintln!("server: connection: {err}");
        }
    }
}

struct Connection<'s> {
    stream: TcpStream,
    shared: &'s Shared,
    /// Input; its length is the buffer's size, `filled` bytes of it are unread requests.
    input: Vec<u8>,
    filled: usize,
    /// The reply being built; sent in one write.
    output: Vec<u8>,
    /// PUT and PUSH requests seen on this connection, for `--leak-every`.
    payload_requests: u64,
    /// Buffer bytes this connection has added to `shared.buffer_bytes`.
    accounted: u64,
}

enum Flow {
    Continue,
    /// SHUTDOWN: stop the server once the reply is sent.
    ShutDown,
}

impl<'s> Connection<'s> {
    fn new(stream: TcpStream, shared: &'s Shared) -> Connection<'s> {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let mut connection = Connection {
            stream,
            shared,
            input: vec![0; BASE_BUFFER],
            filled: 0,
            output: Vec::with_capacity(BASE_BUFFER),
            payload_requests: 0,
            accounted: 0,
        };
        connection.account();
        connection
    }

    async fn run(&mut self) -> io::Result<()> {
        // Replies are one write each; do not let Nagle hold them.
        self.stream.set_nodelay(true)?;
        loop {
            match protocol::parse(&self.input[..self.filled]) {
                Ok(Parsed::Complete { request, len }) => {
                    let flow = handle(
                        self.shared,
                        &mut self.payload_requests,
                        request,
                        &mut self.output,
                    );
                    self.input.copy_within(len..self.filled, 0);
                    self.filled -= len;
                    self.flush().await?;
                    self.settle_buffers();
                    if let Flow::ShutDown = flow {
                        self.shared.shut_down();
                        return Ok(());
                    }
                }
                Ok(Parsed::Incomplete { needed }) => {
                    if let Some(needed) = needed
                        && needed > self.input.len()
                    {
                        self.input.reserve_exact(needed - self.input.len());
                        self.input.resize(needed, 0);
                        self.account();
                    }
                    let read = self.stream.read(&mut self.input[self.filled..]).await?;
                    if read == 0 {
                        return Ok(());
                    }
                    self.filled += read;
                }
                Err(err) => {
                    reply::write_line(&mut self.output, &format!("ERR {err}"));
                    return self.flush().await;
                }
            }
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.output).await?;
        self.output.clear();
        Ok(())
    }

    /// Shrinks buffers a large message grew back to their base size, unless the
    /// `--grow-buffers` bug keeps them.
    fn settle_buffers(&mut self) {
        if !self.shared.config.grow_buffers {
            if self.input.len() > BASE_BUFFER && self.filled <= BASE_BUFFER {
                self.input.truncate(BASE_BUFFER);
                self.input.shrink_to(BASE_BUFFER);
            }
            self.output.shrink_to(BASE_BUFFER);
        }
        self.account();
    }

    /// Brings `shared.buffer_bytes` up to date with this connection's buffers.
    fn account(&mut self) {
        let now = (self.input.capacity() + self.output.capacity()) as u64;
        let total = &self.shared.buffer_bytes;
        if now >= self.accounted {
            total.fetch_add(now - self.accounted, Ordering::Relaxed);
        } else {
            total.fetch_sub(self.accounted - now, Ordering::Relaxed);
        }
        self.accounted = now;
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        let shared = self.shared;
        shared
            .buffer_bytes
            .fetch_sub(self.accounted, Ordering::Relaxed);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Carries out one request and writes its reply into `out`.
fn handle(
    shared: &Shared,
    payload_requests: &mut u64,
    request: Request<'_>,
    out: &mut Vec<u8>,
) -> Flow {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(payload) = request.payload() {
        *payload_requests += 1;
        if let Some(every) = shared.config.leak_every
            && payload_requests.is_multiple_of(every.get())
            && !payload.is_empty()
        {
            leak_payload(payload);
            shared.leaked.fetch_add(1, Ordering::Relaxed);
            shared
                .leaked_bytes
                .fetch_add(payload.len() as u64, Ordering::Relaxed);
        }
    }
    match request {
        Request::Put { key, payload } => {
            shared.store().put(key, payload);
            reply::write_line(out, "OK");
        }
        Request::Get { key } => match shared.store().get(key) {
            Some(value) => reply::write_value(out, value),
            None => reply::write_line(out, "NOTFOUND"),
        },
        Request::Del { key } => {
            let found = shared.store().remove(key);
            reply::write_line(out, if found { "DELETED" } else { "NOTFOUND" });
        }
        Request::Push { queue, payload } => {
            shared.store().push(queue, payload);
            reply::write_line(out, "OK");
        }
        Request::Pop { queue } => match shared.store().pop(queue) {
            Some(message) => reply::write_value(out, &message),
            None => reply::write_line(out, "EMPTY"),
        },
        Request::Stats => reply::write_line(out, &format!("STATS {}", shared.stats())),
        Request::Shutdown => {
            reply::write_line(out, "BYE");
            return Flow::ShutDown;
        }
    }
    Flow::Continue
}

/// The injected `--leak-every` bug: a copy of the payload that nothing ever frees.
///
/// It allocates with `alloc` itself, so malloc is called from this function's own body and
/// even a one-frame stack (a frame-pointer walk through code built without them) names it.
/// The payload must not be empty.
#[inline(never)]
fn leak_payload(payload: &[u8]) {
    let layout = Layout::array::<u8>(payload.len()).unwrap_or_else(|_| {
        unreachable!("payloads are at most protocol::MAX_PAYLOAD bytes");
    });
    assert!(layout.size() > 0, "leak_payload of an empty payload");
    // SAFETY: the layout's size is not zero.
    let block = unsafe { alloc(layout) };
    if block.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `block` is a fresh allocation of `payload.len()` bytes, disjoint from `payload`.
    unsafe { block.copy_from_nonoverlapping(payload.as_ptr(), payload.len()) };
    black_box(block);
}
