//! End-to-end tests of the real binaries: one test binary, one module per
//! capability. Each test starts its own daemon on temporary paths.

#![allow(missing_docs)]

mod activation;
mod authz;
mod backup;
mod bad_input;
mod conformance;
mod crash;
mod hardening;
mod hostile;
mod oauth_flows;
mod oauth_peer;
mod oauth_providers;
mod oauth_refresh;
mod peers;
mod peers_smoke;
mod probe;
mod proxy;
mod proxy_eras;
mod proxy_http;
mod proxy_lifecycle;
mod proxy_protocol;
mod proxy_restart;
mod proxy_serve;
mod proxy_surface;
mod release;
mod sealed;
mod secrets;
mod seed;
mod smoke;
mod ui;
mod ui_browser;
