//! actix actors of the node: SSO cookie validation (session gate), login
//! ticket issue (ticket issuer), token → session translation (native broker), work that must not block the async workers
//! (password hashing) and periodic housekeeping (the reaper).

pub mod hasher;
pub mod native_broker;
pub mod reaper;
pub mod session_gate;
pub mod ticket_issuer;
