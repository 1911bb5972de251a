//! The mutex of the lock protocols a model checker verifies: `parking_lot`'s, or with the
//! `shuttle` feature the shuttle model checker's, so that the write-behind queue's and the
//! cache index's locks run under its scheduler, which tries many interleavings of their
//! threads (their `shuttle_` tests: `cargo test --release --features shuttle --lib shuttle`;
//! with the feature, only those tests can run, as every lock then needs shuttle's runtime).

#[cfg(not(feature = "shuttle"))]
pub use parking_lot::{Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
pub use checked::{Mutex, MutexGuard};

#[cfg(feature = "shuttle")]
mod checked {
    /// shuttle's mutex with `parking_lot`'s face: `lock` cannot fail (a panic fails the test).
    #[derive(Default)]
    pub struct Mutex<T>(shuttle::sync::Mutex<T>);

    pub type MutexGuard<'a, T> = shuttle::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub fn new(value: T) -> Mutex<T> {
            Mutex(shuttle::sync::Mutex::new(value))
        }

        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
    }
}
