//! Linearizability of client histories against a key-value model, in the style of Porcupine.
//!
//! A history is a list of [`Operation`]s: what a client asked, when it asked (`call`), and when
//! and what it got back, or [`Outcome::Unknown`] if it gave up waiting. The history is
//! linearizable if every operation can be given a single point in time, between its call and its
//! return, at which it takes effect atomically, such that the resulting sequence is a legal run of
//! a map from keys to optional values (absent at first).
//!
//! Every operation touches exactly one key and the keys are independent, so the history is split
//! per key and each key is checked against a single optional register (linearizability is
//! compositional). Keys are checked in ascending order; the first violating key is reported.
//!
//! The search per key is the just-in-time linearization of Wing & Gong with Lowe's memoization, as
//! in Porcupine: the call and return events sit in a doubly linked list; a depth-first search
//! lifts an operation out of the list when it takes effect and puts it back when it backtracks,
//! and never visits the same (set of linearized operations, register value) twice. Operations
//! with unknown outcome stay candidates forever, which would multiply the states; the search
//! therefore only places one where the next operation depends on it, treats identical ones as
//! interchangeable, and skips states that a visited state covers (details on the private
//! `Search` type). Histories of a few thousand operations over a few keys with about ten
//! clients and a few percent of timeouts take milliseconds; many timeouts together with many
//! failed compare-and-sets (any pending write could explain one) are the expensive case.
//!
//! Conventions worth knowing:
//! - Times are in any unit the caller likes; only their order matters. An operation that returns
//!   at `t` and one called at the same `t` count as concurrent (either may take effect first):
//!   the more permissive reading, so equal timestamps never cause a false violation.
//! - An operation with an unknown outcome may take effect at any time after its call, or never,
//!   and any output is accepted for it. A read with an unknown outcome has no effect and is
//!   dropped.
//! - Work is bounded by a step budget per key instead of a wall clock, so a check replays
//!   identically: a key that runs out of budget gives [`Verdict::Unknown`].
//!
//! ```
//! use sim::linearizability::{Input, Operation, Outcome, Output, Verdict, check};
//!
//! let put = Operation {
//!     client: 1,
//!     input: Input::Put { key: 7, value: 3 },
//!     call: 0,
//!     outcome: Outcome::Returned { at: 10, output: Output::Done },
//! };
//! // A read that starts after the put returned must see it.
//! let stale_read = Operation {
//!     client: 2,
//!     input: Input::Get { key: 7 },
//!     call: 11,
//!     outcome: Outcome::Returned { at: 12, output: Output::Value(None) },
//! };
//! assert_eq!(check(&[put], 1_000), Ok(Verdict::Linearizable));
//! match check(&[put, stale_read], 1_000) {
//!     Ok(Verdict::Violation(counterexample)) => assert_eq!(counterexample.key, 7),
//!     other => panic!("expected a violation, got {other:?}"),
//! }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher};

/// What a client asks of the key-value store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// Read the value of `key`.
    Get {
        /// The key read.
        key: u64,
    },
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: u64,
        /// The value written.
        value: u64,
    },
    /// Remove `key`.
    Delete {
        /// The key removed.
        key: u64,
    },
    /// If `key` holds `expected` (`None`: absent), set it to `new` (`None`: remove it).
    CompareAndSet {
        /// The key compared and maybe written.
        key: u64,
        /// The value the key must hold for the swap; `None` means absent.
        expected: Option<u64>,
        /// The value written on a match; `None` removes the key.
        new: Option<u64>,
    },
}

/// What the key-value store answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Output {
    /// The answer to a [`Input::Get`]: the value, or `None` if the key is absent.
    Value(Option<u64>),
    /// The answer to a [`Input::Put`] or an [`Input::Delete`].
    Done,
    /// The answer to an [`Input::CompareAndSet`]: whether it swapped.
    Swapped(bool),
}

/// How an operation ended, as the client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// The client got `output` at time `at`.
    Returned {
        /// When the answer arrived (not before the call).
        at: u64,
        /// The answer.
        output: Output,
    },
    /// The client gave up (timeout, crash): the operation may take effect at any time after its
    /// call, or never.
    Unknown,
}

/// One client operation of a history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Operation {
    /// The client that issued it (for reports only: the checker does not order a client's
    /// operations other than by their times).
    pub client: u64,
    /// The request.
    pub input: Input,
    /// When the client sent it.
    pub call: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A history that the checker cannot judge because it is malformed: a bug in whoever recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// The operation at `index` returned before it was called.
    ReturnBeforeCall {
        /// Its position in the history.
        index: usize,
    },
    /// The operation at `index` got an output of the wrong kind for its input (a read answered
    /// `Done`, say).
    OutputMismatch {
        /// Its position in the history.
        index: usize,
    },
}

/// The answer of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key has a linearization.
    Linearizable,
    /// Some key has none: the first such key (in ascending order), with evidence.
    Violation(Counterexample),
    /// No key is known to violate, but the search for `key` (the first such key) ran out of
    /// budget after `steps` steps.
    Unknown {
        /// The key whose search gave up.
        key: u64,
        /// The steps spent on it (the budget, or slightly more).
        steps: u64,
    },
}

