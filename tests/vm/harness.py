"""Boot a real Debian 12 VM under qemu to prove rendered cloud-init user-data.

The pieces, in the order a test uses them:

* :func:`build_rootfs` debootstraps a cloud-image-like Debian 12 root
  filesystem once and caches it (with its kernel and initrd) outside the repo;
* :func:`build_standin_kumomta_deb` builds a small stand-in of the kumomta
  .deb, because KumoMTA's repository cannot be reached from the test machines;
* :class:`AptMirror` lays the .debs out like openrepo.kumomta.com and serves
  them on the host's loopback;
* :class:`Vm` boots a throwaway copy-on-write VM with a NoCloud seed, NVMe
  disks and a network that cannot reach anything but the mirror.

Network safety: the guest's only network is qemu's user network with
``restrict=on``; the only ways in or out are the ``guestfwd`` to the mirror and
``hostfwd`` ports bound on the host's 127.0.0.1. Keep it that way.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import http.client
import http.server
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

# --------------------------------------------------------------------------
# Host requirements
# --------------------------------------------------------------------------

#: Debian packages the host (CI) must install; the harness never installs them.
REQUIRED_DEBIAN_PACKAGES: list[str] = [
    "debootstrap",  # build the guest root filesystem
    "qemu-system-x86",  # qemu-system-x86_64
    "qemu-utils",  # qemu-img, for the copy-on-write overlay
    "genisoimage",  # the NoCloud seed ISO
    "e2fsprogs",  # mkfs.ext4 -d turns the root filesystem into a disk image
    "dpkg",  # dpkg-deb builds the stand-in package (essential, listed for clarity)
    "apt-utils",  # apt-ftparchive writes Packages and Release
    "gnupg",  # throwaway key that signs the mirror's InRelease
    "lua5.4",  # luac5.4, so the stand-in kumod --validate checks syntax on the host
    "xfsprogs",  # mkfs.xfs: the foreign XFS disk the spool must never touch
]

# Executables needed to build and boot, with the package that provides each.
_HOST_TOOLS: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "genisoimage": "genisoimage",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "dpkg-deb": "dpkg",
    "apt-ftparchive": "apt-utils",
    "gpg": "gnupg",
    "gpgconf": "gnupg",
    "mkfs.xfs": "xfsprogs",
}

#: Where the guest reaches the host's mirror: qemu's guestfwd answers here.
GUEST_MIRROR_URL = "http://10.0.2.100"
_GUEST_MIRROR_ADDR = ("10.0.2.100", 80)

# --------------------------------------------------------------------------
# Guest root filesystem
# --------------------------------------------------------------------------

DEBIAN_SUITE = "bookworm"

#: What the guest image holds: what a Debian 12 cloud image has that a
#: bootstrap may rely on. Changing it (or _IMAGE_RECIPE) rebuilds the cache.
# fmt: off
GUEST_PACKAGES: tuple[str, ...] = (
    # boot, init and cloud-init
    "systemd", "systemd-sysv", "udev", "dbus", "cloud-init", "linux-image-cloud-amd64",
    "kmod", "qemu-guest-agent",
    # network (Debian 12 cloud images use ifupdown + dhclient); time sync as on a cloud image
    "ifupdown", "isc-dhcp-client", "netbase", "iproute2", "iptables", "systemd-timesyncd",
    # storage
    "xfsprogs", "e2fsprogs", "mdadm", "nvme-cli", "fdisk",
    # fetching and verifying packages
    "curl", "wget", "ca-certificates", "gnupg",
    # python3-cffi-backend: without it debootstrap cannot configure
    # python3-cryptography (a virtual dependency it does not resolve)
    "python3", "python3-cffi-backend",
    # everyday tools of a cloud image
    "procps", "sudo", "lsb-release", "openssh-server", "logrotate", "cron", "less",
    # locales: without it cloud-init's locale module fails (update-locale
    # en_US.UTF-8) and `cloud-init status` reports an error on every boot
    "locales",
    # lua5.4: so a bootstrap can syntax-check a rendered policy with luac5.4
    "lua5.4",
)
# fmt: on

#: Packages the bootstrap installs from a repository (automatic OS updates), left out
#: of the image on purpose: their .debs (with every dependency the image lacks) are
#: downloaded when the image is built and served by the test mirror, so the guest
#: installs them the way a node does.
OS_UPDATE_PACKAGES: tuple[str, ...] = ("unattended-upgrades",)

# Bump when the customisation in _customise_rootfs changes: it is hashed into
# the cache key together with the package list.
_IMAGE_RECIPE = "kumo-vm-image-v3"
_DISK_SIZE = "4G"
_CACHE_ENV = "KUMO_VM_CACHE"
_DEFAULT_CACHE = Path("/var/cache/kumo-infra-vm")
_DEBIAN_MIRROR_ENV = "KUMO_VM_DEBIAN_MIRROR"
_DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"

# A machine kumo-bootstrap accepts: its machine step refuses under 4 GiB of memory or a root
# filesystem under 20 GB. The root disk is a sparse overlay, grown by cloud-init at boot.
MACHINE_MEMORY_MB = 4096
MACHINE_ROOT_DISK = "24G"

# The virtio NIC is pinned to this PCI slot so the guest always names it
# ens<slot> (systemd's predictable naming from the ACPI slot number).
_NIC_PCI_SLOT = 3
GUEST_NIC_NAME = f"ens{_NIC_PCI_SLOT}"


class VmHarnessError(RuntimeError):
    """The harness could not build or run something (not a guest test failure)."""


@dataclasses.dataclass(frozen=True)
class RootImage:
    """A cached, read-only guest image: boot it through :class:`Vm`."""

    directory: Path
    disk: Path  # raw ext4 image of the whole root filesystem (/dev/vda)
    kernel: Path
    initrd: Path
    key: str
    packages: tuple[str, ...]

    @property
    def os_update_debs(self) -> list[Path]:
        """The .debs of OS_UPDATE_PACKAGES and their missing dependencies (for the mirror)."""
        return sorted((self.directory / "os-update-debs").glob("*.deb"))


def cache_root() -> Path:
    return Path(os.environ.get(_CACHE_ENV) or _DEFAULT_CACHE)


def _image_key(packages: Sequence[str], mirror: str) -> str:
    material = json.dumps(
        {
            "recipe": _IMAGE_RECIPE,
            "suite": DEBIAN_SUITE,
            "packages": sorted(packages),
            "os_update_packages": sorted(OS_UPDATE_PACKAGES),
            "mirror": mirror,
            "disk": _DISK_SIZE,
        },
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()[:16]


def _image_from_dir(directory: Path, key: str, packages: Sequence[str]) -> RootImage:
    return RootImage(
        directory=directory,
        disk=directory / "disk.img",
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        key=key,
        packages=tuple(packages),
    )


def _cached_image(cache_dir: Path, packages: Sequence[str], mirror: str) -> RootImage | None:
    key = _image_key(packages, mirror)
    directory = cache_dir / f"rootfs-{key}"
    # The directory only appears through the final rename, so existing means complete.
    if (directory / "manifest.json").is_file():
        return _image_from_dir(directory, key, packages)
    return None


def why_vm_cannot_run() -> str | None:
    """Why the VM tests cannot run on this host (their skip reason), or None."""
    if os.environ.get("KUMO_SKIP_VM_TESTS"):
        return "KUMO_SKIP_VM_TESTS is set"
    if sys.platform != "linux":
        return "VM tests need a Linux host"
    missing = sorted({pkg for tool, pkg in _HOST_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        return "missing host packages: " + " ".join(missing)
    mirror = os.environ.get(_DEBIAN_MIRROR_ENV, _DEFAULT_DEBIAN_MIRROR)
    if _cached_image(cache_root(), GUEST_PACKAGES, mirror) is None and os.geteuid() != 0:
        return f"no cached guest image under {cache_root()} and building one needs root"
    return None


def _run(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command; failures carry its output, which is what one needs to debug."""
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise VmHarnessError(
            f"{' '.join(map(str, argv))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            # Field 5 is the mount point, with spaces etc. octal-escaped.
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    return mounts


def _remove_build_dir(path: Path) -> None:
    """Remove a (possibly interrupted) build directory.

    An interrupted debootstrap can leave /proc, /sys or /dev/pts mounted inside
    the target; deleting through those would be a disaster, so unmount first
    and refuse to delete if anything is still mounted.
    """
    if not path.exists():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise VmHarnessError(f"cannot remove {path}: still has mounts {_mounts_under(path)}")
    shutil.rmtree(path)


def build_rootfs(cache_dir: Path | None = None) -> RootImage:
    """Return the cached guest image, building it first if needed (needs root).

    The build happens in a temporary directory next to the final one and is
    renamed into place at the end, so an interrupted build is never reused. A
    lock file serialises concurrent pytest sessions (or xdist workers).
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    mirror = os.environ.get(_DEBIAN_MIRROR_ENV, _DEFAULT_DEBIAN_MIRROR)
    packages = GUEST_PACKAGES
    cached = _cached_image(cache_dir, packages, mirror)
    if cached is not None:
        return cached

    if os.geteuid() != 0:
        raise VmHarnessError("building the guest image (debootstrap) needs root")
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _image_key(packages, mirror)
    with open(cache_dir / f".lock-{key}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cached = _cached_image(cache_dir, packages, mirror)
        if cached is not None:  # another process built it while we waited
            return cached
        # Holding the lock, any leftover temp dir for this key is from a dead build.
        for stale in cache_dir.glob(f".build-{key}-*"):
            _remove_build_dir(stale)
        build = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=cache_dir))
        try:
            _build_image_into(build, packages, mirror, cache_dir / "debootstrap-archives")
            final = cache_dir / f"rootfs-{key}"
            os.rename(build, final)
        finally:
            _remove_build_dir(build)
    return _image_from_dir(final, key, packages)


def _build_image_into(build: Path, packages: Sequence[str], mirror: str, archives: Path) -> None:
    rootfs = build / "rootfs"
    archives.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            f"--cache-dir={archives.resolve()}",
            DEBIAN_SUITE,
            rootfs,
            mirror,
        ]
    )
    _download_os_update_debs(rootfs, build / "os-update-debs")
    _customise_rootfs(rootfs)

    boot = rootfs / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise VmHarnessError(f"no kernel/initrd in {boot}: {sorted(os.listdir(boot))}")
    shutil.copyfile(kernels[-1], build / "vmlinuz")
    shutil.copyfile(initrds[-1], build / "initrd.img")

    _run(["mkfs.ext4", "-q", "-F", "-L", "kumo-root", "-d", rootfs, build / "disk.img", _DISK_SIZE])
    _remove_build_dir(rootfs)
    for artefact in ("vmlinuz", "initrd.img", "disk.img"):
        # Readable by anyone so non-root test runs can boot the cached image.
        (build / artefact).chmod(0o644)
    build.chmod(0o755)
    manifest = {
        "recipe": _IMAGE_RECIPE,
        "suite": DEBIAN_SUITE,
        "mirror": mirror,
        "packages": list(packages),
        "kernel": kernels[-1].name,
        "build_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (build / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _download_os_update_debs(rootfs: Path, out: Path) -> None:
    """Download OS_UPDATE_PACKAGES and exactly the dependencies the image lacks.

    apt inside the fresh root filesystem (still pointed at the Debian mirror
    debootstrap used) resolves them against what is installed there.
    """
    archives = rootfs / "var/cache/apt/archives"
    for stale in archives.glob("*.deb"):
        stale.unlink()
    _run(["chroot", rootfs, "apt-get", "update", "-q"])
    _run(["chroot", rootfs, "apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends",
          *OS_UPDATE_PACKAGES])
    out.mkdir()
    debs = sorted(archives.glob("*.deb"))
    if not any(d.name.startswith(f"{name}_") for name in OS_UPDATE_PACKAGES for d in debs):
        raise VmHarnessError(f"apt downloaded no {OS_UPDATE_PACKAGES} into {archives}: {debs}")
    for deb in debs:
        shutil.move(deb, out / deb.name)
        (out / deb.name).chmod(0o644)
    out.chmod(0o755)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _customise_rootfs(rootfs: Path) -> None:
    """Turn a debootstrap tree into something that boots like a cloud image."""
    _write(rootfs / "etc/fstab", "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
    _write(rootfs / "etc/hostname", "debian\n")
    _write(rootfs / "etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")

    # Only NoCloud exists here; without this list cloud-init probes every
    # cloud's metadata service first, which costs minutes under TCG.
    _write(
        rootfs / "etc/cloud/cloud.cfg.d/90_kumo_vm_datasource.cfg",
        "# kumo-infra VM tests: the seed ISO is the only datasource.\ndatasource_list: [ NoCloud, None ]\n",
    )

    # No network config is baked in: like a cloud image, cloud-init's fallback
    # config (DHCP on the first NIC) is rendered to ifupdown's interfaces.d,
    # and a seed network-config (Vm(network_config=...)) can still override it.
    _write(
        rootfs / "etc/network/interfaces",
        "# kumo-infra VM test image; cloud-init writes interfaces.d/50-cloud-init\n"
        "source /etc/network/interfaces.d/*\n\n"
        "auto lo\niface lo inet loopback\n",
    )

    # Generate and set cloud-init's default locale at build time: it then finds
    # nothing to do, instead of running locale-gen at every first boot (slow
    # under TCG).
    _write(rootfs / "etc/locale.gen", "en_US.UTF-8 UTF-8\n")
    _run(["chroot", rootfs, "locale-gen"])
    _write(rootfs / "etc/default/locale", "LANG=en_US.UTF-8\n")

    # The guest cannot reach deb.debian.org: an empty sources.list means
    # apt-get update only sees the repositories a bootstrap adds itself.
    _write(
        rootfs / "etc/apt/sources.list",
        "# kumo-infra VM tests: no Debian mirror is reachable from this guest.\n",
    )
    for directory in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for entry in (rootfs / directory).iterdir():
            if entry.is_file():
                entry.unlink()

    # qemu-guest-agent is started by udev when the virtio port appears
    # (Debian's unit is static); fail the build if that wiring ever changes.
    rules = list((rootfs / "usr/lib/udev/rules.d").glob("*qemu-guest-agent*")) + list(
        (rootfs / "lib/udev/rules.d").glob("*qemu-guest-agent*")
    )
    if not rules:
        raise VmHarnessError("qemu-guest-agent's udev rule is missing from the image")


# --------------------------------------------------------------------------
# Stand-in kumomta package
# --------------------------------------------------------------------------

_STANDIN_DIR = Path(__file__).resolve().parent / "standin"


def build_standin_kumomta_deb(out_dir: Path, version: str = "2026.11.01-standin", package: str = "kumomta") -> Path:
    """Build a stand-in kumomta (or kumomta-dev) .deb and return its path.

    It mirrors upstream's package (assets/build-deb.sh): kumod account and
    directories created by preinst only when absent, init.lua copied only when
    absent, units enabled but not started, Conflicts with the other channel.
    """
    if package not in ("kumomta", "kumomta-dev"):
        raise ValueError(f"package must be kumomta or kumomta-dev, not {package!r}")
    conflicts = "kumomta-dev" if package == "kumomta" else "kumomta"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="kumo-standin-") as tmp:
        tree = Path(tmp) / "pkg"
        layout = {
            "opt/kumomta/sbin/kumod": ("kumod", 0o755),
            "opt/kumomta/sbin/tsa-daemon": ("tsa-daemon", 0o755),
            "opt/kumomta/share/minimal-init.lua": ("minimal-init.lua", 0o644),
            "opt/kumomta/share/minimal-tsa_init.lua": ("minimal-tsa_init.lua", 0o644),
            "usr/lib/systemd/system/kumomta.service": ("kumomta.service", 0o644),
            "usr/lib/systemd/system/kumo-tsa-daemon.service": ("kumo-tsa-daemon.service", 0o644),
            "DEBIAN/preinst": ("preinst", 0o755),
            "DEBIAN/postinst": ("postinst", 0o755),
            "DEBIAN/prerm": ("prerm", 0o755),
            "DEBIAN/postrm": ("postrm", 0o755),
        }
        for target, (source, mode) in layout.items():
            _write(tree / target, (_STANDIN_DIR / source).read_text(), mode)
        (tree / "opt/kumomta/share/policy-extras").mkdir(parents=True)
        _write(
            tree / "DEBIAN/control",
            f"Package: {package}\n"
            f"Conflicts: {conflicts}\n"
            f"Version: {version}\n"
            "Architecture: all\n"
            "Maintainer: kumo-infra tests <kumo-infra@invalid>\n"
            "Section: utils\n"
            "Priority: optional\n"
            "Depends: python3\n"
            "Homepage: https://github.com/KumoCorp/kumomta\n"
            "Description: Stand-in for KumoMTA (kumo-infra VM tests only)\n"
            " Mirrors the real package's layout, maintainer scripts and units;\n"
            " kumod is a small python3 script, not an MTA.\n",
        )
        for directory in [tree, *tree.rglob("*")]:
            if directory.is_dir():
                directory.chmod(0o755)
        deb = out_dir / f"{package}_{version}_all.deb"
        # --root-owner-group: root:root in the package even when built unprivileged.
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", tree, deb])
    return deb


# --------------------------------------------------------------------------
# Local apt repository laid out like openrepo.kumomta.com
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MirrorRequest:
    method: str
    path: str
    status: int


def generate_signing_key(gnupg_home: Path, name: str = "kumo-infra test mirror") -> str:
    """Make an ed25519 signing key in ``gnupg_home`` (a throwaway keyring) and return its fingerprint."""
    gnupg_home.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "GNUPGHOME": str(gnupg_home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    uid = f"{name} <mirror@kumo-infra.invalid>"
    try:
        _run([*gpg, "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env)
        listing = _run([*gpg, "--with-colons", "--fingerprint", uid], env=env).stdout
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


class AptMirror:
    """A signed apt repository on 127.0.0.1, laid out like KumoMTA's openrepo.

    Layout (upstream's: the dev channel in ``kumomta-ubuntu-22``, the stable one in
    ``kumomta-ubuntu-22-stable``, suite ``stable``, component ``main``; the signing key as
    ``public.gpg``)::

        kumomta-ubuntu-22{,-stable}/public.gpg
        kumomta-ubuntu-22{,-stable}/dists/stable/{InRelease,Release,Release.gpg,main/binary-amd64/Packages[.gz]}
        kumomta-ubuntu-22{,-stable}/pool/main/*.deb
        files/kumomta-ubuntu22.list      (both repositories, for hand-written user-data)

    ``kumomta`` goes to the stable repository, ``kumomta-dev`` to the dev one, and the
    ``extra_debs`` (Debian packages a bootstrap installs, like unattended-upgrades) to both.
    Everything is signed with one throwaway key whose fingerprint is ``fingerprint``.

    The guest reaches it at :data:`GUEST_MIRROR_URL` through qemu's guestfwd:
    pass ``mirror.port`` to :class:`Vm`. Every request is recorded in
    ``requests``; :meth:`stop` stops answering (a "mirror unreachable" test) and
    :meth:`serve_again` answers again on the same port.
    """

    repo_name = "kumomta-ubuntu-22"
    list_name = "kumomta-ubuntu22.list"
    suite = "stable"
    component = "main"

    def __init__(self, debs: Iterable[Path], guest_base_url: str = GUEST_MIRROR_URL,
                 extra_debs: Iterable[Path] = ()) -> None:
        self.debs = [Path(d) for d in debs]
        self.extra_debs = [Path(d) for d in extra_debs]
        self.guest_base_url = guest_base_url.rstrip("/")
        self.requests: list[MirrorRequest] = []
        self.fingerprint = ""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.root = Path()
        self.port = 0

    # Where the guest fetches things, for user-data written by hand.
    @property
    def key_url(self) -> str:
        return f"{self.guest_base_url}/{self.repo_name}/public.gpg"

    @property
    def list_url(self) -> str:
        return f"{self.guest_base_url}/files/{self.list_name}"

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def repo_dir(self) -> Path:
        """The stable channel's repository (where ``kumomta`` is)."""
        return self.root / f"{self.repo_name}-stable"

    @property
    def dev_repo_dir(self) -> Path:
        return self.root / self.repo_name

    def __enter__(self) -> Self:
        self._tmp = tempfile.TemporaryDirectory(prefix="kumo-mirror-")
        try:
            self.root = Path(self._tmp.name) / "www"
            self._build(Path(self._tmp.name) / "gnupg")
            self._serve()
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _build(self, gnupg_home: Path) -> None:
        # A throwaway key in its own GNUPGHOME: nothing touches the user's keyring.
        self.fingerprint = generate_signing_key(gnupg_home)
        env = {**os.environ, "GNUPGHOME": str(gnupg_home)}
        gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
        stable = [d for d in self.debs if not d.name.startswith("kumomta-dev_")]
        dev = [d for d in self.debs if d.name.startswith("kumomta-dev_")]
        try:
            armored = _run([*gpg, "--armor", "--export", self.fingerprint], env=env).stdout
            for repo, debs in ((self.repo_dir, stable), (self.dev_repo_dir, dev)):
                self._build_repo(repo, [*debs, *self.extra_debs], gpg, env)
                (repo / "public.gpg").write_text(armored)
        finally:
            # gpg left an agent running for this GNUPGHOME; stop exactly that one.
            subprocess.run(["gpgconf", "--kill", "all"], env=env, check=False, capture_output=True)

        files = self.root / "files"
        files.mkdir()
        (files / self.list_name).write_text("".join(
            f"deb [signed-by=/usr/share/keyrings/kumomta.gpg] {self.guest_base_url}/{name}/ {self.suite} "
            f"{self.component}\n" for name in (self.repo_name, f"{self.repo_name}-stable")))

    def _build_repo(self, repo: Path, debs: list[Path], gpg: list[str], env: dict[str, str]) -> None:
        pool = repo / "pool" / self.component
        pool.mkdir(parents=True)
        for deb in debs:
            shutil.copy2(deb, pool / deb.name)
        index_dir = repo / "dists" / self.suite / self.component / "binary-amd64"
        index_dir.mkdir(parents=True)
        # Run from the repository root so Filename: fields are relative to it.
        packages = _run(["apt-ftparchive", "packages", "pool"], cwd=repo).stdout
        (index_dir / "Packages").write_text(packages)
        with gzip.open(index_dir / "Packages.gz", "wt") as handle:
            handle.write(packages)
        dist = repo / "dists" / self.suite
        release = _run(
            [
                "apt-ftparchive",
                "-o",
                "APT::FTPArchive::Release::Origin=kumo-infra-test",
                "-o",
                "APT::FTPArchive::Release::Label=kumomta-standin",
                "-o",
                f"APT::FTPArchive::Release::Suite={self.suite}",
                "-o",
                f"APT::FTPArchive::Release::Codename={self.suite}",
                "-o",
                "APT::FTPArchive::Release::Architectures=amd64",
                "-o",
                f"APT::FTPArchive::Release::Components={self.component}",
                "release",
                ".",
            ],
            cwd=dist,
        ).stdout
        (dist / "Release").write_text(release)
        _run([*gpg, "--yes", "--local-user", self.fingerprint, "--clearsign", "-o", dist / "InRelease",
              dist / "Release"], env=env)
        _run([*gpg, "--yes", "--local-user", self.fingerprint, "-abs", "-o", dist / "Release.gpg", dist / "Release"],
             env=env)

    def _serve(self) -> None:
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(mirror.root), **kwargs)

            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                try:
                    status = int(code)  # an HTTPStatus or an int
                except ValueError:
                    status = 0
                mirror.requests.append(MirrorRequest(self.command or "", self.path, status))

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded above; keep pytest output clean

        # Port 0 the first time; the same port again after stop() (serve_again).
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="kumo-apt-mirror", daemon=True)
        self._thread.start()

    def serve_again(self) -> None:
        """Answer again, on the same port (a VM's guestfwd points at it), after :meth:`stop`."""
        if self._server is None:
            self._serve()

    def stop(self) -> None:
        """Stop answering: the guest then sees connections to the mirror fail."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def served(self, name: str, status: int = 200) -> list[MirrorRequest]:
        """Requests whose path ends with ``name`` and that got ``status``."""
        return [r for r in self.requests if r.path.endswith(name) and r.status == status]


# --------------------------------------------------------------------------
# The VM
# --------------------------------------------------------------------------

# qemu's guestfwd spawns this for every guest connection to the mirror address,
# with the connection on stdin/stdout. A chardev target ("-tcp:host:port") is
# connected once, when qemu starts; "cmd:" connects per guest connection, so apt
# can open several and AptMirror.stop() makes later ones fail.
_GUESTFWD_PROXY = r"""
import os, select, socket, sys
try:
    upstream = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
except OSError:
    sys.exit(1)  # the guest sees the connection close: "mirror unreachable"
upstream.settimeout(None)
open_ends = {0: upstream.fileno(), upstream.fileno(): 1}
while open_ends:
    ready, _, _ = select.select(list(open_ends), [], [])
    for fd in ready:
        data = os.read(fd, 65536)
        if data:
            os.write(open_ends[fd], data)
            continue
        target = open_ends.pop(fd)
        if target == 1:
            os.close(1)
        else:
            upstream.shutdown(socket.SHUT_WR)
"""


def _free_port() -> int:
    # Racy by nature (another process may take it before qemu binds), but qemu
    # fails loudly in that case and Vm reports its stderr.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _size_bytes(size: int | str) -> int:
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"(\d+)([KMGT]?)", size.strip().upper())
    if not match:
        raise ValueError(f"bad size {size!r}")
    exponent = " KMGT".index(match.group(2) or " ")
    return int(match.group(1)) * (1 << (10 * exponent))


def make_xfs_disk(path: Path, files: dict[str, bytes], label: str, size: str = "512M") -> Path:
    """A raw disk image holding an XFS filesystem (no partition table) with ``files`` in its root.

    Built unprivileged with mkfs.xfs's prototype file (-p): no loop device, no mount.
    """
    path = Path(path)
    content = path.parent / f"{path.name}.content"
    content.mkdir()
    proto = ["kumo-infra", "0 0", "d--755 0 0"]
    for name, data in files.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError(f"file name {name!r}: letters, digits, '.', '_' and '-' only")
        (content / name).write_bytes(data)
        proto.append(f"{name} ---644 0 0 {content / name}")
    proto.append("$")
    (content / "proto").write_text("\n".join(proto) + "\n")
    with open(path, "wb") as handle:
        handle.truncate(_size_bytes(size))
    _run(["mkfs.xfs", "-q", "-L", label, "-p", content / "proto", path])
    shutil.rmtree(content)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# A machine that already exists, reached over SSH (the ssh target)
# --------------------------------------------------------------------------

# qemu's restricted user network hands out no router by DHCP; every cloud does, and so does a
# machine in a rack. A static address with qemu's gateway gives the guest a default route
# (restrict=on still drops every packet that would leave qemu).
STATIC_NETWORK_CONFIG = f"""version: 1
config:
  - type: physical
    name: {GUEST_NIC_NAME}
    subnets:
      - type: static
        address: 10.0.2.15/24
        gateway: 10.0.2.2
"""


@dataclasses.dataclass(frozen=True)
class SshKeyPair:
    """An ed25519 key made for one test session: never written anywhere but the guest's seed."""

    private_openssh: str  # "-----BEGIN OPENSSH PRIVATE KEY-----\n..."
    public_line: str  # "ssh-ed25519 AAAA... comment": an authorized_keys / known_hosts key

    @property
    def public_key(self) -> str:
        """The key without its comment: "ssh-ed25519 AAAA..."."""
        return " ".join(self.public_line.split()[:2])


def generate_ssh_key(comment: str) -> SshKeyPair:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return SshKeyPair(private, f"{public} {comment}")


def existing_machine_user_data(host_key: SshKeyPair, authorized_key: str, user: str = "root") -> str:
    """Cloud-config that turns the image into "a machine that already exists": sshd with exactly
    ``host_key`` (the image's own keys are deleted, none generated) and ``authorized_key`` for
    ``user`` (root, or an account with passwordless sudo, as an operator's admin account has).
    Nothing of kumo-infra is on it: the ssh target brings everything over SSH."""
    import yaml  # a test dependency already (pyyaml)

    doc: dict[str, Any] = {
        # The image's keys are deleted; ours is the only ed25519 key, so none is generated.
        "ssh_deletekeys": True,
        "ssh_genkeytypes": ["ed25519"],
        "ssh_keys": {"ed25519_private": host_key.private_openssh, "ed25519_public": host_key.public_line},
        "ssh_pwauth": False,
        "disable_root": False,
        # The machine resolves its own name (sudo otherwise waits for DNS on every call).
        "manage_etc_hosts": True,
    }
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
        raise ValueError(f"user {user!r}")
    account: dict[str, Any] = {"name": user, "lock_passwd": True, "ssh_authorized_keys": [authorized_key.strip()]}
    if user != "root":
        account.update(shell="/bin/bash", sudo="ALL=(ALL) NOPASSWD:ALL")
    doc["users"] = [account]  # and no other: not the image's default account
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False, width=1000)


class ExistingMachine:
    """A booted guest standing in for a machine that already exists, reached over SSH.

    Per instance: a fresh ed25519 host key (given to the guest's sshd through cloud-init, the
    image's own keys deleted) and a fresh client key authorized for ``user``. qemu forwards
    ``127.0.0.1:ssh_port`` to the guest's port 22 (and ``vm.smtp_port`` to 25); nothing else
    reaches it. Entering waits until sshd presents exactly ``host_key`` and cloud-init has
    finished, so the machine is idle when a test starts using it.
    """

    def __init__(self, image: RootImage, *, user: str = "root", hostname: str = "kumo-machine",
                 mirror_port: int | None = None, memory_mb: int = MACHINE_MEMORY_MB,
                 root_disk_size: str | None = MACHINE_ROOT_DISK,
                 nvme_sizes: Sequence[int | str] = (), boot_timeout: float = 900.0) -> None:
        self.user = user
        self.host_key = generate_ssh_key(f"root@{hostname}")
        self.client_key = generate_ssh_key("kumo-infra-vm-test")
        self.boot_timeout = boot_timeout
        self.vm = Vm(image, existing_machine_user_data(self.host_key, self.client_key.public_line, user),
                     hostname=hostname, network_config=STATIC_NETWORK_CONFIG, mirror_port=mirror_port,
                     nvme_sizes=nvme_sizes, memory_mb=memory_mb, root_disk_size=root_disk_size,
                     extra_forwards={22: 0})

    @property
    def ssh_port(self) -> int:
        return self.vm.forwarded_ports[22]

    @property
    def host_key_line(self) -> str:
        """The guest's host key as its /etc/ssh/ssh_host_ed25519_key.pub holds it."""
        return self.host_key.public_line

    @property
    def private_key(self) -> str:
        """The client's private key (OpenSSH form), authorized for ``user``."""
        return self.client_key.private_openssh

    def __enter__(self) -> Self:
        from .remote_command import wait_for_host_key

        self.vm.__enter__()
        try:
            wait_for_host_key("127.0.0.1", self.ssh_port, self.host_key_line, self.boot_timeout,
                              is_alive=lambda: self.vm.running)
            self.vm.exec(["cloud-init", "status", "--wait"], timeout=self.boot_timeout, check=True)
        except BaseException:
            self.vm.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.vm.__exit__(exc_type, exc, tb)


class GuestAgentError(VmHarnessError):
    """qemu-guest-agent answered with an error or not at all."""


class _GuestAgent:
    """Minimal qemu-guest-agent client: one connection per command.

    Each call resynchronises with guest-sync-delimited, so replies left over
    from an earlier, timed-out connection cannot be mistaken for ours.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.path))
            buffer = bytearray()

            def read_until(delimiter: bytes) -> bytes:
                while delimiter not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise GuestAgentError("guest agent closed the connection")
                    buffer.extend(chunk)
                index = buffer.index(delimiter) + len(delimiter)
                data = bytes(buffer[:index])
                del buffer[:index]
                return data

            sync_id = random.randrange(1, 2**31)
            # A leading 0xFF resets the agent's JSON parser after any junk.
            sock.sendall(
                b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}).encode() + b"\n"
            )
            while True:
                read_until(b"\xff")  # the agent prefixes its sync reply with 0xFF
                reply = json.loads(read_until(b"\n"))
                if reply.get("return") == sync_id:
                    break
            message: dict[str, Any] = {"execute": command}
            if arguments is not None:
                message["arguments"] = arguments
            sock.sendall(json.dumps(message).encode() + b"\n")
            reply = json.loads(read_until(b"\n"))
        if "error" in reply:
            raise GuestAgentError(f"{command}: {reply['error']}")
        return reply.get("return")


class Vm:
    """A throwaway qemu VM booted from a cached :class:`RootImage`.

    Usage::

        with Vm(image, user_data, mirror_port=mirror.port) as vm:
            vm.wait_for_console("KUMO-DONE", timeout=600)
            assert vm.smtp_banner().startswith("220")

    The root disk is a qcow2 overlay on the cached image, so the cache is never
    written. ``nvme_sizes`` gives one NVMe namespace per entry (serials
    ``kumonvme0``, ``kumonvme1``, ...), each backed by a sparse file;
    ``extra_disks`` attaches disk images the caller prepared (and keeps, to
    inspect afterwards) as further NVMe namespaces (``kumoextra0``, ...). The guest
    can reach only the mirror (``http://10.0.2.100`` via guestfwd); the host
    reaches the guest's ports 25 and 8000 at ``127.0.0.1:smtp_port`` and
    ``127.0.0.1:http_port`` (and each port of ``extra_forwards`` at
    ``127.0.0.1:forwarded_ports[port]``). ``root_disk_size`` makes the root disk larger
    than the image (sparse; cloud-init grows the filesystem). Every file lives in a temporary directory removed
    on exit unless ``keep=True`` (or KUMO_VM_KEEP=1) for debugging.
    """

    def __init__(
        self,
        image: RootImage,
        user_data: str,
        *,
        hostname: str = "kumo-test",
        instance_id: str | None = None,
        network_config: str | None = None,
        mirror_port: int | None = None,
        nvme_sizes: Sequence[int | str] = ("2G",),
        extra_disks: Sequence[Path] = (),
        memory_mb: int = MACHINE_MEMORY_MB,
        cpus: int = 2,
        extra_forwards: dict[int, int] | None = None,
        extra_kernel_args: Sequence[str] = (),
        root_disk_size: int | str | None = MACHINE_ROOT_DISK,
        keep: bool = False,
        work_dir: Path | None = None,
    ) -> None:
        self.image = image
        self.user_data = user_data
        self.hostname = hostname
        self.instance_id = instance_id or f"i-kumo-{uuid.uuid4().hex[:12]}"
        self.network_config = network_config
        self.mirror_port = mirror_port
        self.nvme_sizes = list(nvme_sizes)
        self.extra_disks = [Path(d) for d in extra_disks]
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.extra_forwards = dict(extra_forwards or {})
        self.extra_kernel_args = list(extra_kernel_args)
        self.root_disk_size = root_disk_size
        self.keep = keep or os.environ.get("KUMO_VM_KEEP") == "1"
        self._work_parent = work_dir or (
            Path(os.environ["KUMO_VM_WORKDIR"]) if os.environ.get("KUMO_VM_WORKDIR") else None
        )
        self.work_dir = Path()
        self.console_log = Path()
        self.smtp_port = 0
        self.http_port = 0
        #: guest port -> host loopback port, for extra_forwards
        self.forwarded_ports: dict[int, int] = {}
        #: (guest-side address, port) -> host loopback port: what the guest reaches there is that
        #: host port (a guestfwd, as for the mirror; restrict=on lets the guest reach nothing else)
        self.guest_forwards: dict[tuple[str, int], int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._agent: _GuestAgent | None = None
        self._agent_ready = False

    # ---- lifecycle -----------------------------------------------------

    def __enter__(self) -> Self:
        if self._work_parent is not None:
            self._work_parent.mkdir(parents=True, exist_ok=True)
        self.work_dir = Path(tempfile.mkdtemp(prefix="kumo-vm-", dir=self._work_parent))
        try:
            self._start()
        except BaseException:
            self._cleanup(failed=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup(failed=exc_type is not None)

    def _cleanup(self, failed: bool) -> None:
        self.kill()
        if failed and self.console_log.is_file():
            # pytest shows captured stderr of a failed test: the console tail
            # is usually the fastest way to see what the guest did.
            sys.stderr.write(
                f"--- VM console tail ({self.console_log}) ---\n{self.console_tail(6000)}\n--- end of console ---\n"
            )
        if self.keep:
            sys.stderr.write(f"kept VM work directory {self.work_dir}\n")
        elif self.work_dir != Path() and self.work_dir.exists():
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def kill(self) -> None:
        """Stop qemu by its own pid (SIGKILL: the guest is disposable)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _start(self) -> None:
        work = self.work_dir
        self.console_log = work / "console.log"
        overlay = work / "root.qcow2"
        # A larger overlay than the image: cloud-init's resizefs grows / to fill it at boot.
        size = [] if self.root_disk_size is None else [str(_size_bytes(self.root_disk_size))]
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", self.image.disk.resolve(), "-F", "raw", overlay, *size])
        seed = self._make_seed(work)

        self.smtp_port = _free_port()
        self.http_port = _free_port()
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.smtp_port}-:25", f"hostfwd=tcp:127.0.0.1:{self.http_port}-:8000"]
        for guest_port in self.extra_forwards:
            host_port = self.extra_forwards[guest_port] or _free_port()
            self.forwarded_ports[guest_port] = host_port
            forwards.append(f"hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}")
        if self.mirror_port is not None:
            proxy = work / "guestfwd-proxy.py"
            proxy.write_text(_GUESTFWD_PROXY)
            ip, port = _GUEST_MIRROR_ADDR
            forwards.append(f"guestfwd=tcp:{ip}:{port}-cmd:{sys.executable} {proxy} {self.mirror_port}")
        for (guest_ip, guest_port), host_port in self.guest_forwards.items():
            proxy = work / "guestfwd-proxy.py"
            proxy.write_text(_GUESTFWD_PROXY)
            forwards.append(f"guestfwd=tcp:{guest_ip}:{guest_port}-cmd:{sys.executable} {proxy} {host_port}")
        netdev = ",".join(["user", "id=net0", "restrict=on", *forwards])
        if "," in str(work):
            raise VmHarnessError(f"qemu options cannot hold a comma: {work}")

        append = ["root=/dev/vda", "rw", "console=ttyS0", "ds=nocloud", "panic=-1", *self.extra_kernel_args]
        argv: list[str] = [
            "qemu-system-x86_64",
            "-name",
            f"kumo-vm-{self.instance_id}",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            # Nested KVM is unreliable on these hosts: TCG, on all host cores.
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-kernel",
            str(self.image.kernel),
            "-initrd",
            str(self.image.initrd),
            "-append",
            " ".join(append),
            "-serial",
            f"file:{self.console_log}",
            # cache=unsafe: no host fsync; the disks are thrown away anyway.
            "-drive",
            f"file={overlay},format=qcow2,if=virtio,cache=unsafe,discard=unmap",
            "-drive",
            f"file={seed},format=raw,if=virtio,readonly=on",
            "-netdev",
            netdev,
            "-device",
            f"virtio-net-pci,netdev=net0,addr={_NIC_PCI_SLOT:#x}",
            "-device",
            "virtio-rng-pci",
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            f"socket,id=qga0,path={work / 'qga.sock'},server=on,wait=off",
            "-device",
            "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
        for index, size in enumerate(self.nvme_sizes):
            backing = work / f"nvme{index}.img"
            with open(backing, "wb") as handle:
                handle.truncate(_size_bytes(size))  # sparse
            argv += [
                "-drive",
                f"file={backing},format=raw,if=none,id=nvme{index},cache=unsafe",
                "-device",
                f"nvme,drive=nvme{index},serial=kumonvme{index}",
            ]
        for index, disk in enumerate(self.extra_disks):
            # Disks the caller made (and keeps): more NVMe namespaces, serials kumoextra0, ...
            if "," in str(disk.resolve()):
                raise VmHarnessError(f"qemu options cannot hold a comma: {disk}")
            argv += [
                "-drive",
                f"file={disk.resolve()},format=raw,if=none,id=extra{index}",
                "-device",
                f"nvme,drive=extra{index},serial=kumoextra{index}",
            ]
        (work / "qemu-argv.json").write_text(json.dumps(argv, indent=1))
        self._agent = _GuestAgent(work / "qga.sock")
        self.started_at = time.monotonic()
        with open(work / "qemu-stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # a ^C in pytest must not hit qemu first
            )
        time.sleep(0.5)
        if self.process.poll() is not None:
            raise VmHarnessError(f"qemu exited at once ({self.process.returncode}):\n{self.qemu_stderr()}")

    def _make_seed(self, work: Path) -> Path:
        seed_dir = work / "seed"
        seed_dir.mkdir()
        (seed_dir / "user-data").write_text(self.user_data)
        (seed_dir / "meta-data").write_text(f"instance-id: {self.instance_id}\nlocal-hostname: {self.hostname}\n")
        names = ["user-data", "meta-data"]
        if self.network_config is not None:
            (seed_dir / "network-config").write_text(self.network_config)
            names.append("network-config")
        seed = work / "seed.iso"
        _run(["genisoimage", "-quiet", "-output", seed, "-volid", "cidata", "-joliet", "-rock", *names], cwd=seed_dir)
        return seed

    # ---- console ---------------------------------------------------------

    def qemu_stderr(self) -> str:
        path = self.work_dir / "qemu-stderr.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def console_text(self) -> str:
        if not self.console_log.is_file():
            return ""
        return self.console_log.read_bytes().decode("utf-8", errors="replace")

    def console_tail(self, chars: int = 4000) -> str:
        return self.console_text()[-chars:]

    def console_mark(self) -> int:
        """An offset for wait_for_console(since=...): ignore what is already there."""
        return len(self.console_text())

    def wait_for_console(self, pattern: str | re.Pattern[str], timeout: float, since: int = 0) -> re.Match[str]:
        """Wait until the serial console matches ``pattern``.

        Fails fast (with the console tail) if qemu exits or the kernel panics,
        rather than waiting out the timeout.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            text = self.console_text()[since:]
            match = regex.search(text)
            if match:
                return match
            if "Kernel panic - not syncing" in text:
                raise VmHarnessError(f"guest kernel panic:\n{text[-4000:]}")
            if not self.running:
                raise VmHarnessError(
                    f"qemu exited ({self.process.returncode if self.process else None}) before "
                    f"{regex.pattern!r} appeared\nqemu stderr:\n{self.qemu_stderr()}\n"
                    f"console tail:\n{text[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{regex.pattern!r} not on the console after {timeout:.0f}s; console tail:\n{text[-4000:]}"
                )
            time.sleep(0.5)

    # ---- guest agent -----------------------------------------------------

    def wait_for_agent(self, timeout: float = 300.0) -> None:
        """Block until qemu-guest-agent answers (it starts late in boot)."""
        assert self._agent is not None, "VM not started"
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise VmHarnessError(
                    f"qemu exited while waiting for the guest agent\nconsole tail:\n{self.console_tail()}"
                )
            try:
                self._agent.call("guest-ping", timeout=3)
                self._agent_ready = True
                return
            except (OSError, GuestAgentError, ValueError) as error:
                last_error = error
                time.sleep(1)
        raise TimeoutError(
            f"guest agent not answering after {timeout:.0f}s ({last_error}); console tail:\n{self.console_tail()}"
        )

    def agent_call(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send one raw qemu-guest-agent command and return its "return" value."""
        if not self._agent_ready:
            self.wait_for_agent()
        assert self._agent is not None
        return self._agent.call(command, arguments, timeout=timeout)

    def exec_bytes(
        self, argv: Sequence[str], timeout: float = 120.0, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` in the guest as root (through the guest agent)."""
        arguments: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
        if input is not None:
            arguments["input-data"] = base64.b64encode(input).decode()
        pid = self.agent_call("guest-exec", arguments)["pid"]
        deadline = time.monotonic() + timeout
        while True:
            status = self.agent_call("guest-exec-status", {"pid": pid})
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(VmHarnessError, OSError):
                    self.agent_call("guest-exec", {"path": "kill", "arg": ["-9", str(pid)]})
                raise TimeoutError(f"{list(argv)} still running in the guest after {timeout}s")
            time.sleep(0.2)
        returncode = status.get("exitcode")
        if returncode is None:  # killed by a signal
            returncode = -int(status.get("signal", 0))
        return subprocess.CompletedProcess(
            list(argv),
            returncode,
            base64.b64decode(status.get("out-data", "")),
            base64.b64decode(status.get("err-data", "")),
        )

    def exec(
        self, argv: Sequence[str], timeout: float = 120.0, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the guest as root; stdout/stderr decoded as UTF-8."""
        raw = self.exec_bytes(argv, timeout, None if input is None else input.encode())
        result = subprocess.CompletedProcess(
            raw.args,
            raw.returncode,
            raw.stdout.decode("utf-8", errors="replace"),
            raw.stderr.decode("utf-8", errors="replace"),
        )
        if check and result.returncode != 0:
            raise VmHarnessError(
                f"guest command {list(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def read_file(self, path: str) -> bytes:
        result = self.exec_bytes(["cat", "--", path])
        if result.returncode != 0:
            raise FileNotFoundError(f"guest {path}: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def reboot(self, timeout: float = 600.0) -> None:
        """Reboot the guest (same disks) and wait for its agent to answer again."""
        mark = self.console_mark()
        self.agent_call("guest-exec", {"path": "systemctl", "arg": ["reboot"]})
        self._agent_ready = False
        self.wait_for_console(r"Linux version \d", timeout=timeout, since=mark)
        self.wait_for_agent(timeout=timeout)

    # ---- network probes from the host ------------------------------------

    def smtp_banner(self, timeout: float = 60.0) -> str:
        """First line the guest's port 25 sends, retried until ``timeout``.

        qemu accepts the host connection before the guest does, so "nothing
        listening" shows up as an immediate close: that is retried too.
        """
        deadline = time.monotonic() + timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=10) as sock:
                    line = sock.makefile("rb").readline()
                    if line:
                        with contextlib.suppress(OSError):
                            sock.sendall(b"QUIT\r\n")
                        return line.decode("utf-8", errors="replace").rstrip("\r\n")
                    last_error = "connection closed without a banner"
            except OSError as error:
                last_error = str(error)
            time.sleep(1)
        raise TimeoutError(f"no SMTP banner on 127.0.0.1:{self.smtp_port} after {timeout:.0f}s: {last_error}")

    def http_get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """One GET to the guest's port 8000; connection errors propagate."""
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            connection.close()


class SerialLogConsole:
    """A kumo_infra.smoke.ConsoleReader over a booted VM's serial log file: to run_smoke what a
    cloud's console output is (the same code path, only where the text comes from differs)."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm

    def read(self, node: dict[str, Any]) -> str:
        text = self.vm.console_text()
        if not self.vm.running:
            # A cloud says the same of a terminated instance: asking again cannot help. (Imported
            # here: nothing else in the harness depends on kumo_infra.)
            from kumo_infra.smoke import ConsoleError

            raise ConsoleError(f"qemu exited ({self.vm.process.returncode if self.vm.process else None}); "
                               f"console tail: {text[-300:]!r}", final=True)
        return text


# --------------------------------------------------------------------------
# The stand-in kumod's API in this process (kumo-infra drain's tests)
# --------------------------------------------------------------------------

_STANDIN_KUMOD: Any = None


def standin_kumod() -> Any:
    """tests/vm/standin/kumod as a module: the fake nodes and peers of the drain tests run the
    stand-in's own code, so there is one fake of kumod's API, not two."""
    global _STANDIN_KUMOD
    if _STANDIN_KUMOD is None:
        import importlib.machinery
        import importlib.util

        loader = importlib.machinery.SourceFileLoader("kumod_standin", str(_STANDIN_DIR / "kumod"))
        spec = importlib.util.spec_from_loader("kumod_standin", loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        _STANDIN_KUMOD = module
    return _STANDIN_KUMOD


def make_api_certificate(directory: Path, ip: str = "127.0.0.1",
                         hostname: str = "mta.example.com") -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 server certificate naming ``hostname`` and ``ip``, shaped like the
    one kumo-infra's pulumi_tls resources make for the API (kumo_infra/component.py): (cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname),
                                                        x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "api-cert.pem", directory / "api-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class KumodApi:
    """The stand-in kumod's HTTP API on 127.0.0.1 in this process: a node (TLS, basic auth for
    every peer when ``trusted_hosts`` is empty) or a peer receiving transfers (plain HTTP, loopback
    trusted). ``queue`` holds its messages (in memory, or in ``spool_dir``)."""

    def __init__(self, *, tls: tuple[Path, Path] | None = None, user: str = "kumo-api",
                 password_file: Path | None = None, trusted_hosts: list[str] | None = None,
                 spool_dir: Path | None = None, granted: set[tuple[str, str]] | None = None) -> None:
        import ssl

        kumod = standin_kumod()
        self.kumod = kumod
        self.health = kumod.Health()
        self.queue = kumod.MailQueue(str(spool_dir) if spool_dir else None)
        self.queue.retry_s = self.queue.release_interval_s = 0.05
        self.suspensions = kumod.Suspensions()
        self.api = kumod.Api(self.health, self.queue, self.suspensions,
                             kumod.ApiAuth(user, str(password_file) if password_file else None))
        context = None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
        # The API user's grants as the rendered policy gives them on the TLS listener (``granted``:
        # a policy granting other calls, or none, as one rendered before kumo-infra drain).
        from kumo_infra.bootstrap.policy import API_USER_GRANTS

        if granted is None:
            granted = {(method, path) for path, methods in API_USER_GRANTS.items() for method in methods}
        self.server = kumod.make_http_server("127.0.0.1:0", self.health, self.api, trusted_hosts, context, granted)
        scheme = "https" if context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def hold(self, sender: str, recipients: list[str], data: bytes) -> str:
        """A message as the stand-in's SMTP listener holds it; its spool id."""
        kumod = self.kumod
        return self.queue.add(kumod.Message(kumod.new_spool_id(), sender, recipients, {}, data))

    def hold_tsa_record(self, publish_url: str) -> str:
        """A log record queued for the TSA daemon at ``publish_url``, as shaping.lua's log hook
        queues it (should_enq: the queue is the hook's name, '<url>.tsa.kumomta'); its spool id."""
        kumod = self.kumod
        meta = {"queue": publish_url + kumod.TSA_HOOK_SUFFIX, "reception_protocol": "LogRecord"}
        return self.queue.add(kumod.Message(kumod.new_spool_id(), "kumomta@localhost", ["tsa@localhost"], meta,
                                            b'{"type": "Delivery"}\n'))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
