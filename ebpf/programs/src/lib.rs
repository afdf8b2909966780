//! Empty on purpose: the programs live in `main.rs`. This library target lets
//! `agent` depend on the crate so that cargo rebuilds the agent when the
//! programs change.
#![no_std]
