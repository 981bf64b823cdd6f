#!/bin/bash
# Step functions are called through run_step by name, which shellcheck cannot follow.
# shellcheck disable=SC2317
# kumo-bootstrap: install, tune and start KumoMTA on this machine (written by kumo-infra).
#
#   kumo-bootstrap all     every step; what cloud-init runs at first boot
#   kumo-bootstrap spool   only prepare the spool disk; run by kumo-spool.service at every
#                          boot, so a local NVMe disk the cloud wiped is re-created
#   kumo-bootstrap source  only write this machine's source address for kumod; run before
#                          every kumod start (the kumomta.service drop-in)
#   kumo-bootstrap peers   only fetch the fleet's peer list again, restarting the TSA daemon
#                          and kumod when it changed; run by kumo-fleet-peers.timer (fleets)
#
# Safe to run again at any time: a configured, healthy machine is left unchanged.
# Settings come from /etc/kumo-infra/bootstrap.env; the result is written to
# /var/lib/kumo-infra/status.json and summed up in one console line.
set -uo pipefail
# Arrays that may be empty are expanded as ${a[@]+"${a[@]}"}: bash before 4.4 (Amazon
# Linux 2) treats an empty "${a[@]}" as unbound under set -u.

MODE=${1:-all}
CONF_DIR=${KUMO_CONF_DIR:-/etc/kumo-infra}
STATE_DIR=/var/lib/kumo-infra
LOG=/var/log/kumo-infra-bootstrap.log
SPOOL=/var/spool/kumomta
POLICY=/opt/kumomta/etc/policy/init.lua
# Node files kumo_infra/bootstrap/policy.py names: SHAPING_CUSTOM_PATH, TSA_INIT_PATH, SOURCE_ADDRESS_PATH.
SHAPING_CUSTOM=/opt/kumomta/etc/policy/shaping_custom.toml
TSA_POLICY=/opt/kumomta/etc/policy/tsa_init.lua
SOURCES=/opt/kumomta/etc/sources.json
TSA_UNIT=kumo-tsa-daemon.service
NODE_ID_FILE=/opt/kumomta/etc/.nodeid
MACHINE_ID_FILE=/etc/machine-id
KUMOD=/opt/kumomta/sbin/kumod
SPOOL_LABEL=kumospool
SYSCTL_FILE=/etc/sysctl.d/90-kumomta.conf
FSTAB=/etc/fstab
APT_KEYRING=/usr/share/keyrings/kumomta.gpg
RPM_KEY=/etc/pki/rpm-gpg/RPM-GPG-KEY-kumomta
DNF_RELEASEVER=/etc/dnf/vars/releasever
SSHD_CONFIG=/etc/ssh/sshd_config
SSHD_DROPIN=/etc/ssh/sshd_config.d/01-kumo-infra.conf
SYSFS=/sys
PROC=/proc
DEVDIR=/dev
# Secrets the ssh target's installer read from its standard input (tmpfs, root only); the
# secrets step installs them and removes the directory (kumo-fetch-secret's delivered backend).
DELIVERED_DIR=/run/kumo-infra/delivered
FETCH_SECRET=/usr/local/sbin/kumo-fetch-secret
PEERS_TIMER=kumo-fleet-peers.timer

say() { printf 'kumo-bootstrap: %s\n' "$*"; }

# -- helpers used inside steps (each step runs in a subshell with errexit) ----------
detail() { printf '%s\n' "$*" >"$WORK/detail"; }
die() { detail "$*"; exit 1; }
# changed WHAT: the step changed the machine; WHAT is recorded in status.json.
changed() { printf '%s\n' "$1" >>"$WORK/changed"; }
# fact KEY JSON: a fact for status.json; the value is already JSON.
fact() { printf '%s\t%s\n' "$1" "$2" >>"$WORK/facts"; }
# warn TEXT: worth the operator's attention, never a failure: status.json's warnings, and the
# console before the result line.
warn() { printf '%s\n' "$*" >>"$WORK/warnings"; }

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/}
  printf '"%s"' "$s"
}

json_array() {
  local out="" item
  for item in "$@"; do out+="${out:+,}$(json_str "$item")"; done
  printf '[%s]' "$out"
}

# Compare non-negative integers of any size (some sysctl defaults overflow bash arithmetic).
num_gt() {
  local a=$1 b=$2
  if [ ${#a} -ne ${#b} ]; then [ ${#a} -gt ${#b} ]; else [[ "$a" > "$b" ]]; fi
}

# -- step runner -----------------------------------------------------------------------
STEP_JSON=""
FAILED_STEP=""
FAILED_DETAIL=""
ANY_CHANGED=false

run_step() {
  local name=$1 fn=$2 start end rc status step_changed=false text=""
  rm -f "$WORK/detail" "$WORK/changed" "$WORK/err"
  start=$(date +%s%N)
  say "step $name ..."
  (
    set -eE
    trap 'printf "command failed (exit %s): %s\n" "$?" "$BASH_COMMAND" >"$WORK/err"' ERR
    "$fn"
  ) >>"$LOG" 2>&1
  rc=$?
  end=$(date +%s%N)
  local changes=()
  if [ -f "$WORK/changed" ]; then
    step_changed=true
    ANY_CHANGED=true
    mapfile -t changes <"$WORK/changed"
  fi
  [ -f "$WORK/detail" ] && text=$(head -c 2000 "$WORK/detail")
  if [ $rc -eq 0 ]; then
    status=ok
  else
    status=failed
    [ -z "$text" ] && [ -f "$WORK/err" ] && text=$(cat "$WORK/err")
    [ -z "$text" ] && text="exit $rc; see $LOG"
    FAILED_STEP=$name
    FAILED_DETAIL=$text
  fi
  say "step $name: $status${text:+ ($text)}"
  STEP_JSON+="${STEP_JSON:+,}{\"name\":$(json_str "$name"),\"status\":\"$status\",\"changed\":$step_changed,"
  STEP_JSON+="\"changes\":$(json_array ${changes[@]+"${changes[@]}"}),"
  STEP_JSON+="\"seconds\":$(( (end - start) / 1000000 ))e-3,\"detail\":$(json_str "$text")}"
  return $rc
}

write_status() {
  local result=$1 facts="" key value tmp warned=()
  if [ -f "$WORK/facts" ]; then
    while IFS=$'\t' read -r key value; do
      facts+="${facts:+,}$(json_str "$key"):$value"
    done <"$WORK/facts"
  fi
  mapfile -t warned < <(cat "$WORK/warnings" 2>/dev/null)
  tmp=$(mktemp "$STATE_DIR/.status.XXXXXX")
  # KUMO_CLOUD is information for the reader only: nothing in this script decides by it.
  printf '{"schema":1,"mode":%s,"hostname":%s,"cloud":%s,"os":%s,"result":"%s","failed_step":%s,"changed":%s,"started":%s,"finished":%s,"steps":[%s],"facts":{%s},"warnings":%s}\n' \
    "$(json_str "$MODE")" "$(json_str "$KUMO_HOSTNAME")" "$(json_str "$KUMO_CLOUD")" "$(json_str "$KUMO_OS")" "$result" \
    "$( [ -n "$FAILED_STEP" ] && json_str "$FAILED_STEP" || echo null)" "$ANY_CHANGED" \
    "$(json_str "$STARTED")" "$(json_str "$(date -u +%Y-%m-%dT%H:%M:%SZ)")" "$STEP_JSON" "$facts" \
    "$(json_array ${warned[@]+"${warned[@]}"})" >"$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$STATUS"
}

# -- package helpers -----------------------------------------------------------------
installed_version() {
  case "$KUMO_PKG_FAMILY" in
    apt) { dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null || true; } | awk '$1 == "ii" { print $2 }' ;;
    *) rpm -q --qf '%{VERSION}-%{RELEASE}\n' "$1" 2>/dev/null | grep -v 'not installed' || true ;;
  esac
}

# A cloud image's own apt-daily may hold apt's locks at first boot: wait for them (dnf and
# yum wait by themselves).
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)

