//! What the running kernel and this process must offer for memprof to load its probes:
//! BTF (CO-RE relocations), uprobes, and the capabilities to load BPF and open perf events.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

const BTF: &str = "/sys/kernel/btf/vmlinux";
const UPROBE_PMU: &str = "/sys/bus/event_source/devices/uprobe";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The result of one check: a line saying what was found, or what is wrong.
pub type Check = std::result::Result<String, String>;

pub fn btf() -> Check {
    if Path::new(BTF).exists() {
        Ok(format!("kernel BTF at {BTF}"))
    } else {
        Err(format!(
            "no kernel BTF: {BTF} is missing (memprof needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
        ))
    }
}

pub fn uprobes() -> Check {
    if Path::new(UPROBE_PMU).exists() {
        Ok(format!("uprobes at {UPROBE_PMU}"))
    } else {
        Err(format!(
            "no uprobes: {UPROBE_PMU} is missing (memprof needs a kernel built with CONFIG_UPROBE_EVENTS=y)"
        ))
    }
}

/// Who this process is, as far as loading BPF goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub euid: u32,
    /// The effective capability set, one bit per capability.
    pub cap_eff: u64,
}

impl Identity {
    pub fn current() -> Result<Identity> {
        let status =
            fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
        Identity::parse(&status).context("/proc/self/status has no parsable Uid or CapEff line")
    }

    /// Reads the effective uid (second field of `Uid:`) and `CapEff:` from /proc/PID/status text.
    pub fn parse(status: &str) -> Option<Identity> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        };
        let euid = field("Uid")?.split_whitespace().nth(1)?.parse().ok()?;
        let cap_eff = u64::from_str_radix(field("CapEff")?.trim(), 16).ok()?;
        Some(Identity { euid, cap_eff })
    }

    pub fn is_root(self) -> bool {
        self.euid == 0
    }

    fn has(self, cap: u32) -> bool {
        self.cap_eff & (1 << cap) != 0
    }

    /// CAP_BPF + CAP_PERFMON (kernel 5.8+), or CAP_SYS_ADMIN, which covers both.
    pub fn can_load_probes(self) -> bool {
        (self.has(CAP_BPF) && self.has(CAP_PERFMON)) || self.has(CAP_SYS_ADMIN)
    }
}

pub fn privileges(id: Identity) -> Check {
    let who = if id.is_root() {
        "root".to_owned()
    } else {
        format!("uid {}", id.euid)
    };
    if id.can_load_probes() {
        return Ok(format!(
            "privileges: {who} with CAP_BPF and CAP_PERFMON effective"
        ));
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !id.has(cap))
        .map(|(_, name)| name)
        .collect();
    let missing = missing.join(" and ");
    Err(if id.is_root() {
        format!("privileges: root but {missing} not effective (a restricted container?)")
    } else {
        format!("privileges: not root and {missing} not effective; run as root (sudo)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_STATUS: &str = "Name:\tcat\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";

    #[test]
    fn parses_root_with_every_capability_but_sys_resource() {
        let id = Identity::parse(ROOT_STATUS).unwrap();
        assert_eq!(
            id,
            Identity {
                euid: 0,
                cap_eff: 0x1fffeffffff
            }
        );
        assert!(id.can_load_probes());
        assert!(privileges(id).is_ok());
    }

    #[test]
    fn effective_uid_is_the_second_field() {
        let status = "Uid:\t1000\t0\t1000\t1000\nCapEff:\t0000000000000000\n";
        assert_eq!(Identity::parse(status).unwrap().euid, 0);
    }

    #[test]
    fn bpf_and_perfmon_suffice_without_root() {
        let id = Identity {
            euid: 1000,
            cap_eff: (1 << CAP_BPF) | (1 << CAP_PERFMON),
        };
        assert!(id.can_load_probes());
    }

    #[test]
    fn names_each_missing_capability() {
        let id = Identity {
            euid: 1000,
            cap_eff: 1 << CAP_PERFMON,
        };
        let problem = privileges(id).unwrap_err();
        assert!(problem.contains("CAP_BPF not effective"), "{problem}");
        assert!(!problem.contains("CAP_PERFMON"), "{problem}");
    }
}
