//! A second example machine for the simulator, and the worked example of
//! [simulating your own state machine](super::workload): a bank whose accounts move money between
//! each other by transfers, so the total is conserved.
//!
//! The [`Bank`] is an ordinary [`StateMachine`]; [`BankModel`] is its sequential specification;
//! [`BankWorkload`] draws transfers and whole-bank reads, and checks after every entry any node
//! applies that no money was made or lost and no account went below zero. Unlike the key-value
//! workload, every operation may touch any account, so the history is checked as one partition
//! over whole-bank states.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::linearizability::Model;
use super::workload::Workload;
use crate::rng::Rng;
use crate::storage::StateMachine;
use crate::types::{Entry, EntryKind};

/// Most accounts a bank may have (account numbers are one byte).
pub const ACCOUNTS_MAX: usize = 256;

/// A bank operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BankOp {
    /// Move `amount` from account `from` to account `to`, if `from` holds that much.
    Transfer {
        /// The account debited.
        from: u8,
        /// The account credited.
        to: u8,
        /// How much.
        amount: u64,
    },
    /// Read every balance.
    Balances,
}

/// What a client is told.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum BankReply {
    /// No answer arrived (the outcome of a transfer is unknown).
    #[default]
    Unknown,
    /// The transfer was made.
    Done,
    /// The transfer was refused: the debited account held less than the amount (or an account
    /// does not exist). Nothing changed.
    Refused,
    /// Every balance, by account number.
    Balances(Vec<u64>),
}

/// An operation that could not be decoded.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed bank operation: {0}")]
pub struct DecodeError(&'static str);

// A command is a client's operation, numbered so the bank applies it at most once:
//
// ```text
// +------------+-----------+-----+------+----+------------+      +------------+-----------+-----+
// | client u64 | op_id u64 | 1u8 | from | to | amount u64 |  or  | client u64 | op_id u64 | 2u8 |
// +------------+-----------+-----+------+----+------------+      +------------+-----------+-----+
// ```
//
// (little endian).
const TAG_TRANSFER: u8 = 1;
const TAG_BALANCES: u8 = 2;
const IDS_LEN: usize = 8 + 8;
const TRANSFER_LEN: usize = 1 + 1 + 1 + 8;

/// A client's numbered operation, as carried in a log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankCommand {
    /// The client.
    pub client: u64,
    /// The client's operation number; a client numbers its operations upwards.
    pub op_id: u64,
    /// The operation.
    pub op: BankOp,
}

impl BankCommand {
    /// Encodes the command for a log entry.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(IDS_LEN + TRANSFER_LEN);
        buf.put_u64_le(self.client);
        buf.put_u64_le(self.op_id);
        match self.op {
            BankOp::Transfer { from, to, amount } => {
                buf.put_u8(TAG_TRANSFER);
                buf.put_u8(from);
                buf.put_u8(to);
                buf.put_u64_le(amount);
            }
            BankOp::Balances => buf.put_u8(TAG_BALANCES),
        }
        buf.freeze()
    }

    /// Decodes a command, rejecting anything malformed (wrong length, unknown tag).
    pub fn decode(data: &[u8]) -> Result<BankCommand, DecodeError> {
        if data.len() < IDS_LEN {
            return Err(DecodeError("shorter than the client and operation numbers"));
        }
        let (ids, body) = data.split_at(IDS_LEN);
        let client = u64_at(ids, 0);
        let op_id = u64_at(ids, 8);
        let op = match body {
            [TAG_TRANSFER, from, to, amount @ ..] if body.len() == TRANSFER_LEN => {
                BankOp::Transfer { from: *from, to: *to, amount: u64_at(amount, 0) }
            }
            [TAG_TRANSFER, ..] => return Err(DecodeError("a transfer is 11 bytes")),
            [TAG_BALANCES] => BankOp::Balances,
            [TAG_BALANCES, ..] => return Err(DecodeError("a balance read is 1 byte")),
            [] => return Err(DecodeError("no operation")),
            _ => return Err(DecodeError("unknown operation tag")),
        };
        Ok(BankCommand { client, op_id, op })
    }
}

/// The little-endian `u64` at `at` (the caller checked the length).
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The rule both the machine and the model follow: the balances after `op`, and the reply.
fn execute(balances: &mut [u64], op: &BankOp) -> BankReply {
    match *op {
        BankOp::Transfer { from, to, amount } => {
            let (from, to) = (from as usize, to as usize);
            if from >= balances.len() || to >= balances.len() || balances[from] < amount {
                return BankReply::Refused;
            }
            balances[from] -= amount;
            balances[to] += amount;
            BankReply::Done
        }
        BankOp::Balances => BankReply::Balances(balances.to_vec()),
    }
}