apt_update() { apt-get "${APT_LOCK_WAIT[@]}" update -q; }

pkg_install() {
  case "$KUMO_PKG_FAMILY" in
    apt) DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK_WAIT[@]}" install -y -q -o Dpkg::Options::=--force-confold "$@" ;;
    dnf) dnf install -y -q "$@" ;;
    yum) yum install -y -q "$@" ;;
  esac
}

pkg_remove() {
  case "$KUMO_PKG_FAMILY" in
    apt) DEBIAN_FRONTEND=noninteractive apt-get "${APT_LOCK_WAIT[@]}" remove -y -q "$@" ;;
    dnf) dnf remove -y -q "$@" ;;
    yum) yum remove -y -q "$@" ;;
  esac
}

# -- steps ---------------------------------------------------------------------------
step_network() {
  local deadline=$((SECONDS + KUMO_NET_WAIT_S))
  until ip route show default | grep -q .; do
    [ "$SECONDS" -lt "$deadline" ] || die "no default route after ${KUMO_NET_WAIT_S} s"
    sleep 2
  done
  fact default_route "$(json_str "$(ip route show default | head -n 1)")"
}

# -- the machine's own size (every target; an existing machine is whatever the operator has) ----
# KumoMTA's minimums are KUMO_MIN_MEMORY_GIB of memory and KUMO_MIN_DISK_GB of disk
# (kumo_infra/sizing.py: 4 GiB, 20 GB). A machine shows less than it has: MemTotal leaves out
# what firmware, the kernel and a crash kernel reserve (a 4 GiB machine shows 3.6 to 3.9 GiB),
# and a filesystem is smaller than its disk by the boot partitions and its own metadata (a 20 GB
# disk holds a root filesystem of 18.4 to 19.6 GB). So a machine has N GiB of memory when MemTotal
# is at least 7/8 of N GiB (896 MiB a GiB), and N GB of disk when its filesystem holds at least
# 9/10 of N GB: for the minimums, exactly, MemTotal of at least 3584 MiB (3670016 kB) and a
# filesystem of at least 18000000000 bytes (17578125 KiB), as df counts its size.

# at_least A B F: is A >= B * F (any of them decimal)?
at_least() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { exit !(a >= b * f) }'; }

