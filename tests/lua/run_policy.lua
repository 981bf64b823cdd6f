-- Usage: lua5.4 run_policy.lua POLICY [SCENARIO]
-- Loads POLICY with the `kumo` test double, fires the init event (and the
-- scenario's events), then prints what happened as JSON on stdout.
local here = arg[0]:match('^(.*)/[^/]*$') or '.'
package.path = here .. '/?.lua;' .. package.path
local kumo = require 'kumo_double'
package.loaded['kumo'] = kumo

local function to_json(v, seen)
  local t = type(v)
  if t == 'nil' then return 'null'
  elseif t == 'boolean' or t == 'number' then return tostring(v)
  elseif t == 'string' then
    return '"' .. v:gsub('[%c"\\]', function(c) return string.format('\\u%04x', c:byte()) end) .. '"'
  elseif t == 'function' then return '"<function>"'
  elseif t == 'table' then
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
kumo.fire('init')
local result = { calls = kumo.calls, events = {} }
for name in pairs(kumo.handlers) do table.insert(result.events, name) end
table.sort(result.events)

local scenario = arg[2]
if scenario == 'message' then
  -- An inbound message and a generated one, as KumoMTA hands them to the policy.
  local received = kumo.new_message('news@example.com', 'user@gmail.com')
  kumo.fire('smtp_server_message_received', received)
  local generated = kumo.new_message('news@example.com', 'user@yahoo.com')
  kumo.fire('http_message_generated', generated)
  result.received = received
  result.generated = generated
  local routing = received.meta.routing_domain
  if routing then
    result.egress = kumo.fire('get_egress_path_config', routing, 'unspecified', 'mta')
    result.queue = kumo.fire('get_queue_config', 'gmail.com', nil, nil, routing)
    result.other_queue = kumo.fire('get_queue_config', 'gmail.com', nil, nil, nil)
  end
end
print(to_json(result))
