//! Confining user code that a plugin runs (spec/plugin.md, "Confining user
//! code"): what a handler's code may touch when a plugin executes it on
//! behalf of a stranger, enforced by Linux without root.
//!
//! [`Confinement::apply`] confines the calling process and everything it
//! executes afterwards. It is meant for a fresh, single-threaded helper
//! process right before it executes the user's interpreter (the script
//! plugin runs itself with `--confined-exec` for that), so nothing the
//! plugin holds — its key, its memory, its sockets — is reachable from the
//! code:
//!
//! - **files** (Landlock): read and execute only under the read-only paths
//!   (the interpreter's installation), read and write only under the
//!   attempt's scratch directory and `/dev/null`; nothing else, `/proc`
//!   included;
//! - **network** (Landlock TCP rules and a seccomp filter): no socket but
//!   Unix socket pairs, no TCP bind or connect; or, for code whose handler
//!   asks for outbound network and whose plugin's operator allows it
//!   ([`Confinement::outbound_network`]), TCP and UDP sockets that may
//!   connect out but never bind a TCP port or listen;
//! - **other processes** (Landlock scopes, seccomp): no signals to
//!   processes outside the attempt, no ptrace, no reading or writing
//!   another process's memory, no new processes (threads are allowed),
//!   no namespaces, mounts, keyrings, BPF or kernel modules;
//! - **resources** (rlimits): CPU seconds, address space, open files and
//!   file size are bounded; no core dumps; a new session, so the plugin can
//!   end the attempt's whole process group.
//!
//! [`Support::probe`] tells which of these the running kernel can enforce;
//! a plugin refuses to run user code when one is missing unless its
//! operator accepts the weaker mode.

use std::fmt;
use std::path::PathBuf;

/// Bounds on what one attempt's process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time, seconds (RLIMIT_CPU: SIGXCPU, then SIGKILL).
    pub cpu_seconds: u64,
    /// Address space, bytes (RLIMIT_AS: allocations beyond it fail).
    pub memory_bytes: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Largest file the code may write, bytes (RLIMIT_FSIZE).
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cpu_seconds: 300,
            memory_bytes: 1 << 30,
            open_files: 64,
            file_bytes: 64 << 20,
        }
    }
}

/// What the confined code may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Trees the code may read and execute (the interpreter's files).
    /// Paths that do not exist are skipped.
    pub read_only: Vec<PathBuf>,
    /// The one directory the code may write (created by the caller).
    pub scratch: PathBuf,
    /// Resource bounds.
    pub limits: Limits,
    /// Allow IPv4 and IPv6 sockets that connect out (TCP binds stay
    /// refused); otherwise only Unix socket pairs.
    pub outbound_network: bool,
}

/// A guarantee of [`Confinement`] the running kernel cannot enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No Landlock: files (the plugin's key, `/proc`) are not confined.
    Files,
    /// Landlock before ABI 4: TCP is confined by the seccomp filter only.
    TcpRules,
    /// Landlock before ABI 6: signals to other processes are not refused.
    Signals,
    /// No seccomp filters: ptrace, process memory, new processes and
    /// sockets are not refused.
    SystemCalls,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Missing::Files => {
                "files: no Landlock, so the code can read any file the plugin's user can (its key included)"
            }
            Missing::TcpRules => "TCP rules: Landlock before ABI 4 (Linux 6.7)",
            Missing::Signals => {
                "signals: Landlock before ABI 6 (Linux 6.12), so the code can signal the plugin"
            }
            Missing::SystemCalls => {
                "system calls: no seccomp filters, so the code can ptrace, fork and open sockets"
            }
        })
    }
}

/// What the running kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Support {
    /// The Landlock ABI version, 0 if Landlock is unavailable.
    pub landlock_abi: i32,
    /// Whether seccomp filters can be installed.
    pub seccomp: bool,
}

impl Support {
    /// Asks the kernel.
    pub fn probe() -> Support {
        imp::probe()
    }

    /// The guarantees this kernel cannot give, most serious first.
    pub fn missing(&self) -> Vec<Missing> {
        let mut out = Vec::new();
        if self.landlock_abi < 1 {
            out.push(Missing::Files);
        }
        if self.landlock_abi < 4 {
            out.push(Missing::TcpRules);
        }
        if self.landlock_abi < 6 {
            out.push(Missing::Signals);
        }
        if !self.seccomp {
            out.push(Missing::SystemCalls);
        }
        out
    }
}

/// Why a process could not be confined.
#[derive(Debug, thiserror::Error)]
#[error("cannot confine the process: {0}")]
pub struct ConfineError(String);

