//! The browser side, embedded in the binary: the demo page at `/` and the client module at
//! `/ticketgate.js` (both from client/).

use actix_web::HttpResponse;
use actix_web::http::header::{self, ContentType};

pub async fn demo_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../client/index.html"))
}

pub async fn client_module() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../client/ticketgate.js"))
}

/// The SharedWorker that holds one connection for all tabs (the client's `shared: true`),
/// served beside the client module it imports.
pub async fn worker_module() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("../../client/ticketgate-worker.js"))
}