/// An operation together with its position in the checked history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// Its position in the history given to [`check`].
    pub index: usize,
    /// The operation.
    pub operation: Operation,
}

/// Why a key is not linearizable: the longest linearizable prefix the search reached, and the
/// operations none of which can take effect after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The key.
    pub key: u64,
    /// How many operations of the history touch the key (reads with unknown outcome excluded).
    pub operation_count: usize,
    /// The longest sequence of the key's operations that the search reached, a legal
    /// linearization of a prefix (the search skips sequences its pruning rules make redundant,
    /// so a longer one may exist).
    pub linearized: Vec<Indexed>,
    /// The key's value after `linearized`.
    pub value: Option<u64>,
    /// The operations not in `linearized` that were called before the earliest return among
    /// them, i.e. the candidates to take effect next; none of them leads to a linearization.
    pub candidates: Vec<Indexed>,
}

/// [`check`] as the simulators report it: `Ok(true)` when linearizable, `Ok(false)` when the
/// search ran out of `steps_max` on some key (undecided), and the violation otherwise (a
/// counterexample, or a history that is not well formed).
pub fn judge(history: &[Operation], steps_max: u64) -> Result<bool, crate::Violation> {
    match check(history, steps_max) {
        Ok(Verdict::Linearizable) => Ok(true),
        Ok(Verdict::Unknown { .. }) => Ok(false),
        Ok(Verdict::Violation(counterexample)) => {
            Err(crate::Violation { property: "linearizability", detail: counterexample.to_string() })
        }
        Err(error) => {
            Err(crate::Violation { property: "linearizability (malformed history)", detail: error.to_string() })
        }
    }
}

/// Checks that `history` is linearizable, spending at most `steps_max` steps on each key.
///
/// A step is one unit of search work (looking at one event, or comparing against one remembered
/// state), so the budget bounds both time and memory. Errors only if the history is malformed.
pub fn check(history: &[Operation], steps_max: u64) -> Result<Verdict, HistoryError> {
    let per_key = split_per_key(history)?;
    let mut first_unknown = None;
    for (key, operations) in per_key {
        match Search::new(&operations, steps_max).run() {
            SearchEnd::Found => {}
            SearchEnd::Exhausted { longest } => {
                return Ok(Verdict::Violation(counterexample(key, history, &operations, &longest)));
            }
            SearchEnd::OutOfBudget { steps } => {
                first_unknown.get_or_insert(Verdict::Unknown { key, steps });
            }
        }
    }
    Ok(first_unknown.unwrap_or(Verdict::Linearizable))
}

impl Input {
    /// The key the request touches.
    pub fn key(&self) -> u64 {
        match *self {
            Input::Get { key } | Input::Put { key, .. } | Input::Delete { key } => key,
            Input::CompareAndSet { key, .. } => key,
        }
    }

    /// Whether `output` is the kind of answer this request gets.
    fn fits(&self, output: &Output) -> bool {
        matches!(
            (self, output),
            (Input::Get { .. }, Output::Value(_))
                | (Input::Put { .. } | Input::Delete { .. }, Output::Done)
                | (Input::CompareAndSet { .. }, Output::Swapped(_))
        )
    }
}

/// The register model: the value after `input` takes effect on `value`, or `None` if it cannot
/// answer `output` there. An unknown output (`None`) fits any answer.
fn step(value: Option<u64>, input: &Input, output: Option<&Output>) -> Option<Option<u64>> {
    let (after, answer) = match *input {
        Input::Get { .. } => (value, Output::Value(value)),
        Input::Put { value: written, .. } => (Some(written), Output::Done),
        Input::Delete { .. } => (None, Output::Done),
        Input::CompareAndSet { expected, new, .. } => {
            let swapped = value == expected;
            (if swapped { new } else { value }, Output::Swapped(swapped))
        }
    };
    match output {
        Some(output) if *output != answer => None,
        _ => Some(after),
    }
}

/// Whether `entry` returned and leaves the value as it found it whatever it saw: a read, or a
/// compare-and-set that failed.
fn reads_only(entry: &KeyOperation) -> bool {
    matches!(
        (entry.input, entry.returned),
        (Input::Get { .. }, Some(_)) | (Input::CompareAndSet { .. }, Some((_, Output::Swapped(false))))
    )
}

/// One operation of a key's history, as the search sees it.
#[derive(Clone, Copy, Debug)]
struct KeyOperation {
    /// Its position in the whole history.
    index: usize,
    input: Input,
    call: u64,
    /// `None` if the outcome is unknown.
    returned: Option<(u64, Output)>,
    /// Its number among the key's operations of its kind: those that returned in return order,
    /// those with unknown outcome in call order.
    bit: usize,
    /// An operation that must take effect before this one, in canonical linearizations: for one
    /// with unknown outcome, the one with the same input called just before it; for one that
    /// returned, the one with the same input and output just before it in (call, return) order,
    /// if it also returned no later (see [`Search`]).
    twin: Option<usize>,
}

