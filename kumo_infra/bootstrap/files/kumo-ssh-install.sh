#!/bin/bash
# The fixed part of kumo-infra's installer for machines that already exist (the ssh target).
# kumo_infra/bootstrap.render_ssh_installer puts it, the node's files and one call of each
# function below into kumo-infra/install.sh, which kumo-infra copies over SFTP and runs over SSH
# (bootstrap.INSTALL_COMMAND) with the deployment's secrets on standard input.
#
# Secrets never appear on a command line, in the environment or in the output: they are read
# from standard input into a root-only directory on tmpfs before anything else runs, and
# kumo-bootstrap's secrets step installs them (root:kumod 0640) and removes that directory.
# Every message here names a line number or a secret's key, never a value or an input line:
# pulumi-command keeps the output in state and puts all of it into its error on a failure.

# How kumo_infra/bootstrap.delivered_secrets_payload frames the secrets (tests check both agree).
DELIVERED_SECRETS_HEADER='kumo-infra delivered-secrets 1'
KUMO_BOOTSTRAP=/usr/local/sbin/kumo-bootstrap
INSTALL_HOST=unknown
INSTALL_STAGING=""

# The same result line kumo-bootstrap ends with, for a failure before it runs.
install_failed() {
  printf 'KUMO-BOOTSTRAP FAILED step=installer host=%s: %s\n' "$INSTALL_HOST" "$*"
  exit 1
}

# receive_delivered_secrets DIR: each secret on standard input into DIR/KEY (0600, root only).
# Input: the header line, one "KEY BASE64" line per secret, then "end COUNT" (which also proves
# nothing was cut short). Empty input (the installer run by hand): nothing is delivered, and
# kumo-bootstrap keeps the secrets it installed before.
receive_delivered_secrets() {
  local dir=$1 line number=1 count=0 key ended=false
  local entry='^([a-z0-9][a-z0-9-]{0,127}) ([A-Za-z0-9+/]*={0,2})$' end='^end ([0-9]+)$'
  [ ! -t 0 ] || install_failed "standard input is a terminal; it carries the deployment's secrets (run it as: bash install.sh </dev/null to keep the installed ones)"
  mkdir -p "$(dirname "$dir")"
  [ "$(stat -f -c %T "$(dirname "$dir")")" = tmpfs ] \
    || install_failed "$(dirname "$dir") is not a tmpfs: refusing to write the deployment's secrets to a disk"
  rm -rf "$dir"
  (umask 077 && mkdir "$dir")
  if ! IFS= read -r line; then
    [ -z "$line" ] || install_failed "standard input: line 1 is not '$DELIVERED_SECRETS_HEADER'"
    echo "kumo-infra installer: no secrets on standard input; the installed ones stay"
    return 0
  fi
  [ "$line" = "$DELIVERED_SECRETS_HEADER" ] || install_failed "standard input: line 1 is not '$DELIVERED_SECRETS_HEADER'"
  while IFS= read -r line; do
    number=$((number + 1))
    if [[ "$line" =~ $end ]]; then
      [ "${BASH_REMATCH[1]}" = "$count" ] || install_failed "standard input: its end line counts ${BASH_REMATCH[1]} secrets, $count came"
      ended=true
      break
    fi
    [[ "$line" =~ $entry ]] || install_failed "standard input: line $number is not 'KEY BASE64'"
    key=${BASH_REMATCH[1]}
    [ ! -e "$dir/$key" ] || install_failed "standard input: secret $key comes twice (line $number)"
    # printf is a builtin: the value never becomes an argument of a process.
    printf '%s' "${BASH_REMATCH[2]}" | (umask 077 && base64 -d >"$dir/$key") 2>/dev/null \
      || install_failed "standard input: secret $key is not base64 (line $number)"
    count=$((count + 1))
  done
  [ "$ended" = true ] || install_failed "standard input ended before its end line: the secrets arrived cut short"
  ! IFS= read -r line || install_failed "standard input goes on after its end line (line $((number + 1)))"
  echo "kumo-infra installer: $count secret(s) received on standard input"
}

# put_file PATH MODE: PATH (root-owned, MODE) from the base64 on standard input, replaced in one
# step and only when its content or mode differs: a second run changes nothing.
put_file() {
  local path=$1 mode=$2
  install -d -m 0755 "$(dirname "$path")"
  base64 -d >"$path.kumo-new"
  chmod "$mode" "$path.kumo-new"
  if cmp -s "$path.kumo-new" "$path" && [ "$(stat -c %a "$path")" = "$(stat -c %a "$path.kumo-new")" ]; then
    rm -f "$path.kumo-new"
  else
    mv -f "$path.kumo-new" "$path"
    echo "kumo-infra installer: wrote $path"
  fi
}

# begin_install HOST DIR: checks, then the secrets, before anything else reads standard input.
# Whatever happens next, the staged secrets go when the installer ends (kumo-bootstrap's
# secrets step removes them as soon as they are installed).
begin_install() {
  INSTALL_HOST=$1
  INSTALL_STAGING=$2
  [ "$(id -u)" -eq 0 ] || install_failed "not root (kumo-infra runs it as root, or with sudo -n)"
  umask 077
  trap 'rm -rf "$INSTALL_STAGING"' EXIT
  receive_delivered_secrets "$INSTALL_STAGING"
  # Nothing after this reads the secrets' stream: a command asking a question reads no answer.
  exec </dev/null
}

# finish_install HOST: the machine's name, then kumo-bootstrap, whose last line is the result.
finish_install() {
  # begin_install's umask 077 kept the staged secrets root-only; kumo-bootstrap and the package
  # scripts it runs create files others must read (units, configs, the kumod user's directories).
  umask 022
  if [ "$(cat /etc/hostname 2>/dev/null)" != "$1" ]; then
    hostnamectl set-hostname "$1"
    echo "kumo-infra installer: hostname set to $1"
  fi
  "$KUMO_BOOTSTRAP" all
}
