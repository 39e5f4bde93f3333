//! Shared harnesses for the raftkit benchmarks.

pub mod alloc;
pub mod core_cluster;
pub mod count;
pub mod load;
pub mod procstat;
pub mod wal_matrix;

/// A cluster bench re-executes itself with `--serve` as each kv-server node: in that case this
/// runs the server and exits the process; otherwise it returns.
pub fn serve_if_node() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        args.next();
        std::process::exit(raftkit_examples::server_main(args));
    }
}
