"""What a node installs from where, and how its OS keeps itself patched.

Pure text rendering: the KumoMTA repository definition (rendered here, never
downloaded from the repository host), the key the bootstrap checks before it is
trusted, and the automatic OS update configuration of each package family.

KumoMTA's repository layout (KumoCorp/kumomta, assets/sources.list.d/*.list and
assets/yum.repos.d/*.repo as last kept in that repository, commit 8e25ed01^; the
files now live in KumoMTA's package-server repository): per OS a directory
``kumomta-<os>-<version>`` holding the dev channel and ``...-stable`` holding the
stable one; apt repositories use suite ``stable``, component ``main``; the
``.repo`` files set ``repo_gpgcheck=1`` (signed metadata) and the RPMs are signed
(assets/sign-rpm.sh), so ``gpgcheck=1`` holds too. The signing key is served as
``public.gpg`` in the repository directory (docs/userguide/installation/linux.md
fetches ``kumomta-ubuntu-22/public.gpg``).
"""

from __future__ import annotations

from ..config import Deployment

# KumoMTA publishes no fingerprint of its repository signing key: not in its documentation
# (docs/userguide/installation/*.md), its source, or the repository files it kept in
# assets/; the CI signs with a key held only in a GitHub secret (OPENREPO_GPG_PUBLIC,
# .github/workflows/reusable-kumomta-build.yml; checked at KumoCorp/kumomta 3ebc1e85). A
# fingerprint taken from the same host that serves the key would prove nothing, so none is
# invented here. Without kumomta.repo_key_fingerprint the node trusts the one key served over
# verified https on first use (what KumoMTA's install guide does) and pins it: later runs
# refuse any other key (kumo-bootstrap, step install). Set the fingerprint to pin a fleet.
KUMOMTA_SIGNING_KEY_FINGERPRINT: str | None = None

APT_KEYRING = "/usr/share/keyrings/kumomta.gpg"
RPM_KEY = "/etc/pki/rpm-gpg/RPM-GPG-KEY-kumomta"

# Where the rendered files land on the node (the install and updates steps copy them in place).
REPO_LIST = "/etc/kumo-infra/kumomta.list"
REPO_FILE = "/etc/kumo-infra/kumomta.repo"
OS_UPDATES_CONF = "/etc/kumo-infra/os-updates.conf"


def _channel_dir(deployment: Deployment) -> str:
    base = deployment.os_spec.repo_dir
    return base + "-stable" if deployment.kumomta.channel == "stable" else base


def repo_key_url(deployment: Deployment) -> str:
    """Where the signing key is fetched; what it is worth is decided by its fingerprint alone."""
    return f"{deployment.kumomta.repo_url}/{deployment.os_spec.repo_dir}/public.gpg"


def repo_key_fingerprint(deployment: Deployment) -> str:
    """The fingerprint the key must have: the operator's, else KumoMTA's (none published: '',
    which the node reads as trust on first use, then pinned)."""
    return deployment.kumomta.repo_key_fingerprint or KUMOMTA_SIGNING_KEY_FINGERPRINT or ""


def repository_definition(deployment: Deployment) -> tuple[str, str]:
    """(path on the node, content) of the apt list or dnf/yum .repo for the deployment's channel."""
    url = f"{deployment.kumomta.repo_url}/{_channel_dir(deployment)}"
    channel = deployment.kumomta.channel
    header = f"# KumoMTA {channel} packages (kumo-infra), signed by the key kumo-bootstrap checked.\n"
    if deployment.os_spec.family == "apt":
        return REPO_LIST, header + f"deb [signed-by={APT_KEYRING}] {url}/ stable main\n"
    return REPO_FILE, header + (
        f"[kumomta-{channel}]\n"
        f"name=KumoMTA {channel}\n"
        f"baseurl={url}\n"
        "enabled=1\n"
        "gpgcheck=1\n"
        "repo_gpgcheck=1\n"
        f"gpgkey=file://{RPM_KEY}\n"
    )


# unattended-upgrades origin patterns per distribution. Debian: the security archive's
# Release says Origin Debian, Label Debian-Security, Codename <codename>-security (its own
# 50unattended-upgrades lists these). Ubuntu: Origin Ubuntu, Suite <codename>-security; ESM
# pockets for Pro machines.
_APT_SECURITY = {
    "debian": ["origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
               "origin=Debian,codename=${distro_codename},label=Debian-Security"],
    "ubuntu": ["origin=Ubuntu,archive=${distro_codename}-security",
               "origin=UbuntuESMApps,archive=${distro_codename}-apps-security",
               "origin=UbuntuESM,archive=${distro_codename}-infra-security"],
}
_APT_ALL = {
    "debian": ["origin=Debian,codename=${distro_codename},label=Debian",
               "origin=Debian,codename=${distro_codename}-updates,label=Debian"],
    "ubuntu": ["origin=Ubuntu,archive=${distro_codename}",
               "origin=Ubuntu,archive=${distro_codename}-updates"],
}
_KUMOMTA_PACKAGES = ("kumomta", "kumomta-dev")


