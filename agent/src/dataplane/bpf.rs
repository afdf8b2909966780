//! The datapath object: the eBPF programs built from `ebpf/programs`, loaded
//! once per agent with their maps pinned under the agent's bpffs directory.
//!
//! Programs are attached with netlink tc filters at fixed priorities and
//! handles, so that they keep running while the agent is down, and so that a
//! restarted agent replaces them in place (one atomic netlink request) instead
//! of detaching and re-attaching.

use std::path::{Path, PathBuf};

use aya::{
    maps::MapError,
    programs::{
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use tracing::{debug, info};

/// A map entry's removal: a key already gone (never written, or deleted by
/// an earlier pass that failed later) is what the caller wanted.
pub fn removed(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// The eBPF object compiled by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netagent-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "{path} is not on a bpf filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` \
         or pass --bpffs with a directory on one"
    )]
    NotBpffs { path: PathBuf },
    #[error(transparent)]
    Bpffs(#[from] super::bpffs::BpffsError),
    #[error("cannot create the pin directory {path}: {cause}: check that --bpffs is on a writable bpf filesystem and netagent runs as root")]
    PinDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("loading the eBPF object failed: {0}: check that netagent runs as root on Linux 6.6 or later, and see its log")]
    Load(aya::EbpfError),
    #[error(
        "eBPF program {0} is missing from the object: this netagent build is broken; reinstall it"
    )]
    MissingProgram(&'static str),
    #[error(
        "eBPF map {0} is missing from the object: this netagent build is broken; reinstall it"
    )]
    MissingMap(&'static str),
    #[error("eBPF program {name}: {cause}: check that netagent runs as root on Linux 6.6 or later; see `bpftool prog`")]
    Program {
        name: &'static str,
        cause: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {cause}: check that netagent runs as root; see `bpftool map`")]
    Map {
        name: &'static str,
        cause: aya::maps::MapError,
    },
    #[error("interface {0} does not exist: check `ip link show {0}` (a stopped container takes its interfaces with it)")]
    NoInterface(String),
    #[error("cannot attach {program} to {ifname} ({direction}): {cause}: see `tc filter show dev {ifname} {direction}` for what holds the slot")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: Direction,
        cause: aya::programs::ProgramError,
    },
}

impl From<aya::EbpfError> for DatapathError {
    fn from(cause: aya::EbpfError) -> Self {
        Self::Load(cause)
    }
}

/// A pinned map a feature could not open, read or write. The feature's own
/// error wraps it and says what to do about its maps.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {cause}")]
pub struct MapFailure {
    pub name: &'static str,
    cause: Box<MapError>,
}

/// Wraps a failed access to the pinned map `name` (for `map_err`).
pub fn map_failure(name: &'static str) -> impl Fn(MapError) -> MapFailure {
    move |source| MapFailure {
        name,
        cause: Box::new(source),
    }
}

/// The API shows which way a program is attached (`netctl status`).
pub use netagent_api::types::Direction;

fn tc_attach_type(direction: Direction) -> TcAttachType {
    match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    }
}

/// Where one program sits in an interface's tc chain. Lower priorities run
/// first; each of our programs has its own slot, so they never displace each
/// other or anything an operator attached at other priorities.
#[derive(Clone, Copy, Debug)]
pub struct TcSlot {
    pub priority: u16,
    pub handle: u16,
}

/// One program attached to one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub program: &'static str,
    pub ifname: String,
    pub ifindex: u32,
    pub direction: Direction,
    /// The kernel's id of the program instance now attached.
    pub prog_id: u32,
}

/// The loaded datapath object and what the agent attached from it.
pub struct Datapath {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl Datapath {
    /// Loads the object, reusing the maps pinned under `bpffs` by an earlier
    /// run of this agent (so their contents survive a restart).
    pub fn load(bpffs: &Path, lb_maps: &super::lb_maps::MapSizes) -> Result<Self, DatapathError> {
        super::bpffs::ensure_mounted(bpffs)?;
        let pin_dir = bpffs.join("maps");
        std::fs::create_dir_all(&pin_dir).map_err(|source| DatapathError::PinDir {
            path: pin_dir.clone(),
            cause: source,
        })?;
        if !super::bpffs::is_bpffs(bpffs) {
            // Leave nothing half-made: the directory we may just have created
            // is on an ordinary filesystem.
            let _ = std::fs::remove_dir(&pin_dir);
            return Err(DatapathError::NotBpffs {
                path: bpffs.to_owned(),
            });
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        lb_maps.apply(&mut loader);
        let ebpf = loader.load(OBJECT)?;
        info!(pins = %pin_dir.display(), "datapath object loaded");
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
        })
    }

    /// What is attached, in attach order.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Read access to a map of the object.
    pub fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.ebpf.map(name).ok_or(DatapathError::MissingMap(name))
    }

    /// Write access to a map of the object.
    pub fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    /// Takes a map out of the object, for a reader that owns it (the trace
    /// ring buffer).
    pub fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
        self.ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap(name))
    }

    /// Attaches `program` to `ifname` in `direction` at `slot`, replacing in
    /// place whatever an earlier run attached there.
    pub fn attach_tc(
        &mut self,
        program: &'static str,
        ifname: &str,
        direction: Direction,
        slot: TcSlot,
    ) -> Result<(), DatapathError> {
        let ifindex = super::interfaces::ifindex(ifname)
            .ok_or_else(|| DatapathError::NoInterface(ifname.to_owned()))?;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or(DatapathError::MissingProgram(program))?
            .try_into()
            .map_err(|source| DatapathError::Program {
                name: program,
                cause: source,
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|source| DatapathError::Program {
                name: program,
                cause: source,
            })?;
        }
        let attach_error = |source| DatapathError::Attach {
            program,
            ifname: ifname.to_owned(),
            direction,
            cause: source,
        };
        // The clsact qdisc may be there already (an earlier run, or another
        // tool): that is fine.
        if let Err(error) = tc::qdisc_add_clsact(ifname) {
            debug!(%ifname, %error, "clsact qdisc not added (usually: it exists)");
        }
        let handle = TcHandle::new(0, slot.handle);
        let existing = SchedClassifierLink::attached(
            ifname,
            tc_attach_type(direction),
            slot.priority,
            handle,
            None,
        )
        .map_err(|error| attach_error(aya::programs::ProgramError::IOError(error)))?;
        let link_id = match prog.attach_to_link(existing) {
            Ok(link_id) => {
                debug!(%ifname, %direction, program, "replaced the program in place");
                link_id
            }
            Err(_) => prog
                .attach_with_options(
                    ifname,
                    tc_attach_type(direction),
                    TcAttachOptions::Netlink(NlOptions {
                        priority: slot.priority,
                        handle,
                        ..Default::default()
                    }),
                )
                .map_err(attach_error)?,
        };
        // The filter must outlive the agent: take the link out of aya's
        // bookkeeping so that dropping the program does not detach it. A
        // netlink link owns no file descriptor, so nothing leaks.
        let link = prog.take_link(link_id).map_err(attach_error)?;
        std::mem::forget(link);
        let prog_id =
            prog.info()
                .map(|info| info.id())
                .map_err(|source| DatapathError::Program {
                    name: program,
                    cause: source,
                })?;
        self.attachments.retain(|a| {
            !(a.ifindex == ifindex && a.direction == direction && a.program == program)
        });
        self.attachments.push(Attachment {
            program,
            ifname: ifname.to_owned(),
            ifindex,
            direction,
            prog_id,
        });
        info!(%ifname, %direction, program, prog_id, "program attached");
        Ok(())
    }
}
