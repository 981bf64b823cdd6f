"""Render KumoMTA's policy, ``/opt/kumomta/etc/policy/init.lua``, from the deployment.

Safe by construction: relaying only from loopback and ``kumomta.relay_cidrs`` (whose
coverage of public addresses is bounded at validation, kumo_infra/addresses.py); the HTTP API trusts loopback only
(a fleet's nodes may only transfer messages to each other, and only to each other) and is reachable from
``network.api_cidrs`` only through TLS (with the deployment's generated certificate) and HTTP basic auth; no message is ever
refused because of its headers (signing problems are logged, and the message is sent unsigned).

Delivery follows KumoMTA's production setup: its shaping helper with the shipped and community
rules plus the deployment's overrides (``render_shaping_custom``), Traffic Shaping Automation
(the TSA daemon's own policy is ``render_tsa_init``), one egress source per node, the shipped
bounce classification rules and, in a fleet, throttles shared through Redis. Paths and names cite
KumoMTA's source (repository KumoCorp/kumomta); the Lua comments stay short: AWS user data is
16 KiB.
"""

from __future__ import annotations

from ..config import SHAPING_LIMITS, Deployment
from ..fleet import (DRAIN_CHECK_TTL_S, DRAIN_SUSPENSION_DOMAIN, FLEET_PEERS_PATH, REDIS_URL_PATH, XFER_QUEUE_SUFFIX,
                     is_fleet, redis_source)
from ..ports import API_TLS_PORT, HTTP_PORT, TSA_PORT
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
-- (POST /api/inject), and get_acl_definition below what kumo-infra drain needs. Any failure
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


# --- KumoMTA's files in its package (assets/install.sh:29-34 installs them under /opt/kumomta/share)
SHAPING_DEFAULT_RULES = "/opt/kumomta/share/policy-extras/shaping.toml"
SHAPING_COMMUNITY_RULES = "/opt/kumomta/share/community/shaping.toml"
BOUNCE_RULES = ("/opt/kumomta/share/bounce_classifier/iana.toml", "/opt/kumomta/share/community/bounces.toml")
# The deployment's own shaping rules (shaping.overrides) and the TSA daemon's policy, both node
# files kumo-bootstrap installs; tsa_init.lua is where the package's unit reads it
# (assets/kumo-tsa-daemon.service ExecStart --policy).
SHAPING_CUSTOM_PATH = "/opt/kumomta/etc/policy/shaping_custom.toml"
TSA_INIT_PATH = "/opt/kumomta/etc/policy/tsa_init.lua"
# The node's own source address, which exists only on the machine: kumo-bootstrap writes it
# (JSON: policy-extras/policy_utils.lua load_json_or_toml_file reads by extension).
SOURCE_ADDRESS_PATH = "/opt/kumomta/etc/sources.json"
# The one egress pool every queue uses; the same name on every node, so a message transferred to
# a peer (kumo-infra drain --to) is bound to the peer's own source there.
EGRESS_POOL = "kumo-infra"
# The TSA daemon of this node, as kumod reaches it.
LOCAL_TSA = f"http://127.0.0.1:{TSA_PORT}"


def shaping_files(deployment: Deployment) -> tuple[str, ...]:
    """The shaping rule files, in merge order (the last file wins): kumod's shaper and the TSA
    daemon load exactly this list (docs/reference/events/tsa_load_shaping_data.md)."""
    community = (SHAPING_COMMUNITY_RULES,) if deployment.shaping.community_rules else ()
    return (SHAPING_DEFAULT_RULES, *community, SHAPING_CUSTOM_PATH)


