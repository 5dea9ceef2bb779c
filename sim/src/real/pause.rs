//! Process pauses in the turmoil simulation (SIGSTOP, a frozen VM, a long stall): while a host is
//! paused none of its node's tasks runs, while the other hosts go on; what reaches it meanwhile
//! waits in its sockets, its timers come due without anyone to see them, and when it resumes
//! everything runs at once, late.
//!
//! turmoil has no pause of its own, so each node runs on a `LocalSet` of its own (every task
//! the node spawns, the driver's, the transport's and the client server's, is spawned there)
//! inside a future that, while its gate is closed, does not poll the set: the tasks are frozen
//! exactly as a stopped process's threads are, and a task woken meanwhile runs at the resume.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Whether a host is paused, shared by the fault loop and the host's software.
#[derive(Clone, Debug, Default)]
pub(crate) struct PauseGate(Arc<Mutex<GateState>>);

#[derive(Debug, Default)]
struct GateState {
    paused: bool,
    /// The host's software, waiting for the resume.
    waiting: Option<Waker>,
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Freezes the host's node from its next poll on.
    pub(crate) fn pause(&self) {
        self.lock().paused = true;
    }

    /// Lets the host's node run again: it is polled at the host's next step.
    pub(crate) fn resume(&self) {
        let waiting = {
            let mut state = self.lock();
            state.paused = false;
            state.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Runs `software` (the node's whole `LocalSet`) under this gate.
    pub(crate) fn guard<F: Future>(&self, software: F) -> Paused<F> {
        Paused { gate: self.clone(), software: Box::pin(software) }
    }
}

/// A future that is not polled while its gate is closed.
pub(crate) struct Paused<F> {
    gate: PauseGate,
    software: Pin<Box<F>>,
}

impl<F: Future> Future for Paused<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        {
            let mut state = self.gate.lock();
            if state.paused {
                state.waiting = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        self.software.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A host whose node spawns a task that counts every 10 ms: while the host is paused the
    /// count stands still although simulated time goes on, and the timer that came due during
    /// the pause fires at the resume.
    #[test]
    fn a_paused_host_runs_none_of_its_tasks_and_its_timers_fire_late() -> turmoil::Result {
        let mut sim = turmoil::Builder::new().tick_duration(Duration::from_millis(1)).build();
        let gate = PauseGate::default();
        let count = Arc::new(AtomicU64::new(0));
        let (host_gate, host_count) = (gate.clone(), Arc::clone(&count));
        sim.host("node", move || {
            let (gate, count) = (host_gate.clone(), Arc::clone(&host_count));
            async move {
                let tasks = tokio::task::LocalSet::new();
                let software = async move {
                    tokio::task::spawn_local(async move {
                        loop {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                    });
                    std::future::pending::<()>().await;
                    Ok(())
                };
                gate.guard(tasks.run_until(software)).await
            }
        });
        let run_for = |sim: &mut turmoil::Sim<'_>, ms: u64| -> turmoil::Result {
            for _ in 0..ms {
                sim.step()?;
            }
            Ok(())
        };
        run_for(&mut sim, 105)?;
        let before = count.load(Ordering::SeqCst);
        assert!((9..=11).contains(&before), "{before} counts in 105 ms");
        gate.pause();
        run_for(&mut sim, 500)?;
        assert_eq!(count.load(Ordering::SeqCst), before, "a paused host ran a task");
        gate.resume();
        run_for(&mut sim, 2)?;
        assert_eq!(count.load(Ordering::SeqCst), before + 1, "the timer due during the pause fires once, late");
        run_for(&mut sim, 50)?;
        assert!(count.load(Ordering::SeqCst) >= before + 5, "it goes on after the resume");
        Ok(())
    }
}
