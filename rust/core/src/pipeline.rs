//! Pipeline plans: how a compiled route runs, decided once per message type.
//!
//! The binding asks [`Mode::of`] once, when it compiles a route, and then runs the handler the
//! cheapest way that still honours the route; per message it only follows that decision. A
//! publish walks its handlers with a [`FanOut`], which owns the rule "a failing handler never
//! stops the others; failures are reported together after all ran".

/// The built-in behaviours in their fixed order, outermost first (API.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Logging,
    Tracing,
    Idempotency,
    RateLimit,
    ConcurrencyLimit,
    CircuitBreaker,
    Validation,
    DeadLetter,
    Retry,
    Timeout,
    Cache,
}

impl Stage {
    /// Every stage, outermost first.
    pub const ORDER: [Stage; 11] = [
        Stage::Logging,
        Stage::Tracing,
        Stage::Idempotency,
        Stage::RateLimit,
        Stage::ConcurrencyLimit,
        Stage::CircuitBreaker,
        Stage::Validation,
        Stage::DeadLetter,
        Stage::Retry,
        Stage::Timeout,
        Stage::Cache,
    ];

    /// Sort stages into the fixed pipeline order and drop repeats.
    pub fn ordered(stages: impl IntoIterator<Item = Stage>) -> Vec<Stage> {
        let mut stages: Vec<Stage> = stages.into_iter().collect();
        stages.sort_unstable();
        stages.dedup();
        stages
    }
}

/// What the binding knows about one handler of a route when it compiles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerSpec {
    /// The target returns an awaitable (else it returns the result).
    pub is_async: bool,
    /// The current-message context must be set while the target runs.
    pub with_context: bool,
}

/// How a request's handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Call the target and hand its coroutine to the caller untouched: no wrapper, no frame.
    Direct,
    /// Call a sync target when the caller first awaits, and return its result.
    CallLazily,
    /// Wrap the target in an awaitable that drives it, with the hooks around it.
    Drive,
}

impl Mode {
    pub fn of(spec: HandlerSpec) -> Mode {
        match spec {
            HandlerSpec { with_context: true, .. } => Mode::Drive,
            HandlerSpec { is_async: true, .. } => Mode::Direct,
            HandlerSpec { is_async: false, .. } => Mode::CallLazily,
        }
    }
}

/// The walk over an event's handlers: which one runs next, and the failures so far.
#[derive(Debug)]
pub struct FanOut<E> {
    total: usize,
    next: usize,
    failures: Vec<E>,
}

/// How a publish ended.
#[derive(Debug, PartialEq, Eq)]
pub enum FanOutOutcome<E> {
    AllSucceeded,
    /// Some handlers failed; `failures` in run order.
    Failed {
        failures: Vec<E>,
        total: usize,
    },
}

impl<E> FanOut<E> {
    pub fn new(total: usize) -> Self {
        Self { total, next: 0, failures: Vec::new() }
    }

    /// The index of the handler to run next, or `None` when every handler has run.
    pub fn next_handler(&mut self) -> Option<usize> {
        (self.next < self.total).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// The handler that last started failed; the walk goes on.
    pub fn record_failure(&mut self, error: E) {
        self.failures.push(error);
    }

    /// Visit the failures recorded so far (for the binding's garbage-collector traversal).
    pub fn failures(&self) -> &[E] {
        &self.failures
    }

    /// Forget the failures (the binding's garbage-collector clear).
    pub fn clear(&mut self) {
        self.failures.clear();
        self.next = self.total;
    }

    /// End the walk.
    pub fn finish(&mut self) -> FanOutOutcome<E> {
        if self.failures.is_empty() {
            FanOutOutcome::AllSucceeded
        } else {
            FanOutOutcome::Failed { failures: std::mem::take(&mut self.failures), total: self.total }
        }
    }
}

/// The message of a publish whose handlers failed.
pub fn publish_failure_message(failed: usize, total: usize, type_name: &str) -> String {
    format!("`{failed}` of `{total}` handlers of `{type_name}` failed")
}

/// The message for `send` of an event.
pub fn send_of_event_message(type_name: &str) -> String {
    format!("`{type_name}` is an event: publish it with `publish`, not `send`")
}

/// The message for `publish` of a request.
pub fn publish_of_request_message(type_name: &str) -> String {
    format!("`{type_name}` is a request: send it with `send`, not `publish`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_sort_into_the_fixed_order() {
        let stages = Stage::ordered([Stage::Cache, Stage::Logging, Stage::Retry, Stage::Idempotency, Stage::Retry]);
        assert_eq!(stages, vec![Stage::Logging, Stage::Idempotency, Stage::Retry, Stage::Cache]);
        assert_eq!(Stage::ordered(Stage::ORDER.iter().rev().copied()), Stage::ORDER.to_vec());
    }

    #[test]
    fn modes() {
        let spec = |is_async, with_context| HandlerSpec { is_async, with_context };
        assert_eq!(Mode::of(spec(true, false)), Mode::Direct);
        assert_eq!(Mode::of(spec(false, false)), Mode::CallLazily);
        assert_eq!(Mode::of(spec(true, true)), Mode::Drive);
        assert_eq!(Mode::of(spec(false, true)), Mode::Drive);
    }

    #[test]
    fn fan_out_runs_every_handler_and_collects_failures() {
        let mut walk = FanOut::new(3);
        let mut ran = vec![];
        while let Some(i) = walk.next_handler() {
            ran.push(i);
            if i != 1 {
                walk.record_failure(format!("h{i}"));
            }
        }
        assert_eq!(ran, vec![0, 1, 2]);
        assert_eq!(walk.failures().len(), 2);
        assert_eq!(
            walk.finish(),
            FanOutOutcome::Failed { failures: vec!["h0".to_string(), "h2".to_string()], total: 3 }
        );
    }

    #[test]
    fn fan_out_without_failures_or_handlers() {
        let mut walk: FanOut<()> = FanOut::new(0);
        assert_eq!(walk.next_handler(), None);
        assert_eq!(walk.finish(), FanOutOutcome::AllSucceeded);
        let mut walk: FanOut<()> = FanOut::new(2);
        walk.next_handler();
        walk.clear();
        assert_eq!(walk.next_handler(), None);
    }

    #[test]
    fn messages() {
        assert_eq!(publish_failure_message(2, 3, "OrderPlaced"), "`2` of `3` handlers of `OrderPlaced` failed");
        assert_eq!(send_of_event_message("E"), "`E` is an event: publish it with `publish`, not `send`");
        assert_eq!(publish_of_request_message("R"), "`R` is a request: send it with `send`, not `publish`");
    }
}
