//! How busy the machine's cores were over a measurement, from `/proc/stat`. The benches'
//! stages share two cores between PostgreSQL, the broker and order-cdc, so a rate alone
//! does not say whether a stage waited on something or ran out of cores: with every core
//! busy, a pipeline can only go faster by spending less CPU per order.

/// The machine's CPU time so far, in `/proc/stat`'s ticks.
pub struct Clock {
    busy: u64,
    total: u64,
}

impl Clock {
    pub fn start() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time
        // is already in user. Idle and iowait are the cores' spare time, steal the
        // hypervisor's.
        let ticks: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).take(8).map(|t| t.parse().unwrap_or(0)).collect();
        let total = ticks.iter().sum();
        let spare = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0) + ticks.get(7).unwrap_or(&0);
        Clock { busy: total - spare, total }
    }

    /// The average number of cores busy since `self` (0 to the machine's core count).
    pub fn cores_busy(&self) -> f64 {
        let now = Clock::start();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (now.busy - self.busy) as f64 / (now.total - self.total).max(1) as f64 * cores as f64
    }
}
