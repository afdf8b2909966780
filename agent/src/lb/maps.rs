//! Sizes of the load balancer's maps, set when the object is loaded.
//!
//! Layout (see `netagent_common`): LB_SERVICES (hash, VIP -> service),
//! LB_BACKENDS (hash, id -> backend), LB_MAGLEV (one array holding
//! `table_slots` Maglev tables of `table_size` backend ids each: a service's
//! table starts at `table_slot * table_size`), LB_CT and LB_REV_CT (LRU
//! hashes). One flat array rather than an array of maps: aya-ebpf 0.2 has no
//! map-in-map, a flat array is a single bounds-checked lookup for the
//! verifier, and a pinned array survives a restart as one object.
//!
//! Memory: LB_MAGLEV takes `table_slots * table_size * 4` bytes, 42 MB with
//! the defaults (10,250 tables of 1021). 1021 keeps the spread within a few
//! percent up to about 20 backends per VIP; services with more backends want
//! a bigger prime (4099: 168 MB at 10,250 tables, so fewer tables). The
//! `[lb]` section of the config file sets the sizes (`config::LbFileConfig`).
//!
//! The sizes of pinned maps are fixed when they are first created: changing
//! them needs the pins removed (which drops open flows).

use aya::EbpfLoader;
use netagent_common::{
    LB_BACKENDS_CAPACITY, LB_BACKENDS_MAP, LB_CT_CAPACITY, LB_CT_MAP, LB_MAGLEV_MAP, LB_REV_CT_MAP,
    LB_SERVICES_CAPACITY, LB_SERVICES_MAP, LB_TABLE_SIZE,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    /// Maglev tables: at least `services`; the spares let an update write a
    /// fresh table before the service switches to it.
    pub table_slots: u32,
    /// Entries per Maglev table, a prime.
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
            .map_max_entries(
                LB_MAGLEV_MAP,
                self.table_slots.saturating_mul(self.table_size),
            )
            .map_max_entries(LB_CT_MAP, self.conntrack)
            .map_max_entries(LB_REV_CT_MAP, self.conntrack);
    }
}
