//! The starting example runs: three nodes over raft-wal, raft-snapshot and raft-net-tcp agree on
//! the counter.

use std::process::Command;

#[test]
fn the_counter_example_replicates_to_every_node() {
    let out = Command::new(env!("CARGO_BIN_EXE_counter")).output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for id in 1..=3 {
        let line = format!("node {id} applied all 100 entries: its counter is 5050");
        assert!(stdout.contains(&line), "missing {line:?} in:\n{stdout}");
    }
}
