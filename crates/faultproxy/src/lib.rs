//! A TCP proxy that puts faults between a client and its server: latency on every chunk, a stall
//! that holds bytes without losing them, refused connections, and cuts. Tests put it in front of
//! PostgreSQL, ClickHouse or Redis to see what a store does when its tier is slow or gone; the
//! `switchboard-faultproxy` binary does the same for scripts.
//!
//! A fault applies at once to every open connection as well as to new ones, so a stall reaches a
//! pooled connection that is already open. Each direction of a connection holds at most
//! [`MAX_HELD_BYTES_PER_DIRECTION`]; past that the proxy stops reading, and the sender feels
//! TCP's backpressure as it would from a slow peer.

mod command;

pub use command::{Command, ParseCommandError};

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The most one read takes, so the largest chunk forwarded.
pub const CHUNK_SIZE: usize = 16 * 1024;

/// Chunks read and waiting to be forwarded, per direction of a connection.
const QUEUED_CHUNKS: usize = 4;

/// The most bytes one direction of a connection holds: its queue, the chunk waiting to be written
/// and the chunk read while the queue was full.
pub const MAX_HELD_BYTES_PER_DIRECTION: usize = (QUEUED_CHUNKS + 2) * CHUNK_SIZE;

/// How long the proxy tries to reach the upstream for a new connection before closing it.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop waits after a failed accept (say, out of file descriptors) so that it
/// does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything at once.
    #[default]
    None,
    /// Forward each chunk this long after it was read, in both directions, in order.
    Latency(Duration),
    /// Accept and keep connections but forward nothing in either direction; the bytes are held
    /// (up to the bound) and flow on when the fault changes.
    Stall,
    /// Close new connections at once and cut the open ones.
    Refuse,
}

/// The state every connection watches: the fault, and how many times `cut_all` was called.
#[derive(Clone, Copy, Debug)]
struct State {
    fault: Fault,
    cuts: u64,
}

/// A running proxy on a loopback port. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<State>,
    held: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on 127.0.0.1 and a port the kernel picks, with no fault.
    pub async fn start(upstream: SocketAddr) -> io::Result<Self> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Starts a proxy to `upstream` on `listen`, with no fault.
    pub async fn bind(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (state, watcher) = watch::channel(State {
            fault: Fault::None,
            cuts: 0,
        });
        let held = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(listener, upstream, watcher, Arc::clone(&held)));
        Ok(Self {
            addr,
            upstream,
            state,
            held,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Applies `fault` to open connections and new ones from now on.
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|state| state.fault = fault);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.state.borrow().fault
    }

    /// Closes every open connection now; new ones are accepted as the fault says. A connection
    /// that the kernel has completed but the proxy has not yet accepted (one made just before)
    /// counts as new: a test that needs it cut makes one round trip over it first.
    pub fn cut_all(&self) {
        self.state.send_modify(|state| state.cuts += 1);
    }

    /// Bytes read and not yet forwarded, over all connections (held by a stall or a latency).
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The connections see the state's sender go and close themselves.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<State>,
    held: Arc<AtomicUsize>,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let now = *state.borrow_and_update();
        if now.fault == Fault::Refuse {
            drop(client);
            continue;
        }
        let live = Live {
            state: state.clone(),
            cuts: now.cuts,
            gone: false,
        };
        tokio::spawn(connection(client, upstream, live, Arc::clone(&held)));
    }
}

/// Why a connection ends early: it was cut, refused, the proxy went away, or a socket failed.
#[derive(Debug)]
struct Cut;

/// One connection's view of the proxy's state.
#[derive(Clone, Debug)]
struct Live {
    state: watch::Receiver<State>,
    /// `State::cuts` when the connection was accepted; any other value means it was cut.
    cuts: u64,
    /// The proxy was dropped.
    gone: bool,
}

impl Live {
    /// The fault in force, or `Cut` when this connection must close.
    fn current(&mut self) -> Result<Fault, Cut> {
        let state = *self.state.borrow_and_update();
        if self.gone || state.cuts != self.cuts || state.fault == Fault::Refuse {
            return Err(Cut);
        }
        Ok(state.fault)
    }