impl Confinement {
    /// Confines the calling process and everything it executes from now
    /// on; irreversible. Call it in a fresh, single-threaded process (the
    /// rules apply to the calling thread and its future children only).
    ///
    /// With `allow_weak`, a guarantee the kernel cannot give is skipped
    /// ([`Support::missing`] lists them); without it, that is an error.
    ///
    /// # Errors
    /// A limit, the Landlock ruleset or the seccomp filter could not be
    /// applied.
    pub fn apply(&self, allow_weak: bool) -> Result<(), ConfineError> {
        let support = Support::probe();
        let missing = support.missing();
        if !allow_weak && !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
            return Err(ConfineError(format!(
                "the kernel cannot enforce: {}",
                list.join("; ")
            )));
        }
        imp::apply(self, support)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::BTreeMap;

    use landlock::{
        ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible, Ruleset, RulesetAttr,
        RulesetCreatedAttr, Scope, path_beneath_rules,
    };
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    use super::{ConfineError, Confinement, Support};

    fn err(what: &str, e: impl std::fmt::Display) -> ConfineError {
        ConfineError(format!("{what}: {e}"))
    }

    pub(super) fn probe() -> Support {
        // landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        // returns the ABI version.
        // SAFETY: the documented probe call; no pointer is passed.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                1u32,
            )
        };
        // SAFETY: PR_GET_SECCOMP takes no pointer; it fails with EINVAL when
        // the kernel has no seccomp.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
        Support {
            landlock_abi: i32::try_from(abi.max(0)).unwrap_or(0),
            seccomp,
        }
    }

    fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), ConfineError> {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(err("setrlimit", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    pub(super) fn apply(c: &Confinement, support: Support) -> Result<(), ConfineError> {
        // A session of its own: the plugin ends the attempt by its group,
        // and the code is detached from the plugin's terminal.
        // SAFETY: setsid has no arguments; failing (already a leader) is
        // harmless.
        unsafe { libc::setsid() };
        set_limit(libc::RLIMIT_CPU, c.limits.cpu_seconds)?;
        set_limit(libc::RLIMIT_AS, c.limits.memory_bytes)?;
        set_limit(libc::RLIMIT_NOFILE, c.limits.open_files)?;
        set_limit(libc::RLIMIT_FSIZE, c.limits.file_bytes)?;
        set_limit(libc::RLIMIT_CORE, 0)?;
        // SAFETY: plain prctl flags; required before an unprivileged
        // seccomp filter and kept across exec.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(err("no_new_privs", std::io::Error::last_os_error()));
        }
        if support.landlock_abi >= 1 {
            landlock(c, support.landlock_abi)?;
        }
        if support.seccomp {
            let (enosys, eperm) = filters(c.outbound_network)?;
            seccompiler::apply_filter(&enosys).map_err(|e| err("seccomp", e))?;
            seccompiler::apply_filter(&eperm).map_err(|e| err("seccomp", e))?;
        }
        Ok(())
    }

    fn landlock(c: &Confinement, abi: i32) -> Result<(), ConfineError> {
        let abi = match abi {
            1 => ABI::V1,
            2 => ABI::V2,
            3 => ABI::V3,
            4 => ABI::V4,
            5 => ABI::V5,
            _ => ABI::V6,
        };
        let ll = |e: landlock::RulesetError| err("landlock", e);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(AccessFs::from_all(abi))
            .map_err(ll)?;
        if abi >= ABI::V4 {
            // Handled rights are refused unless a rule grants them: with
            // outbound network, connecting is left unhandled (allowed).
            let net = if c.outbound_network {
                AccessNet::BindTcp.into()
            } else {
                AccessNet::BindTcp | AccessNet::ConnectTcp
            };
            ruleset = ruleset.handle_access(net).map_err(ll)?;
        }
        if abi >= ABI::V6 {
            ruleset = ruleset
                .scope(Scope::Signal | Scope::AbstractUnixSocket)
                .map_err(ll)?;
        }
        let read_only: Vec<&std::path::Path> = c
            .read_only
            .iter()
            .map(PathBuf::as_path)
            .filter(|p| p.exists())
            .collect();
        let read = AccessFs::from_read(abi);
        let created = ruleset
            .create()
            .map_err(ll)?
            .add_rules(path_beneath_rules(&read_only, read))
            .map_err(ll)?
            .add_rules(path_beneath_rules(
                [c.scratch.as_path()],
                AccessFs::from_all(abi),
            ))
            .map_err(ll)?
            .add_rules(path_beneath_rules(
                ["/dev/null"],
                AccessFs::ReadFile | AccessFs::WriteFile,
            ))
            .map_err(ll)?;
        created.restrict_self().map_err(ll)?;
        Ok(())
    }

    use std::path::PathBuf;

    /// Two filters: clone3 answers ENOSYS (so the C library falls back to
    /// clone, whose flags a filter can read), and the refused calls answer
    /// EPERM.
    fn filters(outbound_network: bool) -> Result<(BpfProgram, BpfProgram), ConfineError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| err("seccomp", e))?;
        let sc = |e: seccompiler::BackendError| err("seccomp", e);
        let all = || vec![];
        let mut enosys = BTreeMap::new();
        enosys.insert(libc::SYS_clone3, all());
        let enosys = SeccompFilter::new(
            enosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(sc)?;
        let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for call in [
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_bpf,
            libc::SYS_perf_event_open,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_request_key,
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_kexec_load,
            libc::SYS_kexec_file_load,
            libc::SYS_reboot,
            libc::SYS_swapon,
            libc::SYS_swapoff,
            libc::SYS_userfaultfd,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
            libc::SYS_open_by_handle_at,
            libc::SYS_name_to_handle_at,
            libc::SYS_pidfd_open,
            libc::SYS_pidfd_getfd,
            libc::SYS_pidfd_send_signal,
            libc::SYS_acct,
            libc::SYS_settimeofday,
            libc::SYS_clock_settime,
            libc::SYS_sethostname,
            libc::SYS_setdomainname,
            libc::SYS_quotactl,
            libc::SYS_move_mount,
            libc::SYS_open_tree,
            libc::SYS_fsopen,
            libc::SYS_fsmount,
            libc::SYS_fspick,
        ] {
            eperm.insert(call, all());
        }
        #[cfg(target_arch = "x86_64")]
        for call in [libc::SYS_iopl, libc::SYS_ioperm] {
            eperm.insert(call, all());
        }
        // A new process (clone without CLONE_THREAD); threads are allowed.
        let no_thread = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )
        .map_err(sc)?;
        eperm.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![no_thread]).map_err(sc)?],
        );
        // Sockets of other families than these (socketpair stays allowed):
        // a rule's conditions must all hold for the call to be refused.
        let mut families = vec![libc::AF_UNIX];
        if outbound_network {
            families.extend([libc::AF_INET, libc::AF_INET6]);
        }
        let ne = |arg: u8, v: i32| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v as u64)
        };
        let other_family = families
            .into_iter()
            .map(|f| ne(0, f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sc)?;
        let mut socket_rules = vec![SeccompRule::new(other_family).map_err(sc)?];
        if outbound_network {
            // Plain TCP and UDP only: a protocol such as MPTCP escapes
            // Landlock's TCP rules.
            let other_protocol = [0, libc::IPPROTO_TCP, libc::IPPROTO_UDP]
                .into_iter()
                .map(|p| ne(2, p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(sc)?;
            socket_rules.push(SeccompRule::new(other_protocol).map_err(sc)?);
            // Landlock checks bind() only; listen() on an unbound socket
            // binds an ephemeral port by itself. Outbound means no
            // listening at all.
            for call in [libc::SYS_listen, libc::SYS_accept, libc::SYS_accept4] {
                eperm.insert(call, all());
            }
        }
        eperm.insert(libc::SYS_socket, socket_rules);
        let eperm = SeccompFilter::new(
            eperm,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(sc)?;
        Ok((
            BpfProgram::try_from(enosys).map_err(sc)?,
            BpfProgram::try_from(eperm).map_err(sc)?,
        ))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{ConfineError, Confinement, Support};

    pub(super) fn probe() -> Support {
        Support {
            landlock_abi: 0,
            seccomp: false,
        }
    }

    pub(super) fn apply(_: &Confinement, _: Support) -> Result<(), ConfineError> {
        Err(ConfineError(
            "confinement needs Linux (Landlock and seccomp)".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_guarantees_follow_the_abi() {
        let full = Support {
            landlock_abi: 6,
            seccomp: true,
        };
        assert!(full.missing().is_empty());
        let none = Support {
            landlock_abi: 0,
            seccomp: false,
        };
        assert_eq!(
            none.missing(),
            vec![
                Missing::Files,
                Missing::TcpRules,
                Missing::Signals,
                Missing::SystemCalls
            ]
        );
        let old = Support {
            landlock_abi: 3,
            seccomp: true,
        };
        assert_eq!(old.missing(), vec![Missing::TcpRules, Missing::Signals]);
    }
}
