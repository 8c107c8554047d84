//! Command output held for a caller (a whole `/run`, a detached command's logs): bounded per
//! stream, per request and per service, so that no request and no number of them can make
//! the host hold more than the budgets allow. Output beyond a bound is dropped and the
//! capture says it was truncated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Output kept per stream of one command.
pub const MAX_CAPTURE: usize = 8 << 20;
/// Output one request may hold across all its commands (a batch shares it).
pub const REQUEST_OUTPUT_BUDGET: usize = 16 << 20;
/// Output one service holds for all callers at once.
pub const SERVICE_OUTPUT_BUDGET: usize = 256 << 20;

/// Bytes that captures may take, shared by the captures of a request or a service.
#[derive(Debug)]
pub struct ByteBudget {
    remaining: AtomicUsize,
}

impl ByteBudget {
    pub fn new(bytes: usize) -> ByteBudget {
        ByteBudget {
            remaining: AtomicUsize::new(bytes),
        }
    }

    /// Takes up to `wanted` bytes; returns how many were granted.
    fn take(&self, wanted: usize) -> usize {
        let mut granted = 0;
        // `fetch_update` retries on contention, so grants never exceed what remains.
        let _ = self
            .remaining
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |remaining| {
                granted = wanted.min(remaining);
                Some(remaining - granted)
            });
        granted
    }

    fn give_back(&self, bytes: usize) {
        self.remaining.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes not taken.
    pub fn remaining(&self) -> usize {
        self.remaining.load(Ordering::Acquire)
    }
}

/// Output of one stream, within [`MAX_CAPTURE`] and the budgets it draws on; the bytes it
/// holds go back to those budgets when it is dropped.
#[derive(Debug)]
pub struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
    budgets: Vec<Arc<ByteBudget>>,
}

impl Capture {
    /// A capture drawing on every one of `budgets`.
    pub fn new(budgets: Vec<Arc<ByteBudget>>) -> Capture {
        Capture {
            bytes: Vec::new(),
            truncated: false,
            budgets,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.bytes.len());
        let mut granted = data.len().min(room);
        // The grant is what every budget allows; what one budget granted beyond the
        // smallest grant goes back.
        let mut taken = Vec::with_capacity(self.budgets.len());
        for budget in &self.budgets {
            let got = budget.take(granted);
            taken.push(got);
            granted = granted.min(got);
        }
        for (budget, got) in self.budgets.iter().zip(taken) {
            budget.give_back(got - granted);
        }
        if granted < data.len() {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..granted]);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.give_back(self.bytes.len());
        }
    }
}

/// Bytes taken from budgets by output that left its capture (moved into an answer): given
/// back when the answer is gone, so output counts for as long as the host holds it.
#[derive(Debug, Default)]
pub struct Held {
    bytes: usize,
    budgets: Vec<Arc<ByteBudget>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for budget in &self.budgets {
            budget.give_back(self.bytes);
        }
    }
}

impl Capture {
    /// The captured bytes, and what keeps them counted in the budgets.
    pub fn into_held(mut self) -> (Vec<u8>, Held) {
        let bytes = std::mem::take(&mut self.bytes);
        let held = Held {
            bytes: bytes.len(),
            budgets: std::mem::take(&mut self.budgets),
        };
        (bytes, held)
    }
}

impl Held {
    /// One hold for both.
    pub fn join(mut self, mut other: Held) -> Held {
        // Both drew on the same budgets (one request's captures).
        self.bytes += std::mem::take(&mut other.bytes);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stop_at_the_smallest_budget_and_give_it_back() {
        let request = Arc::new(ByteBudget::new(10));
        let service = Arc::new(ByteBudget::new(100));
        let mut first = Capture::new(vec![request.clone(), service.clone()]);
        first.push(b"0123456");
        let mut second = Capture::new(vec![request.clone(), service.clone()]);
        second.push(b"abcdef");
        assert_eq!(second.bytes(), b"abc");
        assert!(second.truncated() && !first.truncated());
        assert_eq!((request.remaining(), service.remaining()), (0, 90));
        drop(first);
        drop(second);
        assert_eq!((request.remaining(), service.remaining()), (10, 100));
    }

    #[test]
    fn one_stream_keeps_at_most_max_capture() {
        let mut capture = Capture::new(Vec::new());
        capture.push(&vec![0; MAX_CAPTURE + 5]);
        assert_eq!(capture.bytes().len(), MAX_CAPTURE);
        assert!(capture.truncated());
    }
}
