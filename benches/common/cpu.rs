//! How busy the machine's cores were over a measurement, and how much of that was this
//! process, from `/proc`. The benches' stages share two cores between PostgreSQL, the
//! broker and order-cdc, so a rate alone does not say whether a stage waited on something
//! or ran out of cores: with every core busy, a pipeline can only go faster by spending
//! less CPU per order.

/// CPU time so far, in the kernel's clock ticks (`/proc/stat` and `/proc/self/stat` count
/// in the same unit).
pub struct Clock {
    busy: u64,
    total: u64,
    this_process: u64,
}

impl Clock {
    pub fn start() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
        // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`; guest time
        // is already in user. Idle and iowait are the cores' spare time, steal the
        // hypervisor's.
        let ticks: Vec<u64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).take(8).map(|t| t.parse().unwrap_or(0)).collect();
        let total: u64 = ticks.iter().sum();
        let spare = ticks.get(3).unwrap_or(&0) + ticks.get(4).unwrap_or(&0) + ticks.get(7).unwrap_or(&0);
        // utime and stime are the 14th and 15th fields, the 12th and 13th after the
        // parenthesised command name (which may hold spaces).
        let own = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let after_name = own.rsplit_once(')').map_or("", |(_, rest)| rest);
        let this_process = after_name.split_whitespace().skip(11).take(2).map(|t| t.parse::<u64>().unwrap_or(0)).sum();
        Clock { busy: total.saturating_sub(spare), total, this_process }
    }

    /// The average number of cores busy since `self` (0 to the machine's core count): all
    /// of them, and this process's part.
    pub fn cores_busy(&self) -> Busy {
        let now = Clock::start();
        let share = |ticks: u64| ticks as f64 / now.total.saturating_sub(self.total).max(1) as f64 * cores();
        Busy { all: share(now.busy.saturating_sub(self.busy)), this_process: share(now.this_process.saturating_sub(self.this_process)) }
    }
}

/// The machine's cores.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// The machine's CPU time per order over `elapsed` with `cores_busy` cores busy, in
/// core-microseconds: every process's, the database's and the broker's included.
pub fn per_order(cores_busy: f64, elapsed: std::time::Duration, orders: usize) -> f64 {
    cores_busy * elapsed.as_secs_f64() * 1e6 / orders.max(1) as f64
}

/// Cores busy on average over a measurement.
#[derive(Clone, Copy)]
pub struct Busy {
    pub all: f64,
    pub this_process: f64,
}
