#!/bin/sh
# kumo-reboot-if-needed (written by kumo-infra): reboot now if an applied update needs it.
# Run by kumo-os-reboot.timer in the maintenance window (os_updates.reboot = window) on the
# dnf and yum families; Debian and Ubuntu use unattended-upgrades' Automatic-Reboot-Time.
# needs-restarting -r (dnf-plugins-core, yum-utils) exits 1 when a reboot is needed, 0 when
# not; anything else is an error, and an error never reboots the machine.
if command -v dnf >/dev/null 2>&1; then
  dnf -q needs-restarting -r >/dev/null 2>&1
else
  needs-restarting -r >/dev/null 2>&1
fi
rc=$?
if [ "$rc" -eq 1 ]; then
  logger -t kumo-reboot-if-needed "an applied update needs a reboot: rebooting in the maintenance window"
  exec systemctl reboot
fi
[ "$rc" -eq 0 ] || logger -t kumo-reboot-if-needed "needs-restarting -r failed (exit $rc): not rebooting"
exit 0
