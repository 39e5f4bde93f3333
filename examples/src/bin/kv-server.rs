//! One node of the replicated key-value server; see `kv-server --help`.

fn main() {
    std::process::exit(raftkit_examples::server_main(std::env::args().skip(1)));
}
