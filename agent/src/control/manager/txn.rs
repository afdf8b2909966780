//! Building the store's optimistic transactions: the operations, the guard
//! compares, and what one network's allocations read under its guard.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::records::{encode, BlockRecord, Reservation};
use crate::control::{
    error::ControlError,
    store::{Compare, Op},
};

/// How often a transaction is tried again after a racing writer won.
pub(super) const MAX_ATTEMPTS: usize = 64;

pub(super) fn put<T: Serialize>(key: impl Into<String>, value: &T) -> Result<Op, ControlError> {
    Ok(Op::Put {
        key: key.into(),
        value: encode(value)?,
    })
}

/// Rewrites a guard key: its new revision tells racing writers to re-read.
pub(super) fn bump(key: impl Into<String>) -> Op {
    Op::Put {
        key: key.into(),
        value: Vec::new(),
    }
}

pub(super) fn delete(key: impl Into<String>) -> Op {
    Op::Delete { key: key.into() }
}

pub(super) fn compare(key: impl Into<String>, mod_revision: u64) -> Compare {
    Compare {
        key: key.into(),
        mod_revision,
    }
}

/// Everything allocated in one network, read after its guard's revision: a
/// transaction comparing `guard` commits only if none of it changed.
pub(super) struct Allocations {
    pub(super) guard_key: String,
    pub(super) guard: u64,
    pub(super) blocks: Vec<BlockRecord>,
    pub(super) reservations: Vec<Reservation>,
    pub(super) vips: Vec<Ipv4Addr>,
}

impl Allocations {
    pub(super) fn compare(&self) -> Compare {
        compare(self.guard_key.clone(), self.guard)
    }
}
