//! Sizes of the load balancer's maps, set when the object is loaded.
//!
//! Layout (see `netagent_common`): LB_SERVICES (hash, VIP -> service),
//! LB_BACKENDS (hash, id -> backend), LB_MAGLEV (an array of `table_slots`
//! entries, each a whole Maglev table of `LB_TABLE_SIZE` backend ids:
//! writing a service's table is one map update, so programming N services
//! costs N table writes rather than N * 1021), LB_BACKEND_FLOWS (array, id
//! -> new flows), LB_CT and LB_REV_CT (LRU hashes). An array of whole tables
//! rather than an array of maps: aya-ebpf 0.2 has no map-in-map, an array
//! lookup is one bounds-checked access for the verifier, and a pinned array
//! survives a restart as one object.
//!
//! Memory: LB_MAGLEV takes `table_slots * 4088` bytes (a 4084-byte value
//! rounded up to 8), 42 MB with the defaults (10,250 tables of 1021).
//! 1021 keeps the spread within a few percent up to about 20 backends per
//! VIP; the stored size is fixed at build time (it is the map's value
//! size), and `table_size` may only pick a smaller prime. LB_BACKEND_FLOWS
//! is per CPU (no atomic add on the new-flow path): 8 bytes per backend id
//! per possible CPU, 1.6 MB on 2 CPUs, 51 MB on 64. The `[lb]` section of
//! the config file sets the sizes (`config::LbFileConfig`).
//!
//! The sizes of pinned maps are fixed when they are first created: changing
//! them needs the pins removed (which drops open flows).

use aya::EbpfLoader;
use netagent_common::{
    LB_BACKENDS_CAPACITY, LB_BACKENDS_MAP, LB_BACKEND_FLOWS_MAP, LB_CT_CAPACITY, LB_CT_MAP,
    LB_MAGLEV_MAP, LB_REV_CT_MAP, LB_SERVICES_CAPACITY, LB_SERVICES_MAP, LB_TABLE_SIZE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    /// Maglev tables: at least `services`; the spares let an update write a
    /// fresh table before the service switches to it.
    pub table_slots: u32,
    /// Entries per Maglev table in use, a prime of at most `LB_TABLE_SIZE`.
    pub table_size: u32,
    pub backends: u32,
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: LB_SERVICES_CAPACITY,
            table_slots: Self::slots_for(LB_SERVICES_CAPACITY),
            table_size: LB_TABLE_SIZE,
            backends: LB_BACKENDS_CAPACITY,
            conntrack: LB_CT_CAPACITY,
        }
    }
}

impl MapSizes {
    /// Maglev tables for `services` VIPs: one each, plus spares (a fortieth,
    /// at least 16) so that updates to many VIPs at once still write fresh
    /// tables rather than rewriting live ones in place.
    pub fn slots_for(services: u32) -> u32 {
        services.saturating_add((services / 40).max(16))
    }

    /// Sets the map sizes on `loader`.
    pub fn apply(&self, loader: &mut EbpfLoader<'_>) {
        loader
            .map_max_entries(LB_SERVICES_MAP, self.services)
            .map_max_entries(LB_BACKENDS_MAP, self.backends)
            .map_max_entries(LB_MAGLEV_MAP, self.table_slots)
            // Backend ids run from 1 to `backends`.
            .map_max_entries(LB_BACKEND_FLOWS_MAP, self.backends.saturating_add(1))
            .map_max_entries(LB_CT_MAP, self.conntrack)
            .map_max_entries(LB_REV_CT_MAP, self.conntrack);
    }
}