def toml_str(value: str) -> str:
    """A TOML basic string. Validated config never holds control characters; refuse them anyway."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"control character in a shaping value: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_shaping_custom(deployment: Deployment) -> str:
    """shaping_custom.toml: shaping.overrides as KumoMTA's shaping file format.

    A domain is a quoted top-level section (``["gmail.com"]``), a provider a ``[provider."NAME"]``
    section (crates/kumo-api-types/src/shaping.rs ShapingFile). Loaded after KumoMTA's rules, its
    limits replace theirs key by key (merge_files: PartialEntry/ProviderEntry::merge_from). A
    provider section without ``match`` adds nothing to the match list of the rules' provider of
    that name and keeps it (ProviderEntry.matches is appended): the override applies exactly
    where KumoMTA's rules say that provider is; a provider no loaded rule file defines matches
    nothing.
    """
    lines = ["# Shaping overrides of this deployment (shaping.overrides), rendered by kumo-infra.",
             "# Loaded after KumoMTA's rules: each key here replaces theirs."]
    for override in deployment.shaping.overrides:
        section = (f"[{toml_str(override.domain)}]" if override.domain
                   else f"[provider.{toml_str(override.provider or '')}]")
        lines += ["", section]
        for key in SHAPING_LIMITS:
            value = getattr(override, key)
            if value is not None:
                lines.append(f"{key} = {value if isinstance(value, int) else toml_str(value)}")
    return "\n".join(lines) + "\n"


def render_peers(deployment: Deployment) -> str:
    """PEERS (the fleet's private addresses, read at load), the TSA daemons to publish to and
    XFER_TARGETS, the xfer queues (routing domains) this node may deliver: one per peer.

    An xfer queue is named ``<target URL><XFER_QUEUE_SUFFIX>``, the URL as the url crate prints
    it ("http://10.0.0.6:8000/": crates/kumo-api-types/src/xfer.rs to_queue_name); kumod passes
    that name as the routing domain (crates/message/src/queue_name.rs parse, no '@' or '!' in it;
    crates/kumod/src/ready_queue.rs compute_config). A peer is never a trusted host: those get all
    of /api/admin (assets/acls/default.toml); render_acl grants the peers the xfer POST only.
    """
    suffix = f"local XFER_SUFFIX = {lua_str(XFER_QUEUE_SUFFIX)}"
    if not is_fleet(deployment):
        return f"""
-- One node: delivery results go to its own TSA daemon; no peer to transfer mail to.
local TSA_PUBLISH = {{ {lua_str(LOCAL_TSA)} }}
local XFER_TARGETS = {{}}
{suffix}
"""
    return f"""
-- The fleet's private addresses (a JSON list fetched at boot), read at every policy load:
-- every node's results go to every TSA daemon; peers may transfer mail to each other.
local PEERS = kumo.json_load({lua_str(FLEET_PEERS_PATH)})
local TSA_PUBLISH, XFER_TARGETS = {{}}, {{}}
{suffix}
for _, ip in ipairs(PEERS) do
  local host = ip:find(':', 1, true) and ('[' .. ip:lower() .. ']') or ip
  table.insert(TSA_PUBLISH, 'http://' .. host .. ':{TSA_PORT}')
  XFER_TARGETS['http://' .. host .. ':{HTTP_PORT}/' .. XFER_SUFFIX] = true
end
"""


def render_shaping(deployment: Deployment, hostname: str) -> str:
    return f"""
local HOSTNAME = {lua_str(hostname)}
{render_peers(deployment)}
-- Shaping with TSA (assets/policy-extras/shaping.lua setup_with_automation). The full file list
-- is given (no_default_files) so that it is tsa_init.lua's list exactly.
local shaper = shaping:setup_with_automation {{
  publish = TSA_PUBLISH,
  subscribe = {{ {lua_str(LOCAL_TSA)} }},
  no_default_files = true,
  extra_files = {lua_list(shaping_files(deployment))},
}}

-- One source per node: EHLO as its hostname, bound to its own address, which kumo-bootstrap
-- writes to {SOURCE_ADDRESS_PATH} (merged by name, policy-extras/sources.lua). All mail uses the
-- pool holding only it: get_queue_config below names it for every queue.
sources:setup {{
  {{
    source = {{ [HOSTNAME] = {{ ehlo_domain = HOSTNAME }} }},
    pool = {{ [{lua_str(EGRESS_POOL)}] = {{ [HOSTNAME] = {{ weight = 1 }} }} }},
  }},
  {lua_str(SOURCE_ADDRESS_PATH)},
}}
"""


def render_drain() -> str:
    return f"""
-- kumo-infra drain: new mail is refused with 421 while the admin suspension of
-- {DRAIN_SUSPENSION_DOMAIN} exists (kumo.api.admin.suspend.list, crates/kumod/src/http_server/
-- admin_suspend_v1.rs). Listed at most every {DRAIN_CHECK_TTL_S} s (memoize caches are shared by every
-- policy load); kumo-infra drain waits that long before it reads the node as empty.
local DRAIN_DOMAIN = {lua_str(DRAIN_SUSPENSION_DOMAIN)}
local draining = kumo.memoize(function()
  for _, s in ipairs(kumo.api.admin.suspend.list()) do
    if type(s.domain) == 'string' and s.domain:lower() == DRAIN_DOMAIN then
      return true
    end
  end
  return false
end, {{ name = 'user.kumo-infra-drain', ttl = '{DRAIN_CHECK_TTL_S} seconds', capacity = 1 }})

-- 4.3.2: not accepting mail (RFC 3463). Refused at MAIL FROM (421: kumod ends the session)
-- and at DATA (451, smtp_server_message_received below); HTTP injections in get_acl_definition.
local function refuse_while_draining(code)
  if draining() then
    kumo.reject(code, '4.3.2 ' .. HOSTNAME .. ' is being drained: try another node or later')
  end
end

kumo.on('smtp_server_mail_from', function(sender)
  refuse_while_draining(421)
end)
"""


# What the API user (network.api_cidrs) may do beyond KumoMTA's default ACL (which lets any
# authenticated identity inject): exactly what kumo-infra drain needs. Liveness needs no grant:
# the default ACL allows it to anyone.
API_USER_GRANTS: dict[str, tuple[str, ...]] = {
    "/api/admin/suspend/v1": ("GET", "POST", "DELETE"),
    "/api/admin/xfer/v1": ("POST",),
    "/api/admin/xfer/cancel/v1": ("POST",),
    "/metrics.json": ("GET",),
}


# The one HTTP path the fleet's nodes may use on each other's HTTP listener: kumod's xfer client
# POSTs each transferred message to /api/xfer/inject/v1 of the target URL (crates/kumod/src/xfer/
# mod.rs XferDispatcher::deliver_message). The peers are matched by address, an ACLIdentity
# MachineSet (a CidrSet, deserialized from a list of address/CIDR strings: crates/kumo-server-
# common/src/authn_authz.rs ACLIdentity, crates/cidr-map/src/set.rs).
PEER_XFER_PATH = "/api/xfer/inject/v1"


def render_acl(deployment: Deployment) -> str:
    """get_acl_definition: the API user's grants on the TLS listener (with network.api_cidrs), the
    peers' xfer POST on the fleet's HTTP listener, and the drained node's refusal of HTTP injections.

    The refusal comes before anything is accepted: an error raised here fails the ACL check, which
    kumod answers with 500 "try again later" (crates/kumo-server-common/src/http_server/auth.rs
    auth_middleware, the Err arm of query_resource_access; the error is cached for the ACL cache's
    300 ms, authn_authz.rs ACL_CACHE_TTL_MS). http_message_generated must not refuse: with
    deferred_generation the client already has its 200 and the messages are generated later
    (crates/kumod/src/http_server/inject_v1.rs inject_v1_impl -> queue_deferred; the generator
    ignores per-recipient errors, HttpInjectionGeneratorDispatcher::try_send), so a refusal there
    would drop accepted mail.
    """
    out = ["""
-- HTTP access beyond KumoMTA's default ACL (assets/acls/default.toml). kumod asks for each
-- resource from the most specific up (http_listener/<listen>/<path>, its parents, then
-- http_listener/*/...) until one ACL decides; nil keeps the default's answer
-- (crates/kumo-server-common/src/authn_authz.rs, http_server/auth.rs).
local ACLS = {}
"""]
    if deployment.network.api_cidrs:
        grants = "".join(f"\n  [{lua_str(path)}] = {lua_list(methods)}," for path, methods in API_USER_GRANTS.items())
        out.append(f"""
-- The API user's grants for kumo-infra drain, on the TLS listener only.
local API_GRANTS = {{{grants}
}}
for path, methods in pairs(API_GRANTS) do
  local rules = {{}}
  for _, method in ipairs(methods) do
    table.insert(rules, {{
      criteria = {{ Identity = {{ Individual = API_USER }} }},
      privilege = method,
      access = 'Allow',
    }})
  end
  ACLS['http_listener/0.0.0.0:{API_TLS_PORT}' .. path] = kumo.aaa.make_access_control_list(rules)
end
""")
    if is_fleet(deployment):
        out.append(f"""
-- The peers, untrusted, may only POST the messages they transfer here.
ACLS[{lua_str(f"http_listener/0.0.0.0:{HTTP_PORT}{PEER_XFER_PATH}")}] = kumo.aaa.make_access_control_list {{
  {{ criteria = {{ Identity = {{ MachineSet = PEERS }} }}, privilege = 'POST', access = 'Allow' }},
}}
""")
    out.append("""
-- A drained node fails the check of every HTTP injection (kumod answers 500 'try again
-- later'): refused before it is accepted, unlike in http_message_generated.
kumo.on('get_acl_definition', function(resource)
  local path = resource:match('^http_listener/[^/]+(/.*)$')
  if path and (path == '/api/inject' or path:find('^/api/inject/')) and draining() then
    error('kumo-infra drain: ' .. HOSTNAME .. ' is being drained: HTTP injection refused')
  end
  return ACLS[resource]
end)
""")
    return "".join(out)


def render_http_listener(deployment: Deployment) -> str:
    if not is_fleet(deployment):
        return f"""  -- HTTP API on loopback (health checks, kcli on the node): loopback peers are trusted.
  kumo.start_http_listener {{
    listen = '127.0.0.1:{HTTP_PORT}',
    trusted_hosts = {lua_list(LOOPBACK)},
  }}
"""
    return f"""  -- HTTP API for loopback and the fleet's nodes (the cloud firewall opens {HTTP_PORT} to the
  -- nodes only), which may only POST transferred messages (get_acl_definition below).
  kumo.start_http_listener {{
    listen = '0.0.0.0:{HTTP_PORT}',
    trusted_hosts = {lua_list(LOOPBACK)},
  }}
"""


def render_redis(deployment: Deployment) -> str:
    if redis_source(deployment) == "none":
        return ""
    return f"""
  -- Throttles shared by the fleet (crates/kumo-server-common/src/lib.rs). The URL, with its
  -- credentials, is a secret fetched at boot; rediss:// is TLS (redis-rs, tls-native-tls).
  local redis_url = kumo.secrets.load({lua_str(REDIS_URL_PATH)}):gsub('%s+$', '')
  kumo.configure_redis_throttles {{ node = redis_url }}
"""


def render_policy(deployment: Deployment, hostname: str) -> str:
    relay_hosts = [*LOOPBACK, *deployment.kumomta.relay_cidrs]
    purposes = {25: "Inbound SMTP from anywhere; relaying only for loopback and the configured networks."}
    purposes |= {port: f"Client submission on {port}: the same relay rules as port 25."
                 for port in deployment.network.submission_ports}
    listeners = "\n".join(f"""  -- {purpose}
  kumo.start_esmtp_listener {{
    listen = '0.0.0.0:{port}',
    hostname = HOSTNAME,
    relay_hosts = {lua_list(relay_hosts)},
  }}
""" for port, purpose in purposes.items())
    return f"""-- KumoMTA policy for {hostname}, rendered by kumo-infra.
-- Edits here are replaced by the next kumo-bootstrap run: change the stack config instead.
local kumo = require 'kumo'
local shaping = require 'policy-extras.shaping'
local sources = require 'policy-extras.sources'
{render_shaping(deployment, hostname)}
kumo.on('init', function()
{listeners}
{render_http_listener(deployment)}{render_api_listener(deployment, hostname)}
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

  -- Bounces classified by the rules KumoMTA ships (crates/kumod/src/logging/classify.rs).
  kumo.configure_bounce_classifier {{
    files = {lua_list(BOUNCE_RULES)},
  }}
{render_redis(deployment)}
  -- Delivery results to the TSA daemons; suspensions from the local one.
  shaper.setup_publish()
end)
{render_api_auth(deployment)}{render_drain()}{render_acl(deployment)}{render_delivery(deployment)}"""


def render_tsa_init(deployment: Deployment) -> str:
    """The TSA daemon's policy (tsa_init.lua): its listener and the shaping files kumod loads."""
    if is_fleet(deployment):
        listen, trusted, peers = f"0.0.0.0:{TSA_PORT}", "TRUSTED", f"""
-- The fleet's nodes publish here too (their addresses: a JSON list fetched at boot).
local TRUSTED = {lua_list(LOOPBACK)}
for _, ip in ipairs(kumo.json_load({lua_str(FLEET_PEERS_PATH)})) do
  table.insert(TRUSTED, ip)
end
"""
    else:
        listen, trusted, peers = f"127.0.0.1:{TSA_PORT}", lua_list(LOOPBACK), ""
    return f"""-- TSA daemon policy for {deployment.name}, rendered by kumo-infra (after KumoMTA's
-- assets/tsa_init.lua). Replaced by the next kumo-bootstrap run: change the stack config instead.
local tsa = require 'tsa'
local kumo = require 'kumo'
{peers}
kumo.on('tsa_init', function()
  tsa.start_http_listener {{
    listen = '{listen}',
    trusted_hosts = {trusted},
  }}
end)

local load_shaping = kumo.memoize(kumo.shaping.load, {{
  name = 'tsa_load_shaping_data',
  ttl = '5 minutes',
  capacity = 4,
}})

-- The files kumod's shaper loads, in the same order (docs/reference/events/tsa_load_shaping_data.md).
kumo.on('tsa_load_shaping_data', function()
  return load_shaping {lua_list(shaping_files(deployment))}
end)
"""


# An xfer queue's egress path (render_delivery). Without the shaper's limits, which its default
# section would set (100/s, 10 connections, shared through Redis in a fleet): they would cap a drain,
# and the receiver is a peer, not a mailbox provider. "local:" keeps the limit per node, out of the
# fleet's Redis (crates/throttle/src/lib.rs LimitSpec::try_from); 32 is kumod's own default
# (crates/kumo-api-types/src/egress_path.rs default_connection_limit): each connection is one
# POST at a time (crates/kumod/src/xfer/mod.rs, batch size 1).
# An xfer to any other target raises in get_egress_path_config: kumod then logs a transient
# failure and requeues each message (crates/kumod/src/ready_queue.rs compute_config, crates/kumod/
# src/queue/queue.rs insert_ready_impl SourceInsertResult::FailedResolve and insert_ready's
# requeue_message): nothing is sent or bounced, the messages wait in the xfer queue until
# `POST /api/admin/xfer/cancel/v1` returns them (or their max_age, 7 days by default, passes).
XFER_CONNECTION_LIMIT = "local:32"

# Headers signed by DKIM: the ones receivers check, and that relays do not rewrite.
DKIM_HEADERS = ("From", "To", "Subject", "Date", "MIME-Version", "Content-Type", "Message-ID")


def render_delivery(deployment: Deployment) -> str:
    """Queues, egress paths (shaping, or the smarthost), routing and DKIM signing, as Lua."""
    relay = deployment.port25.relay if deployment.outbound_mode == "relay" else None
    keys = {s.dkim_domain: s.machine_path for s in secret_specs(deployment) if s.dkim_domain}
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
""")
    else:
        out.append("""
-- Direct delivery to each recipient's MX hosts on port 25.
local RELAY = {}
local function route(msg) end
""")
    out.append(f"""
-- The queues of shaping's TSA log hooks are named '<url>.tsa.kumomta' (shaping.lua).
local function is_tsa_hook(domain)
  return domain:find('%.tsa%.kumomta$') ~= nil
end

-- get_queue_config takes several handlers, called in turn until one returns a value
-- (crates/config/src/lib.rs CallbackSignature::call). shaping.lua's own answers only for its
-- hook queues; this one leaves them to it, whatever the order, and binds every mail queue to
-- this node's pool.
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if is_tsa_hook(domain) then
    return
  end
  if routing_domain ~= nil and routing_domain == RELAY.host then
    -- The smarthost is named directly: it need not publish an MX record.
    return kumo.make_queue_config {{
      egress_pool = {lua_str(EGRESS_POOL)},
      protocol = {{ smtp = {{ mx_list = {{ RELAY.host }} }} }},
    }}
  end
  return kumo.make_queue_config {{ egress_pool = {lua_str(EGRESS_POOL)} }}
end)

-- get_egress_path_config takes one handler (crates/kumod/src/ready_queue.rs): this one, which
-- asks the shaper for every path.
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  if is_tsa_hook(routing_domain) then
    -- For every TSA daemon, what KumoMTA's rules set for the local one
    -- (share/policy-extras/shaping.toml ['http://127.0.0.1:8008.tsa.kumomta']).
    return kumo.make_egress_path {{
      connection_limit = 'local:5',
      max_deliveries_per_connection = 8192,
      max_ready = 10000,
      system_shutdown_timeout = '30s',
    }}
  end
  if routing_domain:sub(-#XFER_SUFFIX) == XFER_SUFFIX then
    -- An xfer queue: to a peer without shaping, each node its own connections; to anything
    -- else the error leaves the messages queued (to cancel), never sent.
    if not XFER_TARGETS[routing_domain] then
      error('kumo-infra: xfer only to a node of this fleet, not ' .. routing_domain)
    end
    return kumo.make_egress_path {{ connection_limit = {lua_str(XFER_CONNECTION_LIMIT)} }}
  end
  if routing_domain == RELAY.host then
    -- The shaper's limits for the smarthost (skip_make: its parameters, shaping.lua), with
    -- its port, STARTTLS and credentials.
    local params = shaper.get_egress_path_config(routing_domain, egress_source, site_name, true)
    params.smtp_port = RELAY.port
    params.enable_tls = 'Required'
    params.smtp_auth_plain_username = RELAY.username
    params.smtp_auth_plain_password = RELAY.password
    return kumo.make_egress_path(params)
  end
  return shaper.get_egress_path_config(routing_domain, egress_source, site_name)
end)
""")
    if not keys:
        out.append("""
-- No DKIM domains configured: messages leave unsigned, and their headers are not read.
local function sign(msg) end
""")
    else:
        out.append(render_signing(deployment.dkim.selector, keys))
    # Late DATA while drained: kumo.reject raises a RejectError with RejectDisconnect::If421
    # (crates/kumod/src/mod_kumo.rs:138-147), which process_data answers to the DATA with its code,
    # for the whole transaction, before anything is spooled (crates/kumod/src/smtp_server.rs:3048-3082,
    # the SMTP_SERVER_MSG_RX call); 451 is temporary and keeps the session, whose next MAIL FROM
    # gets the 421.
    out.append("""
-- Routing first, signing last: nothing may change the message after it is signed. Neither
-- raises: an error here would answer 421 to the SMTP client (crates/kumod/src/smtp_server.rs,
-- the smtp_server_message_received call) or fail the injection, for every retry.
-- A session past MAIL FROM when the drain began gets 451 to its DATA (the whole transaction).
kumo.on('smtp_server_message_received', function(msg)
  refuse_while_draining(451)
  route(msg)
  sign(msg)
end)

-- Never refuses: this mail is already accepted (see get_acl_definition).
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
