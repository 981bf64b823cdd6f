"""Fixtures for the VM tests: a cached guest image, stand-in debs and mirrors."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from .harness import AptMirror, RootImage, build_rootfs, build_standin_kumomta_deb, why_vm_cannot_run

StandinDebs = dict[str, Path]
MirrorFactory = Callable[..., AptMirror]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "vm: boots a qemu VM (slow: minutes per boot; needs the packages in "
        "tests/vm/harness.py REQUIRED_DEBIAN_PACKAGES)",
    )


@pytest.fixture(scope="session")
def vm_rootfs() -> RootImage:
    """The cached Debian 12 guest image (built on first use, several minutes)."""
    reason = why_vm_cannot_run()
    if reason:
        pytest.skip(reason)
    return build_rootfs()


@pytest.fixture(scope="session")
def standin_debs(tmp_path_factory: pytest.TempPathFactory) -> StandinDebs:
    """Stand-in .debs by package name: ``kumomta`` and ``kumomta-dev``."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed")
    out = tmp_path_factory.mktemp("standin-debs")
    return {name: build_standin_kumomta_deb(out, package=name) for name in ("kumomta", "kumomta-dev")}


@pytest.fixture(scope="session")
def apt_mirror(standin_debs: StandinDebs) -> Iterator[MirrorFactory]:
    """Factory: ``apt_mirror()`` serves all stand-in debs, ``apt_mirror(debs)`` others;
    ``extra_debs=`` adds Debian packages (both channels' repositories carry them).

    Each call starts a new mirror (own port, own request log) that is stopped
    at the end of the session; a test may also call ``.stop()`` itself.
    """
    for tool in ("apt-ftparchive", "gpg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    with contextlib.ExitStack() as stack:

        def start(debs: Iterable[Path] | None = None, extra_debs: Iterable[Path] = ()) -> AptMirror:
            chosen = list(standin_debs.values()) if debs is None else list(debs)
            return stack.enter_context(AptMirror(chosen, extra_debs=extra_debs))

        yield start


@pytest.fixture(scope="session")
def node_mirror(vm_rootfs: RootImage, apt_mirror: MirrorFactory) -> MirrorFactory:
    """Factory for what a booted node needs: the stand-in debs and the Debian packages the
    bootstrap installs for automatic OS updates (downloaded with the guest image)."""

    def start(debs: Iterable[Path] | None = None) -> AptMirror:
        return apt_mirror(debs, extra_debs=vm_rootfs.os_update_debs)

    return start