/// Accounts and their balances, replicated by applying commands in log order. Each client's
/// last command and its reply are kept, so a command sent again (its client timed out) is
/// answered from them instead of applied twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bank {
    balances: Vec<u64>,
    /// Per client: the number of its last command applied, and the reply.
    last: BTreeMap<u64, (u64, BankReply)>,
}

impl Bank {
    /// A bank of `accounts` accounts (at most [`ACCOUNTS_MAX`]) holding `opening` each.
    pub fn new(accounts: usize, opening: u64) -> Bank {
        Bank { balances: vec![opening; accounts.min(ACCOUNTS_MAX)], last: BTreeMap::new() }
    }

    /// Every balance, by account number.
    pub fn balances(&self) -> &[u64] {
        &self.balances
    }

    /// The money in the bank.
    pub fn total(&self) -> u128 {
        self.balances.iter().map(|&b| u128::from(b)).sum()
    }

    /// Applies a command once: a repeat of a client's last command gets the same reply, an
    /// older one (a late duplicate) gets none.
    pub fn execute(&mut self, command: &BankCommand) -> Option<BankReply> {
        match self.last.get(&command.client) {
            Some((last, reply)) if *last == command.op_id => return Some(reply.clone()),
            Some((last, _)) if *last > command.op_id => return None,
            _ => {}
        }
        let reply = execute(&mut self.balances, &command.op);
        self.last.insert(command.client, (command.op_id, reply.clone()));
        Some(reply)
    }
}

impl StateMachine for Bank {
    /// The reply; `None` for no-ops, late duplicates and entries that do not decode (skipped,
    /// identically on every replica).
    type Output = Option<BankReply>;

    fn apply(&mut self, entry: &Entry) -> Option<BankReply> {
        if entry.kind != EntryKind::Normal {
            return None;
        }
        let command = BankCommand::decode(&entry.data).ok()?;
        self.execute(&command)
    }

    /// `accounts u32`, each balance `u64`, `clients u32`, then per client in order `client u64,
    /// op_id u64` and its reply (`tag u8`: 0 refused, 1 done, 2 balances followed by `count u32`
    /// and the balances) (little endian): the same state always gives the same bytes.
    fn snapshot(&mut self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut buf = BytesMut::new();
        put_balances(&mut buf, &self.balances);
        buf.put_u32_le(self.last.len() as u32);
        for (client, (op_id, reply)) in &self.last {
            buf.put_u64_le(*client);
            buf.put_u64_le(*op_id);
            match reply {
                BankReply::Unknown | BankReply::Refused => buf.put_u8(0),
                BankReply::Done => buf.put_u8(1),
                BankReply::Balances(balances) => {
                    buf.put_u8(2);
                    put_balances(&mut buf, balances);
                }
            }
        }
        out.write_all(&buf)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes)?;
        let (balances, last) = decode_snapshot(&bytes, self.balances.len()).map_err(|what| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bank snapshot: {what}"))
        })?;
        self.balances = balances;
        self.last = last;
        Ok(())
    }
}

fn put_balances(buf: &mut BytesMut, balances: &[u64]) {
    buf.put_u32_le(balances.len() as u32);
    for balance in balances {
        buf.put_u64_le(*balance);
    }
}

/// What [`Bank`] restores from: its balances (exactly `accounts` of them) and its clients.
type Restored = (Vec<u64>, BTreeMap<u64, (u64, BankReply)>);

fn decode_snapshot(mut bytes: &[u8], accounts: usize) -> Result<Restored, &'static str> {
    let balances = take_balances(&mut bytes)?;
    if balances.len() != accounts {
        return Err("another number of accounts");
    }
    let clients = take_u32(&mut bytes)?;
    let mut last = BTreeMap::new();
    for _ in 0..clients {
        let client = take_u64(&mut bytes)?;
        let op_id = take_u64(&mut bytes)?;
        let (&tag, rest) = bytes.split_first().ok_or("ends inside a reply")?;
        bytes = rest;
        let reply = match tag {
            0 => BankReply::Refused,
            1 => BankReply::Done,
            2 => BankReply::Balances(take_balances(&mut bytes)?),
            _ => return Err("unknown reply tag"),
        };
        last.insert(client, (op_id, reply));
    }
    if !bytes.is_empty() {
        return Err("trailing bytes");
    }
    Ok((balances, last))
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, &'static str> {
    let (word, rest) = bytes.split_first_chunk::<4>().ok_or("ends inside a number")?;
    *bytes = rest;
    Ok(u32::from_le_bytes(*word))
}

fn take_u64(bytes: &mut &[u8]) -> Result<u64, &'static str> {
    let (word, rest) = bytes.split_first_chunk::<8>().ok_or("ends inside a number")?;
    *bytes = rest;
    Ok(u64::from_le_bytes(*word))
}

