//! The smallest state machine: counts what it applies. For benches that measure what the
//! runtime and the log cost, not an application.

use raft_core::{Entry, StateMachine};

/// Counts the entries it applied; answers each with the count so far.
#[derive(Debug, Default)]
pub struct Count(pub u64);

impl StateMachine for Count {
    type Output = u64;
    fn apply(&mut self, _entry: &Entry) -> u64 {
        self.0 += 1;
        self.0
    }
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.0.to_le_bytes())
    }
    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut b = [0u8; 8];
        input.read_exact(&mut b)?;
        self.0 = u64::from_le_bytes(b);
        Ok(())
    }
}
