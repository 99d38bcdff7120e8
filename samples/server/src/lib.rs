//! memprof's sample server: a key/value cache and message queues over TCP, allocating on
//! every request (keys, values, queue messages, reply buffers), with switches that inject
//! the classic heap bugs a profiler should find:
//!
//! - `--leak-every N`: every N-th PUT or PUSH of each connection leaks a copy of its payload
//!   (counted per connection, so the leak is the same whatever the interleaving of clients);
//! - `--unbounded-cache`: the cache never evicts, so it grows with the key space;
//! - `--grow-buffers`: a connection's buffers keep the size of its largest message.
//!
//! Pipeline: `server` accepts and runs one task per `connection` (all on one thread), which
//! parses requests (`protocol`), applies them to the shared `store`, and writes replies
//! (`reply`). `client` is the other side, used by the tests and by memprof-loadgen.

pub mod client;
mod connection;
pub mod protocol;
pub mod reply;
pub mod server;
pub mod stats;
mod store;

pub use connection::BASE_BUFFER;
