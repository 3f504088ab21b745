//! The HTTP server, put together by hand beside the upgrade hook: actix-web's `HttpServer` has
//! no place for one, so this is actix-http's `HttpService` with the application behind it, the
//! upgrade service (`upgrade.rs`) for WebSocket upgrades, and every socket wrapped so the
//! parser's own refusals carry JSON and a response can hand the socket on (`socket.rs`).

use std::net::TcpListener;
use std::time::Duration;

use actix_http::error::DispatchError;
use actix_http::{HttpService, Protocol, Request};
use actix_service::{
    IntoServiceFactory, ServiceFactory, ServiceFactoryExt, fn_service, map_config,
};
use actix_web::body::MessageBody;
use actix_web::dev::{AppConfig, Server, ServiceResponse};
use tokio::net::TcpStream;

use super::socket::Socket;
use super::upgrade;

/// The server's own clocks.
#[derive(Debug, Clone, Copy)]
pub struct HttpTiming {
    /// A client must send its request head within this time (slowloris).
    pub request_timeout: Duration,
    /// How long a graceful stop waits for workers before it ends them.
    pub shutdown_grace: Duration,
}

/// Starts serving `app` (a factory of the application, one per worker) on `listener`.
pub fn serve<F, I, S, B>(
    listener: TcpListener,
    app: F,
    timing: HttpTiming,
) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let local_addr = listener.local_addr()?;
    let builder = actix_server::Server::build();
    // Tells idle keep-alive connections to close when a graceful stop begins, as
    // `HttpServer` does.
    let stopping = builder.graceful_shutdown_signal();
    Ok(builder
        // Signals are handled by Application::run_until_stopped, which drains first.
        .disable_signals()
        .shutdown_timeout(timing.shutdown_grace.as_secs())
        .listen("ticketgate", listener, move || {
            let stopping = stopping.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                // A client gets a second to take the response of a refused request before the
                // socket is closed.
                .client_request_timeout(timing.request_timeout)
                .client_disconnect_timeout(Duration::from_secs(1))
                .local_addr(local_addr)
                // Every connection's data carries where a response may hand its socket on
                // (an SSE stream: `socket.rs`).
                .on_connect_ext(|socket: &Socket, data| {
                    data.insert(socket.after_response().clone());
                })
                // WebSocket upgrades go through the same application, then take the socket.
                .upgrade(upgrade::service(app().into_factory()))
                .finish(map_config(
                    app().into_factory().map_err(|error| error.error_response()),
                    |_| AppConfig::default(),
                ));
            fn_service(|socket: TcpStream| async move {
                let peer = socket.peer_addr().ok();
                Ok::<_, DispatchError>((Socket::new(socket), Protocol::Http1, peer))
            })
            .and_then(http)
        })?
        .run())
}
