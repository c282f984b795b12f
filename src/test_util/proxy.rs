//! A TCP proxy on loopback that injects network faults (see [`FaultProxy`]).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread;

/// A TCP proxy on loopback that injects network faults between a client and
/// its Redis server.
///
/// [`FaultProxy`] relays every connection made to its port to an upstream
/// server, byte for byte, on two plain threads per connection (no runtime).
/// On command it misbehaves the way real networks do:
///
/// * [`stall`](FaultProxy::stall): a **half-open** network. Every open
///   connection stops relaying in both directions but stays open, as when a
///   middlebox or a NAT lost its state; connections made while stalled are
///   accepted and relay nothing either. [`heal`](FaultProxy::heal) lets *new*
///   connections through again; the stalled ones stay dead for good (the
///   middlebox does not remember them), so only a client that gives up on a
///   silent connection recovers.
/// * [`lose_replies`](FaultProxy::lose_replies): commands still reach the
///   server and run, but each reply is discarded and its connection closed:
///   the client cannot know whether its commands ran.
/// * [`lose_next_reply_containing`](FaultProxy::lose_next_reply_containing):
///   the same for one reply only: the connection is cut where a byte string
///   next appears in the replies (a stream key, say, to lose exactly one
///   `XREADGROUP` reply after the server handed the entries out; or the start
///   of one reply, to lose it and keep the pipelined replies before it).
/// * [`reset_all`](FaultProxy::reset_all): every open connection is closed at
///   once (a flapping link: call it in a loop).
///
/// Dropping the proxy closes its listener and every connection.
///
/// ```
/// use std::io::{BufRead, BufReader, Write};
/// use std::net::TcpStream;
/// use std::time::Duration;
/// use tickbus::test_util::{FaultProxy, RedisServer};
///
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start(server.port())?;
/// let mut client = TcpStream::connect(("127.0.0.1", proxy.port()))?;
/// client.write_all(b"PING\r\n")?;
/// let mut reply = String::new();
/// BufReader::new(client.try_clone()?).read_line(&mut reply)?;
/// assert_eq!(reply, "+PONG\r\n");
///
/// // Half-open from now on: the command is swallowed, the socket stays open.
/// proxy.stall();
/// client.set_read_timeout(Some(Duration::from_millis(200)))?;
/// client.write_all(b"PING\r\n")?;
/// assert!(BufReader::new(client).read_line(&mut String::new()).is_err());
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("port", &self.port)
            .field("upstream", &self.shared.upstream)
            .field("stalled", &self.shared.stalled.load(Ordering::SeqCst))
            .field("connections", &self.connections())
            .field("replies_lost", &self.replies_lost())
            .finish()
    }
}

struct Shared {
    upstream: u16,
    /// New connections relay nothing while set.
    stalled: AtomicBool,
    /// Every reply is lost (and its connection closed) while set.
    lose_replies: AtomicBool,
    /// The next reply holding this byte string is lost.
    lose_next: Mutex<Option<Vec<u8>>>,
    /// The proxy was dropped.
    closed: AtomicBool,
    accepted: AtomicU64,
    replies_lost: AtomicU64,
    links: Mutex<Vec<Weak<Link>>>,
}

/// One relayed connection: both sockets, and whether it went dead.
struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Relays nothing any more (stalled), until the client closes it.
    dead: AtomicBool,
}