def os_updates_config(deployment: Deployment) -> str:
    """The configuration of the family's update tool (unattended-upgrades, dnf-automatic, yum-cron)."""
    updates = deployment.os_updates
    header = (f"# Automatic OS updates, rendered by kumo-infra (os_updates: automatic={updates.automatic}, "
              f"reboot={updates.reboot}).\n# KumoMTA is excluded: its version is kumomta.version, "
              "applied by kumo-bootstrap.\n")
    family = deployment.os_spec.family
    if family == "apt":
        return header + _apt_config(deployment)
    if family == "dnf":
        return header + _dnf_automatic_config(deployment)
    return header + _yum_cron_config(deployment)


def _apt_config(deployment: Deployment) -> str:
    updates = deployment.os_updates
    distro = "debian" if deployment.os.startswith("debian") else "ubuntu"
    on = "0" if updates.automatic == "off" else "1"
    patterns = [] if updates.automatic == "off" else _APT_SECURITY[distro] + (
        _APT_ALL[distro] if updates.automatic == "all" else [])
    lines = [
        # Read after the package's 20auto-upgrades and 50unattended-upgrades (52 > 50): scalar
        # values here win, and the origin lists are cleared before ours are set.
        'APT::Periodic::Update-Package-Lists "1";',
        f'APT::Periodic::Unattended-Upgrade "{on}";',
        "#clear Unattended-Upgrade::Origins-Pattern;",
        "#clear Unattended-Upgrade::Allowed-Origins;",
        "Unattended-Upgrade::Origins-Pattern {",
        *[f'  "{p}";' for p in patterns],
        "};",
        "Unattended-Upgrade::Package-Blacklist {",
        *[f'  "{name}$";' for name in _KUMOMTA_PACKAGES],
        "};",
    ]
    if updates.reboot == "window":
        # /var/run/reboot-required (written by the kernel's postinst hook of unattended-upgrades)
        # triggers it; the time is the machine's clock, UTC on the cloud images kumo-infra uses.
        lines += ['Unattended-Upgrade::Automatic-Reboot "true";',
                  'Unattended-Upgrade::Automatic-Reboot-WithUsers "true";',
                  f'Unattended-Upgrade::Automatic-Reboot-Time "{updates.reboot_time}";']
    else:
        lines.append('Unattended-Upgrade::Automatic-Reboot "false";')
    return "\n".join(lines) + "\n"


def _dnf_automatic_config(deployment: Deployment) -> str:
    # dnf-automatic(8): [commands] upgrade_type default|security, apply_updates; [base] overrides
    # dnf.conf for its own runs. Its 'reboot' option exists only in newer dnf (not Rocky/Alma 8's),
    # and reboots right after the update: the window is kumo-os-reboot.timer's instead.
    upgrade_type = "security" if deployment.os_updates.automatic == "security" else "default"
    return (
        "[commands]\n"
        f"upgrade_type = {upgrade_type}\n"
        "download_updates = yes\n"
        "apply_updates = yes\n"
        "network_online_timeout = 60\n"
        "\n[emitters]\n"
        "emit_via = stdio\n"
        "\n[base]\n"
        f"excludepkgs = {' '.join(_KUMOMTA_PACKAGES)}\n"
    )


def _yum_cron_config(deployment: Deployment) -> str:
    # yum-cron (Amazon Linux 2): update_cmd default|security; [base] overrides yum.conf.
    update_cmd = "security" if deployment.os_updates.automatic == "security" else "default"
    return (
        "[commands]\n"
        f"update_cmd = {update_cmd}\n"
        "update_messages = yes\n"
        "download_updates = yes\n"
        "apply_updates = yes\n"
        "random_sleep = 360\n"
        "\n[emitters]\n"
        "system_name = None\n"
        "emit_via = stdio\n"
        "\n[groups]\n"
        "group_list = None\n"
        "\n[base]\n"
        "debuglevel = -2\n"
        "mdpolicy = group:main\n"
        f"exclude = {' '.join(_KUMOMTA_PACKAGES)}\n"
    )


def reboot_timer(deployment: Deployment) -> str:
    """kumo-os-reboot.timer (dnf/yum families): daily at reboot_time; never catches up at boot."""
    return (
        "[Unit]\n"
        "Description=kumo-infra: reboot in the maintenance window when an update needs it\n"
        "\n[Timer]\n"
        # The machine's clock: UTC on the cloud images kumo-infra uses. Persistent=false: a
        # window missed while the machine was off is skipped, never made up at boot.
        f"OnCalendar=*-*-* {deployment.os_updates.reboot_time}:00\n"
        "Persistent=false\n"
        "\n[Install]\n"
        "WantedBy=timers.target\n"
    )
