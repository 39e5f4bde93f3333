#!/usr/bin/env bash
# Runs every check and test of the workspace on a machine that has only the Rust toolchain:
# installs what the tests need (rustfmt and clippy through rustup; redis-tools for the tests that
# drive the key-value server with real redis-cli and redis-benchmark, procps for kill(1)), then
# checks formatting, lints and docs, and runs `cargo test --workspace`. CI runs exactly this.
#
# Needs root or sudo the first time, to install the Debian packages (apt-get). Set
# RAFTKIT_SKIP_CHECKS=1 to run only the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

say "toolchain"
command -v cargo >/dev/null || { echo "cargo is not installed (https://rustup.rs)" >&2; exit 1; }
for component in rustfmt clippy; do
    subcommand=${component/rustfmt/fmt}
    if ! cargo "$subcommand" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
cargo --version
rustc --version

say "system packages"
need=()
{ command -v redis-cli && command -v redis-benchmark; } >/dev/null || need+=(redis-tools)
command -v kill >/dev/null || need+=(procps)
if ((${#need[@]})); then
    if ! command -v apt-get >/dev/null; then
        echo "missing ${need[*]}: install them with your package manager (the tests run redis-cli and redis-benchmark)" >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "installing ${need[*]} needs root or sudo" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi
redis-cli --version

say "fetch dependencies"
cargo fetch --locked 2>/dev/null || cargo fetch

if [ "${RAFTKIT_SKIP_CHECKS:-0}" != 1 ]; then
    say "format"
    cargo fmt --all -- --check

    say "lints"
    cargo clippy --workspace --all-targets -- -D warnings
    # The raft-engine log store is a feature of the examples, built on its own (see
    # examples/Cargo.toml: raft-wal's test-only fail points break raft-engine's build).
    cargo clippy -p raftkit-examples --all-targets --features raft-engine -- -D warnings

    say "docs"
    # Every feature but the benches' `compare` (tikv raft-engine), which is not built here.
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps \
        --features raft-core/sim,raft-core/testkit,raft-wal/failpoints,raft-wal/testkit
fi

say "tests: cargo test --workspace"
cargo test --workspace

say "tests: the raft-engine log store (conformance kit, leader kill on real processes)"
cargo test -p raftkit-examples --features raft-engine --test engine_store --test cluster