    /// Waits until the state changes (or the proxy goes away).
    async fn changed(&mut self) {
        if self.gone || self.state.changed().await.is_err() {
            self.gone = true;
        }
    }

    /// Resolves when this connection must close.
    async fn cut(&mut self) {
        while self.current().is_ok() {
            self.changed().await;
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, live: Live, held: Arc<AtomicUsize>) {
    let Ok(Ok(upstream)) = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(upstream)).await else {
        return;
    };
    // Chunks are forwarded as they come; Nagle's delay would blur the latency a test sets.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // The first direction to fail drops the other, so both sockets close together; a clean end
    // of one direction (a half-close) leaves the other running.
    let _ = tokio::try_join!(
        direction(client_read, upstream_write, live.clone(), Arc::clone(&held)),
        direction(upstream_read, client_write, live, held),
    );
}

/// Bytes read from one side, counted in `held` until forwarded or dropped.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    read_at: Instant,
    held: Arc<AtomicUsize>,
}

impl Chunk {
    fn new(bytes: Vec<u8>, held: Arc<AtomicUsize>) -> Self {
        held.fetch_add(bytes.len(), Ordering::Relaxed);
        Self {
            bytes,
            read_at: Instant::now(),
            held,
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// Forwards one direction: a reader that queues chunks (a bounded queue, so a held stall stops
/// reading) and a writer that forwards each when the fault lets it.
async fn direction(
    reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin,
    live: Live,
    held: Arc<AtomicUsize>,
) -> Result<(), Cut> {
    let (queue, chunks) = mpsc::channel(QUEUED_CHUNKS);
    tokio::try_join!(
        read_side(reader, queue, live.clone(), held),
        write_side(writer, chunks, live),
    )?;
    Ok(())
}

async fn read_side(
    mut reader: impl AsyncRead + Unpin,
    queue: mpsc::Sender<Chunk>,
    mut live: Live,
    held: Arc<AtomicUsize>,
) -> Result<(), Cut> {
    loop {
        let mut bytes = vec![0; CHUNK_SIZE];
        let read = tokio::select! {
            read = reader.read(&mut bytes) => read.map_err(|_| Cut)?,
            () = live.cut() => return Err(Cut),
        };
        if read == 0 {
            // The end of this side: dropping the queue lets the writer pass it on.
            return Ok(());
        }
        bytes.truncate(read);
        let chunk = Chunk::new(bytes, Arc::clone(&held));
        tokio::select! {
            sent = queue.send(chunk) => sent.map_err(|_| Cut)?,
            () = live.cut() => return Err(Cut),
        }
    }
}

async fn write_side(
    mut writer: impl AsyncWrite + Unpin,
    mut chunks: mpsc::Receiver<Chunk>,
    mut live: Live,
) -> Result<(), Cut> {
    loop {
        let chunk = tokio::select! {
            chunk = chunks.recv() => chunk,
            () = live.cut() => return Err(Cut),
        };
        let Some(chunk) = chunk else {
            // The other side closed its writing half: close this one too, after all it sent.
            tokio::select! {
                shut = writer.shutdown() => shut.map_err(|_| Cut)?,
                () = live.cut() => return Err(Cut),
            }
            return Ok(());
        };
        hold(&chunk, &mut live).await?;
        tokio::select! {
            written = writer.write_all(&chunk.bytes) => written.map_err(|_| Cut)?,
            () = live.cut() => return Err(Cut),
        }
    }
}

/// Waits until `chunk` may be forwarded: no stall, and its latency (if any) has passed since it
/// was read. A change of fault is seen at once, also in the middle of a wait.
async fn hold(chunk: &Chunk, live: &mut Live) -> Result<(), Cut> {
    loop {
        match live.current()? {
            Fault::None => return Ok(()),
            // `current` has already turned a refusal into a cut.
            Fault::Refuse => return Err(Cut),
            Fault::Latency(latency) => {
                let due = chunk.read_at + latency;
                if Instant::now() >= due {
                    return Ok(());
                }
                tokio::select! {
                    () = tokio::time::sleep_until(due) => {}
                    () = live.changed() => {}
                }
            }
            Fault::Stall => live.changed().await,
        }
    }
}
