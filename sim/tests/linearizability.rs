//! The linearizability checker on known histories, against a naive reference, and on histories
//! produced by real sequential executions.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use sim::linearizability::{HistoryError, Input, Operation, Outcome, Output, Verdict, check};

/// Plenty for every small history here: hitting it would be a bug.
const STEPS_MAX: u64 = 10_000_000;

fn returned(client: u64, input: Input, call: u64, at: u64, output: Output) -> Operation {
    Operation { client, input, call, outcome: Outcome::Returned { at, output } }
}

fn get(client: u64, key: u64, call: u64, at: u64, value: Option<u64>) -> Operation {
    returned(client, Input::Get { key }, call, at, Output::Value(value))
}

fn put(client: u64, key: u64, value: u64, call: u64, at: u64) -> Operation {
    returned(client, Input::Put { key, value }, call, at, Output::Done)
}

fn delete(client: u64, key: u64, call: u64, at: u64) -> Operation {
    returned(client, Input::Delete { key }, call, at, Output::Done)
}

fn compare_and_set(
    client: u64,
    key: u64,
    change: (Option<u64>, Option<u64>),
    span: (u64, u64),
    swapped: bool,
) -> Operation {
    let input = Input::CompareAndSet { key, expected: change.0, new: change.1 };
    returned(client, input, span.0, span.1, Output::Swapped(swapped))
}

fn timed_out(client: u64, input: Input, call: u64) -> Operation {
    Operation { client, input, call, outcome: Outcome::Unknown }
}

fn verdict(history: &[Operation]) -> Verdict {
    check(history, STEPS_MAX).expect("well-formed history")
}

fn assert_linearizable(history: &[Operation]) {
    assert_eq!(verdict(history), Verdict::Linearizable, "{history:#?}");
}

/// Asserts a violation on `key` and returns its report.
fn assert_violation(history: &[Operation], key: u64) -> String {
    match verdict(history) {
        Verdict::Violation(counterexample) => {
            assert_eq!(counterexample.key, key, "{counterexample}");
            counterexample.to_string()
        }
        other => panic!("expected a violation on key {key}, got {other:?}"),
    }
}

#[test]
fn empty_and_sequential_histories_are_linearizable() {
    assert_linearizable(&[]);
    assert_linearizable(&[
        get(1, 0, 0, 1, None),
        put(1, 0, 5, 2, 3),
        get(2, 0, 4, 5, Some(5)),
        compare_and_set(1, 0, (Some(5), Some(6)), (6, 7), true),
        compare_and_set(2, 0, (Some(5), Some(7)), (8, 9), false),
        get(1, 0, 10, 11, Some(6)),
        delete(2, 0, 12, 13),
        get(1, 0, 14, 15, None),
        compare_and_set(1, 0, (None, Some(1)), (16, 17), true),
        compare_and_set(1, 0, (Some(1), None), (18, 19), true),
        get(2, 0, 20, 21, None),
    ]);
}

#[test]
fn reads_overlapping_writes_may_see_either_value() {
    for (first, second) in [(Some(1), Some(2)), (Some(1), Some(1)), (Some(2), Some(2)), (None, Some(1))] {
        assert_linearizable(&[
            put(1, 0, 1, 0, 10),
            put(2, 0, 2, 0, 10),
            get(3, 0, 5, 6, first),
            get(4, 0, 7, 12, second),
            get(5, 0, 13, 14, second),
        ]);
    }
}

#[test]
fn a_compare_and_set_race_has_exactly_one_winner() {
    let race = |first: bool, second: bool| {
        vec![
            put(1, 0, 1, 0, 1),
            compare_and_set(2, 0, (Some(1), Some(2)), (2, 10), first),
            compare_and_set(3, 0, (Some(1), Some(3)), (3, 9), second),
            get(4, 0, 11, 12, Some(if first { 2 } else { 3 })),
        ]
    };
    assert_linearizable(&race(true, false));
    assert_linearizable(&race(false, true));
    assert_violation(&race(true, true), 0);
    assert_violation(&race(false, false), 0);
}

