//! The HTTP/1 server (hyper) behind the health, metrics, debug and
//! health-check node port listeners: GET only.
//!
//! Every listener is bounded, so that idle, slow or hostile clients cannot
//! exhaust the daemon's file descriptors or memory:
//! - at most [`Limits::max_connections`] connections at a time (more wait
//!   in the kernel's accept queue, holding no descriptor of the daemon);
//! - a client must send its request headers within
//!   [`Limits::header_read_timeout`] (this also closes idle keep-alive
//!   connections);
//! - a client that reads nothing of its answer for
//!   [`Limits::write_timeout`], or sends nothing while the server waits
//!   for it for [`Limits::read_timeout`], is disconnected;
//! - answers are sent in chunks, so a large document shared by many
//!   clients ([`DocCache`]) is never copied per connection.
//!
//! Handlers must not block: the daemon serves every listener from a
//! runtime of its own (see `daemon.rs`), and heavy work goes to the
//! blocking pool through [`DocCache`].

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

/// A response: status, content type, extra headers, body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body (possibly a slice of a document shared with other
    /// clients).
    pub body: Bytes,
}

impl Reply {
    /// A `text/plain` reply.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::bytes(
            status,
            "text/plain; charset=utf-8",
            Bytes::from(body.into()),
        )
    }

    /// A reply of `content_type` with `body`.
    pub fn bytes(status: u16, content_type: &'static str, body: Bytes) -> Self {
        Reply {
            status,
            content_type,
            headers: Vec::new(),
            body,
        }
    }

    /// An `application/json` reply.
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply {
            status,
            content_type: "application/json",
            headers: vec![("X-Content-Type-Options", "nosniff".into())],
            body: Bytes::from(body.into()),
        }
    }

    fn into_response(self) -> Response<ChunkedBody> {
        let mut b = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("Content-Type", self.content_type);
        for (k, v) in self.headers {
            b = b.header(k, v);
        }
        b.body(ChunkedBody(self.body))
            .unwrap_or_else(|_| Response::new(ChunkedBody(Bytes::from_static(b"internal error"))))
    }
}

/// How much of a body is handed to hyper at a time: hyper buffers about
/// one chunk per connection whatever the body's size.
const CHUNK: usize = 64 * 1024;

/// A body sent [`CHUNK`] bytes at a time, each a zero-copy slice.
struct ChunkedBody(Bytes);

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.0.len().min(CHUNK);
        Poll::Ready(Some(Ok(Frame::data(self.0.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.len() as u64)
    }
}

/// A request handler: path (without query) to reply. It must not block;
/// see [`DocCache`] for heavy answers.
pub type Handler = Arc<dyn Fn(&str) -> BoxFuture<'static, Reply> + Send + Sync>;

/// A [`Handler`] from a cheap synchronous function.
pub fn handler(f: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Handler {
    Arc::new(move |path: &str| {
        let reply = f(path);
        Box::pin(async move { reply })
    })
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time to send a request's headers, and the longest idle keep-alive.
    pub header_read_timeout: Duration,
    /// Longest time a client may read nothing of an answer.
    pub write_timeout: Duration,
    /// Longest time a client may send nothing while the server reads.
    pub read_timeout: Duration,
}

impl Limits {
    /// The health (`/healthz`, `/livez`) and metrics/debug listeners.
    pub const LISTENER: Limits = Limits {
        max_connections: 128,
        header_read_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(30),
        read_timeout: Duration::from_secs(60),
    };

    /// One health-check node port (all of them together also share
    /// [`HEALTH_CHECK_PORTS_CONNECTIONS`]).
    pub const HEALTH_CHECK_PORT: Limits = Limits {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(30),
    };
}

/// Connections all health-check node ports together serve at once.
pub const HEALTH_CHECK_PORTS_CONNECTIONS: usize = 1024;

/// Bind `addr` (errors name the listener).
pub fn bind(what: &str, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("{what}: cannot listen on {addr}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| anyhow::anyhow!("{what}: {addr}: {e}"))?;
    Ok(l)
}

/// Serve `listener` until the task is dropped, with `limits`; `budget`, if
/// any, is a connection cap shared with other listeners. Must run inside
/// the runtime that is to serve it.
pub async fn serve(
    listener: std::net::TcpListener,
    handler: Handler,
    limits: Limits,
    budget: Option<Arc<Semaphore>>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve a listener");
            return;
        }
    };
    let local = listener.local_addr().ok();
    let cap = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_warning: Option<Instant> = None;
    loop {
        if cap.available_permits() == 0
            || budget.as_ref().is_some_and(|b| b.available_permits() == 0)
        {
            // Said once a minute at most: a flood must not flood the log.
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                last_warning = Some(Instant::now());
                tracing::warn!(listener = ?local, max = limits.max_connections,
                    "connection limit reached; new connections wait until one closes");
            }
        }
        let Ok(permit) = cap.clone().acquire_owned().await else {
            return;
        };
        let shared_permit = match &budget {
            Some(b) => match b.clone().acquire_owned().await {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            None => None,
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permits = (permit, shared_permit);
            serve_connection(stream, handler, limits).await;
        });
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, handler: Handler, limits: Limits) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let reply = if req.method() == hyper::Method::GET || req.method() == hyper::Method::HEAD {
            handler(req.uri().path())
        } else {
            Box::pin(async { Reply::text(405, "method not allowed\n") })
        };
        async move { Ok::<_, Infallible>(reply.await.into_response()) }
    });
    let io = TimeoutIo {
        inner: stream,
        limits,
        read_deadline: None,
        write_deadline: None,
    };
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), svc)
        .await
    {
        tracing::debug!(error = %e, "http connection");
    }
}

