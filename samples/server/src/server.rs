//! The listener: one task per connection on a single-threaded tokio runtime, over a shared
//! store, until a SHUTDOWN request.
//!
//! One thread, like Redis: no allocation crosses threads and no thread exits while the server
//! runs, so what a heap profiler reports comes from the server's code, not from glibc's
//! per-thread caches and arenas.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};

use crate::connection;
use crate::stats::Stats;
use crate::store::Store;

/// How the server runs, bugs included.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Payload bytes the cache may hold; `None` is the `--unbounded-cache` bug.
    pub cache_budget: Option<u64>,
    /// Leak the payload of every N-th PUT or PUSH of each connection (an empty one leaks
    /// nothing).
    pub leak_every: Option<NonZeroU64>,
    /// Connection buffers keep the size of the largest message instead of shrinking back.
    pub grow_buffers: bool,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub config: Config,
    store: Mutex<Store>,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
    pub leaked: AtomicU64,
    pub leaked_bytes: AtomicU64,
    pub buffer_bytes: AtomicU64,
    /// Becomes true on SHUTDOWN; the listener and every connection watch it.
    shutdown: watch::Sender<bool>,
}

impl Shared {
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn stats(&self) -> Stats {
        let store = self.store().counts();
        Stats {
            requests: self.requests.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            cache_entries: store.cache_entries,
            cache_bytes: store.cache_bytes,
            evictions: store.evictions,
            queued: store.queued,
            queued_bytes: store.queued_bytes,
            leaked: self.leaked.load(Ordering::Relaxed),
            leaked_bytes: self.leaked_bytes.load(Ordering::Relaxed),
            buffer_bytes: self.buffer_bytes.load(Ordering::Relaxed),
        }
    }

    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once SHUTDOWN was requested.
    pub async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = shutdown.wait_for(|&stop| stop).await;
    }
}

pub struct Server {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    config: Config,
}

impl Server {
    pub fn bind(config: Config) -> io::Result<Server> {
        let listener = std::net::TcpListener::bind(config.listen)?;
        listener.set_nonblocking(true)?;
        Ok(Server {
            local_addr: listener.local_addr()?,
            listener,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until a SHUTDOWN request, closes every connection, and returns the figures of
    /// that moment. Everything the server holds is freed before this returns, so that what a
    /// heap profiler sees live at exit is only what was leaked.
    pub fn run(self) -> io::Result<Stats> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let shared = Arc::new(Shared {
            config: self.config,
            store: Mutex::new(Store::new(self.config.cache_budget)),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            leaked: AtomicU64::new(0),
            leaked_bytes: AtomicU64::new(0),
            buffer_bytes: AtomicU64::new(0),
            shutdown: watch::Sender::new(false),
        });
        runtime.block_on(accept_until_shutdown(self.listener, &shared))?;
        Ok(shared.stats())
    }
}

async fn accept_until_shutdown(
    listener: std::net::TcpListener,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection::serve(stream, Arc::clone(shared)));
                }
                Err(err) => {
                    // Out of descriptors, most likely: let connections finish.
                    eprintln!("server: accept: {err}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            // Reap finished connections as they go, so that churn does not pile them up.
            Some(done) = connections.join_next(), if !connections.is_empty() => report(done),
            () = shared.shutting_down() => break,
        }
    }
    // Every connection sees the shutdown and returns.
    while let Some(done) = connections.join_next().await {
        report(done);
    }
    Ok(())
}

fn report(done: Result<(), JoinError>) {
    if let Err(err) = done {
        eprintln!("server: a connection failed: {err}");
    }
}
