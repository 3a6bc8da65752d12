//! rbd-liveapp: one HTML page that reloads itself in the browser whenever its server is
//! restarted, which under rbd's run mode is after every successful build.
//!
//! The listening socket comes from rbd (fd 3, the listenfd convention), so it stays open
//! across restarts: a request made while the old instance is stopping and the new one
//! is starting waits in the socket's backlog instead of being refused.
//!
//! The reload is tower-livereload's: the page holds an EventSource on
//! `/_tower-livereload/event-stream`; when that stream breaks, the browser reconnects
//! (after the `retry` the stream announced) and a reconnect answered by a server reloads
//! the page. That stream never ends by itself, so a graceful shutdown would wait
//! for it for ever (measured: a SIGTERM'd instance with one open page was still running
//! 8 s later; rbd would SIGKILL it after `stop_timeout_s`). `end_on_shutdown` ends such
//! streams when the shutdown starts; other requests in flight still finish. Measured with
//! it, in headless Chromium: the instance exits within 10 ms of SIGTERM, and the open page
//! shows the next instance's text 0.2-0.3 s after that one starts on the inherited socket
//! (1.1 s with tower-livereload's default reconnect wait).
//! Run without rbd (PORT), the reconnects are refused until the next instance binds the
//! port, and the browser keeps retrying.

mod message;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::middleware::map_response_with_state;
use axum::response::{Html, Response};
use axum::routing::get;
use listenfd::ListenFd;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tower_livereload::LiveReloadLayer;

// One thread: a page and a reload stream per open tab need no more.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let (stopping, stopping_rx) = watch::channel(false);
    let app = Router::new()
        .route("/", get(page))
        // The browser reconnects this long after the reload stream ends (default 1 s):
        // under rbd the reconnect then waits in the socket's backlog for the next instance,
        // so a short wait only makes the page show the new build sooner.
        .layer(LiveReloadLayer::new().reload_interval(Duration::from_millis(100)))
        .layer(map_response_with_state(stopping_rx, end_on_shutdown));
    // Before the line below: whoever waits for that line may send SIGTERM right after it.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let listener = listener().await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            println!("shutting down");
            stopping.send_replace(true);
        })
        .await
}

/// rbd's socket when it passed one (LISTEN_FDS), else 127.0.0.1:$PORT (default 3000).
async fn listener() -> std::io::Result<TcpListener> {
    if let Some(inherited) = ListenFd::from_env().take_tcp_listener(0)? {
        // tokio requires it; the fd is shared with rbd, so this is rbd's too, which
        // does not mind (it never accepts on it).
        inherited.set_nonblocking(true)?;
        return TcpListener::from_std(inherited);
    }
    let port = match std::env::var("PORT") {
        Ok(text) => text.parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("PORT={text}"))
        })?,
        Err(_) => 3000,
    };
    TcpListener::bind(("127.0.0.1", port)).await
}

async fn page() -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>rbd live app</title></head>\n\
         <body><h1 id=\"message\">{}</h1></body></html>\n",
        message::MESSAGE
    ))
}

/// Event streams (the reload stream) end once `stopping` turns true.
async fn end_on_shutdown(
    State(stopping): State<watch::Receiver<bool>>,
    response: Response,
) -> Response {
    let streaming = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if !streaming {
        return response;
    }
    let mut stopping = stopping;
    let shutdown = Box::pin(async move {
        // Err: the sender is gone, which also means shutting down.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    });
    response.map(|body| Body::new(UntilShutdown { body, shutdown }))
}

struct UntilShutdown {
    body: Body,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl HttpBody for UntilShutdown {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }
}
