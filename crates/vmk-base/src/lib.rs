//! vmk's base crate: the few things every crate needs and none should write again (as
//! crosvm's `base` is for crosvm). No dependencies, no policy beyond what is written here.
//!
//! - [`lock`], [`read`], [`write`](fn@write): locks with one poison policy.
//! - [`fs::write_atomic`]: a file replaced whole or not at all, durably.
//! - [`fmt`]: times and sizes for people.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub mod fmt;
pub mod fs;

/// Locks `m`, ignoring poison.
///
/// The policy, for every lock in vmk: a thread that panics while holding a lock is a bug
/// that is reported where it happens (the VM crashes with the panic message, or the test
/// fails); it must not spread to every other thread that touches the lock (the API server,
/// the other VMs). Code that holds a lock keeps its data consistent at every point where
/// it could panic (updates are single assignments, or done on a copy and swapped in), so
/// the data behind a poisoned lock is still good.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Read-locks `l`, ignoring poison (see [`lock`]).
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Write-locks `l`, ignoring poison (see [`lock`]).
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_lock_still_hands_out_its_data() {
        let m = Arc::new(Mutex::new(5));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 6);
        let l = Arc::new(RwLock::new(1));
        let l2 = l.clone();
        let _ = std::thread::spawn(move || {
            let _g = l2.write().unwrap();
            panic!("poison it");
        })
        .join();
        *write(&l) += 1;
        assert_eq!(*read(&l), 2);
    }
}
