"""Render KumoMTA's policy, ``/opt/kumomta/etc/policy/init.lua``, from the deployment.

Safe by construction: relaying only from loopback and ``kumomta.relay_cidrs`` (whose
coverage of public addresses is bounded at validation, kumo_infra/addresses.py); the HTTP API trusts loopback only and is
reachable from ``network.api_cidrs`` only through TLS (with the deployment's generated
certificate) and HTTP basic auth; no message is ever refused because of its headers
(signing problems are logged, and the message is sent unsigned).
"""

from __future__ import annotations

from ..config import Deployment
from ..ports import API_TLS_PORT, HTTP_PORT
from ..secretspec import (API_PASSWORD_PATH, API_TLS_CERT_PATH, API_TLS_KEY_PATH, API_USER, RELAY_PASSWORD_PATH,
                          secret_specs)

SPOOL_DIR = "/var/spool/kumomta"
LOG_DIR = "/var/log/kumomta"
LOOPBACK = ("127.0.0.1", "::1")


def lua_str(value: str) -> str:
    """A Lua string literal. Control characters never come from validated config; refuse them anyway."""
    if any(ord(c) < 32 for c in value):
        raise ValueError(f"control character in a policy value: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lua_list(values: list[str] | tuple[str, ...]) -> str:
    return "{ " + ", ".join(lua_str(v) for v in values) + " }"


def render_api_listener(deployment: Deployment, hostname: str) -> str:
    """The authenticated API listener and its basic-auth check, only with network.api_cidrs."""
    if not deployment.network.api_cidrs:
        return ""
    # tls_certificate/tls_private_key as plain strings are file paths (KeySource, crates/data-loader/
    # src/lib.rs), read when the listener starts (HttpListenerParams::start -> tls_helpers.rs
    # make_server_config in crates/kumo-server-common): a new pair needs the restart kumo-bootstrap
    # does when a fetched secret changed. The Lua comment stays short: it counts against AWS's
    # 16 KiB of user data.
    return f"""
  -- The API for network.api_cidrs (the cloud firewall opens {API_TLS_PORT} to them, never {HTTP_PORT}):
  -- TLS with the certificate kumo-infra generated (clients trust it), and HTTP basic auth checked
  -- by http_server_validate_auth_basic below. trusted_hosts stays loopback: a trusted peer needs
  -- no credentials at all (crates/kumo-server-common/src/http_server/auth.rs auth_middleware).
  kumo.start_http_listener {{
    listen = '0.0.0.0:{API_TLS_PORT}',
    hostname = {lua_str(hostname)},
    use_tls = true,
    tls_certificate = {lua_str(API_TLS_CERT_PATH)},
    tls_private_key = {lua_str(API_TLS_KEY_PATH)},
    trusted_hosts = {lua_list(LOOPBACK)},
  }}
"""


def render_api_auth(deployment: Deployment) -> str:
    if not deployment.network.api_cidrs:
        return ""
    return f"""
-- HTTP basic auth for the API listener on {API_TLS_PORT}: one user, whose password kumo-infra
-- generated and the node fetched at boot into a root:kumod 0640 file. Read at every check
-- (kumod caches each credential's answer for 60 s, crates/kumo-server-common/src/http_server/
-- auth.rs AUTH_CACHE), so a rotated password needs no restart. `true` makes the user an
-- authenticated identity: KumoMTA's default ACL (assets/acls/default.toml) then lets it inject
-- (POST /api/inject); the admin endpoints stay with trusted (loopback) peers. Any failure
-- answers false (401): a raised error would answer 500 and is cached like a refusal.
local API_USER = {lua_str(API_USER)}
local API_PASSWORD_FILE = {lua_str(API_PASSWORD_PATH)}

-- Every byte compared whatever the first difference, so the time taken says nothing about it.
local function same_secret(a, b)
  if #a ~= #b then return false end
  local diff = 0
  for i = 1, #a do
    diff = diff | (a:byte(i) ~ b:byte(i))
  end
  return diff == 0
end

kumo.on('http_server_validate_auth_basic', function(user, password)
  -- password is nil when the client sent a user name only (AuthKind::from_header).
  if user ~= API_USER or type(password) ~= 'string' or password == '' then
    return false
  end
  local loaded, expected = pcall(kumo.secrets.load, API_PASSWORD_FILE)
  if not loaded then
    kumo.log_error('HTTP API: refusing basic auth, the API password cannot be read:', expected)
    return false
  end
  expected = expected:gsub('[\\r\\n]+$', '')
  return same_secret(password, expected)
end)
"""


def render_policy(deployment: Deployment, hostname: str) -> str:
    relay_hosts = [*LOOPBACK, *deployment.kumomta.relay_cidrs]
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
  -- HTTP API on loopback (health checks, kcli on the node): loopback peers are trusted.
  kumo.start_http_listener {{
    listen = '127.0.0.1:{HTTP_PORT}',
    trusted_hosts = {lua_list(LOOPBACK)},
  }}
{render_api_listener(deployment, hostname)}
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
{render_api_auth(deployment)}{render_delivery(deployment)}"""


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
    if not keys:
        out.append("""
-- No DKIM domains configured: messages leave unsigned, and their headers are not read.
local function sign(msg) end
""")
    else:
        out.append(render_signing(deployment.dkim.selector, keys))
    out.append("""
-- Routing first, signing last: nothing may change the message after it is signed. Neither
-- raises: an error here would answer 421 to the SMTP client (crates/kumod/src/smtp_server.rs,
-- the smtp_server_message_received call) or fail the injection, for every retry.
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


def render_signing(selector: str, keys: dict[str, str]) -> str:
    """DKIM signing by the From domain, which never raises into the injection path."""
    # The keys' domains come lower-cased from the config (config._hostname), like the From
    # domain is before the lookup: DNS names compare case-insensitively.
    entries = "".join(f"\n  [{lua_str(d)}] = {lua_str(path)}," for d, path in keys.items())
    return f"""
-- DKIM: one key per sending domain, generated by kumo-infra and fetched at boot from the
-- cloud's secret store. Messages from other domains are sent unsigned.
local DKIM_SELECTOR = {lua_str(selector)}
local DKIM_KEYS = {{{entries}
}}

-- The From header's domain, lower-cased; nil without a From header. KumoMTA raises when the
-- header does not parse (crates/message/src/message.rs get_address_header) and when .domain
-- is read from a group or several addresses (crates/message/src/address.rs single_address).
local function from_domain(msg)
  local from = msg:from_header()
  return from and from.domain:lower()
end

-- Never raises: a From header KumoMTA cannot reduce to one domain, or a signer that cannot
-- be built or applied (a missing key file), leaves the message unsigned with a log line.
-- (pcall may span KumoMTA's async methods: Lua 5.4 yields across pcall.)
local function sign(msg)
  local read, domain = pcall(from_domain, msg)
  if not read then
    kumo.log_warn('DKIM: message', msg:id(), 'sent unsigned: its From header is not one address',
      'KumoMTA can parse:', domain)
    return
  end
  if domain == nil then
    kumo.log_warn('DKIM: message', msg:id(), 'sent unsigned: it has no From header')
    return
  end
  local key = DKIM_KEYS[domain]
  if key == nil then
    return
  end
  local signed, err = pcall(function()
    msg:dkim_sign(kumo.dkim.rsa_sha256_signer {{
      domain = domain,
      selector = DKIM_SELECTOR,
      headers = {lua_list(DKIM_HEADERS)},
      key = key,
    }})
  end)
  if not signed then
    kumo.log_error('DKIM: message', msg:id(), 'sent unsigned: signing for', domain, 'failed:', err)
  end
end
"""
