"""``kumo:deployment.ssh``: the machines that already exist, and how kumo-infra reaches each one.

Every value here reaches an SSH connection, a root shell's files or DNS records, so each has
one allowed form, checked once. The private key is never here: it is the secret
``kumo:sshPrivateKey`` (encrypted by Pulumi end to end).
"""

from __future__ import annotations

import base64
import ipaddress
import re
from typing import Annotated, Optional

from pydantic import AfterValidator, BeforeValidator, Field

from ...errors import shown
from ...forms import Hostname, Strict, form, hostname

# The secret holding the private key kumo-infra logs in with (OpenSSH or PEM form).
PRIVATE_KEY_CONFIG = "kumo:sshPrivateKey"

# -- address ------------------------------------------------------------------------------------

# Addresses that never name a machine to connect to, or (for public_ip) the address the world
# sees: RFC 1918 and shared (CGNAT) space, unique-local IPv6, loopback, link-local. The
# documentation ranges (RFC 5737, RFC 3849) pass: examples and tests use them.
_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "0.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"))
_DOCUMENTATION = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
                                                          "2001:db8::/32"))


def ip_literal(value: str) -> Optional[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The address when ``value`` is an IP literal (never with a scope id: '%' carries any text)."""
    if re.fullmatch(r"[0-9A-Fa-f.:]+", value, re.ASCII):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            return None
    return None


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` can be the address the internet sees mail come from (documentation ranges pass)."""
    if any(ip in net for net in _DOCUMENTATION):
        return True
    return not (ip.is_multicast or ip.is_unspecified or ip.is_reserved or any(ip in net for net in _NOT_PUBLIC))


def parse_address(value: str) -> str:
    """Where kumo-infra connects: an IP address literal or a fully qualified DNS name."""
    ip = ip_literal(value)
    if ip is not None:
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"{shown(value)} names no single machine; give the address kumo-infra connects to")
        return str(ip)
    try:
        return hostname(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is neither an IP address (like 192.0.2.10 or 2001:db8::10, without a "
                         "%scope) nor a fully qualified DNS name (like mta1.example.net)") from None


def parse_public_ip(value: str) -> str:
    ip = ip_literal(value)
    if not isinstance(ip, ipaddress.IPv4Address):
        raise ValueError(f"{shown(value)} is not an IPv4 address: kumo-infra lists IPv4 records (A, PTR, SPF ip4) "
                         "and names the address in the API certificate")
    if not is_public(ip):
        raise ValueError(f"{ip} is not a public address; give the address the internet sees this host's mail come "
                         "from (its A and PTR records name it)")
    return str(ip)


def parse_private_address(value: str) -> str:
    """An IP address literal the other hosts reach this one at (a peer list holds addresses only)."""
    ip = ip_literal(value)
    if ip is None or ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError(f"{shown(value)} is not an address the other hosts can reach this one at: give an IP "
                         "address (like 10.0.0.10 or fd00::10, without a %scope)")
    return str(ip)


# -- login name --------------------------------------------------------------------------------

# POSIX's portable user names, lowercase as useradd accepts by default, without the trailing '$'
# of machine accounts: the name reaches the SSH handshake and the operator's read command.
USER = form(r"[a-z_][a-z0-9_-]{0,31}", "a login name of 1-32 lowercase letters, digits, '_' and '-', not starting "
                                        "with a digit or '-' (like root or deploy)")

# -- port --------------------------------------------------------------------------------------

def port_number(value: object) -> object:
    """A number, never YAML's true (which pydantic reads as 1) or a string. A whole float passes: Pulumi's
    engine hands every number over as one (2222.0), as it does to a component used from another language."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{shown(value)} is not a port number (1-65535)")
    return value


# -- host key ----------------------------------------------------------------------------------

# The host key types pulumi-command can pin. It offers the server only the pinned key's own type
# name (connection.go: HostKeyAlgorithms = []string{publicKey.Type()}), and for an RSA key that
# name is ssh-rsa, SHA-1 signatures, which OpenSSH refuses since 8.8; every OpenSSH since 6.5 also
# has an Ed25519 host key (/etc/ssh/ssh_host_ed25519_key.pub).
HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
_HOST_KEY_LINE = re.compile(r"([a-z0-9-]+) (AAAA[A-Za-z0-9+/]+={0,2})(?: [\x21-\x7e][\x20-\x7e]{0,199})?", re.ASCII)
HOST_KEY_FORM = ("the machine's OpenSSH public host key on one line, as /etc/ssh/ssh_host_ed25519_key.pub holds it "
                 "(ssh-ed25519 AAAA... or ecdsa-sha2-nistp256 AAAA...; read it on the machine's console, or "
                 "compare ssh-keyscan's answer with the fingerprint ssh-keygen -lf prints there)")


def parse_host_key(value: str) -> str:
    """The host key as pulumi-command pins it: "type base64", parsed, the comment dropped."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    text = value.strip(" ")
    line = _HOST_KEY_LINE.fullmatch(text)
    if not line:
        first = text.split(" ", 1)[0]
        if " " in text and (ip_literal(first) is not None or "." in first or first.startswith("[")):
            raise ValueError(f"{shown(value)} starts with a host name, as ssh-keyscan and known_hosts write it; "
                             "give the key alone: type and base64, like ssh-ed25519 AAAA...")
        raise ValueError(f"{shown(value)} is not {HOST_KEY_FORM}")
    kind, body = line.group(1), line.group(2)
    if kind == "ssh-rsa":
        raise ValueError("an RSA host key cannot be pinned: pulumi-command would ask for ssh-rsa (SHA-1) signatures, "
                         "which OpenSSH refuses since 8.8; give the machine's Ed25519 key "
                         "(/etc/ssh/ssh_host_ed25519_key.pub) or its ECDSA key")
    if kind not in HOST_KEY_TYPES:
        raise ValueError(f"{shown(kind)} is not a host key type kumo-infra can pin; one of {', '.join(HOST_KEY_TYPES)}")
    try:
        key = load_ssh_public_key(f"{kind} {body}".encode())
        # The blob names its own type: a key of one type under another's name is damaged.
        named = base64.b64decode(body)[4:4 + len(kind)].decode("ascii")
    except (ValueError, TypeError, UnicodeDecodeError):  # cryptography raises both for damaged keys
        raise ValueError(f"{shown(value)} does not decode as an OpenSSH {kind} public key; paste the whole line of "
                         "the .pub file") from None
    if named != kind or not isinstance(key, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
        raise ValueError(f"{shown(value)} does not decode as an OpenSSH {kind} public key")
    return f"{kind} {body}"


# -- spool device ------------------------------------------------------------------------------

# A whole disk by its /dev/disk/by-id name, which udev derives from the disk itself (its serial
# number or WWN): the same disk keeps it across reboots and controller changes. /dev/sdX is
# handed out in discovery order and can name another disk after a reboot; by-path names a slot
# (another disk put there takes the name); by-uuid and by-label name a filesystem, which the
# spool's disk does not have yet.
# Only the by-id names systemd's 60-persistent-storage.rules gives a physical or virtual disk
# (wwn-, nvme-, scsi-, ata-, virtio-, cciss-), each derived from the disk's own serial or WWN. Other
# by-id names are refused: dm-name-/dm-uuid- (device mapper: LVM volumes, LUKS, multipath), md-name-/
# md-uuid- (software RAID) and lvm-pv-uuid- name logical devices or their members, which can hold
# data with no signature the bootstrap's blank-disk check would see; usb-, mmc-, memstick-,
# ieee1394- name removable media, pmem- persistent memory: no place for a mail spool.
SPOOL_DEVICE_PREFIXES = ("wwn-", "nvme-", "scsi-", "ata-", "virtio-", "cciss-")
_LOGICAL_DEVICE_PREFIXES = ("dm-name-", "dm-uuid-", "md-name-", "md-uuid-", "lvm-pv-uuid-")
SPOOL_DEVICE_FORM = ("a whole disk's stable name under /dev/disk/by-id/ (like /dev/disk/by-id/wwn-0x5000c500a1b2c3d4 "
                     "or /dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456A)")


def parse_spool_device(value: str) -> str:
    if not re.fullmatch(r"/dev/disk/by-id/[A-Za-z0-9_+:@.-]{1,200}", value, re.ASCII) or "/.." in value \
            or value.endswith("/.") or value == "/dev/disk/by-id/.":
        if re.fullmatch(r"/dev/(sd|vd|xvd|hd)[a-z]+|/dev/nvme[0-9]+n[0-9]+", value, re.ASCII):
            raise ValueError(f"{shown(value)} is handed out in discovery order and can name another disk after a "
                             f"reboot; give its stable name, {SPOOL_DEVICE_FORM}: ls -l /dev/disk/by-id/ on the "
                             "machine shows which one points at it")
        raise ValueError(f"{shown(value)} is not {SPOOL_DEVICE_FORM}")
    if re.search(r"-part[0-9]+$", value):
        raise ValueError(f"{shown(value)} is a partition; the spool takes a whole disk (name it without -partN)")
    name = value.removeprefix("/dev/disk/by-id/")
    if name.startswith(_LOGICAL_DEVICE_PREFIXES):
        raise ValueError(f"{shown(value)} names a logical device (device mapper, LVM or software RAID), which can "
                         "hold data the bootstrap cannot see; give the whole disk's own name, "
                         f"{', '.join(p + '...' for p in SPOOL_DEVICE_PREFIXES)}")
    if not name.startswith(SPOOL_DEVICE_PREFIXES):
        raise ValueError(f"{shown(value)} is not a disk name kumo-infra takes for a spool; give the whole disk's "
                         f"own name, {', '.join(p + '...' for p in SPOOL_DEVICE_PREFIXES)} (removable media and "
                         "logical devices are refused)")
    return value


class SshHost(Strict):
    # Where kumo-infra connects (the SSH server's address or name).
    address: Annotated[str, AfterValidator(parse_address)]
    # The address the internet sees this host's mail come from; the records and the API
    # certificate name it. Default: address, when that is a public IPv4 address.
    public_ip: Optional[Annotated[str, AfterValidator(parse_public_ip)]] = None
    # The node's name (its SMTP banner, A and PTR records, certificate). Default:
    # kumo:deployment.hostname numbered like every target's nodes (mta1.example.com, ...).
    hostname: Optional[Hostname] = None
    user: Annotated[str, USER] = "root"
    port: Annotated[int, BeforeValidator(port_number), Field(ge=1, le=65535)] = 22
    # Required: kumo-infra never trusts a host key on first use.
    host_key: Annotated[str, AfterValidator(parse_host_key)]
    # The address the other hosts reach this one by, in a fleet (several hosts): their TSA publishes and
    # queue transfers go there (the fleet's peer list). Default: address.
    private_address: Optional[Annotated[str, AfterValidator(parse_private_address)]] = None
    # The disk the spool takes, formatted by kumo-bootstrap (a disk holding any filesystem,
    # partition table or RAID signature is refused, never wiped). Unset: a directory on the OS disk.
    spool_device: Optional[Annotated[str, AfterValidator(parse_spool_device)]] = None

    @property
    def mail_address(self) -> Optional[str]:
        """The public IPv4 address mail leaves from: public_ip, else address when it is one."""
        if self.public_ip:
            return self.public_ip
        ip = ip_literal(self.address)
        return str(ip) if isinstance(ip, ipaddress.IPv4Address) and is_public(ip) else None

    @property
    def peer_address(self) -> str:
        """Where the other nodes of a fleet reach this one: private_address, else address."""
        return self.private_address or self.address

    @property
    def endpoint(self) -> str:
        """address:port as an SSH client writes it ([v6]:port)."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"


class SshSection(Strict):
    # One node per host, in this order: node1 is hosts[0].
    hosts: list[SshHost] = Field(min_length=1, max_length=100)
