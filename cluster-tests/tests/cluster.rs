//! Cluster acceptance tests: real `baa` processes on loopback. One test binary
//! (each file in `tests/` would be its own link); run with `--test-threads=1`
//! on small machines. The modules live in `tests/cluster/`.

mod cluster {
    mod admin_lists;
    mod attack_suite;
    mod attacks;
    mod backup;
    mod browser_smoke;
    mod cluster_port;
    mod conformance;
    mod demo;
    mod fault_schedules;
    mod faults;
    mod federation;
    mod federation_attacks;
    mod federation_browser;
    mod flood;
    mod forward_auth;
    mod keys_at_rest;
    mod logs;
    mod membership;
    mod memory;
    mod monitoring;
    mod native;
    mod native_cli;
    mod public_port;
    mod replication;
    mod restarts;
    mod rolling;
    mod sso_browser;
    mod sso_protocol;
    mod support;
}
