"""Kernel settings for a busy MTA, each with the reason for its value.

KumoMTA's performance docs list these parameters (and once published the values
below); the bootstrap applies each only where it raises the kernel's current
value, because modern kernels already ship higher defaults for several of them
(fs.file-max, net.core.somaxconn) and lowering those would hurt.
"""

from __future__ import annotations

# (key, operator, value, why). ">=" is a capacity: raised to the value, never lowered.
# "=" is a setting (an enum or a range): set exactly.
SYSCTL: tuple[tuple[str, str, str, str], ...] = (
    ("vm.max_map_count", ">=", "768000", "RocksDB spools map many SST files; the default 65530 maps run out"),
    ("net.core.rmem_default", ">=", "32768", "socket buffers sized for many concurrent SMTP sessions"),
    ("net.core.wmem_default", ">=", "32768", "socket buffers sized for many concurrent SMTP sessions"),
    ("net.core.rmem_max", ">=", "262144", "let TCP autotuning grow buffers for large messages"),
    ("net.core.wmem_max", ">=", "262144", "let TCP autotuning grow buffers for large messages"),
    ("fs.file-max", ">=", "250000", "every connection and spool file is a descriptor"),
    ("net.ipv4.ip_local_port_range", "=", "5000 63000", "more source ports for outbound SMTP to the same MX hosts"),
    # 1 reuses TIME_WAIT sockets for all outbound connections; newer kernels default to 2
    # (loopback only), which a numeric "never lower" would wrongly keep.
    ("net.ipv4.tcp_tw_reuse", "=", "1", "reuse TIME_WAIT sockets for new outbound SMTP connections"),
    ("kernel.shmmax", ">=", "68719476736", "KumoMTA's published value"),
    ("net.core.somaxconn", ">=", "1024", "accept backlog for bursts of inbound connections"),
    ("kernel.shmmni", ">=", "4096", "KumoMTA's published value"),
    # vm.nr_hugepages is left alone: it reserves memory that no KumoMTA component asks for.
)


def sysctl_wanted(with_reasons: bool = True) -> str:
    """The wanted settings as kumo-bootstrap reads them; the node's copy leaves out the reasons
    (they are here, and every byte of AWS user data counts)."""
    lines = ["# Wanted kernel settings (kumo-infra): 'key >= value' is raised, never lowered; 'key = value' is set."]
    for key, op, value, why in SYSCTL:
        if with_reasons:
            lines.append(f"# {why}")
        lines.append(f"{key} {op} {value}")
    return "\n".join(lines) + "\n"
