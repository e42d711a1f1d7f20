//! The single-sign-on domain, transport-free: functions that take typed
//! input and return typed values and errors, for the HTTP handlers (which
//! parse, call one function here, and render) to use.

pub mod forward_auth;
pub mod sessions;
pub mod status;
