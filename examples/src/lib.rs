//! # raftkit examples
//!
//! - [`server`]: a replicated key-value server, one process per node, that speaks the Redis
//!   protocol (`kv-server --help`), built from raft-core's node driver, raft-wal, raft-snapshot
//!   and raft-net-tcp.
//! - The `demo` binary: a local 3-node cluster under a write workload, its leader killed and
//!   restarted, every acknowledged write verified on every node.
//! - [`cluster`] and [`client`]: the harness the demo, the process tests and the cluster
//!   benchmark share.

pub mod client;
pub mod cluster;
#[cfg(feature = "raft-engine")]
pub mod engine_store;
pub mod kv;
pub mod resp;
pub mod server;

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The entry point of a server process: parses `args` (without the program name), prints help
/// or an error, and runs the server. Returns the process exit code.
#[allow(clippy::print_stdout)] // A process entry point: `--help` belongs on stdout.
pub fn server_main(args: impl IntoIterator<Item = String>) -> i32 {
    match server::ServerArgs::parse(args) {
        Ok(None) => {
            print!("{}", server::USAGE);
            0
        }
        Err(why) => {
            eprintln!("kv-server: {why}\n\n{}", server::USAGE);
            2
        }
        Ok(Some(args)) => {
            init_logging();
            match server::run(args) {
                Ok(()) => 0,
                Err(err) => {
                    tracing::error!(%err, "server failed");
                    eprintln!("kv-server: {err}");
                    1
                }
            }
        }
    }
}
