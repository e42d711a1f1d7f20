//! The single-sign-on domain, transport-free: functions that take typed
//! input and return typed values and errors, for the HTTP handlers (which
//! parse, call one function here, and render) to use. One file per step:
//! an authorization request, sign-in, the trust decision, sessions, tokens,
//! sign-out and the back channel that tells the sites.

pub mod authorize;
pub mod clients;
pub mod consent;
pub mod device;
pub mod federation;
pub mod forward_auth;
pub mod grants;
pub mod logout;
pub mod page;
pub mod peer_login;
pub mod refresh;
pub mod sessions;
pub mod sign_in;
pub mod sites;
pub mod status;
pub mod tickets;
pub mod tokens;
pub mod users;
