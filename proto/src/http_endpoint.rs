//! A minimal HTTP/1.1 endpoint for Prometheus metrics and readiness probes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A reply: status, content type and body.
pub type Reply = (StatusCode, &'static str, String);

/// Serves `handler(path)` on every connection accepted by `listener`, until the task is dropped.
pub fn serve<F>(listener: TcpListener, handler: F) -> impl Future<Output = ()>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    crate::net::accept_forever(listener, "http endpoint", move |stream, _| {
        let handler = handler.clone();
        async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = handler(req.uri().path());
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static headers are valid");
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "http endpoint connection ended with an error");
            }
        }
    })
}
