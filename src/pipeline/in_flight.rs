//! The in-flight gauge, kept by guards: a guard adds its events when created or grown and
//! takes them all away when dropped, whether the batch was committed, failed or abandoned
//! on shutdown. No call site adjusts the gauge by hand, so it cannot drift. A batch leaves
//! the gauge whole: `at_least_once` once it is acknowledged, `exactly_once` once its
//! transaction is committed (until then its events are not visible to `read_committed`).

use prometheus::IntGauge;

pub(super) struct InFlight {
    gauge: IntGauge,
    events: i64,
}

impl InFlight {
    pub(super) fn new(gauge: &IntGauge) -> Self {
        Self { gauge: gauge.clone(), events: 0 }
    }

    pub(super) fn add(&mut self, events: usize) {
        self.events += events as i64;
        self.gauge.add(events as i64);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.sub(self.events);
    }
}
