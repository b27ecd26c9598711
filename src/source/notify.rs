//! Wake-ups of the Postgres source: a trigger NOTIFYs a channel when a change commits
//! (`notify_channel`; `order-cdc migrate` installs one on the reference schema), and a
//! dedicated connection LISTENs on it, so the pipeline starts its next run as soon as the
//! change can be read instead of at its next `poll_interval`.
//!
//! Why a notification only moves a run earlier and never replaces one: notifications sent
//! while the listener is reconnecting are gone, and an operator's trigger may miss a path.
//! Runs still come every `poll_interval` and read their whole window whether or not
//! anyone was told, so a lost notification costs latency, never a change.
//!
//! Why a woken run does not start at once: a change is readable only once a run's cutoff
//! passes its `updated_at`, and the cutoff sits a margin below the database clock
//! (`store::cutoff`). A run started right at the notification would read nothing new and
//! the change would wait a whole `poll_interval`. So a notification that arrived at `n`
//! asks for a run starting at `n + settle` (the margin), and only a run started at or after
//! that counts as having read it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use crate::backoff::Backoff;
use crate::secret::SecretUrl;
use crate::store::{self, StoreError};

/// When notifications arrived, shared by the listener and the pipeline's runs.
#[derive(Clone)]
pub struct Wakeups {
    shared: Arc<Shared>,
}

struct Shared {
    settle: Duration,
    /// Arrivals no started run is known to have read, oldest first.
    arrivals: Mutex<VecDeque<Instant>>,
    notify: Notify,
}

/// Arrivals kept while no run starts (a broker outage): the oldest go first, and a run
/// is due at once for any of them anyway.
const MAX_ARRIVALS: usize = 1024;

impl Wakeups {
    /// `settle`: how long after a change commits a run's cutoff passes it.
    pub fn new(settle: Duration) -> Self {
        Self { shared: Arc::new(Shared { settle, arrivals: Mutex::new(VecDeque::new()), notify: Notify::new() }) }
    }

    /// Notes a notification that arrived `at`.
    pub fn arrived(&self, at: Instant) {
        let mut arrivals = self.shared.arrivals.lock().expect("wake-up lock");
        if arrivals.len() == MAX_ARRIVALS {
            arrivals.pop_front();
        }
        arrivals.push_back(at);
        drop(arrivals);
        self.shared.notify.notify_one();
    }

    /// When the next run should start to read the earliest change notified that a run
    /// started at `started` may not have read; `None` when there is none.
    pub fn due(&self, started: Instant) -> Option<Instant> {
        let settle = self.shared.settle;
        let mut arrivals = self.shared.arrivals.lock().expect("wake-up lock");
        while arrivals.front().is_some_and(|n| *n + settle <= started) {
            arrivals.pop_front();
        }
        arrivals.front().map(|n| *n + settle)
    }

    /// Resolves when a notification arrives (at once if one arrived since the last call).
    pub async fn notified(&self) {
        self.shared.notify.notified().await
    }
}

/// The listener's task; it stops with the source that holds it.
pub struct Listener {
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the listener needs to (re)connect.
pub struct Channel {
    pub url: SecretUrl,
    pub connect_timeout: Duration,
    pub name: String,
    pub application_name: String,
}

/// LISTENs on `channel` until dropped, noting each notification in `wakeups`, and
/// reconnects with backoff when its connection fails. After every (re)connection it
/// notes one arrival itself, for what committed while it was not listening.
pub fn listen(channel: Channel, wakeups: Wakeups) -> Listener {
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let error = listen_once(&channel, &wakeups, &mut backoff).await;
            let retry_in = backoff.next_delay();
            tracing::warn!(
                channel = %channel.name,
                error = %error,
                ?retry_in,
                "the change-notification listener lost its connection; reconnecting (runs go on every poll_interval meanwhile)"
            );
            tokio::time::sleep(retry_in).await;
        }
    });
    Listener { task }
}

/// One connection's life: why it ended.
async fn listen_once(channel: &Channel, wakeups: &Wakeups, backoff: &mut Backoff) -> StoreError {
    let (client, mut connection) = match store::open(&channel.url, channel.connect_timeout).await {
        Ok(pair) => pair,
        Err(e) => return e,
    };
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let subscribe = async {
        store::set_up(&client, &channel.application_name).await?;
        // Quoted: the channel is matched exactly as configured (validated as a plain name).
        client.batch_execute(&format!("LISTEN \"{}\"", channel.name)).await.map_err(StoreError::db("LISTEN"))
    };
    tokio::pin!(subscribe);
    let mut subscribed = false;
    loop {
        tokio::select! {
            done = &mut subscribe, if !subscribed => match done {
                Ok(()) => {
                    subscribed = true;
                    backoff.reset();
                    tracing::info!(channel = %channel.name, "listening for change notifications");
                    wakeups.arrived(Instant::now());
                }
                Err(e) => return e,
            },
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(_))) => wakeups.arrived(Instant::now()),
                Some(Ok(_)) => {}
                Some(Err(source)) => return StoreError::Db { context: "listening for change notifications".into(), source },
                None => return StoreError::Closed("listening for change notifications"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_is_due_a_settle_after_it_arrived_until_a_run_started_then() {
        let settle = Duration::from_millis(20);
        let w = Wakeups::new(settle);
        let t0 = Instant::now();
        assert_eq!(w.due(t0), None);
        w.arrived(t0);
        w.arrived(t0 + Duration::from_millis(5));
        // A run started before the first could be read has not read it.
        assert_eq!(w.due(t0 + Duration::from_millis(10)), Some(t0 + settle));
        // One started once the first is readable read it, not the second.
        assert_eq!(w.due(t0 + settle), Some(t0 + Duration::from_millis(25)));
        assert_eq!(w.due(t0 + Duration::from_millis(25)), None);
    }

    #[test]
    fn arrivals_are_bounded_and_the_oldest_go_first() {
        let w = Wakeups::new(Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..(MAX_ARRIVALS as u64 + 10) {
            w.arrived(t0 + Duration::from_millis(i));
        }
        assert_eq!(w.due(t0), Some(t0 + Duration::from_millis(10)));
    }
}