/// A connection with read and write timeouts, like a blocking socket's
/// `SO_RCVTIMEO`/`SO_SNDTIMEO`: a read or write that makes no progress for
/// its timeout fails with `TimedOut`. Any write progress restarts the read
/// timeout (a client downloading an answer sends nothing meanwhile).
/// Hand-written: hyper-timeout has the same wrapper but keeps it private.
struct TimeoutIo {
    inner: tokio::net::TcpStream,
    limits: Limits,
    read_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    write_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// `Pending`, or `TimedOut` once `deadline` (armed now if unset) passed.
fn pending_until<T>(
    deadline: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<T>> {
    let d = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    match d.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::TimedOut.into())),
        Poll::Pending => Poll::Pending,
    }
}

impl tokio::io::AsyncRead for TimeoutIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.read_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => pending_until(&mut this.read_deadline, this.limits.read_timeout, cx),
        }
    }
}

impl TimeoutIo {
    fn written<T>(
        &mut self,
        r: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match r {
            Poll::Ready(r) => {
                self.write_deadline = None;
                self.read_deadline = None;
                Poll::Ready(r)
            }
            Poll::Pending => pending_until(&mut self.write_deadline, self.limits.write_timeout, cx),
        }
    }
}

impl tokio::io::AsyncWrite for TimeoutIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.written(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.written(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.written(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.written(r, cx)
    }
}

/// A document rendered on request (`/rules`, `/graph`): rendered on the
/// blocking pool one at a time, and shared by every client that asks for
/// the same version while any of them still downloads it. At most
/// `max_live` versions are held at once (slow clients keep theirs until
/// they finish or time out); past that a new version is refused as busy.
pub struct DocCache {
    slot: tokio::sync::Mutex<Option<(u64, Weak<Doc>)>>,
    live: Arc<AtomicUsize>,
    max_live: usize,
}

/// The outcome of [`DocCache::get`].
#[derive(Debug)]
pub enum DocAnswer {
    /// The document.
    Doc(Bytes),
    /// The renderer had nothing to show.
    Nothing,
    /// Too many versions are still being downloaded.
    Busy,
}

struct Doc {
    text: String,
    live: Arc<AtomicUsize>,
}

impl Drop for Doc {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `Bytes` over a shared [`Doc`].
struct DocBytes(Arc<Doc>);

impl AsRef<[u8]> for DocBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.text.as_bytes()
    }
}

impl DocCache {
    /// A cache holding at most `max_live` versions.
    pub fn new(max_live: usize) -> Arc<Self> {
        Arc::new(DocCache {
            slot: tokio::sync::Mutex::new(None),
            live: Arc::new(AtomicUsize::new(0)),
            max_live: max_live.max(1),
        })
    }