/// Validates `history` and splits it per key, dropping reads whose outcome is unknown.
fn split_per_key(history: &[Operation]) -> Result<BTreeMap<u64, Vec<KeyOperation>>, HistoryError> {
    let mut per_key: BTreeMap<u64, Vec<KeyOperation>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        let returned = match operation.outcome {
            Outcome::Returned { at, .. } if at < operation.call => {
                return Err(HistoryError::ReturnBeforeCall { index });
            }
            Outcome::Returned { output, .. } if !operation.input.fits(&output) => {
                return Err(HistoryError::OutputMismatch { index });
            }
            Outcome::Returned { at, output } => Some((at, output)),
            Outcome::Unknown if matches!(operation.input, Input::Get { .. }) => continue,
            Outcome::Unknown => None,
        };
        let (input, call) = (operation.input, operation.call);
        let entry = KeyOperation { index, input, call, returned, bit: 0, twin: None };
        per_key.entry(input.key()).or_default().push(entry);
    }
    for operations in per_key.values_mut() {
        number(operations);
    }
    Ok(per_key)
}

/// Sets the `bit` and `twin` of a key's operations.
fn number(operations: &mut [KeyOperation]) {
    let (mut returned, mut unknown): (Vec<usize>, Vec<usize>) =
        (0..operations.len()).partition(|&operation| operations[operation].returned.is_some());
    returned.sort_by_key(|&operation| (operations[operation].returned.map(|(at, _)| at), operation));
    for (bit, &operation) in returned.iter().enumerate() {
        operations[operation].bit = bit;
    }
    returned.sort_by_key(|&operation| (operations[operation].call, operations[operation].returned, operation));
    let mut last_alike: BTreeMap<(Input, Output), usize> = BTreeMap::new();
    for &operation in &returned {
        let Some((at, output)) = operations[operation].returned else { continue };
        let before = last_alike.insert((operations[operation].input, output), operation);
        // Sorted by call, so `before` was called no later; it must also return no later.
        operations[operation].twin =
            before.filter(|&before| operations[before].returned.is_some_and(|(returned, _)| returned <= at));
    }
    unknown.sort_by_key(|&operation| (operations[operation].call, operation));
    let mut last_with_input = BTreeMap::new();
    for (bit, &operation) in unknown.iter().enumerate() {
        operations[operation].bit = bit;
        operations[operation].twin = last_with_input.insert(operations[operation].input, operation);
    }
}

/// A set of small integers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset { words: vec![0; bits.div_ceil(64)] }
    }

    fn insert(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    fn remove(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }

    fn contains(&self, bit: usize) -> bool {
        self.words[bit / 64] & 1 << (bit % 64) != 0
    }

    /// The members from `start` on, in increasing order.
    fn members_from(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let first_word = start / 64;
        self.words.iter().enumerate().skip(first_word).flat_map(move |(position, &word)| {
            let mut word = if position == first_word { word & (u64::MAX << (start % 64)) } else { word };
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = word.trailing_zeros() as usize;
                word &= word - 1;
                Some(position * 64 + bit)
            })
        })
    }
}

/// The linearized operations among those that returned, numbered in return order. All of them
/// below `prefix` are members, and only a few above it (those called before the earliest pending
/// return), so `prefix` and those few identify the set compactly.
#[derive(Clone, Debug)]
struct ReturnedSet {
    bits: Bitset,
    prefix: usize,
    count: usize,
}

impl ReturnedSet {
    fn new(bits: usize) -> Self {
        ReturnedSet { bits: Bitset::new(bits), prefix: 0, count: 0 }
    }

    fn insert(&mut self, bit: usize) {
        self.bits.insert(bit);
        self.count += 1;
        while self.prefix < self.count && self.bits.contains(self.prefix) {
            self.prefix += 1;
        }
    }

    fn remove(&mut self, bit: usize) {
        self.bits.remove(bit);
        self.count -= 1;
        self.prefix = self.prefix.min(bit);
    }

    /// Appends an exact description of the set to `buffer`.
    fn describe(&self, buffer: &mut Vec<u64>) {
        buffer.push(self.prefix as u64);
        let extra = self.count - self.prefix;
        buffer.extend(self.bits.members_from(self.prefix).take(extra).map(|bit| bit as u64));
    }
}

/// An event of a doubly linked list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Head,
    Call(usize),
    Return(usize),
    Tail,
}

/// The call and return events of some operations of a key in time order, as a doubly linked list
/// whose operations can be lifted out and put back (dancing links). Node 0 is the head, the last
/// node the tail.
#[derive(Debug)]
struct EventList {
    events: Vec<Event>,
    next: Vec<usize>,
    previous: Vec<usize>,
    /// The node of each listed operation's call event (by operation number).
    call_node: Vec<usize>,
    /// The node of each listed operation's return event (by operation number).
    return_node: Vec<Option<usize>>,
}

