"""The allowed form of every string in the stack config, shared by the core and every target.

Treat every value as hostile: each string field has one of these, so nothing but the listed
characters ever reaches a file, a command line, Lua or a cloud API. The error shows the
allowed form in words. Pure: no Pulumi, no import of the deployment model (the targets'
section models use these, and kumo_infra.config builds the deployment from the targets).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from .errors import shown

LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# fullmatch everywhere, and ASCII classes: "$" alone also matches before a trailing newline.
HOSTNAME_RE = re.compile(rf"{LABEL}(\.{LABEL})+", re.ASCII)


class Strict(BaseModel):
    """A config section: unknown keys refused (a typo is an error), values frozen once read."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def form(pattern: str, description: str, flags: int = 0) -> AfterValidator:
    """A string validator: the whole value matches ``pattern`` (ASCII), else an error showing ``description``."""
    compiled = re.compile(pattern, re.ASCII | flags)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{shown(value)} is not {description}")
        return value
    return AfterValidator(check)


def hostname(value: str) -> str:
    name = value.lower().rstrip(".") if value.isascii() else value
    if len(name) > 253 or not HOSTNAME_RE.fullmatch(name):
        raise ValueError(f"{shown(value)} is not a fully qualified DNS name (like mta.example.com): "
                         "labels of letters, digits and inner hyphens, each at most 63 characters, 253 in all")
    return name


def host_or_ip(value: str) -> str:
    """A DNS name or an IP address literal (without an IPv6 scope id, which carries any text)."""
    if re.fullmatch(r"[0-9A-Fa-f.:]+", value, re.ASCII):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            pass
    try:
        return hostname(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is neither a fully qualified DNS name (like mx1.example.net) nor an IP "
                         "address (like 192.0.2.25 or 2001:db8::25)") from None


Hostname = Annotated[str, AfterValidator(hostname)]


def network_block(value: str, what: str, largest: int, smallest: int) -> str:
    """A created network's IPv4 address block, within the sizes its cloud accepts."""
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise ValueError(f"{shown(value)} is not a CIDR block (like 10.42.0.0/16)") from None
    if net.version != 4 or not largest <= net.prefixlen <= smallest:
        raise ValueError(f"{shown(value)}: {what} needs an IPv4 block between /{largest} and /{smallest}")
    return str(net)


# A region of a cloud (and the zone forms below, checked against it by each target).
REGION = form(r"[a-z][a-z0-9-]{1,38}[a-z0-9]",
              "a region name of lowercase letters, digits and hyphens (like us-east-1, westeurope or us-central1)")

# GCP resource names (RFC 1035 labels): networks, subnetworks, managed zones.
GCP_NAME = r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?"
GCP_NAME_FORM = "lowercase letters, digits and hyphens, starting with a letter, at most 63 characters"
GCP_PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
GCP_API = r"(?:https://www\.googleapis\.com/compute/(?:v1|beta)/)?"
# Azure resource group names (1-90: letters, digits, _ - . ( ), not ending in a period). Azure also
# accepts non-ASCII letters; kumo-infra takes ASCII only.
AZURE_RG = r"[A-Za-z0-9_.()-]{0,89}[A-Za-z0-9_()-]"
AZURE_RG_FORM = ("an Azure resource group name: 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending "
                 "in '.'")
GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Virtual network names: 2-64 characters; subnet names: 1-80. Letters, digits, '_', '.', '-';
# starting with a letter or digit, ending with a letter, digit or '_'.
AZURE_VNET_ID = (rf"/subscriptions/{GUID}/resourceGroups/{AZURE_RG}/providers/Microsoft\.Network/"
                 r"virtualNetworks/[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_])")
AZURE_SUBNET_ID = rf"{AZURE_VNET_ID}/subnets/[A-Za-z0-9](?:[A-Za-z0-9_.-]{{0,78}}[A-Za-z0-9_])?"
AZURE_ID_EXAMPLE = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/net-rg/providers/"
                    "Microsoft.Network/virtualNetworks/net")


# Azure accepts RSA keys of 2048 bits or more and Ed25519 keys ("Supported SSH key formats",
# learn.microsoft.com/azure/virtual-machines/linux/create-ssh-keys-detailed); ECDSA is refused there.
# The comment is kept (it names the key in authorized_keys) but only of plain words: Azure's
# agent writes it into a file on the machine, so no quotes, '$', ';' or control characters.
SSH_KEY_LINE = re.compile(r"(ssh-ed25519|ssh-rsa) (AAAA[A-Za-z0-9+/]+={0,2})"
                          r"(?: ((?=.{1,100}$)[A-Za-z0-9._@+=:,-]+(?: [A-Za-z0-9._@+=:,-]+)*))?", re.ASCII)
SSH_KEY_FORM = ("an OpenSSH public key on one line: ssh-ed25519 AAAA... or ssh-rsa AAAA... (2048 bits or more), "
                "optionally followed by a comment of up to 100 letters, digits, spaces and . _ @ + = : , - "
                "(the contents of ~/.ssh/id_ed25519.pub)")


def ssh_public_key(value: str) -> str:
    """The key as it is written to authorized_keys: parsed, so only a real key (and a plain comment) passes."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    line = SSH_KEY_LINE.fullmatch(value.strip(" "))
    if not line:
        raise ValueError(f"{shown(value)} is not {SSH_KEY_FORM}")
    kind, body, comment = line.groups()
    try:
        key = load_ssh_public_key(f"{kind} {body}".encode())
    except (ValueError, TypeError):  # cryptography raises both for damaged keys
        raise ValueError(f"{shown(value)} does not decode as an OpenSSH {kind} public key; paste the whole line "
                         "of the .pub file") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ValueError(f"the RSA key has {key.key_size} bits; Azure needs 2048 or more (ssh-keygen -t ed25519 "
                         "makes a better one)")
    if not isinstance(key, (rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise ValueError(f"{shown(value)} is not {SSH_KEY_FORM}")
    return " ".join(p for p in (kind, body, comment) if p)


def numbered_hostname(hostname: str, index: int, count: int) -> str:
    """mta.example.com for one node; mta1.example.com, mta2... (index 0, 1 ...) for several."""
    if count == 1:
        return hostname
    first, _, rest = hostname.partition(".")
    return f"{first}{index + 1}.{rest}"