/// A count and that many balances; the count is checked against what is there before anything
/// is allocated.
fn take_balances(bytes: &mut &[u8]) -> Result<Vec<u64>, &'static str> {
    let count = take_u32(bytes)? as usize;
    if count > ACCOUNTS_MAX || count * 8 > bytes.len() {
        return Err("more balances than accounts or bytes");
    }
    (0..count).map(|_| take_u64(bytes)).collect()
}

/// The sequential specification of [`Bank`]: one partition, whose state is every balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankModel {
    /// The balances the bank opens with.
    pub opening: Vec<u64>,
}

impl Model for BankModel {
    type State = Vec<u64>;
    type Input = BankOp;
    type Output = BankReply;
    type Partition = ();

    fn init(&self) -> Vec<u64> {
        self.opening.clone()
    }

    fn step(&self, state: &Vec<u64>, input: &BankOp, output: &BankReply) -> Option<Vec<u64>> {
        let mut next = state.clone();
        let reply = execute(&mut next, input);
        // A transfer without an answer may have been made or refused: whichever it was.
        (output == &reply || output == &BankReply::Unknown).then_some(next)
    }

    fn partition(&self, _input: &BankOp) {}
}

/// Clients transfer random amounts between random accounts and read the whole bank; after every
/// entry any node applies, the money in the bank must equal what it opened with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BankWorkload {
    /// Number of accounts (2 to [`ACCOUNTS_MAX`]).
    pub accounts: usize,
    /// What each account opens with.
    pub opening: u64,
    /// Percentage of whole-bank reads; the rest are transfers.
    pub read_pct: u64,
}

impl Default for BankWorkload {
    fn default() -> BankWorkload {
        BankWorkload { accounts: 4, opening: 100, read_pct: 30 }
    }
}

impl Workload for BankWorkload {
    type Machine = Bank;
    type Op = BankOp;
    type Output = BankReply;
    type Model = BankModel;