impl EventList {
    /// The list of the operations that returned (`returned`), or of those with unknown outcome,
    /// which have a call event only: they never have to take effect.
    fn new(operations: &[KeyOperation], returned: bool) -> Self {
        // Calls sort before returns at equal times: such operations are concurrent.
        let mut timed: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * operations.len());
        for (operation, entry) in operations.iter().enumerate() {
            if entry.returned.is_some() == returned {
                timed.push((entry.call, 0, operation));
                if let Some((at, _)) = entry.returned {
                    timed.push((at, 1, operation));
                }
            }
        }
        timed.sort_unstable();
        let mut events = vec![Event::Head];
        let mut call_node = vec![0; operations.len()];
        let mut return_node = vec![None; operations.len()];
        for (_, kind, operation) in timed {
            if kind == 0 {
                call_node[operation] = events.len();
                events.push(Event::Call(operation));
            } else {
                return_node[operation] = Some(events.len());
                events.push(Event::Return(operation));
            }
        }
        events.push(Event::Tail);
        let count = events.len();
        let next = (1..=count).collect();
        let previous = (0..count).map(|node| node.wrapping_sub(1)).collect();
        EventList { events, next, previous, call_node, return_node }
    }

    fn first(&self) -> usize {
        self.next[0]
    }

    fn unlink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = next;
        self.previous[next] = previous;
    }

    /// Undoes `unlink(node)`; must be called in the reverse order of the unlinks.
    fn relink(&mut self, node: usize) {
        let (previous, next) = (self.previous[node], self.next[node]);
        self.next[previous] = node;
        self.previous[next] = node;
    }

    fn lift(&mut self, operation: usize) {
        self.unlink(self.call_node[operation]);
        if let Some(node) = self.return_node[operation] {
            self.unlink(node);
        }
    }

    fn unlift(&mut self, operation: usize) {
        if let Some(node) = self.return_node[operation] {
            self.relink(node);
        }
        self.relink(self.call_node[operation]);
    }
}

/// How a search ended.
#[derive(Debug)]
enum SearchEnd {
    /// A linearization exists.
    Found,
    /// None exists; `longest` is a longest linearizable sequence seen (operation numbers).
    Exhausted { longest: Vec<usize> },
    /// The budget ran out.
    OutOfBudget { steps: u64 },
}

/// Where the search looks for the next operation to take effect: first among the operations that
/// returned, then among those with unknown outcome called by `deadline` (the earliest pending
/// return).
#[derive(Clone, Copy, Debug)]
enum Cursor {
    Returned(usize),
    Unknown { node: usize, deadline: u64 },
}

/// The search state restored on backtracking.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// The operation placed.
    operation: usize,
    /// The value before it.
    value: Option<u64>,
    after_unknown: Option<Option<u64>>,
    /// A read or failed compare-and-set that returned, placed as soon as it fit: the state
    /// before it has no other completion worth trying (see [`Search`]).
    forced: bool,
}

/// What [`Search::try_linearize`] made of a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// It took effect.
    Placed,
    /// The model or a pruning rule refused it.
    Refused,
    /// It fit, but a visited state covers the state it leads to.
    Covered,
}

/// What the operations that may take effect next would make of the value: an unknown operation
/// that changes the value is only worth placing if one of them depends on that (see [`Search`]).
#[derive(Clone, Debug, Default)]
struct Observers {
    /// Values some read or compare-and-set needs (to read, or to swap).
    wanted: Vec<Option<u64>>,
    /// Expectations of compare-and-sets that failed.
    refused: Vec<Option<u64>>,
}

impl Observers {
    fn add(&mut self, entry: &KeyOperation) {
        match (entry.input, entry.returned) {
            (Input::Get { .. }, Some((_, Output::Value(value)))) => self.wanted.push(value),
            (Input::CompareAndSet { expected, .. }, Some((_, Output::Swapped(true)))) => self.wanted.push(expected),
            (Input::CompareAndSet { expected, .. }, Some((_, Output::Swapped(false)))) => self.refused.push(expected),
            // An unknown compare-and-set is placed only if it swaps (and changes the value).
            (Input::CompareAndSet { expected, new, .. }, None) if expected != new => self.wanted.push(expected),
            _ => {}
        }
    }

    /// Whether one of them depends on an unknown operation changing the value from `before` to
    /// `after`: it needs `after`, or it is a compare-and-set that failed and would swap `before`.
    fn depend_on(&self, before: Option<u64>, after: Option<u64>) -> bool {
        self.wanted.contains(&after) || self.refused.contains(&before)
    }
}

/// A visited state, as remembered under its (returned operations linearized, value) key.
#[derive(Clone, Debug)]
struct Visited {
    /// The linearized operations with unknown outcome, in increasing order.
    unknown: Vec<u32>,
    /// As [`Search::after_unknown`] was in that state.
    after_unknown: Option<Option<u64>>,
}