    /// Version `key` of the document, rendered by `render` on the blocking
    /// pool unless a client still holds it.
    pub async fn get(
        self: &Arc<Self>,
        key: u64,
        render: impl FnOnce() -> Option<String> + Send + 'static,
    ) -> DocAnswer {
        let this = self.clone();
        // A task of its own, so that a render runs to its end and is
        // shared even when the client that asked for it went away, and
        // renders never overlap.
        let task = tokio::spawn(async move {
            let mut slot = this.slot.lock().await;
            if let Some((k, weak)) = slot.as_ref()
                && *k == key
                && let Some(doc) = weak.upgrade()
            {
                return Ok(Some(doc));
            }
            if this.live.load(Ordering::SeqCst) >= this.max_live {
                return Err(());
            }
            let Some(text) = tokio::task::spawn_blocking(render).await.ok().flatten() else {
                return Ok(None);
            };
            this.live.fetch_add(1, Ordering::SeqCst);
            let doc = Arc::new(Doc {
                text,
                live: this.live.clone(),
            });
            *slot = Some((key, Arc::downgrade(&doc)));
            Ok(Some(doc))
        });
        match task.await {
            Ok(Ok(Some(doc))) => DocAnswer::Doc(Bytes::from_owner(DocBytes(doc))),
            Ok(Ok(None)) | Err(_) => DocAnswer::Nothing,
            Ok(Err(())) => DocAnswer::Busy,
        }
    }

    /// Versions held now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpStream;

    use super::*;

    fn start(limits: Limits, handler: Handler) -> (tokio::runtime::Runtime, SocketAddr) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let l = bind("test", "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        rt.spawn(serve(l, handler, limits, None));
        (rt, addr)
    }

    fn get(addr: SocketAddr, path: &str) -> Option<String> {
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    }

    /// Reads from `s` until EOF or error; `true` when the server closed it
    /// (within the stream's read timeout).
    fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn more_connections_than_the_cap_wait_and_idle_ones_are_closed() {
        let limits = Limits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
        };
        let (_rt, addr) = start(limits, handler(|_| Reply::text(200, "ok\n")));
        // Idle clients fill the cap; one more waits in the accept queue.
        let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut waiting = TcpStream::connect(addr).unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(waiting, "GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = [0u8; 16];
        assert!(
            waiting.read(&mut buf).is_err(),
            "served past the cap of 4 connections"
        );
        // The idle ones are closed after the header timeout, and the
        // waiting one is served.
        for mut s in idle {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(closed_by_server(&mut s), "an idle connection stayed open");
        }
        waiting
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut out = String::new();
        waiting.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.0 200"), "{out}");
        assert!(get(addr, "/").unwrap().ends_with("ok\n"));
    }

    #[test]
    fn slowloris_headers_and_non_reading_clients_are_disconnected() {
        let limits = Limits {
            max_connections: 8,
            header_read_timeout: Duration::from_millis(500),
            write_timeout: Duration::from_millis(500),
            read_timeout: Duration::from_secs(5),
        };
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        let (_rt, addr) = start(
            limits,
            handler(move |_| Reply::bytes(200, "text/plain", big.clone())),
        );
        // Headers one byte at a time, never finished.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let t = Instant::now();
        let mut closed = false;
        for b in b"GET / HTTP/1.1\r\nX-A: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            closed || closed_by_server(&mut slow),
            "a client that never finished its headers kept its connection"
        );
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

        // A client that asks for 64 MiB and reads nothing.
        let mut sink = TcpStream::connect(addr).unwrap();
        write!(sink, "GET / HTTP/1.0\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_secs(2));
        sink.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 20];
        let cut = loop {
            match sink.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(_) => break false,
            }
        };
        assert!(
            cut && got < 64 << 20,
            "a non-reading client was not disconnected ({got} bytes)"
        );
        assert!(get(addr, "/").is_some_and(|r| r.len() > 64 << 20));
    }

    #[test]
    fn documents_are_rendered_once_and_bounded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cache = DocCache::new(2);
            let renders = Arc::new(AtomicUsize::new(0));
            let render = |text: &'static str| {
                let renders = renders.clone();
                move || {
                    renders.fetch_add(1, Ordering::SeqCst);
                    Some(text.to_string())
                }
            };
            let DocAnswer::Doc(a) = cache.get(1, render("one")).await else {
                panic!()
            };
            let DocAnswer::Doc(b) = cache.get(1, render("one")).await else {
                panic!()
            };
            assert_eq!(renders.load(Ordering::SeqCst), 1, "shared while held");
            assert_eq!(a.as_ptr(), b.as_ptr());
            let DocAnswer::Doc(c) = cache.get(2, render("two")).await else {
                panic!()
            };
            assert_eq!(&c[..], b"two");
            assert_eq!(cache.live(), 2);
            assert!(matches!(
                cache.get(3, render("three")).await,
                DocAnswer::Busy
            ));
            drop((a, b));
            assert_eq!(cache.live(), 1);
            assert!(matches!(
                cache.get(3, render("three")).await,
                DocAnswer::Doc(_)
            ));
            assert!(matches!(cache.get(4, || None).await, DocAnswer::Nothing));
        });
    }
}
