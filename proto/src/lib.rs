//! Types shared by baa nodes, the `baa` CLI and the tests: the command that is the
//! only way replicated state changes, the data model, the admin API's JSON shapes,
//! stable error codes and the single wire codec. This crate does no I/O.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::todo)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

/// What every rotating key (signing, federation, ticket) shares: a `Debug`
/// that never prints the secret, and whether it is still published (kept
/// for verifying or opening) at a time, from its `publish_until_ms`.
macro_rules! rotating_key {
    ($key:ident) => {
        impl std::fmt::Debug for $key {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($key))
                    .field("kid", &self.kid)
                    .field("created_ms", &self.created_ms)
                    .field("retired_ms", &self.retired_ms)
                    .field("publish_until_ms", &self.publish_until_ms)
                    .finish_non_exhaustive()
            }
        }

        impl $key {
            /// Whether the key is still published (verifies, or opens) at `now_ms`.
            pub fn published_at(&self, now_ms: u64) -> bool {
                self.publish_until_ms.is_none_or(|t| now_ms < t)
            }
        }
    };
}

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
