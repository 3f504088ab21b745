//! actix-http's upgrade hook: every HTTP/1 request that asks to upgrade comes here with its
//! socket. The request still goes through the application (routing, CORS, rate limits, the
//! ticket check in `routes::upgrade`), so refusals are the same JSON errors as anywhere else.
//! When the application answers 101 with a [`Handoff`], the 101 is written and the socket
//! handed over; the HTTP/1 dispatcher, with its buffers, is then dropped.

use std::rc::Rc;
use std::time::Duration;

use actix_codec::{Encoder, Framed, FramedParts};
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{Service, ServiceFactory, fn_factory, fn_service};
use actix_web::HttpResponse;
use actix_web::dev::{AppConfig, ServiceResponse};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::socket::Handoff;
use super::socket::Socket;

/// What actix-http hands to the upgrade service.
pub type Upgraded = (Request, Framed<Socket, h1::Codec>);

/// How long a refused upgrade's client gets to take the response.
const RESPONSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The upgrade service for one worker, routing through its own instance of the application.
pub fn service<F, B>(
    app: F,
) -> impl ServiceFactory<Upgraded, Config = (), Response = (), Error = actix_web::Error, InitError = ()>
where
    F: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let app = Rc::new(app);
    fn_factory(move || {
        let app = Rc::clone(&app);
        async move {
            let app = Rc::new(app.new_service(AppConfig::default()).await?);
            Ok(fn_service(move |upgraded: Upgraded| {
                serve(Rc::clone(&app), upgraded)
            }))
        }
    })
}

/// Errors are the socket's (writing the response failed): the connection just ends.
async fn serve<S, B>(app: Rc<S>, (request, framed): Upgraded) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let mut response: HttpResponse = match app.call(request).await {
        Ok(response) => response.map_into_boxed_body().into_parts().1,
        Err(error) => HttpResponse::from_error(error),
    };
    let handoff = response.extensions_mut().remove::<Handoff>();
    let (head, body) = response.into_parts();
    let mut head: Response<()> = head.into();
    let FramedParts {
        io,
        mut codec,
        read_buf,
        ..
    } = framed.into_parts();
    let Some(mut socket) = io.into_tcp() else {
        return Ok(());
    };
    let mut out = BytesMut::new();
    match handoff {
        Some(handoff) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            codec.encode(Message::Item((head, BodySize::None)), &mut out)?;
            socket.write_all(&out).await?;
            handoff.start(socket, &read_buf);
            Ok(())
        }
        _ => {
            // A refusal: the JSON error, then the connection closes (an upgrade request
            // carries no keep-alive worth keeping).
            head.head_mut().set_connection_type(ConnectionType::Close);
            let body = actix_web::body::to_bytes(body).await.unwrap_or_default();
            codec.encode(
                Message::Item((head, BodySize::Sized(body.len() as u64))),
                &mut out,
            )?;
            out.extend_from_slice(&body);
            let write = async {
                socket.write_all(&out).await?;
                socket.shutdown().await
            };
            let written = tokio::time::timeout(RESPONSE_WRITE_TIMEOUT, write).await;
            Ok(written.unwrap_or(Ok(()))?)
        }
    }
}
