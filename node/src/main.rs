//! The `baa` command: node server, administration client, PKI and demo.

fn main() -> std::process::ExitCode {
    baa_node::cli::main()
}
