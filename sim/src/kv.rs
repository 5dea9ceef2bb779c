//! The simulated application: a key-value map over a few keys, written through the log by
//! commands that carry the client's id and sequence number. Client sessions make a retried
//! command take effect once: a command at or below the client's last applied sequence number
//! changes nothing (the answer to the latest one is remembered for its retries).

use std::collections::BTreeMap;

use crate::linearizability::{Input, Output};

/// One write, as carried in a log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// The client that sent it.
    pub client: u64,
    /// The client's sequence number for it.
    pub seq: u64,
    /// A `Put`, `Delete` or `CompareAndSet` (reads do not go through the log).
    pub input: Input,
}

const COMMAND_BYTES: usize = 8 + 8 + 1 + 8 + 1 + 8 + 1 + 8;

/// `Option<u64>` as a presence byte and a value.
fn push_optional(out: &mut Vec<u8>, value: Option<u64>) {
    out.push(u8::from(value.is_some()));
    out.extend_from_slice(&value.unwrap_or(0).to_le_bytes());
}

/// The little-endian `u64` at byte `at` of `data`, if there are 8 bytes there.
pub(crate) fn word(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

fn optional(data: &[u8], at: usize) -> Option<Option<u64>> {
    let value = word(data, at + 1)?;
    match *data.get(at)? {
        0 => Some(None),
        1 => Some(Some(value)),
        _ => None,
    }
}

impl Command {
    /// The bytes of a log entry's payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(COMMAND_BYTES);
        out.extend_from_slice(&self.client.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        let (tag, key, first, second) = match self.input {
            Input::Put { key, value } => (0, key, Some(value), None),
            Input::Delete { key } => (1, key, None, None),
            Input::CompareAndSet { key, expected, new } => (2, key, expected, new),
            Input::Get { key } => (3, key, None, None),
        };
        out.push(tag);
        out.extend_from_slice(&key.to_le_bytes());
        push_optional(&mut out, first);
        push_optional(&mut out, second);
        out
    }

    /// Reads [`Command::encode`]'s bytes back; `None` for anything else.
    pub fn decode(data: &[u8]) -> Option<Command> {
        if data.len() != COMMAND_BYTES {
            return None;
        }
        let (client, seq, key) = (word(data, 0)?, word(data, 8)?, word(data, 17)?);
        let (first, second) = (optional(data, 25)?, optional(data, 34)?);
        let input = match data[16] {
            0 => Input::Put { key, value: first? },
            1 => Input::Delete { key },
            2 => Input::CompareAndSet { key, expected: first, new: second },
            _ => return None,
        };
        Some(Command { client, seq, input })
    }
}

/// One node's copy of the application state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    map: BTreeMap<u64, u64>,
    /// Per client: the last sequence number applied and its answer.
    sessions: BTreeMap<u64, (u64, Output)>,
}

impl KvState {
    /// Applies `command`; returns its answer, or `None` for a retry of a command older than the
    /// client's latest (which the client no longer waits for).
    pub fn apply(&mut self, command: &Command) -> Option<Output> {
        if let Some(&(seq, output)) = self.sessions.get(&command.client) {
            if command.seq == seq {
                return Some(output); // A retry of the latest: same answer, no new effect.
            }
            if command.seq < seq {
                return None;
            }
        }
        let output = match command.input {
            Input::Put { key, value } => {
                self.map.insert(key, value);
                Output::Done
            }
            Input::Delete { key } => {
                self.map.remove(&key);
                Output::Done
            }
            Input::CompareAndSet { key, expected, new } => {
                let swapped = self.map.get(&key).copied() == expected;
                if swapped {
                    match new {
                        Some(value) => self.map.insert(key, value),
                        None => self.map.remove(&key),
                    };
                }
                Output::Swapped(swapped)
            }
            Input::Get { key } => Output::Value(self.map.get(&key).copied()),
        };
        self.sessions.insert(command.client, (command.seq, output));
        Some(output)
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.map.get(&key).copied()
    }

    /// The state as snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (&key, &value) in &self.map {
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(self.sessions.len() as u64).to_le_bytes());
        for (&client, &(seq, output)) in &self.sessions {
            out.extend_from_slice(&client.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            let (tag, value) = match output {
                Output::Done => (0, None),
                Output::Swapped(swapped) => (1, Some(u64::from(swapped))),
                Output::Value(value) => (2, value),
            };
            out.push(tag);
            push_optional(&mut out, value);
        }
        out
    }

    /// Reads [`KvState::encode`]'s bytes back: the state and the bytes that follow it.
    pub fn decode(data: &[u8]) -> Option<(KvState, &[u8])> {
        let mut state = KvState::default();
        let pairs = word(data, 0)?;
        let mut at = 8;
        for _ in 0..pairs {
            state.map.insert(word(data, at)?, word(data, at + 8)?);
            at += 16;
        }
        let sessions = word(data, at)?;
        at += 8;
        for _ in 0..sessions {
            let (client, seq) = (word(data, at)?, word(data, at + 8)?);
            let value = optional(data, at + 17)?;
            let output = match (*data.get(at + 16)?, value) {
                (0, None) => Output::Done,
                (1, Some(swapped)) => Output::Swapped(swapped == 1),
                (2, value) => Output::Value(value),
                _ => return None,
            };
            state.sessions.insert(client, (seq, output));
            at += 26;
        }
        Some((state, data.get(at..)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_states_round_trip() {
        let inputs = [
            Input::Put { key: 1, value: 7 },
            Input::Delete { key: 2 },
            Input::CompareAndSet { key: 3, expected: None, new: Some(4) },
            Input::CompareAndSet { key: 3, expected: Some(4), new: None },
        ];
        let mut state = KvState::default();
        for (seq, input) in inputs.into_iter().enumerate() {
            let command = Command { client: 9, seq: seq as u64 + 1, input };
            assert_eq!(Command::decode(&command.encode()), Some(command));
            state.apply(&command);
        }
        let mut bytes = state.encode();
        bytes.extend_from_slice(b"tail");
        assert_eq!(KvState::decode(&bytes), Some((state, &b"tail"[..])));
        assert_eq!(Command::decode(b"garbage"), None);
    }

    #[test]
    fn a_retried_command_takes_effect_once() {
        let mut state = KvState::default();
        let cas = Command { client: 1, seq: 1, input: Input::CompareAndSet { key: 0, expected: None, new: Some(5) } };
        assert_eq!(state.apply(&cas), Some(Output::Swapped(true)));
        assert_eq!(state.apply(&cas), Some(Output::Swapped(true)), "the retry gets the first answer");
        assert_eq!(state.get(0), Some(5));
        let put = Command { client: 1, seq: 2, input: Input::Put { key: 0, value: 6 } };
        assert_eq!(state.apply(&put), Some(Output::Done));
        assert_eq!(state.apply(&cas), None, "an older command no longer applies");
        assert_eq!(state.get(0), Some(6));
    }
}