impl Visited {
    /// Whether every completion of a state with the same key, the unknown operations `unknown`
    /// linearized and the constraint `after_unknown` also completes this one (see [`Search`]).
    fn covers(&self, unknown: &Bitset, after_unknown: Option<Option<u64>>) -> bool {
        self.unknown.iter().all(|&bit| unknown.contains(bit as usize))
            && (self.after_unknown.is_none() || self.after_unknown == after_unknown)
    }
}

/// The depth-first search for a linearization of one key's history.
///
/// Operations with unknown outcome may take effect at any point after their call, or never, so
/// on top of Porcupine's memoization the search keeps them from multiplying the states:
/// - It explores canonical linearizations only: an unknown operation is placed only if it changes
///   the value and the next operation depends on that change (a read of the new value, a
///   compare-and-set that swaps from it, an unknown one that swaps, or a compare-and-set that
///   failed and would have swapped the old value). Any linearization becomes canonical by
///   dropping unknown operations that change nothing or are overwritten or never observed, and
///   by moving them after failed compare-and-sets that do not need them.
/// - It tries operations that returned before unknown ones, and skips a state if a visited state
///   has the same returned operations linearized, the same value, a subset of its unknown ones,
///   and no stricter constraint on what comes next: any completion of the new state would also
///   complete the visited one (unknown operations constrain nobody's real-time order).
/// - Of unknown operations with identical inputs, only the earliest called one not yet placed may
///   be placed: they have the same effect, and an earlier call fits every position a later one
///   fits.
///
/// Two more rules keep operations that returned from multiplying the states when many of them
/// overlap and the values repeat:
/// - Of two operations that returned with identical inputs and outputs, one called and returned
///   no later than the other, the earlier takes effect first (its `twin` rule). Swapping the two
///   in any linearization keeps each inside its interval: the earlier one moves to the later
///   one's point, which lies after the later one's call (so after its own) and before its own
///   old point (so before its return); the later one moves to that old point, which lies after
///   its own old point (so after its call) and before the earlier one's return (so before its
///   own). The sequence of inputs and outputs stays the same, so the value at every point and
///   the rules for unknown operations still hold. Each operation is chained to the previous
///   alike one in (call, return) order only if that one returned no later, so a chain is
///   ordered by both times and sorting any linearization's chain members over their positions
///   meets every constraint at once; a linearized prefix always holds the first members of
///   each chain.
/// - A read or failed compare-and-set that returned, and that may take effect now (the model
///   accepts its answer, its twin is placed, and it depends on an unknown operation placed just
///   before it, if any), takes effect at once, and the state's other candidates are not tried
///   after it. Take any completion of the state in which it takes effect later: it can move to
///   the front. It is a candidate, so it was called no later than the earliest pending return
///   (equal times are concurrent); its old point was before its return; it changes nothing, so
///   every other operation sees the same values; and with it gone the pending returns only get
///   later. If it had justified an unknown operation placed just before its old point, that
///   operation is now followed by another one, which may not depend on it: dropping it (before
///   a write) or moving it later (past a failed compare-and-set that does not need it) makes
///   the completion canonical again, touching nothing before. So if the state it leads to has
///   no completion, neither has the state before it. The same holds if a visited state covers
///   the state it leads to: that visited state's returned operations include it, so it is no
///   state on the current path (none of them include it) and its search has ended.
struct Search<'a> {
    operations: &'a [KeyOperation],
    returned_list: EventList,
    unknown_list: EventList,
    value: Option<u64>,
    /// Set when the last operation placed had an unknown outcome, to the value before it: the
    /// next operation must depend on the change.
    after_unknown: Option<Option<u64>>,
    returned_remaining: usize,
    linearized_returned: ReturnedSet,
    linearized_unknown: Bitset,
    stack: Vec<Frame>,
    /// Keyed by `linearized_returned` (described) followed by the value (tag, then value).
    visited: HashMap<Vec<u64>, Vec<Visited>, BuildHasherDefault<DefaultHasher>>,
    key_buffer: Vec<u64>,
    /// The candidates' observers, if computed since the last lift or backtrack.
    observers: Option<Observers>,
    steps: u64,
    steps_max: u64,
    longest: Vec<usize>,
}

impl<'a> Search<'a> {
    fn new(operations: &'a [KeyOperation], steps_max: u64) -> Self {
        let returned_count = operations.iter().filter(|operation| operation.returned.is_some()).count();
        Search {
            operations,
            returned_list: EventList::new(operations, true),
            unknown_list: EventList::new(operations, false),
            value: None,
            after_unknown: None,
            returned_remaining: returned_count,
            linearized_returned: ReturnedSet::new(returned_count),
            linearized_unknown: Bitset::new(operations.len() - returned_count),
            stack: Vec::new(),
            visited: HashMap::default(),
            key_buffer: Vec::new(),
            observers: None,
            steps: 0,
            steps_max,
            longest: Vec::new(),
        }
    }

