//! Runs many independent jobs with a bound on how many run at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runs `job(0..count)` on at most `max_concurrent` threads; returns the results in index
/// order and the wall time of the whole batch. `done` is called after each job (progress).
///
/// Threads rather than async tasks: every job waits on child processes, and a thread per
/// concurrent job is the simplest faithful model of that many independent callers.
pub fn run_bounded<T, F>(
    count: usize,
    max_concurrent: usize,
    job: F,
    done: &(dyn Fn(&T) + Sync),
) -> (Vec<T>, Duration)
where
    T: Send,
    F: Fn(usize) -> T + Sync,
{
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let mut results: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..max_concurrent.clamp(1, count.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= count {
                            break mine;
                        }
                        let result = job(index);
                        done(&result);
                        mine.push((index, result));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(results) => results,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    });
    let wall = started.elapsed();
    results.sort_by_key(|(index, _)| *index);
    (results.into_iter().map(|(_, r)| r).collect(), wall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_job_runs_once_in_order_and_never_more_than_the_bound_at_once() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        let progress = Mutex::new(0);
        let (results, _) = run_bounded(
            40,
            3,
            |i| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                i * 2
            },
            &|_| *progress.lock().unwrap() += 1,
        );
        assert_eq!(results, (0..40).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        assert_eq!(*progress.lock().unwrap(), 40);
    }

    #[test]
    fn nothing_to_do_is_an_empty_result() {
        let (results, _) = run_bounded(0, 8, |i| i, &|_| {});
        assert!(results.is_empty());
    }
}