#[test]
fn a_timed_out_write_may_take_effect_late_or_never() {
    let write = timed_out(1, Input::Put { key: 0, value: 7 }, 0);
    // Seen long after the client gave up, after other reads missed it.
    assert_linearizable(&[write, get(2, 0, 5, 6, None), get(2, 0, 50, 51, None), get(3, 0, 100, 101, Some(7))]);
    // Never seen.
    assert_linearizable(&[write, get(2, 0, 5, 6, None), put(3, 0, 8, 10, 11), get(2, 0, 100, 101, Some(8))]);
    // A timed-out compare-and-set and a timed-out read.
    let swap = timed_out(1, Input::CompareAndSet { key: 0, expected: None, new: Some(4) }, 0);
    let read = timed_out(2, Input::Get { key: 0 }, 0);
    assert_linearizable(&[swap, read, get(3, 0, 1, 2, None), get(3, 0, 3, 4, Some(4))]);
    assert_linearizable(&[timed_out(1, Input::Delete { key: 0 }, 0)]);
}

#[test]
fn a_timed_out_write_takes_effect_at_most_once_and_not_before_its_call() {
    let write = timed_out(1, Input::Put { key: 0, value: 7 }, 0);
    let reappears =
        [write, get(2, 0, 1, 2, Some(7)), put(3, 0, 8, 3, 4), get(2, 0, 5, 6, Some(8)), get(2, 0, 7, 8, Some(7))];
    assert_violation(&reappears, 0);
    let too_early = [get(2, 0, 0, 1, Some(7)), timed_out(1, Input::Put { key: 0, value: 7 }, 2)];
    assert_violation(&too_early, 0);
}