    fn run(mut self) -> SearchEnd {
        let mut cursor = Cursor::Returned(self.returned_list.first());
        while self.returned_remaining > 0 {
            if self.steps >= self.steps_max {
                return SearchEnd::OutOfBudget { steps: self.steps };
            }
            self.steps += 1;
            let next = match cursor {
                Cursor::Returned(node) => self.advance_returned(node),
                Cursor::Unknown { node, deadline } => self.advance_unknown(node, deadline),
            };
            match next {
                Some(next) => cursor = next,
                None => return SearchEnd::Exhausted { longest: self.longest },
            }
        }
        SearchEnd::Found
    }

    /// One step among the operations that returned: `node` takes effect, or the next is tried.
    fn advance_returned(&mut self, node: usize) -> Option<Cursor> {
        let event = self.returned_list.events[node];
        match event {
            Event::Call(operation) => match self.try_linearize(operation) {
                Placement::Placed => Some(Cursor::Returned(self.returned_list.first())),
                // A read (or failed compare-and-set) that fits now must be placed now, so this
                // state leads nowhere new.
                Placement::Covered if reads_only(&self.operations[operation]) => self.backtrack(),
                Placement::Covered | Placement::Refused => Some(Cursor::Returned(self.returned_list.next[node])),
            },
            Event::Return(operation) => {
                let deadline = self.operations[operation].returned.map_or(u64::MAX, |(at, _)| at);
                Some(Cursor::Unknown { node: self.unknown_list.first(), deadline })
            }
            // The tail is only reached with nothing left to linearize; backtracking is safe anyway.
            Event::Head | Event::Tail => self.backtrack(),
        }
    }

    /// One step among the operations with unknown outcome; after the last candidate, a returned
    /// operation is due that cannot take effect yet, so the search backtracks.
    fn advance_unknown(&mut self, node: usize, deadline: u64) -> Option<Cursor> {
        match self.unknown_list.events[node] {
            Event::Call(operation) if self.operations[operation].call <= deadline => {
                if self.try_linearize(operation) == Placement::Placed {
                    Some(Cursor::Returned(self.returned_list.first()))
                } else {
                    Some(Cursor::Unknown { node: self.unknown_list.next[node], deadline })
                }
            }
            _ => self.backtrack(),
        }
    }

    /// Lets `operation` take effect now if the model and the prunings allow it.
    fn try_linearize(&mut self, operation: usize) -> Placement {
        let entry = self.operations[operation];
        let Some(value) = step(self.value, &entry.input, entry.returned.as_ref().map(|(_, output)| output)) else {
            return Placement::Refused;
        };
        if !self.depends_on_last(&entry) {
            return Placement::Refused;
        }
        let unknown = entry.returned.is_none();
        if entry.twin.is_some_and(|twin| !self.is_linearized(twin)) {
            return Placement::Refused;
        }
        let before = self.value;
        if unknown && (value == before || !self.observers().depend_on(before, value)) {
            return Placement::Refused;
        }
        let after_unknown = if unknown { Some(self.value) } else { None };
        self.mark(&entry, true);
        if !self.remember(value, after_unknown) {
            self.mark(&entry, false);
            return Placement::Covered;
        }
        let forced = reads_only(&entry);
        self.stack.push(Frame { operation, value: self.value, after_unknown: self.after_unknown, forced });
        self.value = value;
        self.after_unknown = after_unknown;
        self.list_of(&entry).lift(operation);
        self.observers = None;
        Placement::Placed
    }

    /// Whether `entry` may follow the last operation placed, if that one had an unknown outcome:
    /// it must depend on the change (see [`Search`]). Assumes the model accepts `entry`.
    fn depends_on_last(&self, entry: &KeyOperation) -> bool {
        let Some(before) = self.after_unknown else {
            return true;
        };
        match (entry.input, entry.returned) {
            (Input::Put { .. } | Input::Delete { .. }, _) => false,
            (Input::CompareAndSet { expected, .. }, Some((_, Output::Swapped(false)))) => expected == before,
            _ => true,
        }
    }

    /// Undoes the last linearization; returns where to look next, or `None` if nothing is left.
    fn backtrack(&mut self) -> Option<Cursor> {
        // Every deepest state is left through here (or the search succeeds).
        if self.stack.len() > self.longest.len() {
            self.longest = self.stack.iter().map(|frame| frame.operation).collect();
        }
        let (entry, next) = loop {
            let frame = self.stack.pop()?;
            let entry = self.operations[frame.operation];
            let list = self.list_of(&entry);
            list.unlift(frame.operation);
            let next = list.next[list.call_node[frame.operation]];
            self.mark(&entry, false);
            self.value = frame.value;
            self.after_unknown = frame.after_unknown;
            if !frame.forced {
                break (entry, next);
            }
        };
        self.observers = None;
        match entry.returned {
            Some(_) => Some(Cursor::Returned(next)),
            None => Some(Cursor::Unknown { node: next, deadline: self.deadline() }),
        }
    }

    fn list_of(&mut self, entry: &KeyOperation) -> &mut EventList {
        match entry.returned {
            Some(_) => &mut self.returned_list,
            None => &mut self.unknown_list,
        }
    }

