//! Types shared by baa nodes, the `baa` CLI and the tests: the command that is the
//! only way replicated state changes, the data model, the admin API's JSON shapes,
//! stable error codes and the single wire codec. This crate does no I/O.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod api;
pub mod codec;
pub mod command;
pub mod cookie;
pub mod error;
pub mod federation;
pub mod model;
pub mod pkce;
pub mod sso;

pub use error::ErrorCode;