#[test]
fn a_stale_read_after_a_completed_write_is_a_violation() {
    let history = [put(1, 0, 1, 0, 1), put(1, 0, 2, 2, 3), get(2, 0, 4, 5, Some(1))];
    let report = assert_violation(&history, 0);
    assert!(report.contains("get(0)"), "{report}");
    match verdict(&history) {
        Verdict::Violation(counterexample) => {
            let linearized: Vec<usize> = counterexample.linearized.iter().map(|entry| entry.index).collect();
            assert_eq!(linearized, [0, 1]);
            assert_eq!(counterexample.value, Some(2));
            assert_eq!(counterexample.candidates.len(), 1);
            assert_eq!(counterexample.candidates[0].index, 2);
            assert_eq!(counterexample.operation_count, 3);
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn reading_a_value_never_written_is_a_violation() {
    assert_violation(&[get(1, 0, 0, 1, Some(3))], 0);
    assert_violation(&[put(1, 0, 1, 0, 10), get(2, 0, 2, 3, Some(2))], 0);
    assert_violation(&[delete(1, 0, 0, 1), put(1, 0, 1, 2, 3), get(2, 0, 4, 5, None)], 0);
}

#[test]
fn an_overwritten_value_cannot_reappear() {
    let history = [put(1, 0, 1, 0, 1), put(2, 0, 2, 2, 20), get(3, 0, 5, 6, Some(2)), get(3, 0, 7, 8, Some(1))];
    assert_violation(&history, 0);
    // Overlapping reads may disagree in either order only while both overlap the write.
    assert_linearizable(&[put(1, 0, 1, 0, 1), put(2, 0, 2, 2, 20), get(3, 0, 5, 8, Some(2)), get(4, 0, 6, 7, Some(1))]);
}

#[test]
fn a_return_and_a_call_at_the_same_time_are_concurrent() {
    assert_linearizable(&[put(1, 0, 1, 0, 5), get(2, 0, 5, 6, None)]);
    assert_violation(&[put(1, 0, 1, 0, 5), get(2, 0, 6, 7, None)], 0);
}

#[test]
fn keys_are_checked_independently_and_the_violating_key_is_named() {
    let history = [
        put(1, 1, 10, 0, 1),
        put(2, 2, 20, 0, 1),
        get(1, 1, 2, 3, Some(10)),
        put(2, 2, 21, 2, 3),
        get(1, 2, 4, 5, Some(20)), // stale
        get(2, 1, 4, 5, Some(10)),
    ];
    assert_violation(&history, 2);
    // The same values read on one key would be fine if the writes were on another.
    let split = [put(1, 1, 10, 0, 1), put(2, 2, 20, 0, 1), get(3, 1, 2, 3, Some(10)), get(4, 2, 2, 3, Some(20))];
    assert_linearizable(&split);
    // The first violating key wins.
    assert_violation(&[get(1, 5, 0, 1, Some(1)), get(1, 3, 0, 1, Some(1))], 3);
}

/// Many overlapping writes, then a read of a value nobody wrote: refuting it takes a search
/// through every order of the writes.
fn hard_history(key: u64, writes: u64) -> Vec<Operation> {
    let mut history: Vec<Operation> = (0..writes).map(|value| put(value, key, value, 0, 100)).collect();
    history.push(get(writes, key, 200, 201, Some(writes + 1)));
    history
}

#[test]
fn a_tiny_budget_gives_unknown_instead_of_hanging() {
    let history = hard_history(4, 60);
    assert!(matches!(check(&history, 10_000), Ok(Verdict::Unknown { key: 4, steps }) if steps >= 10_000));
    // A budget of zero decides nothing but empty keys.
    assert_eq!(check(&history[..1], 0), Ok(Verdict::Unknown { key: 4, steps: 0 }));
    assert_eq!(check(&[], 0), Ok(Verdict::Linearizable));
    // A violation elsewhere still wins over an unknown key; otherwise the unknown is reported.
    let mut history = hard_history(1, 60);
    history.push(get(9, 3, 0, 1, Some(1)));
    assert!(matches!(check(&history, 10_000), Ok(Verdict::Violation(counterexample)) if counterexample.key == 3));
    history.pop();
    history.push(get(9, 3, 0, 1, None));
    assert!(matches!(check(&history, 10_000), Ok(Verdict::Unknown { key: 1, .. })));
}

#[test]
fn many_timed_out_writes_stay_cheap() {
    // Forty writes that never took effect stay candidates for the whole history; each would
    // double the states without the pruning of useless unknown operations.
    let mut history: Vec<Operation> =
        (0..40).map(|value| timed_out(value, Input::Put { key: 0, value: 100 + value }, value)).collect();
    for time in 0..100 {
        history.push(get(50, 0, 50 + 2 * time, 51 + 2 * time, None));
    }
    assert_eq!(check(&history, 100_000), Ok(Verdict::Linearizable));
    // One of them shows up at the end, and another one right after it.
    history.push(get(51, 0, 300, 301, Some(120)));
    history.push(get(51, 0, 302, 303, Some(107)));
    assert_eq!(check(&history, 100_000), Ok(Verdict::Linearizable));
    // But the first cannot come back.
    history.push(get(51, 0, 304, 305, Some(120)));
    assert!(matches!(check(&history, 100_000), Ok(Verdict::Violation(_))));
}

#[test]
fn overlapping_alike_operations_stay_cheap() {
    // Twenty writes of one value and twenty deletes, all overlapping, each called and returned a
    // tick after the one before it, then a read of a value never written: any subset of the
    // writes and deletes could have taken effect at any point, but alike ones are tried in one
    // order only, so proving the violation takes a few thousand states, not 2^40.
    let mut history: Vec<Operation> = (0..20).map(|n| put(n, 0, 1, n, 100 + n)).collect();
    history.extend((0..20).map(|n| delete(20 + n, 0, n, 100 + n)));
    history.push(get(40, 0, 200, 201, Some(1)));
    decided_cheaply(history);
}

#[test]
fn overlapping_reads_stay_cheap() {
    // Twenty failed compare-and-sets, each expecting a value of its own, all overlapping: each
    // fits wherever it goes, and a read of a value never written at the end fails. Each is placed
    // as soon as it fits and never tried later, so the search does not visit every subset of them.
    let mut history: Vec<Operation> =
        (0..20).map(|n| compare_and_set(n, 0, (Some(100 + n), Some(1)), (n, 100 + n), false)).collect();
    history.push(get(20, 0, 200, 201, None));
    decided_cheaply(history);
}

/// Requires `history` (of key 0, its operations returned by 201) to be found linearizable, and
/// with a later read of a value never written a violation, each within 100,000 steps.
fn decided_cheaply(mut history: Vec<Operation>) {
    assert_eq!(check(&history, 100_000), Ok(Verdict::Linearizable));
    history.push(get(99, 0, 202, 203, Some(7)));
    assert!(matches!(check(&history, 100_000), Ok(Verdict::Violation(_))));
}

#[test]
fn malformed_histories_are_errors() {
    assert_eq!(check(&[put(1, 0, 1, 5, 4)], STEPS_MAX), Err(HistoryError::ReturnBeforeCall { index: 0 }));
    let read_done = returned(1, Input::Get { key: 0 }, 0, 1, Output::Done);
    assert_eq!(check(&[put(1, 0, 1, 0, 1), read_done], STEPS_MAX), Err(HistoryError::OutputMismatch { index: 1 }));
}

/// The shape of a random client workload.
#[derive(Clone, Copy, Debug)]
struct Shape {
    operation_count: usize,
    clients: u64,
    keys: u64,
    /// About one operation in this many times out.
    timeout_one_in: u64,
}

/// A client workload: clients run operations back to back; each takes effect at a random point
/// of its interval, except that one that times out takes effect later, or never. Outputs come
/// from executing the operations in the order of those points, so the history is linearizable.
fn workload(seed: u64, shape: Shape) -> Vec<Operation> {
    let mut random = ChaCha8Rng::seed_from_u64(seed);
    let mut below = |bound: u64| random.next_u64() % bound;
    let mut cursors = vec![0; shape.clients as usize];
    let mut planned = Vec::with_capacity(shape.operation_count);
    for number in 0..shape.operation_count as u64 {
        let client = below(shape.clients);
        let call = cursors[client as usize] + below(3);
        let input = random_input(&mut below, shape.keys, number);
        let point = call + below(10);
        let operation = Operation { client, input, call, outcome: Outcome::Unknown };
        if below(shape.timeout_one_in) == 0 {
            cursors[client as usize] = call + 40;
            // Took effect late, or never (a point at infinity).
            let point = if below(2) == 0 { point + below(100) } else { u64::MAX };
            planned.push((point, number, operation, None));
        } else {
            let at = point + below(10);
            cursors[client as usize] = at;
            planned.push((point, number, operation, Some(at)));
        }
    }
    execute(planned)
}

/// Reads, writes of unique values, deletes, and compare-and-sets that mostly fail.
fn random_input(below: &mut impl FnMut(u64) -> u64, keys: u64, number: u64) -> Input {
    let key = below(keys);
    match below(10) {
        0..=3 => Input::Get { key },
        4..=7 => Input::Put { key, value: number },
        8 => Input::Delete { key },
        _ => {
            let expected = if below(4) == 0 { None } else { Some(below(number + 1)) };
            Input::CompareAndSet { key, expected, new: Some(number) }
        }
    }
}

/// Runs `(point, tie breaker, operation, return time)` in point order (a point of `u64::MAX`
/// never takes effect) and fills in the outputs of operations that returned.
fn execute(mut planned: Vec<(u64, u64, Operation, Option<u64>)>) -> Vec<Operation> {
    planned.sort_by_key(|&(point, number, ..)| (point, number));
    let mut map = BTreeMap::new();
    let mut history = Vec::with_capacity(planned.len());
    for (point, _, mut operation, at) in planned {
        let output = if point == u64::MAX { Output::Done } else { reference_apply(&mut map, &operation.input) };
        if let Some(at) = at {
            operation.outcome = Outcome::Returned { at, output };
        }
        history.push(operation);
    }
    history
}

#[test]
fn realistic_workloads_are_linearizable() {
    let shapes = [
        Shape { operation_count: 3000, clients: 10, keys: 5, timeout_one_in: 30 },
        Shape { operation_count: 2000, clients: 10, keys: 3, timeout_one_in: 10 },
        Shape { operation_count: 1000, clients: 5, keys: 1, timeout_one_in: 4 },
    ];
    for seed in 0..30 {
        let history = workload(seed, shapes[seed as usize % shapes.len()]);
        assert_eq!(check(&history, 10_000_000), Ok(Verdict::Linearizable), "seed {seed}");
    }
}

#[test]
fn a_realistic_history_passes_and_one_corrupted_read_fails() {
    let mut history = workload(7, Shape { operation_count: 3000, clients: 10, keys: 5, timeout_one_in: 30 });
    let unknown_count = history.iter().filter(|operation| operation.outcome == Outcome::Unknown).count();
    assert!(unknown_count > 50, "only {unknown_count} timeouts");
    assert_eq!(check(&history, 1_000_000), Ok(Verdict::Linearizable));
    let (index, key) = history
        .iter()
        .enumerate()
        .rev()
        .find_map(|(index, operation)| match (operation.input, operation.outcome) {
            (Input::Get { key }, Outcome::Returned { .. }) => Some((index, key)),
            _ => None,
        })
        .expect("a read");
    if let Outcome::Returned { output, .. } = &mut history[index].outcome {
        *output = Output::Value(Some(u64::MAX));
    }
    match check(&history, 1_000_000) {
        Ok(Verdict::Violation(counterexample)) => {
            assert_eq!(counterexample.key, key);
            assert!(counterexample.candidates.iter().any(|entry| entry.index == index), "{counterexample}");
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

// The naive reference: a history is linearizable if some permutation of all its operations
// respects real time and is a legal run of the map. An operation with unknown outcome accepts
// any output, and placed at the end of the permutation it has taken effect "never".

/// The answer `input` gets from `map`, which it updates.
fn reference_apply(map: &mut BTreeMap<u64, u64>, input: &Input) -> Output {
    match *input {
        Input::Get { key } => Output::Value(map.get(&key).copied()),
        Input::Put { key, value } => {
            map.insert(key, value);
            Output::Done
        }
        Input::Delete { key } => {
            map.remove(&key);
            Output::Done
        }
        Input::CompareAndSet { key, expected, new } => {
            if map.get(&key).copied() != expected {
                return Output::Swapped(false);
            }
            match new {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
            Output::Swapped(true)
        }
    }
}

fn reference_accepts(history: &[Operation], order: &[usize]) -> bool {
    for (position, &earlier) in order.iter().enumerate() {
        for &later in &order[position + 1..] {
            if matches!(history[later].outcome, Outcome::Returned { at, .. } if at < history[earlier].call) {
                return false;
            }
        }
    }
    let mut map = BTreeMap::new();
    order.iter().all(|&index| {
        let output = reference_apply(&mut map, &history[index].input);
        match history[index].outcome {
            Outcome::Returned { output: seen, .. } => seen == output,
            Outcome::Unknown => true,
        }
    })
}

/// Whether some permutation of `order[fixed..]` (after `order[..fixed]`) is accepted.
fn any_permutation(history: &[Operation], order: &mut Vec<usize>, fixed: usize) -> bool {
    if fixed == order.len() {
        return reference_accepts(history, order);
    }
    for choice in fixed..order.len() {
        order.swap(fixed, choice);
        let found = any_permutation(history, order, fixed + 1);
        order.swap(fixed, choice);
        if found {
            return true;
        }
    }
    false
}

fn reference_linearizable(history: &[Operation]) -> bool {
    assert!(history.len() <= 8, "the reference is factorial");
    any_permutation(history, &mut (0..history.len()).collect(), 0)
}

/// A second reference, by dynamic programming over the sets of operations that took effect: from
/// each reachable (set, map) state, any operation not in the set can take effect if every
/// operation that returned before its call is in the set and the map answers as it saw.
fn reference_by_subsets(history: &[Operation]) -> bool {
    assert!(history.len() <= 16, "the reference is exponential");
    let returned_before = |later: usize, earlier: usize| matches!(history[earlier].outcome, Outcome::Returned { at, .. } if at < history[later].call);
    let must_all_return: u32 = (0..history.len())
        .filter(|&index| history[index].outcome != Outcome::Unknown)
        .fold(0, |mask, index| mask | 1 << index);
    let mut seen = std::collections::BTreeSet::new();
    let mut pending = vec![(0u32, BTreeMap::new())];
    while let Some((mask, map)) = pending.pop() {
        if mask & must_all_return == must_all_return {
            return true;
        }
        for index in (0..history.len()).filter(|&index| mask & 1 << index == 0) {
            if (0..history.len()).any(|earlier| mask & 1 << earlier == 0 && returned_before(index, earlier)) {
                continue;
            }
            let mut next = map.clone();
            let output = reference_apply(&mut next, &history[index].input);
            let fits = match history[index].outcome {
                Outcome::Returned { output: seen, .. } => seen == output,
                Outcome::Unknown => true,
            };
            if fits && seen.insert((mask | 1 << index, next.clone())) {
                pending.push((mask | 1 << index, next));
            }
        }
    }
    false
}

#[test]
fn the_reference_agrees_on_the_known_histories() {
    assert!(reference_linearizable(&[put(1, 0, 1, 0, 1), get(2, 0, 1, 2, Some(1))]));
    assert!(!reference_linearizable(&[put(1, 0, 1, 0, 1), put(1, 0, 2, 2, 3), get(2, 0, 4, 5, Some(1))]));
    let write = timed_out(1, Input::Put { key: 0, value: 7 }, 0);
    assert!(reference_linearizable(&[write, get(2, 0, 5, 6, None), get(3, 0, 100, 101, Some(7))]));
}

/// One planned operation of a small random history.
#[derive(Clone, Debug)]
struct Planned {
    input: InputPlan,
    call: u64,
    duration: u64,
    unknown: bool,
    /// Replace the true output with `random_output`.
    corrupt: bool,
    random_output: (Option<u64>, bool),
}

fn small_value() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![1 => Just(None), 3 => (0..3u64).prop_map(Some)]
}

fn planned(keys: u64, unknown_probability: f64) -> impl Strategy<Value = Planned> {
    (
        input_plan(keys),
        (0..16u64, 0..8u64, prop::bool::weighted(unknown_probability), prop::bool::weighted(0.35)),
        (small_value(), any::<bool>()),
    )
        .prop_map(|(input, (call, duration, unknown, corrupt), random_output)| Planned {
            input,
            call,
            duration,
            unknown,
            corrupt,
            random_output,
        })
}

/// Outputs from executing the operations in the order of their midpoints, some then corrupted:
/// a mix of linearizable histories and near misses.
fn small_history(plans: &[Planned]) -> Vec<Operation> {
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&index| (2 * plans[index].call + plans[index].duration, index));
    let mut outputs = vec![Output::Done; plans.len()];
    let mut map = BTreeMap::new();
    let inputs: Vec<Input> = plans.iter().map(|plan| make_input(plan.input)).collect();
    for index in order {
        outputs[index] = reference_apply(&mut map, &inputs[index]);
    }
    let history = plans.iter().zip(inputs).zip(outputs).enumerate().map(|(client, ((plan, input), output))| {
        let output = match (plan.corrupt, output) {
            (true, Output::Value(_)) => Output::Value(plan.random_output.0),
            (true, Output::Swapped(_)) => Output::Swapped(plan.random_output.1),
            (_, output) => output,
        };
        let outcome =
            if plan.unknown { Outcome::Unknown } else { Outcome::Returned { at: plan.call + plan.duration, output } };
        Operation { client: client as u64, input, call: plan.call, outcome }
    });
    history.collect()
}

/// A kind (0 to 3), a key and two small values, to make an [`Input`] of.
type InputPlan = (u8, u64, Option<u64>, Option<u64>);

fn input_plan(keys: u64) -> impl Strategy<Value = InputPlan> {
    (0..4u8, 0..keys, small_value(), small_value())
}

fn make_input((kind, key, first, second): InputPlan) -> Input {
    match kind {
        0 => Input::Get { key },
        1 => Input::Put { key, value: first.unwrap_or(0) },
        2 => Input::Delete { key },
        _ => Input::CompareAndSet { key, expected: first, new: second },
    }
}

/// One operation of a sequential execution: it takes effect `gap` after the previous one, and
/// its interval reaches `before` earlier and `after` later.
#[derive(Clone, Debug)]
struct Executed {
    input: InputPlan,
    gap: u64,
    before: u64,
    after: u64,
    /// Timed out; `took_effect` says whether it took effect anyway.
    unknown: bool,
    took_effect: bool,
}

fn executed() -> impl Strategy<Value = Executed> {
    (input_plan(4), (0..3u64, 0..20u64, 0..20u64), (prop::bool::weighted(0.15), any::<bool>())).prop_map(
        |(input, (gap, before, after), (unknown, took_effect))| Executed {
            input,
            gap,
            before,
            after,
            unknown,
            took_effect,
        },
    )
}

fn sequential_history(steps: &[Executed]) -> Vec<Operation> {
    let mut point = 20;
    let mut planned = Vec::with_capacity(steps.len());
    for (number, step) in steps.iter().enumerate() {
        point += step.gap;
        let operation = Operation {
            client: number as u64 % 10,
            input: make_input(step.input),
            call: point - step.before,
            outcome: Outcome::Unknown,
        };
        let effect = if step.unknown && !step.took_effect { u64::MAX } else { point };
        let at = if step.unknown { None } else { Some(point + step.after) };
        planned.push((effect, number as u64, operation, at));
    }
    execute(planned)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_checker_agrees_with_the_naive_reference(plans in prop::collection::vec(planned(2, 0.2), 1..=7)) {
        agrees_with_reference(&small_history(&plans))?;
    }

    #[test]
    fn the_checker_agrees_with_the_subset_reference_on_longer_histories(
        plans in prop::collection::vec(planned(1, 0.3), 8..=12),
    ) {
        agrees_with_reference(&small_history(&plans))?;
    }

    #[test]
    fn the_checker_agrees_with_the_naive_reference_on_many_timeouts(
        plans in prop::collection::vec(planned(1, 0.5), 1..=7),
    ) {
        agrees_with_reference(&small_history(&plans))?;
    }
}

fn agrees_with_reference(history: &[Operation]) -> Result<(), TestCaseError> {
    let expected = reference_by_subsets(history);
    if history.len() <= 7 {
        prop_assert_eq!(expected, reference_linearizable(history), "the references disagree");
    }
    match verdict(history) {
        Verdict::Linearizable => prop_assert!(expected, "checker says linearizable: {history:#?}"),
        Verdict::Violation(counterexample) => {
            prop_assert!(!expected, "checker says violation: {counterexample}\n{history:#?}");
            let on_key = |key: u64| -> Vec<Operation> {
                history.iter().copied().filter(|operation| operation.input.key() == key).collect()
            };
            prop_assert!(!reference_by_subsets(&on_key(counterexample.key)));
            for key in 0..counterexample.key {
                prop_assert!(reference_by_subsets(&on_key(key)), "key {} reported before {key}", counterexample.key);
            }
        }
        Verdict::Unknown { .. } => prop_assert!(false, "a tiny history ran out of budget"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn sequential_executions_are_linearizable(steps in prop::collection::vec(executed(), 0..200)) {
        let history = sequential_history(&steps);
        prop_assert_eq!(check(&history, 1_000_000), Ok(Verdict::Linearizable));
    }
}
