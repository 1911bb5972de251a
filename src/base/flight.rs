//! Single-flight results: one task produces a result that many tasks wait for.

use std::sync::Arc;

use tokio::sync::watch;

use super::error::FsError;

/// A result that many tasks wait for and one task produces.
pub struct Flight<T: Clone> {
    state: watch::Sender<Option<Result<T, FsError>>>,
}

impl<T: Clone> Flight<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Flight {
            state: watch::Sender::new(None),
        })
    }

    /// Publishes the result; the first one wins, later ones are ignored.
    pub fn finish(&self, result: Result<T, FsError>) {
        self.state.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(result);
                true
            } else {
                false
            }
        });
    }

    /// Whether any task is waiting for the result right now.
    pub fn has_waiters(&self) -> bool {
        self.state.receiver_count() > 0
    }

    pub fn is_finished(&self) -> bool {
        self.state.borrow().is_some()
    }

    pub async fn wait(&self) -> Result<T, FsError> {
        self.waiter().wait().await
    }

    /// Counts as a waiter from now on (the producer hands bytes to waiters directly), and
    /// waits when asked to.
    pub fn waiter(&self) -> Waiter<T> {
        Waiter {
            receiver: self.state.subscribe(),
        }
    }
}

/// A registered wait for a flight's result.
pub struct Waiter<T: Clone> {
    receiver: watch::Receiver<Option<Result<T, FsError>>>,
}

impl<T: Clone> Waiter<T> {
    pub async fn wait(mut self) -> Result<T, FsError> {
        let result = match self.receiver.wait_for(Option::is_some).await {
            Ok(state) => state
                .clone()
                .unwrap_or(Err(FsError::Io("flight lost".into()))),
            Err(_) => Err(FsError::Io("flight abandoned".into())),
        };
        result
    }
}