impl Link {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultProxy {
    /// Starts a proxy on a free port of 127.0.0.1, relaying to
    /// `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            upstream,
            stalled: AtomicBool::new(false),
            lose_replies: AtomicBool::new(false),
            lose_next: Mutex::new(None),
            closed: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            replies_lost: AtomicU64::new(0),
            links: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(&listener, &accepting))?;
        Ok(FaultProxy { port, shared })
    }

    /// The port clients connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, the proxy's URL for a server without a
    /// password.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Makes the network half-open: every open connection stops relaying (for
    /// good) without being closed, and new ones relay nothing until
    /// [`heal`](Self::heal).
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::SeqCst);
        for link in self.shared.live_links() {
            link.dead.store(true, Ordering::SeqCst);
        }
    }

    /// Lets new connections through again. Connections that were stalled stay
    /// silent until their client closes them.
    pub fn heal(&self) {
        self.shared.stalled.store(false, Ordering::SeqCst);
    }

    /// While `on`, commands still reach the server, but every reply is
    /// discarded and its connection closed.
    pub fn lose_replies(&self, on: bool) {
        self.shared.lose_replies.store(on, Ordering::SeqCst);
    }

    /// Loses the next reply that holds `needle` (from the needle on: replies
    /// before it in the same read still get through), and closes that
    /// connection. Replaces a needle set before and not yet met.
    pub fn lose_next_reply_containing(&self, needle: &[u8]) {
        *lock(&self.shared.lose_next) = Some(needle.to_vec());
    }

    /// Whether the needle of
    /// [`lose_next_reply_containing`](Self::lose_next_reply_containing) is still
    /// waiting for its reply.
    pub fn reply_loss_pending(&self) -> bool {
        lock(&self.shared.lose_next).is_some()
    }

    /// Closes every open connection now; returns how many there were.
    pub fn reset_all(&self) -> usize {
        let links = self.shared.live_links();
        for link in &links {
            link.close();
        }
        links.len()
    }

    /// Connections accepted so far (a client's reconnects show here).
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Replies lost so far (by [`lose_replies`](Self::lose_replies) or
    /// [`lose_next_reply_containing`](Self::lose_next_reply_containing)).
    pub fn replies_lost(&self) -> u64 {
        self.shared.replies_lost.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `closed` and drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for link in self.shared.live_links() {
            link.close();
        }
    }
}

impl Shared {
    /// The links still open, pruning the closed ones.
    fn live_links(&self) -> Vec<Arc<Link>> {
        let mut links = lock(&self.links);
        links.retain(|link| link.strong_count() > 0);
        links.iter().filter_map(Weak::upgrade).collect()
    }

    /// Where in this chunk of replies the loss starts, if it is to be lost:
    /// what comes before a needle still reaches the client (replies read
    /// together are cut exactly before the one to lose).
    fn loses(&self, chunk: &[u8]) -> Option<usize> {
        if self.lose_replies.load(Ordering::SeqCst) {
            return Some(0);
        }
        let mut next = lock(&self.lose_next);
        let at = next.as_deref().and_then(|needle| {
            if needle.is_empty() {
                Some(0)
            } else {
                chunk
                    .windows(needle.len())
                    .position(|window| window == needle)
            }
        });
        if at.is_some() {
            *next = None;
        }
        at
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let Ok(server) = TcpStream::connect(("127.0.0.1", shared.upstream)) else {
            // The server is down: the client sees its connection closed.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let link = Arc::new(Link {
            client,
            server,
            dead: AtomicBool::new(shared.stalled.load(Ordering::SeqCst)),
        });
        lock(&shared.links).push(Arc::downgrade(&link));
        let (up, down) = (Arc::clone(&link), link);
        let shared = Arc::clone(shared);
        let _ = thread::Builder::new()
            .name("fault-proxy-up".into())
            .spawn(move || relay(client_in, &up, None));
        let _ = thread::Builder::new()
            .name("fault-proxy-down".into())
            .spawn(move || relay(server_in, &down, Some(&shared)));
    }
}

/// Copies one direction of `link` until either side closes. `replies` is set
/// for the server-to-client direction, where replies can be lost.
fn relay(mut from: TcpStream, link: &Link, replies: Option<&Shared>) {
    let mut to = if replies.is_some() {
        &link.client
    } else {
        &link.server
    };
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if link.dead.load(Ordering::SeqCst) {
            continue; // swallowed: the socket stays open, nothing gets through
        }
        if let Some(shared) = replies {
            if let Some(at) = shared.loses(&buffer[..n]) {
                let _ = to.write_all(&buffer[..at]);
                shared.replies_lost.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    link.close();
}
