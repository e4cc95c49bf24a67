//! The kube client's middleware: `clientConnection.qps`/`burst` as a
//! token bucket in front of every request, and every response reported to
//! the watchers (an answered request ends a watcher's error).
//!
//! tower's own `RateLimit` counts fixed windows, not a bucket with a burst,
//! so the bucket is written here (client-go's `tokenBucketRateLimiter`
//! behaves the same way).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::{Request, Response};
use tokio::time::{Instant, Sleep};

use super::{RateLimit, Watchers, lock};

/// Tokens and their last refill.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Bucket {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            at: Instant::now(),
        }
    }

    /// Take a token now, or say how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.limit.burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.limit.qps).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.limit.qps.max(f64::MIN_POSITIVE),
            ))
        }
    }
}

/// The layer given to `kube::client::ClientBuilder`.
#[derive(Clone)]
pub(super) struct Layer {
    bucket: Option<Arc<Mutex<Bucket>>>,
    watchers: Arc<Watchers>,
}

impl Layer {
    pub(super) fn new(limit: Option<RateLimit>, watchers: Arc<Watchers>) -> Self {
        Layer {
            bucket: limit
                .filter(|l| l.qps > 0.0)
                .map(|l| Arc::new(Mutex::new(Bucket::new(l)))),
            watchers,
        }
    }
}

impl<S> tower::Layer<S> for Layer {
    type Service = Service<S>;

    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            bucket: self.bucket.clone(),
            wait: None,
            granted: false,
            watchers: self.watchers.clone(),
        }
    }
}

/// The service the layer wraps around the client's stack.
pub(super) struct Service<S> {
    inner: S,
    bucket: Option<Arc<Mutex<Bucket>>>,
    wait: Option<Pin<Box<Sleep>>>,
    /// A token was taken for the next `call`.
    granted: bool,
    watchers: Arc<Watchers>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for Service<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.granted {
            if let Some(bucket) = &self.bucket {
                loop {
                    if let Some(wait) = self.wait.as_mut() {
                        if wait.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        self.wait = None;
                    }
                    match lock(bucket).take(Instant::now()) {
                        Ok(()) => break,
                        Err(d) => self.wait = Some(Box::pin(tokio::time::sleep(d))),
                    }
                }
            }
            self.granted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        self.granted = false;
        let path = req.uri().path().to_string();
        let watchers = self.watchers.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Ok(resp) = &r {
                watchers.answered(&path, resp.status());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_qps() {
        let now = Instant::now();
        let mut b = Bucket::new(RateLimit {
            qps: 5.0,
            burst: 10,
        });
        b.at = now;
        for i in 0..10 {
            assert_eq!(b.take(now), Ok(()), "request {i} of the burst");
        }
        let wait = b.take(now).expect_err("the burst is spent");
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6, "{wait:?}");
        // One more token every 1/qps seconds.
        assert_eq!(b.take(now + Duration::from_millis(200)), Ok(()));
        assert!(b.take(now + Duration::from_millis(250)).is_err());
        // Never more than the burst saved up.
        let later = now + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
    }
}
