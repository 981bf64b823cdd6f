"""Render KumoMTA's policy, ``/opt/kumomta/etc/policy/init.lua``, from the deployment.

Safe by construction: relaying only from loopback and ``kumomta.relay_cidrs``
(an all-addresses entry is refused at validation), the HTTP API bound to
loopback unless admin networks are configured and then trusting only them.
"""

from __future__ import annotations

from ..config import Deployment
from ..secretspec import RELAY_PASSWORD_PATH, secret_specs

SPOOL_DIR = "/var/spool/kumomta"
LOG_DIR = "/var/log/kumomta"
HTTP_PORT = 8000
# The API beyond the node (network.api_cidrs): TLS and basic auth, on its own listener so the
# loopback listener on HTTP_PORT stays plain for the node's own health checks and kcli.
API_TLS_PORT = 8443
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
    purposes = {25: "Inbound SMTP from anywhere; relaying only for loopback and the configured networks."}
    purposes |= {port: f"Client submission on {port}: the same relay rules as port 25."
                 for port in deployment.network.submission_ports}
    listeners = "\n".join(f"""  -- {purpose}
  kumo.start_esmtp_listener {{
    listen = '0.0.0.0:{port}',
    hostname = {lua_str(hostname)},
    relay_hosts = {lua_list(relay_hosts)},
  }}
""" for port, purpose in purposes.items())
    return f"""-- KumoMTA policy for {hostname}, rendered by kumo-infra.
-- Edits here are replaced by the next kumo-bootstrap run: change the stack config instead.
local kumo = require 'kumo'

kumo.on('init', function()
{listeners}
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
{render_delivery(deployment)}"""


# Headers signed by DKIM: the ones receivers check, and that relays do not rewrite.
DKIM_HEADERS = ("From", "To", "Subject", "Date", "MIME-Version", "Content-Type", "Message-ID")


def render_delivery(deployment: Deployment) -> str:
    """Outbound routing (direct, or through the smarthost) and DKIM signing, as Lua."""
    relay = deployment.port25.relay if deployment.outbound_mode == "relay" else None
    keys = {s.dkim_domain: s.machine_path for s in secret_specs(deployment) if s.dkim_domain}
    if relay is None and not keys:
        return "\n-- Direct delivery to each recipient's MX hosts on port 25; no DKIM domains configured.\n"
    out = []
    if relay:
        out.append(f"""
-- Outbound port 25 is closed on this cloud: every message leaves through the authenticated
-- smarthost, on {relay.port} with STARTTLS required. The password is fetched at boot from the
-- cloud's secret store into a root:kumod 0640 file and read by KumoMTA as a keysource.
local RELAY = {{
  host = {lua_str(relay.host)},
  port = {relay.port},
  username = {lua_str(relay.username)},
  password = {lua_str(RELAY_PASSWORD_PATH)},
}}

local function route(msg)
  msg:set_meta('routing_domain', RELAY.host)
end

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if routing_domain == RELAY.host then
    -- The smarthost is named directly: it need not publish an MX record.
    return kumo.make_queue_config {{
      protocol = {{ smtp = {{ mx_list = {{ RELAY.host }} }} }},
    }}
  end
  return kumo.make_queue_config {{}}
end)

kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  if routing_domain == RELAY.host then
    return kumo.make_egress_path {{
      smtp_port = RELAY.port,
      enable_tls = 'Required',
      smtp_auth_plain_username = RELAY.username,
      smtp_auth_plain_password = RELAY.password,
    }}
  end
  return kumo.make_egress_path {{}}
end)
""")
    else:
        out.append("""
-- Direct delivery to each recipient's MX hosts on port 25.
local function route(msg) end
""")
    entries = "".join(f"\n  [{lua_str(d)}] = {lua_str(path)}," for d, path in keys.items())
    out.append(f"""
-- DKIM: one key per sending domain, generated by kumo-infra and fetched at boot from the
-- cloud's secret store. Messages from other domains are sent unsigned.
local DKIM_SELECTOR = {lua_str(deployment.dkim.selector)}
local DKIM_KEYS = {{{entries}
}}

local function sign(msg)
  local from = msg:from_header()
  local key = from and DKIM_KEYS[from.domain]
  if key then
    msg:dkim_sign(kumo.dkim.rsa_sha256_signer {{
      domain = from.domain,
      selector = DKIM_SELECTOR,
      headers = {lua_list(DKIM_HEADERS)},
      key = key,
    }})
  end
end

-- Routing first, signing last: nothing may change the message after it is signed.
kumo.on('smtp_server_message_received', function(msg)
  route(msg)
  sign(msg)
end)

kumo.on('http_message_generated', function(msg)
  route(msg)
  sign(msg)
end)
""")
    return "".join(out)