    /// The earliest return time among the returned operations not linearized yet.
    fn deadline(&mut self) -> u64 {
        let mut node = self.returned_list.first();
        loop {
            match self.returned_list.events[node] {
                Event::Call(_) => node = self.returned_list.next[node],
                Event::Return(operation) => return self.operations[operation].returned.map_or(u64::MAX, |(at, _)| at),
                Event::Head | Event::Tail => return u64::MAX,
            }
            self.steps += 1;
        }
    }

    /// The observers among the operations that may take effect next, computed once per state.
    fn observers(&mut self) -> &Observers {
        if self.observers.is_none() {
            let mut observers = Observers::default();
            let mut node = self.returned_list.first();
            while let Event::Call(operation) = self.returned_list.events[node] {
                self.steps += 1;
                observers.add(&self.operations[operation]);
                node = self.returned_list.next[node];
            }
            let deadline = self.deadline();
            let mut node = self.unknown_list.first();
            while let Event::Call(operation) = self.unknown_list.events[node] {
                if self.operations[operation].call > deadline {
                    break;
                }
                self.steps += 1;
                observers.add(&self.operations[operation]);
                node = self.unknown_list.next[node];
            }
            self.observers = Some(observers);
        }
        self.observers.get_or_insert_default()
    }

    /// Whether `operation` has taken effect in the current state.
    fn is_linearized(&self, operation: usize) -> bool {
        let entry = &self.operations[operation];
        match entry.returned {
            Some(_) => self.linearized_returned.bits.contains(entry.bit),
            None => self.linearized_unknown.contains(entry.bit),
        }
    }

    /// Adds `entry` to, or removes it from, the linearized operations.
    fn mark(&mut self, entry: &KeyOperation, linearized: bool) {
        match (entry.returned, linearized) {
            (Some(_), true) => {
                self.linearized_returned.insert(entry.bit);
                self.returned_remaining -= 1;
            }
            (Some(_), false) => {
                self.linearized_returned.remove(entry.bit);
                self.returned_remaining += 1;
            }
            (None, true) => self.linearized_unknown.insert(entry.bit),
            (None, false) => self.linearized_unknown.remove(entry.bit),
        }
    }

    /// Records the current linearized sets with `value` and `after_unknown` as visited; false if a
    /// visited state already covers them.
    fn remember(&mut self, value: Option<u64>, after_unknown: Option<Option<u64>>) -> bool {
        self.key_buffer.clear();
        self.linearized_returned.describe(&mut self.key_buffer);
        self.key_buffer.extend_from_slice(&[u64::from(value.is_some()), value.unwrap_or(0)]);
        let unknown = &self.linearized_unknown;
        let fresh = || Visited { unknown: unknown.members_from(0).map(|bit| bit as u32).collect(), after_unknown };
        if let Some(states) = self.visited.get_mut(self.key_buffer.as_slice()) {
            for state in states.iter() {
                self.steps += 1;
                if state.covers(unknown, after_unknown) {
                    return false;
                }
            }
            states.push(fresh());
        } else {
            self.visited.insert(self.key_buffer.clone(), vec![fresh()]);
        }
        true
    }
}

/// Builds the evidence for a key with no linearization from the longest linearizable sequence.
fn counterexample(key: u64, history: &[Operation], operations: &[KeyOperation], longest: &[usize]) -> Counterexample {
    let indexed = |operation: usize| {
        let index = operations[operation].index;
        Indexed { index, operation: history[index] }
    };
    let mut value = None;
    let mut done = vec![false; operations.len()];
    for &operation in longest {
        let entry = &operations[operation];
        // The search only keeps sequences the model accepts, so this replays without a miss.
        value = step(value, &entry.input, entry.returned.as_ref().map(|(_, output)| output)).unwrap_or(value);
        done[operation] = true;
    }
    let pending = || (0..operations.len()).filter(|&operation| !done[operation]);
    let deadline = pending().filter_map(|operation| operations[operation].returned.map(|(at, _)| at)).min();
    let candidates = pending()
        .filter(|&operation| deadline.is_none_or(|deadline| operations[operation].call <= deadline))
        .map(indexed)
        .collect();
    Counterexample {
        key,
        operation_count: operations.len(),
        linearized: longest.iter().map(|&operation| indexed(operation)).collect(),
        value,
        candidates,
    }
}

/// Writes an optional value as the number or "absent".
struct Shown(Option<u64>);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "absent"),
        }
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Input::Get { key } => write!(f, "get({key})"),
            Input::Put { key, value } => write!(f, "put({key}, {value})"),
            Input::Delete { key } => write!(f, "delete({key})"),
            Input::CompareAndSet { key, expected, new } => {
                write!(f, "compare_and_set({key}, {} -> {})", Shown(expected), Shown(new))
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Output::Value(value) => write!(f, "{}", Shown(value)),
            Output::Done => write!(f, "done"),
            Output::Swapped(swapped) => write!(f, "swapped {swapped}"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} {} called at {}", self.client, self.input, self.call)?;
        match self.outcome {
            Outcome::Returned { at, output } => write!(f, ", returned {output} at {at}"),
            Outcome::Unknown => write!(f, ", outcome unknown"),
        }
    }
}

