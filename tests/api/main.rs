//! Integration tests: the real gateway on a free port, real sockets, a real mongod.
//! One test binary (modules below) so it compiles and starts mongod once.

mod adversarial;
mod bad_input;
mod channel_cluster;
mod channels;
mod cli;
mod client_js;
mod client_publish;
mod cluster;
mod compose;
mod console;
mod cors;
mod deflate;
mod drain;
mod history;
mod history_faults;
mod hostile;
mod jwt_keys;
mod lifecycle;
mod limits;
mod live;
mod load;
mod migrations;
mod mint;
mod openapi;
mod ops;
mod origin;
mod outage;
mod rfc6455;
mod rpc;
mod server_api;
mod session;
mod store_conformance;
mod support;
mod upgrade;
mod wire;
