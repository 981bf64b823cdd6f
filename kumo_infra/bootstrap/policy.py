"""Render KumoMTA's policy, ``/opt/kumomta/etc/policy/init.lua``, from the deployment.

Safe by construction: relaying only from loopback and ``kumomta.relay_cidrs``
(an all-addresses entry is refused at validation), the HTTP API bound to
loopback unless admin networks are configured and then trusting only them.
"""

from __future__ import annotations

from ..config import Deployment

SPOOL_DIR = "/var/spool/kumomta"
LOG_DIR = "/var/log/kumomta"
HTTP_PORT = 8000
LOOPBACK = ("127.0.0.1", "::1")


def lua_str(value: str) -> str:
    """A Lua string literal. Control characters never come from validated config; refuse them anyway."""
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"control character in a policy value: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lua_list(values: list[str] | tuple[str, ...]) -> str:
    return "{ " + ", ".join(lua_str(v) for v in values) + " }"


def http_listen(deployment: Deployment) -> str:
    # Bound to loopback unless operators need the API from their networks; then every
    # address, with trust (and the cloud firewall) limited to those networks.
    return f"0.0.0.0:{HTTP_PORT}" if deployment.network.admin_cidrs else f"127.0.0.1:{HTTP_PORT}"


def render_policy(deployment: Deployment, hostname: str) -> str:
    relay_hosts = [*LOOPBACK, *deployment.kumomta.relay_cidrs]
    trusted = [*LOOPBACK, *deployment.network.admin_cidrs]
    submission = "".join(
        f"""
  -- Client submission on {port}: the same relay rules as port 25.
  kumo.start_esmtp_listener {{
    listen = '0.0.0.0:{port}',
    hostname = {lua_str(hostname)},
    relay_hosts = {lua_list(relay_hosts)},
  }}
""" for port in deployment.network.submission_ports)
    return f"""-- KumoMTA policy for {hostname}, rendered by kumo-infra.
-- Edits here are replaced by the next kumo-bootstrap run: change the stack config instead.
local kumo = require 'kumo'

kumo.on('init', function()
  -- Inbound SMTP from anywhere; relaying only for loopback and the configured networks.
  kumo.start_esmtp_listener {{
    listen = '0.0.0.0:25',
    hostname = {lua_str(hostname)},
    relay_hosts = {lua_list(relay_hosts)},
  }}
{submission}
  -- HTTP API (injection, metrics, liveness): trusted hosts only.
  kumo.start_http_listener {{
    listen = {lua_str(http_listen(deployment))},
    trusted_hosts = {lua_list(trusted)},
  }}

  -- Spools on the dedicated spool disk.
  kumo.define_spool {{
    name = 'data',
    path = '{SPOOL_DIR}/data',
    kind = 'RocksDB',
  }}
  kumo.define_spool {{
    name = 'meta',
    path = '{SPOOL_DIR}/meta',
    kind = 'RocksDB',
  }}

  -- Logs are deleted after {deployment.logs.retention_days} days by kumo-log-retention.timer.
  kumo.configure_local_logs {{
    log_dir = '{LOG_DIR}',
    max_segment_duration = '1 minute',
  }}
end)
"""