step_machine() {
  local mem cpus dev speed path size at fs="" bad="" paths=(/)
  mem=$(awk '$1 == "MemTotal:" { print int($2 / 1024) }' "$PROC/meminfo")
  cpus=$(grep -c '^processor' "$PROC/cpuinfo") || cpus=$(nproc)
  dev=$(ip route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  # Virtual NICs report -1, or nothing at all: their speed is unknown, not slow.
  speed=$(cat "$SYSFS/class/net/$dev/speed" 2>/dev/null) || true
  [[ "$speed" =~ ^[1-9][0-9]*$ ]] || speed='"unknown"'
  at_least "$mem" "$KUMO_MIN_MEMORY_GIB" 896 || bad+="; memory $mem MiB, needs $KUMO_MIN_MEMORY_GIB GiB"
  # The root filesystem, and the spool's when the spool is a directory (the filesystem holding
  # it, or its nearest existing parent before KumoMTA is installed), as df counts their size.
  [ "$KUMO_SPOOL_STORAGE" != directory ] || paths+=("$SPOOL")
  for path in "${paths[@]}"; do
    until [ -e "$path" ]; do path=$(dirname "$path"); done
    read -r size at < <(df -Pk "$path" | awk 'NR == 2 { print $2, $6 }')
    fs+=",$(json_str "$at"):$((size * 1024))"
    at_least "$size" "$KUMO_MIN_DISK_GB" 878906.25 || bad+="; disk: filesystem $at $((size / 976562)) GB, needs $KUMO_MIN_DISK_GB GB"
  done
  fact cpu_count "$cpus"
  fact memory_mib "$mem"
  fact filesystem_bytes "{${fs#,}}"
  fact nic "$(json_str "$dev")"
  fact nic_speed_mbps "$speed"
  [ -z "$bad" ] || die "machine too small for KumoMTA${bad}"
  # Smaller than the plan is the operator's choice on an existing machine: a warning only.
  at_least "$cpus" "$KUMO_PLAN_VCPU" 1 || warn "$cpus CPUs, the plan sizes nodes for $KUMO_PLAN_VCPU"
  at_least "$mem" "$KUMO_PLAN_MEMORY_GIB" 896 || warn "memory $mem MiB, the plan sizes nodes for $KUMO_PLAN_MEMORY_GIB GiB"
  [ "$speed" = '"unknown"' ] || at_least "$speed" "$KUMO_PLAN_MBPS_PER_NODE" 1 \
    || warn "$dev at $speed Mbit/s, the plan needs $KUMO_PLAN_MBPS_PER_NODE Mbit/s per node"
}

step_other_mtas() {
  local svc disabled=()
  # MTAs that take port 25. Not qpidd: an AMQP broker (port 5672), whatever its name suggests.
  for svc in postfix exim4 sendmail; do
    systemctl list-unit-files "$svc.service" --no-legend 2>/dev/null | grep -q . || continue
    if systemctl is-active --quiet "$svc" || systemctl is-enabled --quiet "$svc"; then
      systemctl disable --now "$svc"
      changed "stopped and disabled $svc"
    fi
    if [ "$(systemctl is-enabled "$svc" 2>/dev/null)" != masked ]; then
      # Masked so that a package upgrade cannot start it again and take port 25. A unit an
      # admin wrote into /etc/systemd/system cannot be masked; stopped and disabled it stays.
      if systemctl mask "$svc"; then changed "masked $svc"; else detail "$svc stopped and disabled; its unit cannot be masked"; fi
    fi
    disabled+=("$svc")
  done
  fact other_mtas_disabled "$(json_array ${disabled[@]+"${disabled[@]}"})"
}

# Wait until the repository answers with its signing key, kept (not yet trusted) in $WORK/repo-key.
wait_for_repository() {
  local deadline=$((SECONDS + KUMO_REPO_WAIT_S))
  until curl -fsSL -o "$WORK/repo-key" --max-time 10 "$KUMO_REPO_KEY_URL"; do
    [ "$SECONDS" -lt "$deadline" ] || die "KumoMTA repository unreachable: $KUMO_REPO_KEY_URL did not answer within ${KUMO_REPO_WAIT_S} s"
    sleep 5
  done
}

# trust_repo_key KEYFILE EXPECTED_FPR OUT [--armor]: write to OUT the one OpenPGP key in KEYFILE,
# only if KEYFILE holds exactly one primary key and its fingerprint is EXPECTED_FPR (an empty
# EXPECTED_FPR: trust on first use, whichever single key it is). The key is read in a throwaway
# keyring (gpg 2.0 on Amazon Linux 2 has no --show-keys), and only that key is exported:
# nothing else the file carries is ever trusted. Sets REPO_KEY_TRUSTED to its fingerprint.
REPO_KEY_TRUSTED=""
trust_repo_key() {
  local file=$1 want=$2 out=$3 armor=${4:-} home fprs=() rc=0 first_use=false
  home=$(mktemp -d "$WORK/gnupg.XXXXXX")
  gpg --homedir "$home" --batch --quiet --import "$file" >/dev/null 2>&1 || rc=$?
  mapfile -t fprs < <(gpg --homedir "$home" --batch --with-colons --fingerprint 2>/dev/null \
    | awk -F: '$1 == "pub" { want_fpr = 1; next } $1 == "fpr" && want_fpr { print $10; want_fpr = 0 }')
  if [ -z "$want" ] && [ ${#fprs[@]} -eq 1 ]; then
    want=${fprs[0]}
    first_use=true
  fi
  if [ ${#fprs[@]} -eq 1 ] && [ "${fprs[0]}" = "$want" ]; then
    gpg --homedir "$home" --batch ${armor:+--armor} --export "$want" >"$out.kumo-new"
    chmod 0644 "$out.kumo-new"
    mv -f "$out.kumo-new" "$out"
  fi
  gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true
  rm -rf "$home"
  [ ${#fprs[@]} -gt 0 ] || die "repository signing key $KUMO_REPO_KEY_URL is not an OpenPGP key (gpg exit $rc); expected fingerprint $want"
  [ ${#fprs[@]} -eq 1 ] || die "repository signing key $KUMO_REPO_KEY_URL holds ${#fprs[@]} keys (${fprs[*]}); expected exactly one, fingerprint $want"
  [ "${fprs[0]}" = "$want" ] || die "repository signing key fingerprint mismatch: expected $want, the key at $KUMO_REPO_KEY_URL is ${fprs[0]}; refusing to trust it (set kumomta.repo_key_fingerprint only to a key you verified)"
  REPO_KEY_TRUSTED=$want
  [ "$first_use" = false ] || say "trusted repository key $want on first use"
}

# The fingerprint this node pinned when it first trusted the repository key without a
# configured one: later runs refuse any other key.
repo_key_pin() { printf '%s' "$STATE_DIR/repo-key.fingerprint"; }

# Pinned together with the keyring, before any package manager uses it: a failure later in the
# step must not leave a trusted key without its pin.
pin_first_use_key() {
  [ "$1" = first-use ] || return 0
  printf '%s\n' "$REPO_KEY_TRUSTED" >"$(repo_key_pin)"
  changed "pinned repository key $REPO_KEY_TRUSTED (trusted on first use)"
}

spool_tools() {
  local need=()
  [ "$KUMO_SPOOL_STORAGE" != directory ] || return 0
  case "$KUMO_SPOOL_FS" in
    xfs) command -v mkfs.xfs >/dev/null || need+=(xfsprogs) ;;
    ext4) command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs) ;;
  esac
  if [ "$KUMO_SPOOL_DEVICES" -gt 1 ]; then command -v mdadm >/dev/null || need+=(mdadm); fi
  # Nothing at all when nothing is needed: an empty line would read as one empty package name.
  [ ${#need[@]} -eq 0 ] || printf '%s\n' "${need[@]}"
}

step_install() {
  local current want="$KUMO_PACKAGE" tools=()
  mapfile -t tools < <(spool_tools)
  current=$(installed_version "$KUMO_PACKAGE")
  if [ -n "$current" ] && { [ -z "$KUMO_VERSION" ] || { [ "$current" = "$KUMO_VERSION" ] || [[ "$current" == "$KUMO_VERSION"-* ]]; }; } && [ ${#tools[@]} -eq 0 ]; then
    detail "$KUMO_PACKAGE $current already installed"
    fact kumomta_version "$(json_str "$current")"
    return 0
  fi
  local key_fpr=$KUMO_REPO_KEY_FINGERPRINT key_trust=configured
  if [ -z "$key_fpr" ]; then
    # KumoMTA publishes no fingerprint of its signing key (kumo_infra/bootstrap/packages.py).
    # Without a configured one the key served over verified https is trusted on first use, as
    # KumoMTA's own install guide does, and pinned on this node: a later run refuses another key.
    [[ "$KUMO_REPO_KEY_URL" == https://* ]] || die "no repository key fingerprint, and $KUMO_REPO_KEY_URL is not https: set kumomta.repo_key_fingerprint"
    key_trust=first-use
    if [ -s "$(repo_key_pin)" ]; then
      key_fpr=$(cat "$(repo_key_pin)")
      key_trust=pinned-at-first-use
    fi
  fi
  case "$KUMO_PKG_FAMILY" in
    apt)
      local base=()
      for p in curl gnupg ca-certificates; do [ -n "$(installed_version "$p")" ] || base+=("$p"); done
      [ ${#base[@]} -eq 0 ] || { apt_update; pkg_install "${base[@]}"; }
      wait_for_repository
      trust_repo_key "$WORK/repo-key" "$key_fpr" "$APT_KEYRING"
      pin_first_use_key "$key_trust"
      # The list kumo-infra rendered (signed-by that one key), never one fetched from the repository host.
      install -m 0644 "$CONF_DIR/kumomta.list" /etc/apt/sources.list.d/kumomta.list
      apt_update || die "apt-get update failed with the KumoMTA repository"
      [ -n "$KUMO_VERSION" ] && want="$KUMO_PACKAGE=$KUMO_VERSION"
      ;;
    dnf | yum)
      command -v gpg >/dev/null || pkg_install gnupg2
      wait_for_repository
      trust_repo_key "$WORK/repo-key" "$key_fpr" "$RPM_KEY" --armor
      pin_first_use_key "$key_trust"
      install -m 0644 "$CONF_DIR/kumomta.repo" /etc/yum.repos.d/kumomta.repo
      pkg_install ca-certificates
      [ -n "$KUMO_VERSION" ] && want="$KUMO_PACKAGE-$KUMO_VERSION"
      ;;
  esac
  fact repo_key_fingerprint "$(json_str "$REPO_KEY_TRUSTED")"
  fact repo_key_trust "$(json_str "$key_trust")"
  # The stable and dev packages conflict: switching channel removes the other one first.
  if [ -n "$(installed_version "$KUMO_OTHER_PACKAGE")" ]; then pkg_remove "$KUMO_OTHER_PACKAGE"; fi
  pkg_install "$want" ${tools[@]+"${tools[@]}"} || die "installing $want failed (see $LOG)"
  current=$(installed_version "$KUMO_PACKAGE")
  [ -n "$current" ] || die "$KUMO_PACKAGE is not installed after the install step"
  id kumod >/dev/null 2>&1 || die "the package did not create the kumod user"
  fact kumomta_version "$(json_str "$current")"
  changed "installed $KUMO_PACKAGE $current"
}

# A whole disk in use by nothing: no mounted filesystem, no partitions, no holder (md, LVM, dm).
is_block_device() { [ -b "$1" ]; }

device_is_free() {
  local dev=$1 name
  is_block_device "$dev" || return 1
  name=$(basename "$dev")
  [ -z "$(lsblk -nro MOUNTPOINT "$dev" 2>/dev/null | tr -d '[:space:]')" ] || return 1
  [ "$(lsblk -nro NAME "$dev" 2>/dev/null | wc -l)" -eq 1 ] || return 1
  [ -z "$(ls -A "$SYSFS/class/block/$name/holders" 2>/dev/null)" ] || return 1
}

# Every signature type on DEV (filesystem, RAID, partition table, LVM ...), one per line.
# wipefs finds them all, at any offset; blkid -p adds a partition table it reports.
# Prints nothing for a blank device; fails when the device cannot be read (never "blank" then).
device_signatures() {
  local dev=$1 found pttype
  found=$(wipefs --no-act --noheadings --parsable --output TYPE "$dev") || return 1
  pttype=$(blkid -p -o value -s PTTYPE "$dev" 2>/dev/null || true)
  printf '%s\n' "$found" "$pttype" | sed '/^$/d' | sort -u
}

device_is_blank() {
  local sigs
  sigs=$(device_signatures "$1") || return 1
  [ -z "$sigs" ]
}

# Blank, or carrying only the filesystem or RAID membership kumo-infra made (label or md name
# kumospool): never someone else's data. Prints why not.
device_is_ours_or_blank() {
  local dev=$1 sigs label
  sigs=$(device_signatures "$dev") || { echo "cannot read its signatures"; return 1; }
  [ -z "$sigs" ] && return 0
  label=$(blkid -p -o value -s LABEL "$dev" 2>/dev/null || true)
  case "$sigs" in
    xfs | ext4) [ "$label" = "$SPOOL_LABEL" ] && return 0 ;;
    # An md member's label is the array name, HOMEHOST:NAME.
    linux_raid_member) [ "$label" = "$SPOOL_LABEL" ] || [[ "$label" == *":$SPOOL_LABEL" ]] && return 0 ;;
  esac
  echo "holds $(echo "$sigs" | paste -sd, -)${label:+ labelled $label}, not made by kumo-infra"
  return 1
}

nvme_model() { sed 's/[[:space:]]*$//' "$SYSFS/block/$(basename "$1")/device/model" 2>/dev/null; }

# spool_candidate DEV: may DEV hold the spool? Refusals are recorded in $WORK/spool-refused.
spool_candidate() {
  local dev=$1 why
  if ! device_is_free "$dev"; then
    printf '%s\t%s\n' "$dev" "in use (mounted, partitioned or held by md/LVM)" >>"$WORK/spool-refused"
    return 1
  fi
  if ! why=$(device_is_ours_or_blank "$dev"); then
    printf '%s\t%s\n' "$dev" "$why" >>"$WORK/spool-refused"
    return 1
  fi
}

# Print the spool's devices, one per line, at most KUMO_SPOOL_DEVICES of them.
# Block: only the exact paths of the volume the component attached (KUMO_SPOOL_DEVICE_PATHS),
# never a scan. Local NVMe: the target's stable names for instance storage (the globs of
# KUMO_NVME_DEVICE_GLOBS), else a scan of NVMe disks that are not EBS volumes; each one free
# and blank or already ours.
find_spool_devices() {
  local candidates=() dev seen=" " found=() globs=() pattern
  : >"$WORK/spool-refused"
  case "$KUMO_SPOOL_STORAGE" in
    block) read -r -a candidates <<<"$KUMO_SPOOL_DEVICE_PATHS" ;;
    local_nvme)
      read -r -a globs <<<"$KUMO_NVME_DEVICE_GLOBS"
      for pattern in ${globs[@]+"${globs[@]}"}; do
        # Pathname expansion only, sorted as the shell sorts it, each match one word: read split
        # the patterns at blanks, so none is left to split at, and a value is never evaluated.
        # shellcheck disable=SC2206
        candidates+=($pattern)
      done
      ;;
  esac
  for dev in ${candidates[@]+"${candidates[@]}"}; do
    [[ "$dev" == *-part* ]] && continue
    [ -e "$dev" ] || continue
    dev=$(readlink -f "$dev")
    [[ "$seen" == *" $dev "* ]] && continue
    seen+="$dev "
    spool_candidate "$dev" && found+=("$dev")
  done
  if [ ${#found[@]} -eq 0 ] && [ "$KUMO_SPOOL_STORAGE" = local_nvme ]; then
    # No stable name (an image without the cloud's udev rules, or another platform).
    for dev in "$SYSFS"/block/nvme*n*; do
      dev=$DEVDIR/$(basename "$dev")
      is_block_device "$dev" || continue
      [[ "$(nvme_model "$dev")" == "Amazon Elastic Block Store" ]] && continue
      spool_candidate "$dev" && found+=("$dev")
    done
  fi
  [ ${#found[@]} -eq 0 ] || printf '%s\n' "${found[@]:0:$KUMO_SPOOL_DEVICES}"
}

spool_facts() {
  local source
  source=$(findmnt -no SOURCE "$SPOOL")
  fact spool_mounted "true"
  fact spool_source "$(json_str "$source")"
  fact spool_fstype "$(json_str "$(findmnt -no FSTYPE "$SPOOL")")"
  fact spool_options "$(json_str "$(findmnt -no OPTIONS "$SPOOL")")"
  fact spool_owner "$(json_str "$(stat -c %U:%G "$SPOOL")")"
  fact spool_mode "$(json_str "$(stat -c %a "$SPOOL")")"
  fact spool_size_bytes "$(lsblk -bdno SIZE "$source" 2>/dev/null || echo 0)"
}

ensure_spool_ownership() {
  # The package creates the spool kumod-owned only if it did not exist; a mount on top
  # leaves the mount point root-owned, and kumod could not write.
  if [ "$(stat -c %U:%G:%a "$SPOOL")" != "kumod:kumod:2770" ]; then
    chown kumod:kumod "$SPOOL"
    chmod 2770 "$SPOOL"
    changed "ownership of $SPOOL set to kumod:kumod 2770"
  fi
}

# The spool's fstab line: by label (a wiped, re-created disk keeps it), noatime (KumoMTA's
# spool wants it: no inode write for every read), nofail (a missing local disk must not stop
# the boot; kumo-spool.service re-creates it).
spool_fstab_line() { printf 'LABEL=%s %s %s noatime,nofail 0 2\n' "$SPOOL_LABEL" "$SPOOL" "$KUMO_SPOOL_FS"; }

ensure_spool_fstab() {
  local line
  line=$(spool_fstab_line)
  if ! grep -qxF "$line" "$FSTAB"; then
    # Replace whatever mounted the spool before. awk compares the mount point field as a
    # string: no value ever becomes part of a sed or awk program.
    awk -v mp="$SPOOL" '/^[[:space:]]*#/ || $2 != mp' "$FSTAB" >"$FSTAB.kumo-new"
    printf '%s\n' "$line" >>"$FSTAB.kumo-new"
    chmod --reference="$FSTAB" "$FSTAB.kumo-new" 2>/dev/null || chmod 0644 "$FSTAB.kumo-new"
    mv -f "$FSTAB.kumo-new" "$FSTAB"
    changed "fstab entry for $SPOOL"
  fi
}

# Mount the spool from fstab, and make sure it is $1 that ends up there. systemd mounts
# the fstab entry by itself the moment a re-created filesystem's label appears, so our
# own mount can lose that race ("already mounted", exit 32): that is success, not failure.
mount_spool() {
  local want source tries=0 max_tries=30
  want=$(readlink -f "$1")
  until mountpoint -q "$SPOOL"; do
    mount "$SPOOL" 2>>"$LOG" && break
    tries=$((tries + 1))
    [ "$tries" -lt "$max_tries" ] || die "cannot mount $SPOOL from $1 (see $LOG)"
    sleep 1
  done
  source=$(readlink -f "$(findmnt -no SOURCE "$SPOOL")")
  [ "$source" = "$want" ] || die "$SPOOL is mounted from $source, not the spool device $want"
}

# mounted_spool_is_ours SOURCE: may the spool mount come from SOURCE? Block: only the exact
# volume the component attached; local NVMe: the RAID set kumo-infra made, or an NVMe disk that
# is not an EBS volume. Another kumo-infra spool (an old volume attached to drain it) carries
# the same label, and systemd may mount it by that label.
mounted_spool_is_ours() {
  local source=$1 dev paths=()
  case "$KUMO_SPOOL_STORAGE" in
    block)
      read -r -a paths <<<"$KUMO_SPOOL_DEVICE_PATHS"
      for dev in ${paths[@]+"${paths[@]}"}; do
        [ -e "$dev" ] && [ "$(readlink -f "$dev")" = "$source" ] && return 0
      done
      ;;
    local_nvme)
      [ -e "/dev/md/$SPOOL_LABEL" ] && [ "$(readlink -f "/dev/md/$SPOOL_LABEL")" = "$source" ] && return 0
      [[ "$source" == "$DEVDIR"/nvme*n* ]] && [[ "$(nvme_model "$source")" != "Amazon Elastic Block Store" ]] && return 0
      ;;
  esac
  return 1
}

step_spool() {
  local devs=() target fstype label line source
  id kumod >/dev/null 2>&1 || die "user kumod does not exist: KumoMTA is not installed"
  if [ "$KUMO_SPOOL_STORAGE" = directory ]; then
    # No spool device (the ssh target without spool.device): the spool stays a directory on
    # the filesystem holding it, the OS disk unless the operator mounted one there. Nothing is
    # formatted, mounted or written to fstab.
    mkdir -p "$SPOOL"
    ensure_spool_ownership
    source=$(findmnt -no TARGET -T "$SPOOL")
    fact spool_mounted false
    fact spool_directory "$(json_str "$SPOOL")"
    fact spool_filesystem "$(json_str "$source")"
    fact spool_owner "$(json_str "$(stat -c %U:%G "$SPOOL")")"
    warn "the spool is a directory on the filesystem at $source (no spool_device): mail shares that disk with the OS and the logs"
    return 0
  fi
  if mountpoint -q "$SPOOL"; then
    source=$(readlink -f "$(findmnt -no SOURCE "$SPOOL")")
    mounted_spool_is_ours "$source" || die "$SPOOL is mounted from $source, which is not this node's spool device (another kumo-infra spool, attached to drain it, carries the same label); unmount it and detach or relabel that disk"
    ensure_spool_ownership
    spool_facts
    return 0
  fi
  [ -e "/dev/md/$SPOOL_LABEL" ] && mdadm --detail "/dev/md/$SPOOL_LABEL" >/dev/null 2>&1 && target=/dev/md/$SPOOL_LABEL
  if [ -z "${target:-}" ]; then
    # A block volume may be attached a little after the machine starts: wait for it.
    local deadline=$((SECONDS + KUMO_DEVICE_WAIT_S))
    mapfile -t devs < <(find_spool_devices)
    # The exact block volume holding someone else's data will not change by waiting.
    while [ ${#devs[@]} -eq 0 ] && [ "$SECONDS" -lt "$deadline" ] \
      && ! { [ "$KUMO_SPOOL_STORAGE" = block ] && [ -s "$WORK/spool-refused" ]; }; do
      sleep 3
      udevadm settle 2>/dev/null || true
      mapfile -t devs < <(find_spool_devices)
    done
    local refused=()
    mapfile -t refused < <(tr '\t' ' ' <"$WORK/spool-refused")
    fact spool_devices_refused "$(json_array ${refused[@]+"${refused[@]}"})"
    [ ${#devs[@]} -gt 0 ] || die "no free $KUMO_SPOOL_STORAGE device found for the spool (expected $KUMO_SPOOL_DEVICES)${refused[*]:+; refused: ${refused[*]}}; refusing to put the spool on the OS disk or on another disk"
    [ ${#devs[@]} -ge "$KUMO_SPOOL_DEVICES" ] || detail "found ${#devs[@]} of $KUMO_SPOOL_DEVICES expected spool devices: ${devs[*]}"
    fact spool_devices "$(json_array "${devs[@]}")"
    if [ ${#devs[@]} -gt 1 ]; then
      target=/dev/md/$SPOOL_LABEL
      if mdadm --examine "${devs[0]}" >/dev/null 2>&1; then
        mdadm --assemble "$target" "${devs[@]}"
      else
        # Checked again right before writing: nothing may have appeared since the scan.
        for dev in "${devs[@]}"; do
          device_is_blank "$dev" || die "$dev is not blank ($(device_signatures "$dev" | paste -sd, -)); refusing to build the spool RAID over it"
        done
        # RAID0 across every local NVMe device: the spool is as fast as all of them. No --run:
        # mdadm then asks before writing over what it recognises as data, and with stdin closed
        # the answer is no ("create aborted"). It recognises only ext2/3/4, reiserfs, RAID members
        # and partition tables (Create.c: check_ext2/check_reiser/check_raid/check_partitions),
        # not XFS or LVM: the wipefs check above is the guard, mdadm's question a second net.
        mdadm --create "$target" --name="$SPOOL_LABEL" --level=0 --raid-devices=${#devs[@]} "${devs[@]}" </dev/null
      fi
      changed "assembled RAID0 $target"
    else
      target=${devs[0]}
    fi
  fi
  fstype=$(blkid -p -o value -s TYPE "$target" 2>/dev/null || true)
  label=$(blkid -p -o value -s LABEL "$target" 2>/dev/null || true)
  if [ -z "$fstype" ]; then
    device_is_blank "$target" || die "$target is not blank ($(device_signatures "$target" | paste -sd, -)); refusing to format it"
    # Never forced (-f / -F): mkfs refuses, or asks and reads "no" from the closed stdin,
    # when it finds a filesystem or partition table.
    case "$KUMO_SPOOL_FS" in
      xfs) mkfs.xfs -q -K -L "$SPOOL_LABEL" "$target" </dev/null ;;
      ext4) mkfs.ext4 -q -E nodiscard -m 0 -L "$SPOOL_LABEL" "$target" </dev/null ;;
    esac
    changed "created $KUMO_SPOOL_FS on $target"
    udevadm settle || true
  elif [ "$label" != "$SPOOL_LABEL" ]; then
    die "$target already holds a $fstype filesystem that kumo-infra did not make; refusing to format it"
  fi
  # Mail already spooled on the OS disk would be hidden by the mount: stop rather than lose it.
  if [ -d "$SPOOL" ] && [ -n "$(find "$SPOOL" -mindepth 1 -type f -print -quit)" ]; then
    die "$SPOOL holds files on the OS disk; move them away before the spool disk is mounted over them"
  fi
  ensure_spool_fstab
  systemctl daemon-reload
  mkdir -p "$SPOOL"
  mount_spool "$target"
  changed "mounted $SPOOL"
  ensure_spool_ownership
  spool_facts
}

step_tuning() {
  local key op wanted current value new="$WORK/sysctl.conf" applied=""
  {
    echo "# Written by kumo-bootstrap from $CONF_DIR/sysctl.wanted (capacities raised, never lowered)."
    while read -r key op wanted; do
      [ -z "$key" ] || [[ "$key" == \#* ]] && continue
      current=$(sysctl -n "$key" 2>/dev/null | xargs) || continue
      [ -n "$current" ] || continue
      value=$wanted
      if [ "$op" = ">=" ] && [[ "$wanted" =~ ^[0-9]+$ && "$current" =~ ^[0-9]+$ ]] && num_gt "$current" "$wanted"; then
        value=$current
      fi
      echo "$key = $value"
    done <"$CONF_DIR/sysctl.wanted"
  } >"$new"
  if ! cmp -s "$new" "$SYSCTL_FILE"; then
    install -m 0644 "$new" "$SYSCTL_FILE"
    changed "wrote $SYSCTL_FILE"
  fi
  sysctl -q -p "$SYSCTL_FILE" >/dev/null
  while IFS='=' read -r key _; do
    key=$(echo "$key" | xargs)
    [ -z "$key" ] || [[ "$key" == \#* ]] && continue
    applied+="${applied:+,}$(json_str "$key"):$(json_str "$(sysctl -n "$key" | xargs)")"
  done <"$SYSCTL_FILE"
  fact sysctl "{$applied}"
  fact nofile_limit "$(json_str "$(systemctl show kumomta -p LimitNOFILE --value 2>/dev/null || true)")"
}

python_bin() {
  # Rocky/Alma 8 ship only the platform python unless python3 was installed.
  command -v python3 && return 0
  [ -x /usr/libexec/platform-python ] && echo /usr/libexec/platform-python
}

step_secrets() {
  local ref path py rc count=0 kept=0 deadline=$((SECONDS + KUMO_SECRET_WAIT_S))
  py=$(python_bin) || die "no python3 on this machine to fetch secrets with"
  while IFS=$'\t' read -r ref path; do
    [ -z "$ref" ] || [[ "$ref" == \#* ]] && continue
    install -d -o root -g kumod -m 0750 "$(dirname "$path")"
    # The machine's read grant may still be propagating (Azure RBAC takes minutes): exit 1 is
    # retried. Exit 2: the reference or the environment is wrong, and waiting cannot change that.
    # Exit 3: nothing was delivered for it in this run (a delivered secret, kumo-bootstrap run by
    # hand): the installed copy stands.
    rc=0
    until "$py" "$FETCH_SECRET" "$ref" >"$WORK/secret" 2>"$WORK/fetch.err"; do
      rc=$?
      if [ "$rc" -eq 2 ] || [ "$rc" -eq 3 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
      sleep 10
      rc=0
    done
    case $rc in
      0) install_if_changed "$WORK/secret" "$path" 0640 "secret $path"; count=$((count + 1)) ;;
      3) [ -f "$path" ] || die "secret $path was never delivered: $(tail -n 1 "$WORK/fetch.err")"; kept=$((kept + 1)) ;;
      *) die "cannot fetch secret $ref: $(tail -n 1 "$WORK/fetch.err")" ;;
    esac
    rm -f "$WORK/secret"
  done <"$CONF_DIR/secrets.list"
  # Installed: the staged copies go at once.
  rm -rf "$DELIVERED_DIR"
  fact secrets_fetched "$count"
  [ "$kept" -eq 0 ] || detail "$kept secret(s) not delivered in this run: the installed copies stand"
}

# -- the fleet's peer list, again (kumo-fleet-peers.timer) ------------------------------------
# The TSA daemon and kumod read it only when they start (their listeners' trusted_hosts, the TSA
# daemons kumod publishes to): after kumo-infra roll replaced a node (a new private address), the
# others would go on publishing to the old address and refuse the new one's transfers.
# KUMO_FLEET_PEERS_PATH is empty but on fleet nodes that fetch their secrets.
peers_reference() {
  awk -F'\t' -v path="$KUMO_FLEET_PEERS_PATH" '$2 == path { print $1; exit }' "$CONF_DIR/secrets.list"
}

# Whether kumod holds kumo-infra drain's suspension, which lives in its memory only: a restart
# would end the drain and let the node take mail again.
being_drained() {
  local answer
  if ! answer=$(curl -fsS --max-time 10 "http://127.0.0.1:$KUMO_HTTP_PORT/api/admin/suspend/v1" 2>&1); then
    systemctl is-active --quiet kumomta || return 1
    die "cannot ask kumod whether it is being drained ($answer); $KUMO_FLEET_PEERS_PATH left as it is"
  fi
  [[ "$answer" == *"$KUMO_DRAIN_DOMAIN"* ]]
}

step_peers() {
  local ref py
  [ -n "$KUMO_FLEET_PEERS_PATH" ] || die "this node refreshes no peer list: it is no fleet's, or its secrets are delivered to it"
  ref=$(peers_reference)
  [ -n "$ref" ] || die "$CONF_DIR/secrets.list names no secret for $KUMO_FLEET_PEERS_PATH"
  py=$(python_bin) || die "no python3 on this machine to fetch the peer list with"
  # One attempt (the timer tries again): a failed fetch changes nothing.
  "$py" "$FETCH_SECRET" "$ref" >"$WORK/peers" 2>"$WORK/fetch.err" \
    || die "cannot fetch the peer list $ref (exit $?): $(tail -n 1 "$WORK/fetch.err"); $KUMO_FLEET_PEERS_PATH left as it is"
  [ -s "$WORK/peers" ] || die "the peer list $ref is empty; $KUMO_FLEET_PEERS_PATH left as it is"
  if cmp -s "$WORK/peers" "$KUMO_FLEET_PEERS_PATH"; then
    detail "peer list unchanged"
    return 0
  fi
  if being_drained; then
    detail "peer list changed, not applied while kumo-infra drain empties this node (a restart would end the drain)"
    return 0
  fi
  install_if_changed "$WORK/peers" "$KUMO_FLEET_PEERS_PATH" 0640 "peer list $KUMO_FLEET_PEERS_PATH"
  # A restart (only of a running service) stops kumod gracefully: the spool stays, open SMTP
  # sessions get "421 4.3.2 shutting down" between commands (crates/kumod/src/smtp_server.rs
  # check_shutdown) and their senders retry; a message not yet accepted is not lost, only sent again.
  systemctl try-restart "$TSA_UNIT"
  changed "restarted $TSA_UNIT (peer list changed)"
  systemctl try-restart kumomta
  changed "restarted kumomta (peer list changed)"
  rm -f "$STATE_DIR/restart-needed"
}

# install_if_changed SRC DST MODE [WHAT]: replace DST (root:kumod, in one step) only when it
# differs; kumod then needs a restart, and the change is recorded as WHAT.
install_if_changed() {
  local src=$1 dst=$2 mode=$3 what=${4:-$2}
  if ! cmp -s "$src" "$dst"; then
    install -o root -g kumod -m "$mode" "$src" "$dst.kumo-new"
    mv -f "$dst.kumo-new" "$dst"
    : >"$STATE_DIR/restart-needed"
    changed "$what"
  fi
}

# The address this machine sends from: the source of its route to the internet (a route lookup
# sends nothing). The policy binds the node's egress source to it.
route_source() {
  ip -o "$1" route get "$2" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }'
}

step_source() {
  local addr
  addr=$(route_source -4 1.1.1.1)
  [ -n "$addr" ] || addr=$(route_source -6 2606:4700:4700::1111)
  [ -n "$addr" ] || die "no route to the internet to take the source address from"
  [[ "$addr" =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ || "$addr" =~ ^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$ ]] || die "the route's source address is not an IP address: $addr"
  # As JSON values (json_str), never as code.
  printf '{"source":{%s:{"source_address":%s}}}\n' "$(json_str "$KUMO_HOSTNAME")" "$(json_str "$addr")" >"$WORK/sources.json"
  install_if_changed "$WORK/sources.json" "$SOURCES" 0644 "source address $addr"
  fact source_address "$(json_str "$addr")"
}

# kumod's node id (crates/kumo-server-common/src/nodeid.rs, /opt/kumomta/etc/.nodeid, made by
# kumod at its first start) names the node in its logs and to xfer, which refuses a message from
# a node with its own id (crates/kumod/src/xfer): a machine cloned from a configured one would
# keep its source's id. So it is made here, once per machine (its /etc/machine-id).
ensure_node_id() {
  local machine mark=$STATE_DIR/nodeid.machine
  machine=$(cat "$MACHINE_ID_FILE" 2>/dev/null || true)
  if [ -s "$NODE_ID_FILE" ] && { [ ! -f "$mark" ] || [ "$(cat "$mark")" = "$machine" ]; }; then
    # Made by kumod before kumo-infra (an existing machine), or here for this machine: kept.
    [ -f "$mark" ] || printf '%s\n' "$machine" >"$mark"
  else
    # Without a newline: kumod parses the whole file as the UUID.
    printf '%s' "$(cat "$PROC/sys/kernel/random/uuid")" >"$WORK/nodeid"
    install -o root -g kumod -m 0644 "$WORK/nodeid" "$NODE_ID_FILE"
    printf '%s\n' "$machine" >"$mark"
    : >"$STATE_DIR/restart-needed"
    changed "node id for this machine"
  fi
  fact node_id "$(json_str "$(cat "$NODE_ID_FILE")")"
}

step_policy() {
  local staged
  ensure_node_id
  # Before the policy's validation, which loads them (shaping.lua validate_config).
  install_if_changed "$CONF_DIR/shaping_custom.toml" "$SHAPING_CUSTOM" 0640
  install_if_changed "$CONF_DIR/tsa_init.lua" "$TSA_POLICY" 0640
  staged=$(dirname "$POLICY")/.init.lua.kumo-infra
  install -o root -g kumod -m 0640 "$CONF_DIR/init.lua" "$staged"
  # Validate the new policy as kumod before it replaces the running one.
  if ! runuser -u kumod -- "$KUMOD" --policy "$staged" --validate >"$WORK/validate.out" 2>&1; then
    rm -f "$staged"
    die "policy validation failed: $(tail -n 5 "$WORK/validate.out" | tr '\n' ' ')"
  fi
  install_if_changed "$staged" "$POLICY" 0640 "policy $POLICY"
  rm -f "$staged"
  install_if_changed "$CONF_DIR/kumod.env" /opt/kumomta/etc/kumod.env 0640
  fact policy_sha256 "$(json_str "$(sha256sum "$POLICY" | cut -d' ' -f1)")"
}

enable_unit() {
  if ! systemctl is-enabled --quiet "$1"; then
    systemctl enable "$1"
    changed "enabled $1"
  fi
}

step_start() {
  systemctl daemon-reload
  enable_unit kumo-spool.service
  enable_unit kumo-log-retention.timer
  systemctl is-active --quiet kumo-log-retention.timer || { systemctl start kumo-log-retention.timer; changed "started kumo-log-retention.timer"; }
  if [ -n "$KUMO_FLEET_PEERS_PATH" ]; then
    enable_unit "$PEERS_TIMER"
    start_unit "$PEERS_TIMER"
  fi
  # The TSA daemon first: kumod publishes to it and subscribes to it from its start. It reads the
  # same files and secrets (the peers), so it restarts with kumod.
  enable_unit "$TSA_UNIT"
  if systemctl is-active --quiet "$TSA_UNIT"; then
    if [ -f "$STATE_DIR/restart-needed" ]; then systemctl restart "$TSA_UNIT"; changed "restarted $TSA_UNIT"; fi
  else
    systemctl start "$TSA_UNIT"
    changed "started $TSA_UNIT"
  fi
  systemctl is-active --quiet "$TSA_UNIT" || die "$TSA_UNIT is not running: $(journalctl -u "$TSA_UNIT" --no-pager -n 5 2>&1 | tr '\n' ' ')"
  enable_unit kumomta.service
  if systemctl is-active --quiet kumomta; then
    if [ -f "$STATE_DIR/restart-needed" ]; then systemctl restart kumomta; changed "restarted kumomta (policy or secret changed)"; fi
  else
    systemctl start kumomta
    changed "started kumomta"
  fi
  rm -f "$STATE_DIR/restart-needed"
}

# -- OS updates, time sync, SSH -------------------------------------------------------
# install_config SRC DST [WHAT]: replace DST (root:root 0644) only when it differs.
install_config() {
  local src=$1 dst=$2 what=${3:-$2}
  if ! cmp -s "$src" "$dst"; then
    install -D -m 0644 "$src" "$dst.kumo-new"
    mv -f "$dst.kumo-new" "$dst"
    changed "$what"
  fi
}

start_unit() {
  if ! systemctl is-active --quiet "$1"; then
    systemctl start "$1"
    changed "started $1"
  fi
}

disable_unit() {
  if systemctl is-enabled --quiet "$1" 2>/dev/null || systemctl is-active --quiet "$1" 2>/dev/null; then
    systemctl disable --now "$1"
    changed "disabled $1"
  fi
}

unit_enabled_json() { if systemctl is-enabled --quiet "$1" 2>/dev/null; then echo true; else echo false; fi; }

# Automatic OS updates (deployment.os_updates), with each family's own tool; the configuration
# kumo-infra rendered is $CONF_DIR/os-updates.conf. KumoMTA itself is excluded: its version is
# kumomta.version's, applied by the install step.
step_updates() {
  local tool config units=() unit reboot_timer="" helper="" enabled="" state
  case "$KUMO_PKG_FAMILY" in
    apt) tool=unattended-upgrades config=/etc/apt/apt.conf.d/52kumo-infra-os-updates
         units=(apt-daily.timer apt-daily-upgrade.timer) ;;
    dnf) tool=dnf-automatic config=/etc/dnf/automatic.conf units=(dnf-automatic.timer)
         reboot_timer=kumo-os-reboot.timer helper=dnf-plugins-core ;;
    yum) tool=yum-cron config=/etc/yum/yum-cron.conf units=(yum-cron.service)
         reboot_timer=kumo-os-reboot.timer helper=yum-utils ;;
  esac
  if [ "$KUMO_OS_UPDATES" = off ]; then
    if [ "$KUMO_PKG_FAMILY" = apt ]; then
      # Unattended-Upgrade "0": apt's timers then only refresh the package lists.
      install_config "$CONF_DIR/os-updates.conf" "$config" "$config (automatic updates off)"
    elif [ -n "$(installed_version "$tool")" ]; then
      disable_unit "${units[0]}"
    fi
  else
    if [ -z "$(installed_version "$tool")" ]; then
      if [ "$KUMO_PKG_FAMILY" = apt ]; then apt_update || die "apt-get update failed"; fi
      pkg_install "$tool" || die "installing $tool failed (see $LOG)"
      changed "installed $tool"
    fi
    install_config "$CONF_DIR/os-updates.conf" "$config" "$config (automatic $KUMO_OS_UPDATES updates)"
    if [ "$KUMO_OS" = al2023 ] && [ "$(cat "$DNF_RELEASEVER" 2>/dev/null)" != latest ]; then
      # Each AL2023 image is locked to its own release, and security fixes ship in later
      # releases: dnf-automatic sees them only with releasever=latest (AWS, AL2023 user guide,
      # "Deterministic upgrades through versioned repositories", /etc/dnf/vars/releasever).
      mkdir -p "$(dirname "$DNF_RELEASEVER")"
      printf 'latest\n' >"$DNF_RELEASEVER"
      changed "$DNF_RELEASEVER set to latest: updates follow new AL2023 releases"
    fi
    for unit in "${units[@]}"; do
      enable_unit "$unit"
      start_unit "$unit"
    done
  fi
  if [ -n "$reboot_timer" ]; then
    if [ "$KUMO_OS_REBOOT" = window ] && [ "$KUMO_OS_UPDATES" != off ]; then
      # needs-restarting -r tells kumo-reboot-if-needed whether an update needs a reboot.
      if [ -z "$(installed_version "$helper")" ]; then pkg_install "$helper" || die "installing $helper failed"; changed "installed $helper"; fi
      systemctl daemon-reload
      enable_unit "$reboot_timer"
      start_unit "$reboot_timer"
    else
      disable_unit "$reboot_timer"
    fi
  fi
  for unit in ${units[@]+"${units[@]}"} $reboot_timer; do
    state=$(systemctl is-enabled "$unit" 2>/dev/null || true)
    enabled+="${enabled:+,}$(json_str "$unit"):$(json_str "${state:-absent}")"
  done
  fact os_updates "{\"automatic\":$(json_str "$KUMO_OS_UPDATES"),\"reboot\":$(json_str "$KUMO_OS_REBOOT"),\"tool\":$(json_str "$tool"),\"config\":$(json_str "$config"),\"units\":{$enabled}}"
}

# The clock must be kept in sync (TLS, DKIM signature times, log times): the image's service
# is enabled if none runs, and what was found is recorded.
step_time_sync() {
  local svc active="" synced
  for svc in chronyd chrony systemd-timesyncd; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then active=$svc; break; fi
  done
  if [ -z "$active" ]; then
    for svc in chronyd chrony systemd-timesyncd; do
      systemctl list-unit-files "$svc.service" --no-legend 2>/dev/null | grep -q . || continue
      if systemctl enable --now "$svc" >/dev/null 2>&1; then
        active=$svc
        changed "enabled and started $svc"
        break
      fi
    done
  fi
  # timedatectl show needs systemd 239 (not Amazon Linux 2): "unknown" there.
  synced=$(timedatectl show -p NTPSynchronized --value 2>/dev/null || true)
  fact time_sync "{\"service\":$(json_str "$active"),\"active\":$([ -n "$active" ] && echo true || echo false),\"synchronized\":$(json_str "${synced:-unknown}")}"
  [ -n "$active" ] || detail "no time sync service (chrony or systemd-timesyncd) is installed: this machine's clock is not kept in sync"
}

# awk reads to the end: leaving early would kill sshd -T with SIGPIPE, and pipefail fail the step.
sshd_setting() { "$SSHD" -T 2>/dev/null | awk -v key="$1" '$1 == key && !seen { print $2; seen = 1 }'; }

# SSH logins by key only: password authentication off, checked with sshd's effective
# configuration (sshd -T), and turned off where an image left it on.
step_ssh() {
  local before after
  SSHD=$(command -v sshd || echo /usr/sbin/sshd)
  if [ ! -x "$SSHD" ]; then
    fact ssh_password_authentication '"no sshd"'
    return 0
  fi
  before=$(sshd_setting passwordauthentication)
  if [ -z "$before" ]; then
    detail "sshd -T gave no answer (sshd not set up?); password authentication not checked"
    fact ssh_password_authentication '"unknown"'
    return 0
  fi
  if [ "$before" != no ]; then
    cp -p "$SSHD_CONFIG" "$WORK/sshd_config.orig"
    if grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/\*\.conf' "$SSHD_CONFIG"; then
      # The first value sshd reads wins, and its drop-ins are read in name order: 01- comes
      # before cloud-init's 50-cloud-init.conf.
      printf '# Written by kumo-bootstrap: SSH logins by key only.\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' >"$WORK/sshd.conf"
      install -D -m 0600 "$WORK/sshd.conf" "$SSHD_DROPIN"
    else
      # No drop-in directory (OpenSSH before 8.2: Rocky/Alma 8, Amazon Linux 2): first in the file wins.
      { printf '# Written by kumo-bootstrap: SSH logins by key only.\nPasswordAuthentication no\n'; cat "$SSHD_CONFIG"; } >"$SSHD_CONFIG.kumo-new"
      chmod --reference="$SSHD_CONFIG" "$SSHD_CONFIG.kumo-new"
      mv -f "$SSHD_CONFIG.kumo-new" "$SSHD_CONFIG"
    fi
    if ! "$SSHD" -t >"$WORK/sshd-t.out" 2>&1; then
      # Put back what was there: a configuration sshd rejects would lock everyone out at its next start.
      rm -f "$SSHD_DROPIN"
      cp -p "$WORK/sshd_config.orig" "$SSHD_CONFIG"
      die "sshd rejects its configuration with password authentication off (left unchanged): $(head -c 300 "$WORK/sshd-t.out")"
    fi
    local unit
    for unit in ssh sshd; do
      if systemctl is-active --quiet "$unit" 2>/dev/null; then systemctl reload "$unit"; break; fi
    done
    changed "SSH password authentication turned off"
  fi
  after=$(sshd_setting passwordauthentication)
  fact ssh_password_authentication "$(json_str "$after")"
  [ "$after" = no ] || die "SSH password authentication is still '$after' after kumo-infra turned it off"
}

smtp_banner() {
  local banner=""
  exec 3<>/dev/tcp/127.0.0.1/25 || return 1
  IFS= read -r -t 10 banner <&3 || true
  printf 'QUIT\r\n' >&3 || true
  exec 3>&- 3<&-
  printf '%s' "${banner%$'\r'}"
}

step_health() {
  local deadline=$((SECONDS + KUMO_HEALTH_WAIT_S)) grace=$((SECONDS + 20)) code="" banner=""
  until [ "$code" = 200 ]; do
    code=$(curl -s -o "$WORK/liveness" -w '%{http_code}' --max-time 5 "http://127.0.0.1:$KUMO_HTTP_PORT/api/check-liveness/v1" || true)
    [ "$code" = 200 ] && break
    if ! systemctl is-active --quiet kumomta && [ "$SECONDS" -gt "$grace" ]; then
      die "kumomta is not running: $(journalctl -u kumomta --no-pager -n 5 2>&1 | tr '\n' ' ')"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "liveness answered ${code:-nothing} after ${KUMO_HEALTH_WAIT_S} s: $(head -c 300 "$WORK/liveness" 2>/dev/null)"
    sleep 2
  done
  fact liveness_http "$code"
  until [[ "$banner" == 220* ]]; do
    banner=$(smtp_banner 2>/dev/null || true)
    [[ "$banner" == 220* ]] && break
    [ "$SECONDS" -lt "$deadline" ] || die "no SMTP banner on port 25 (got: ${banner:-nothing})"
    sleep 2
  done
  fact smtp_banner "$(json_str "$banner")"
}

# Outbound TCP 25 to well-known MX hosts: every cloud blocks it by default.
step_probe25() {
  local host hosts=() result=blocked reached=""
  # Split on spaces only (no pathname expansion of a value).
  read -r -a hosts <<<"$KUMO_PROBE_HOSTS"
  for host in ${hosts[@]+"${hosts[@]}"}; do
    # The host is an argument ($1) of the inner shell, never part of its code.
    # shellcheck disable=SC2016
    if timeout "$KUMO_PROBE_TIMEOUT_S" bash -c 'exec 3<>"/dev/tcp/$1/25"' kumo-probe "$host" 2>/dev/null; then
      result=open
      reached=$host
      break
    fi
  done
  fact outbound_25 "$(json_str "$result")"
  fact outbound_25_reached "$(json_str "$reached")"
  fact outbound_mode "$(json_str "$KUMO_OUTBOUND_MODE")"
  if [ "$result" = blocked ] && [ "$KUMO_OUTBOUND_MODE" = direct ]; then
    fact deliverability '"failed"'
    die "outbound port 25 is blocked, and delivery is direct: mail will queue until the cloud lifts the block (kumo-infra port25)"
  fi
  fact deliverability '"ok"'
  detail "outbound port 25 $result; delivery mode $KUMO_OUTBOUND_MODE"
}

# -- main ------------------------------------------------------------------------------
# The result is the last line of the output (what a caller over SSH reads) and of the console.
# The timer's peers mode runs every few minutes: its lines go to the journal only.
result_line() {
  printf '%s\n' "$1"
  [ "$MODE" = peers ] || printf '%s\n' "$1" >/dev/console 2>/dev/null || true
}

console_warnings() {
  local w
  while IFS= read -r w; do result_line "KUMO-BOOTSTRAP WARNING: $w"; done < <(cat "$WORK/warnings" 2>/dev/null)
}

main() {
# shellcheck source=/dev/null
. "$CONF_DIR/bootstrap.env"
mkdir -p "$STATE_DIR"
WORK=$(mktemp -d /run/kumo-bootstrap.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
STATUS=$STATE_DIR/status.json
[ "$MODE" = spool ] && STATUS=$STATE_DIR/spool-status.json
[ "$MODE" = source ] && STATUS=$STATE_DIR/source-status.json
[ "$MODE" = peers ] && STATUS=$STATE_DIR/peers-status.json

exec 9>/run/kumo-bootstrap.lock
if [ "$MODE" = spool ] || [ "$MODE" = source ] || [ "$MODE" = peers ]; then
  # At first boot the full bootstrap holds the lock and does this itself (it starts kumod).
  flock -n 9 || { say "full bootstrap in progress; it does the $MODE step"; exit 0; }
else
  flock -w 900 9 || { say "another kumo-bootstrap is still running"; exit 1; }
fi
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "=== kumo-bootstrap $MODE $STARTED" >>"$LOG"

case "$MODE" in
  all) STEPS="network:step_network machine:step_machine other_mtas:step_other_mtas time_sync:step_time_sync ssh:step_ssh install:step_install updates:step_updates spool:step_spool tuning:step_tuning secrets:step_secrets source:step_source policy:step_policy start:step_start health:step_health" ;;
  spool) STEPS="spool:step_spool" ;;
  source) STEPS="source:step_source" ;;
  peers) STEPS="peers:step_peers" ;;
  *) say "usage: kumo-bootstrap [all|spool|source|peers]"; exit 2 ;;
esac

# Never call run_step in a condition (if, ||, &&): bash would then ignore errexit inside
# the step's subshell, and a failing command would not stop the step.
for entry in $STEPS; do
  run_step "${entry%%:*}" "${entry#*:}"
  [ -z "$FAILED_STEP" ] || break
done

if [ -n "$FAILED_STEP" ] && [ "$MODE" = source ]; then
  # Before kumod's start: never keep it from starting. The address written before stands.
  write_status failed
  result_line "KUMO-BOOTSTRAP WARNING: source address not refreshed host=$KUMO_HOSTNAME: $FAILED_DETAIL"
  exit 0
fi
if [ -n "$FAILED_STEP" ]; then
  write_status failed
  console_warnings
  result_line "KUMO-BOOTSTRAP FAILED step=$FAILED_STEP host=$KUMO_HOSTNAME: $FAILED_DETAIL"
  logger -t kumo-bootstrap -p user.err "FAILED step=$FAILED_STEP: $FAILED_DETAIL" 2>/dev/null || true
  exit 1
fi

DELIVERY=""
if [ "$MODE" = all ]; then
  # Deliverability is reported, never fatal: inbound mail and the spool work regardless.
  run_step probe25 step_probe25
  if [ -z "$FAILED_STEP" ]; then DELIVERY="deliverability=ok"; else DELIVERY="deliverability=FAILED ($FAILED_DETAIL)"; FAILED_STEP=""; fi
fi
write_status ok
console_warnings
result_line "KUMO-BOOTSTRAP OK host=$KUMO_HOSTNAME changed=$ANY_CHANGED${DELIVERY:+ $DELIVERY}"
exit 0
}

# Sourced (by the tests) it only defines the functions; executed, it runs.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
