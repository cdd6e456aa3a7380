//! The metrics endpoint (`--metrics-listen ADDR`): HTTP/1.1 on TCP, where
//! `GET /metrics` (or `/`) answers the daemon's status in Prometheus's
//! text format, taken at the request; any other path is a 404, any other
//! method a 405.
//!
//! It faces the network, so no client can hold the daemon up or take its
//! CPU from the block device: one request per connection (no keep-alive,
//! so nothing pipelined is answered), at most [`MAX_CONNECTIONS`] at once
//! (more are closed as they connect), headers within [`HEADER_TIMEOUT`], a
//! whole connection within [`CONNECTION_TIMEOUT`], and a page rendered at
//! most once per [`FRESH_FOR`] however often it is asked for (a flood of
//! scrapes slowed NBD reads 30-fold before). It serves figures only and
//! changes nothing.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::{StatusSource, prometheus};

/// Scrapers served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a rendered page is served again rather than rendered anew
/// (Prometheus scrapes every 15 s or more).
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot serve metrics on {address}: {cause}; pick another address with --metrics-listen (HOST:PORT, e.g. 127.0.0.1:9100)"
)]
pub struct MetricsListenError {
    address: String,
    /// Shown in this error's own line, so not a `source`.
    cause: std::io::Error,
}

/// Listens on each of `addresses` (HOST:PORT); fails on the first that
/// cannot be bound, before anything is served.
pub async fn bind(addresses: &[String]) -> Result<Vec<TcpListener>, MetricsListenError> {
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let listener =
            TcpListener::bind(address.as_str())
                .await
                .map_err(|cause| MetricsListenError {
                    address: address.clone(),
                    cause,
                })?;
        if let Ok(bound) = listener.local_addr() {
            tracing::info!("serving metrics at http://{bound}/metrics");
            if !bound.ip().is_loopback() {
                tracing::warn!(
                    "metrics at {bound} can be read from other hosts: they name volumes, the store and the lease holder's host; listen on 127.0.0.1, or firewall the port"
                );
            }
        }
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves `source`'s metrics on `listeners` until `stopped` turns true.
pub async fn serve(
    listeners: Vec<TcpListener>,
    source: StatusSource,
    stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let page = Arc::new(Page::new(source));
    let mut serving = tokio::task::JoinSet::new();
    for listener in listeners {
        let (page, slots, stopped) = (Arc::clone(&page), Arc::clone(&slots), stopped.clone());
        serving.spawn(accept(listener, page, slots, stopped));
    }
    while serving.join_next().await.is_some() {}
}

/// The metrics page, rendered at most once per [`FRESH_FOR`].
struct Page {
    source: StatusSource,
    last: Mutex<Option<(Instant, Bytes)>>,
}

impl Page {
    fn new(source: StatusSource) -> Page {
        Page {
            source,
            last: Mutex::new(None),
        }
    }

    fn body(&self) -> Bytes {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, body)) if at.elapsed() < FRESH_FOR => body.clone(),
            _ => {
                let body = Bytes::from(prometheus::encode(&self.source.collect()));
                *last = Some((Instant::now(), body.clone()));
                body
            }
        }
    }
}

async fn accept(
    listener: TcpListener,
    page: Arc<Page>,
    slots: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, say: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropped: the scraper sees the connection closed
        };
        let page = Arc::clone(&page);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&page)));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .keep_alive(false)
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            drop(slot);
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    page: Arc<Page>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics" | "/") => Response::builder()
            .header(CONTENT_TYPE, prometheus::CONTENT_TYPE)
            .body(Full::new(page.body())),
        (&Method::GET | &Method::HEAD, _) => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                b"zeroblk serves only /metrics\n",
            ))),
        _ => Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, "GET, HEAD")
            .body(Full::new(Bytes::new())),
    };
    Ok(response.expect("a response built from constants"))
}