    fn name(&self) -> &'static str {
        "bank"
    }

    fn machine(&self) -> Bank {
        Bank::new(self.accounts, self.opening)
    }

    fn model(&self) -> BankModel {
        BankModel { opening: self.machine().balances }
    }

    fn next_op(&self, _client: u64, _op_id: u64, rng: &mut Rng) -> BankOp {
        if rng.below(100) < self.read_pct {
            return BankOp::Balances;
        }
        let accounts = self.accounts.clamp(2, ACCOUNTS_MAX) as u64;
        let from = rng.below(accounts) as u8;
        let to = ((u64::from(from) + rng.range(1, accounts - 1)) % accounts) as u8;
        // Up to 60% of an opening balance: accounts run dry now and then, so refusals happen.
        let amount = rng.range(1, (self.opening * 3 / 5).max(1));
        BankOp::Transfer { from, to, amount }
    }

    fn encode(&self, client: u64, op_id: u64, op: &BankOp) -> Bytes {
        BankCommand { client, op_id, op: op.clone() }.encode()
    }

    fn retries(&self) -> bool {
        true
    }

    fn output(&self, applied: Option<BankReply>) -> BankReply {
        applied.unwrap_or_default()
    }

    fn is_write(&self, op: &BankOp) -> bool {
        matches!(op, BankOp::Transfer { .. })
    }

    fn query(&self, bank: &Bank, op: &BankOp) -> Option<BankReply> {
        match op {
            BankOp::Balances => Some(BankReply::Balances(bank.balances().to_vec())),
            BankOp::Transfer { .. } => None,
        }
    }

    fn check(&self, bank: &Bank) -> Result<(), String> {
        let opened = self.accounts.min(ACCOUNTS_MAX) as u128 * u128::from(self.opening);
        if bank.total() != opened {
            return Err(format!(
                "the bank holds {} but opened with {opened}: {:?}",
                bank.total(),
                bank.balances
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sim::linearizability::{check_history, CheckOutcome, Operation};

    fn entry(client: u64, op_id: u64, op: BankOp) -> Entry {
        let data = BankCommand { client, op_id, op }.encode();
        Entry { index: 1, term: 1, kind: EntryKind::Normal, data }
    }

    #[test]
    fn commands_round_trip_and_garbage_is_refused() {
        for op in [BankOp::Transfer { from: 3, to: 0, amount: u64::MAX }, BankOp::Balances] {
            let command = BankCommand { client: 7, op_id: 9, op };
            assert_eq!(BankCommand::decode(&command.encode()), Ok(command));
        }
        let transfer =
            BankCommand { client: 1, op_id: 1, op: BankOp::Transfer { from: 1, to: 2, amount: 5 } };
        let bytes = transfer.encode();
        for cut in 0..bytes.len() {
            assert!(BankCommand::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(BankCommand::decode(&longer).is_err());
        let mut unknown = bytes.to_vec();
        unknown[IDS_LEN] = 9;
        assert!(BankCommand::decode(&unknown).is_err());
    }

    #[test]
    fn transfers_move_money_or_are_refused() {
        let mut bank = Bank::new(2, 10);
        let t = |op_id, from, to, amount| entry(1, op_id, BankOp::Transfer { from, to, amount });
        assert_eq!(bank.apply(&t(1, 0, 1, 7)), Some(BankReply::Done));
        assert_eq!(bank.apply(&t(2, 0, 1, 4)), Some(BankReply::Refused));
        assert_eq!(bank.apply(&t(3, 5, 1, 1)), Some(BankReply::Refused));
        assert_eq!(
            bank.apply(&entry(2, 1, BankOp::Balances)),
            Some(BankReply::Balances(vec![3, 17]))
        );
        assert_eq!(bank.total(), 20);
        let noop = Entry { kind: EntryKind::Noop, ..entry(2, 2, BankOp::Balances) };
        assert_eq!(bank.apply(&noop), None);
    }

    #[test]
    fn a_repeated_command_is_applied_once() {
        let mut bank = Bank::new(2, 10);
        let t = |op_id| entry(1, op_id, BankOp::Transfer { from: 0, to: 1, amount: 3 });
        assert_eq!(bank.apply(&t(1)), Some(BankReply::Done));
        assert_eq!(bank.apply(&t(1)), Some(BankReply::Done), "a repeat is answered again");
        assert_eq!(bank.balances(), &[7, 13], "but not applied again");
        assert_eq!(bank.apply(&t(2)), Some(BankReply::Done));
        assert_eq!(bank.apply(&t(1)), None, "a late duplicate is ignored");
        assert_eq!(bank.balances(), &[4, 16]);
    }

    #[test]
    fn the_conservation_check_catches_money_made() {
        let workload = BankWorkload::default();
        let mut bank = workload.machine();
        assert_eq!(workload.check(&bank), Ok(()));
        bank.balances[0] += 1;
        assert!(workload.check(&bank).is_err());
    }

    #[test]
    fn snapshot_round_trips_and_rejects_garbage() {
        let mut bank = Bank::new(3, 50);
        bank.apply(&entry(1, 1, BankOp::Transfer { from: 2, to: 0, amount: 20 }));
        bank.apply(&entry(2, 4, BankOp::Balances));
        bank.apply(&entry(3, 1, BankOp::Transfer { from: 2, to: 0, amount: 200 }));
        let mut bytes = Vec::new();
        bank.snapshot(&mut bytes).unwrap();
        let mut back = Bank::new(3, 0);
        back.restore(&mut &bytes[..]).unwrap();
        assert_eq!(back, bank);
        for cut in 0..bytes.len() {
            assert!(Bank::new(3, 0).restore(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Bank::new(4, 0).restore(&mut &bytes[..]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Bank::new(3, 0).restore(&mut &longer[..]).is_err());
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Bank::new(3, 0).restore(&mut &huge[..]).is_err());
    }

    #[test]
    fn the_model_refuses_a_stale_read_and_accepts_unknown_transfers() {
        let model = BankModel { opening: vec![10, 10] };
        let op = |client, input, output, call, ret| Operation { client, input, output, call, ret };
        let transfer = BankOp::Transfer { from: 0, to: 1, amount: 5 };
        let fresh = BankReply::Balances(vec![5, 15]);
        let stale = BankReply::Balances(vec![10, 10]);
        // The transfer returned before the read was called: the read must see it.
        let history = vec![
            op(1, transfer.clone(), BankReply::Done, 0, 10),
            op(2, BankOp::Balances, stale.clone(), 20, 30),
        ];
        let outcome = check_history(&model, &history, 10_000);
        assert!(matches!(outcome, CheckOutcome::NotLinearizable { .. }), "{outcome:?}");
        let history = vec![
            op(1, transfer.clone(), BankReply::Done, 0, 10),
            op(2, BankOp::Balances, fresh.clone(), 20, 30),
        ];
        assert_eq!(check_history(&model, &history, 10_000), CheckOutcome::Linearizable);
        // A transfer whose client gave up may show up, or not.
        for seen in [fresh, stale] {
            let history = vec![
                op(1, transfer.clone(), BankReply::Unknown, 0, u64::MAX),
                op(2, BankOp::Balances, seen, 20, 30),
            ];
            assert_eq!(check_history(&model, &history, 10_000), CheckOutcome::Linearizable);
        }
    }
}
