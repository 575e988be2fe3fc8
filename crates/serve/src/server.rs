//! The connection layer under the router: accepts TCP connections up to a cap, serves
//! HTTP/1.1 on each with a header read deadline (idle keep-alive included) and a body
//! read deadline, and on shutdown stops accepting, drains, and closes whatever is left
//! at the shutdown deadline. Knows nothing about routes or services.

use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// The error a request body yields once its read deadline has passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyTimeout;

/// Whether `e` (or an error it wraps) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if x.is::<BodyTimeout>() {
            return true;
        }
        cur = x.source();
    }
    false
}

/// A request body that fails with [`BodyTimeout`] if it is not complete by a deadline.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|r| r.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: the whole body must arrive within `body_timeout` of the request head.
pub(crate) async fn body_deadline(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = if http_body::Body::is_end_stream(&body) {
        body
    } else {
        Body::new(DeadlineBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(state.cfg.body_timeout)),
        })
    };
    next.run(Request::from_parts(parts, body)).await
}

/// Errors of `accept` that concern one connection only; others (out of file
/// descriptors) get a short pause before the next try.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, marks the
/// server not ready, lets in-flight requests finish, and returns once they have or
/// once `state.cfg.shutdown_timeout` has passed, closing what is left.
pub(crate) async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = state.cfg.clone();
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    // Readiness fails the moment shutdown begins; the listener stays open for
    // `drain_delay` more, so balancers see the probe fail before connects are refused.
    let delay = cfg.drain_delay;
    let ready_state = state.clone();
    let shutdown = async move {
        shutdown.await;
        ready_state.ready.store(false, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!("shutting down: not ready; serving {delay:?} more before draining");
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!("accept failed: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(connection(
            stream,
            app.clone(),
            permit,
            stop_rx.clone(),
            cfg.header_timeout,
        ));
    }
    drop(listener);
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!(
        "shutting down: draining {} connections for up to {:?}",
        conns.len(),
        cfg.shutdown_timeout
    );
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(cfg.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open at the shutdown deadline; closing them",
            conns.len()
        );
        conns.shutdown().await;
    }
    Ok(())
}

/// One connection: HTTP/1.1 with keep-alive until the client leaves, a deadline
/// passes, or shutdown asks it to finish its current request and close.
async fn connection(
    stream: TcpStream,
    app: Router,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
    header_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection closed: {e}");
            }
        }
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
