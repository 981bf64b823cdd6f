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
-- KUMO_DOUBLE_ROOT: a directory standing for / when a keysource file is read.
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
package.path = here .. '/?.lua;' .. package.path
local double = require 'kumo_double'
package.loaded['kumo'] = double.module

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
double.fire('init')
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
elseif scenario ~= nil then
  error('unknown scenario ' .. scenario)
end
print(to_json(result))
