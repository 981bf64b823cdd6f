-- Usage: lua5.4 run_policy.lua POLICY [SCENARIO [ARG...]]
-- Loads POLICY with the strict `kumo` test double (kumo_double.lua), fires init, runs the
-- scenario, then prints what happened as JSON on stdout. Any error the policy raises (or
-- the double raises for it) ends the run with a non-zero exit and the message on stderr.
--
-- Scenarios:
--   message [FROM...]   one received (SMTP) and one generated (HTTP) message per From header
--                       value ('-' for a message without From; none given: From = sender),
--                       then the egress path and queue config of the routing domain they got
--   auth USER [PASSWORD]  http_server_validate_auth_basic(USER, PASSWORD or nil), its result
--                       or the error it raised
--   delivery [ROUTING...]  the queue and egress path configs of gmail.com, of every TSA log
--                       hook's queue and of each ROUTING domain; the egress pool and its sources
--   drain [DOMAIN]      without the drain suspension (of DOMAIN, default the drain marker's),
--                       with it (before and after the memoized list expires), and after its
--                       removal: MAIL FROM (smtp), the DATA of a session already past MAIL FROM
--                       (data), an HTTP injection by a loopback client as kumod runs it, ACL
--                       check then http_message_generated (http), and the generation of an
--                       injection accepted earlier with deferred_generation (generated); also
--                       late_data: MAIL FROM before the suspension, DATA after it
--   egress ROUTING...   get_egress_path_config for each routing domain of a queue without MX
--                       (xfer: source 'unspecified', site name = routing domain,
--                       crates/kumod/src/ready_queue.rs compute_queue_name), or the error raised
--   acl_draining CHECK...  the same while the drain suspension exists
--   acl CHECK...        KumoMTA's HTTP access decision for each LISTEN|PATH|METHOD|USER|TRUSTED[|PEER]
--                       (USER '-' for none; TRUSTED 1 when the peer is a trusted host, 0 when not,
--                       ? as the policy's listener on LISTEN decides; PEER default 198.51.100.7)
--   tsa_shaping         (with KUMO_DOUBLE_DAEMON=tsa) the files tsa_load_shaping_data loads
-- KUMO_DOUBLE_ROOT: a directory standing for / when a file is read.
-- KUMO_DOUBLE_DAEMON: kumod (default) or tsa, the daemon loading the policy (tsa_init.lua).
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
package.path = here .. '/?.lua;' .. package.path
local double = require 'kumo_double'
package.loaded['kumo'] = double.module
if double.tsa_module then package.loaded['tsa'] = double.tsa_module end
require('policy_extras_double').install(double)

local function to_json(v, seen)
  local t = type(v)
  if t == 'nil' then return 'null'
  elseif t == 'boolean' or t == 'number' then return tostring(v)
  elseif t == 'string' then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format('\\u%04x', c:byte()) end) .. '"'
  elseif t == 'function' then return '"<function>"'
  elseif t == 'table' then
    if double.is_kumo_error(v) then return to_json(tostring(v)) end
    seen = seen or {}
    if seen[v] then return '"<cycle>"' end
    seen[v] = true
    local n = #v
    local is_array = n > 0 or next(v) == nil
    for k in pairs(v) do if type(k) ~= 'number' then is_array = false end end
    local parts = {}
    if is_array then
      for i = 1, n do parts[#parts + 1] = to_json(v[i], seen) end
      seen[v] = nil
      return '[' .. table.concat(parts, ',') .. ']'
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local val = v[k]; if val == nil then val = v[tonumber(k)] end
      parts[#parts + 1] = to_json(k) .. ':' .. to_json(val, seen)
    end
    seen[v] = nil
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return '"<' .. t .. '>"'
end

local policy = assert(arg[1], 'policy path required')
dofile(policy)
double.fire(double.daemon == 'tsa' and 'tsa_init' or 'init')
local result = { calls = double.calls, events = {}, logs = double.logs, ignored_keys = double.ignored_keys }
for name in pairs(double.handlers) do table.insert(result.events, name) end
table.sort(result.events)

local scenario = arg[2]
if scenario == 'message' then
  local froms = { table.unpack(arg, 3) }
  if #froms == 0 then froms = { 'news@example.com' } end
  result.messages = {}
  for _, from in ipairs(froms) do
    local headers = from == '-' and { { 'Subject', 'no From header' } } or { { 'From', from } }
    local received = double.new_message('news@example.com', 'user@gmail.com', headers)
    double.fire('smtp_server_message_received', received, {})
    local generated = double.new_message('news@example.com', 'user@yahoo.com', headers)
    double.fire('http_message_generated', generated, {})
    table.insert(result.messages, {
      from = from, received = double.state_of(received), generated = double.state_of(generated),
    })
  end
  local routing = result.messages[1].received.meta.routing_domain
  if routing then
    result.egress = double.fire('get_egress_path_config', routing, 'unspecified', 'mta')
    result.queue = double.fire('get_queue_config', 'gmail.com', nil, nil, routing)
    result.other_queue = double.fire('get_queue_config', 'gmail.com', nil, nil, nil)
  end
elseif scenario == 'auth' then
  local ok, value = pcall(double.fire, 'http_server_validate_auth_basic', arg[3], arg[4])
  result.auth = ok and { raised = false, value = value } or { raised = true, error = tostring(value) }
elseif scenario == 'delivery' then
  local routing = { 'gmail.com', table.unpack(arg, 3) }
  for hook in pairs(double.shaping_setup and double.shaping_setup.publish or {}) do table.insert(routing, hook) end
  result.queues, result.egress = {}, {}
  for _, r in ipairs(routing) do
    result.queues[r] = double.fire('get_queue_config', r, nil, nil, r ~= 'gmail.com' and r or nil) or 'default'
    result.egress[r] = double.fire('get_egress_path_config', r, 'source', r)
  end
  result.pool = double.fire('get_egress_pool', 'kumo-infra')
  result.sources = {}
  for _, entry in ipairs(result.pool.entries or {}) do
    result.sources[entry.name] = double.fire('get_egress_source', entry.name)
  end
  result.shaping_setup = double.shaping_setup
  result.sources_files = double.sources_files
elseif scenario == 'drain' then
  local function outcome(step)
    local ok, err = pcall(step)
    return ok and 'accepted' or { code = type(err) == 'table' and err.code or nil, error = tostring(err) }
  end
  local function mail_from() double.fire('smtp_server_mail_from', { email = 'news@example.com' }, {}) end
  local function data() double.fire('smtp_server_message_received', double.new_message('news@example.com', 'user@gmail.com'), {}) end
  local function generated() double.fire('http_message_generated', double.new_message('news@example.com', 'user@gmail.com'), {}) end
  local function http_inject()
    local listen
    for _, c in ipairs(double.calls) do
      if c.fn == 'start_http_listener' and not c.args.use_tls then listen = c.args.listen end
    end
    local info = { identities = {}, groups = { 'kumomta:http-listener-trusted-ip' }, peer_address = '127.0.0.1' }
    local access = double.http_access(listen, '/api/inject/v1', 'POST', info)
    if access.access ~= 'Allow' then
      return { status = access.status or 401, error = access.error or access.access }
    end
    return outcome(generated)
  end
  local function attempt()
    return { smtp = outcome(mail_from), data = outcome(data), http = http_inject(), generated = outcome(generated) }
  end
  local marker = {
    { id = '9b1e0d3c-0000-4000-8000-000000000001', domain = 'other.example', reason = 'tsa', duration = '1h' },
    { id = '9b1e0d3c-0000-4000-8000-000000000002', domain = arg[3] or 'drain.kumo-infra.invalid', reason = 'drain', duration = '1h' },
  }
  result.drain = {}
  result.drain.before = attempt()
  double.suspensions = marker
  result.drain.marked_cached = attempt()
  double.expire_memos()
  result.drain.marked = attempt()
  double.suspensions = {}
  double.expire_memos()
  result.drain.unmarked = attempt()
  result.drain.late_data = { mail_from = outcome(mail_from) }
  double.suspensions = marker
  double.expire_memos()
  result.drain.late_data.data = outcome(data)
elseif scenario == 'egress' then
  result.egress = {}
  for i = 3, #arg do
    local ok, path = pcall(double.fire, 'get_egress_path_config', arg[i], 'unspecified', arg[i])
    result.egress[arg[i]] = ok and path or { error = tostring(path) }
  end
elseif scenario == 'acl' or scenario == 'acl_draining' then
  if scenario == 'acl_draining' then
    double.suspensions = { { id = '9b1e0d3c-0000-4000-8000-000000000002', domain = 'drain.kumo-infra.invalid', reason = 'drain', duration = '1h' } }
  end
  result.acl = {}
  for i = 3, #arg do
    local listen, path, method, user, trusted, peer = arg[i]:match('^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|?([^|]*)$')
    peer = (peer ~= nil and peer ~= '') and peer or '198.51.100.7'
    local info = { identities = {}, groups = {}, peer_address = peer }
    if user ~= '-' then table.insert(info.identities, user) end
    if trusted == '?' then trusted = double.trusted_by_listener(listen, peer) and '1' or '0' end
    if trusted == '1' then table.insert(info.groups, 'kumomta:http-listener-trusted-ip') end
    table.insert(result.acl, double.http_access(listen, path, method, info))
  end
elseif scenario == 'tsa_shaping' then
  double.fire('tsa_load_shaping_data')
elseif scenario ~= nil then
  error('unknown scenario ' .. scenario)
end
print(to_json(result))
