//! Locks that outlive a panic. The agent's mutexes guard state that stays
//! usable after a panic mid-update (maps the datapath keeps using, a cache
//! shard, a list of attachments), so a poisoned lock is taken as it is
//! rather than turning one panic into a dead daemon.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, poisoned or not.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