impl fmt::Display for Indexed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} {}", self.index, self.operation)
    }
}

/// How many operations of the linearized prefix a report shows (the last ones).
const SHOWN_PREFIX_COUNT: usize = 5;

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = self.linearized.len().saturating_sub(SHOWN_PREFIX_COUNT);
        write!(
            f,
            "key {} is not linearizable: at most {} of its {} operations linearize",
            self.key,
            self.linearized.len(),
            self.operation_count
        )?;
        if !self.linearized.is_empty() {
            write!(f, ", the last {} of them:", self.linearized.len() - shown)?;
            for entry in &self.linearized[shown..] {
                write!(f, "\n  {entry}")?;
            }
        }
        write!(f, "\nleaving the value {}; none of these can take effect next:", Shown(self.value))?;
        for entry in &self.candidates {
            write!(f, "\n  {entry}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::Violation(counterexample) => write!(f, "{counterexample}"),
            Verdict::Unknown { key, steps } => {
                write!(f, "unknown: the search for key {key} gave up after {steps} steps")
            }
        }
    }
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeCall { index } => write!(f, "operation #{index} returned before it was called"),
            HistoryError::OutputMismatch { index } => write!(f, "operation #{index} got an output of the wrong kind"),
        }
    }
}

impl std::error::Error for HistoryError {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_model_answers_like_a_register() {
        let swap = |expected, new| Input::CompareAndSet { key: 0, expected, new };
        let cases = [
            (None, Input::Get { key: 0 }, Output::Value(None), Some(None)),
            (Some(1), Input::Get { key: 0 }, Output::Value(None), None),
            (Some(1), Input::Put { key: 0, value: 2 }, Output::Done, Some(Some(2))),
            (Some(1), Input::Delete { key: 0 }, Output::Done, Some(None)),
            (Some(1), swap(Some(1), None), Output::Swapped(true), Some(None)),
            (Some(1), swap(Some(1), None), Output::Swapped(false), None),
            (None, swap(Some(1), Some(2)), Output::Swapped(false), Some(None)),
            (None, swap(None, Some(2)), Output::Swapped(true), Some(Some(2))),
        ];
        for (value, input, output, after) in cases {
            assert_eq!(step(value, &input, Some(&output)), after, "{input} on {value:?} answering {output}");
        }
        // An unknown output fits, and the effect still follows the model.
        assert_eq!(step(Some(3), &swap(Some(1), Some(2)), None), Some(Some(3)));
    }

    fn key_operation(call: u64, returned: Option<u64>) -> KeyOperation {
        let returned = returned.map(|at| (at, Output::Done));
        KeyOperation { index: 0, input: Input::Delete { key: 0 }, call, returned, bit: 0, twin: None }
    }

    #[test]
    fn calls_sort_before_returns_at_equal_times_and_lifting_is_undone() {
        let operations = [key_operation(5, Some(9)), key_operation(0, Some(5)), key_operation(1, None)];
        let mut list = EventList::new(&operations, true);
        let walk = |list: &EventList| {
            let mut events = Vec::new();
            let mut node = list.first();
            while list.events[node] != Event::Tail {
                events.push(list.events[node]);
                node = list.next[node];
            }
            events
        };
        let all = vec![Event::Call(1), Event::Call(0), Event::Return(1), Event::Return(0)];
        assert_eq!(walk(&list), all);
        list.lift(1);
        assert_eq!(walk(&list), [Event::Call(0), Event::Return(0)]);
        list.lift(0);
        assert_eq!(walk(&list), []);
        list.unlift(0);
        list.unlift(1);
        assert_eq!(walk(&list), all);
        assert_eq!(walk(&EventList::new(&operations, false)), [Event::Call(2)]);
    }

    #[test]
    fn identical_unknown_operations_chain_in_call_order() {
        let mut operations = [key_operation(7, None), key_operation(3, Some(4)), key_operation(2, None)];
        number(&mut operations);
        assert_eq!(operations.map(|operation| (operation.bit, operation.twin)), [(1, Some(2)), (0, None), (0, None)]);
    }

    proptest! {
        #[test]
        fn a_returned_set_describes_exactly_its_members(changes in prop::collection::vec((0..150usize, any::<bool>()), 0..400)) {
            let mut set = ReturnedSet::new(150);
            let mut members = std::collections::BTreeSet::new();
            for (bit, insert) in changes {
                // Insert only absent bits and remove only present ones, as the search does.
                if insert && members.insert(bit) {
                    set.insert(bit);
                } else if !insert && members.remove(&bit) {
                    set.remove(bit);
                }
                let prefix = (0..).find(|bit| !members.contains(bit)).unwrap_or(0);
                let mut expected = vec![prefix as u64];
                expected.extend(members.range(prefix..).map(|&bit| bit as u64));
                let mut described = Vec::new();
                set.describe(&mut described);
                prop_assert_eq!(described, expected);
            }
        }
    }
}
