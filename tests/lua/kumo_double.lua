-- A test double of KumoMTA's `kumo` Lua module, at least as strict as kumod for everything
-- the rendered policy uses. Its tables come from kumo_api_facts.lua, generated from KumoMTA's
-- Rust source (see the header of that file for the commit); the behaviours below cite the
-- source files (repository KumoCorp/kumomta) they follow.
--
-- It records what a policy asks for (M.calls, M.logs) so tests can assert on it, and lets a
-- test fire events with fake messages (M.new_message) whose headers really are parsed.
local facts = require 'kumo_api_facts'

local M = {
  handlers = {}, -- event name -> handler (Single) or list of handlers (Multiple)
  calls = {},    -- { fn = 'start_http_listener', args = {...} } in call order
  logs = {},     -- { level = 'warn', message = '...' } from kumo.log_*
  ignored_keys = {}, -- keys kumod would silently ignore (structs without deny_unknown_fields)
  facts = facts,
  -- Absolute keysource paths are read below this directory (a scratch root the test fills);
  -- unset, every file keysource fails to load, as a missing file does in kumod.
  root = os.getenv('KUMO_DOUBLE_ROOT'),
  -- Which daemon loads the policy: kumod, or tsa (tsa-daemon, crates/tsa-daemon, loading
  -- tsa_init.lua): each has its own events and functions.
  daemon = os.getenv('KUMO_DOUBLE_DAEMON') or 'kumod',
  -- What kumo.api.admin.suspend.list answers: SuspendV1ListEntry tables
  -- (crates/kumo-api-types/src/lib.rs), set by a test.
  suspensions = {},
  memo_caches = {}, -- memoize name -> { entries }; expire_memos() stands for their TTL passing
}

-- kumod raises mlua errors: userdata values with __tostring, not strings. Raising tables with
-- __tostring here means a policy that concatenates an error (`'x' .. err`) fails in the double
-- as it would in kumod, where the failure would escape the handler it was meant to protect.
local KumoError = { __name = 'mlua::Error' }
KumoError.__index = KumoError
KumoError.__tostring = function(e) return 'runtime error: ' .. e.message end

local function raise(message)
  error(setmetatable({ message = message }, KumoError))
end
M.raise = raise

local function is_kumo_error(value) return getmetatable(value) == KumoError end
M.is_kumo_error = is_kumo_error

local function record(name, args)
  table.insert(M.calls, { fn = name, args = args })
end

-- Values kumod hands back from kumo.make_* / kumo.dkim.*_signer: config events must return
-- one of these, not a plain table (the event's return type is deserialized from it).
local made = setmetatable({}, { __mode = 'k' })

---------------------------------------------------------------------------- value checks
-- Each follows serde's deserialization of the Rust type named in the facts.

local function is_integer(v) return math.type(v) == 'integer' end

-- std::net::Ipv4Addr's FromStr: four decimal octets, no leading zeros; the 4 bytes, or nil.
local function ipv4_bytes(s)
  local parts = { s:match('^(%d+)%.(%d+)%.(%d+)%.(%d+)$') }
  if #parts ~= 4 then return nil end
  local bytes = {}
  for i, x in ipairs(parts) do
    if tonumber(x) > 255 or (#x > 1 and x:sub(1, 1) == '0') then return nil end
    bytes[i] = tonumber(x)
  end
  return bytes
end

-- std::net::Ipv6Addr's FromStr: eight groups of 1-4 hex digits, one '::' standing for a run of
-- zero groups, the last 32 bits optionally as dotted IPv4; the 16 bytes, or nil.
local function ipv6_bytes(s)
  if not s:match('^[%x:.]+$') then return nil end
  local function groups(part, v4_last)
    local words = {}
    if part == '' then return words end
    local pieces = {}
    for g in (part .. ':'):gmatch('([^:]*):') do table.insert(pieces, g) end
    for i, g in ipairs(pieces) do
      local v4 = v4_last and i == #pieces and ipv4_bytes(g)
      if v4 then
        table.insert(words, v4[1] * 256 + v4[2])
        table.insert(words, v4[3] * 256 + v4[4])
      elseif g:match('^%x%x?%x?%x?$') then
        table.insert(words, tonumber(g, 16))
      else
        return nil
      end
    end
    return words
  end
  local words
  local left_part, right_part = s:match('^(.-)::(.*)$')
  if left_part then
    local left, right = groups(left_part, false), groups(right_part, true)
    if not left or not right or right_part:find('::', 1, true) or #left + #right > 7 then return nil end
    words = left
    for _ = 1, 8 - #left - #right do table.insert(words, 0) end
    for _, w in ipairs(right) do table.insert(words, w) end
  else
    words = groups(s, true)
    if not words or #words ~= 8 then return nil end
  end
  local bytes = {}
  for _, w in ipairs(words) do
    table.insert(bytes, w >> 8)
    table.insert(bytes, w & 255)
  end
  return bytes
end

-- std::net::IpAddr's FromStr: an IPv4 or an IPv6 address, nothing else; its bytes, or nil.
local function ip_bytes(s)
  if type(s) ~= 'string' then return nil end
  return ipv4_bytes(s) or ipv6_bytes(s)
end

local function is_ip(s) return ip_bytes(s) ~= nil end
M.is_ip = is_ip

-- crates/duration-serde/src/lib.rs: a humantime string ('1 minute', '5m') or seconds.
local HUMANTIME_UNITS = {
  nsec = true, ns = true, usec = true, us = true, msec = true, ms = true, seconds = true,
  second = true, sec = true, s = true, minutes = true, minute = true, min = true, m = true,
  hours = true, hour = true, hr = true, h = true, days = true, day = true, d = true,
  weeks = true, week = true, w = true, months = true, month = true, M = true, years = true,
  year = true, y = true,
}
local function is_humantime(s)
  local any = false
  for number, unit in s:gmatch('%s*(%d+)%s*(%a+)') do
    if not HUMANTIME_UNITS[unit] then return false end
    any = true
  end
  return any and s:gsub('%s*%d+%s*%a+', ''):match('^%s*$') ~= nil
end

-- The network part of byte i of an address under a prefix of `bits`, as a mask.
local function prefix_mask(bits, i)
  local keep = math.max(0, math.min(8, bits - (i - 1) * 8))
  return (0xff << (8 - keep)) & 0xff
end

-- crates/cidr-map/src/map.rs parse_cidr (cidr's AnyIpCidr::from_str): an address or
-- address/prefix; host bits set is an error. { bytes, bits }, or nil and the problem.
local function parse_cidr(entry)
  if type(entry) ~= 'string' then return nil, 'not a string' end
  local addr, prefix = entry:match('^([^/]+)/(%d+)$')
  local bytes = ip_bytes(addr or entry)
  if not bytes then return nil, 'not an IP address or CIDR' end
  local bits = tonumber(prefix or tostring(#bytes * 8))
  if bits > #bytes * 8 then return nil, 'prefix longer than ' .. #bytes * 8 end
  for i, byte in ipairs(bytes) do
    if byte & ~prefix_mask(bits, i) & 0xff ~= 0 then return nil, 'host bits set' end
  end
  return { bytes = bytes, bits = bits }
end

local function cidr_problem(entry)
  local _, problem = parse_cidr(entry)
  return problem
end

-- CidrSet::contains (crates/cidr-map/src/set.rs): the address is in one of the entries, of its
-- own family (an IPv4 address is not in an IPv6 range).
local function cidrs_contain(entries, address)
  local bytes = ip_bytes(address)
  if not bytes then return false end
  for _, entry in ipairs(entries) do
    local cidr = assert(parse_cidr(entry))
    if #cidr.bytes == #bytes then
      local inside = true
      for i = 1, #bytes do
        if bytes[i] & prefix_mask(cidr.bits, i) ~= cidr.bytes[i] then inside = false end
      end
      if inside then return true end
    end
  end
  return false
end
M.cidrs_contain = cidrs_contain

local check_struct -- forward

local function check_value(where, spec, v)
  local kind = spec.kind
  if kind == 'string' then
    if type(v) ~= 'string' then raise(where .. ': invalid type: ' .. type(v) .. ', expected a string') end
  elseif kind == 'bool' then
    if type(v) ~= 'boolean' then raise(where .. ': invalid type: ' .. type(v) .. ', expected a boolean') end
  elseif kind == 'integer' then
    if not is_integer(v) or v < spec.min or v > spec.max then
      raise(where .. ': invalid value: ' .. tostring(v) .. ', expected ' .. spec.rust)
    end
  elseif kind == 'duration' then
    if type(v) == 'number' then
      if v < 0 then raise(where .. ': a negative duration') end
    elseif type(v) ~= 'string' or not is_humantime(v) then
      raise(where .. ': ' .. tostring(v) .. ' is not a duration (humantime string or seconds)')
    end
  elseif kind == 'enum' then
    local ok = false
    for _, variant in ipairs(spec.variants) do if v == variant then ok = true end end
    if not ok then
      raise(where .. ': unknown variant ' .. tostring(v) .. ', expected one of ' .. table.concat(spec.variants, ', '))
    end
  elseif kind == 'cidrs' then
    if type(v) ~= 'table' then raise(where .. ': expected a list of IPs/CIDRs') end
    for i, entry in ipairs(v) do
      local problem = cidr_problem(entry)
      if problem then raise(where .. '[' .. i .. ']: ' .. tostring(entry) .. ': ' .. problem) end
    end
  elseif kind == 'keysource' then
    -- crates/data-loader/src/lib.rs: untagged KeySource; a plain string is a FILE PATH.
    if type(v) == 'table' then
      local data = type(v.key_data) == 'string'
      local vault = type(v.vault_mount) == 'string' and type(v.vault_path) == 'string'
      local event = type(v.event_name) == 'string' and type(v.event_args) == 'table'
      if not (data or vault or event) then
        raise(where .. ': data did not match any variant of untagged enum KeySource')
      end
    elseif type(v) ~= 'string' then
      raise(where .. ': invalid type: ' .. type(v) .. ', expected a keysource (file path or table)')
    end
  elseif kind == 'strings' then
    if type(v) ~= 'table' then raise(where .. ': expected a list of strings') end
    for i, s in ipairs(v) do
      if type(s) ~= 'string' then raise(where .. '[' .. i .. ']: expected a string') end
    end
  elseif kind == 'ip' then
    if not is_ip(v) then raise(where .. ': invalid IP address syntax: ' .. tostring(v)) end
  elseif kind == 'table' then
    if type(v) ~= 'table' then raise(where .. ': invalid type: ' .. type(v) .. ', expected a table (' .. spec.rust .. ')') end
  end
end

-- A table deserialized into a Rust struct: unknown keys raise where the struct has
-- #[serde(deny_unknown_fields)] and are ignored (but noted) where it has not; fields without
-- #[serde(default)] are required.
check_struct = function(fn, struct, args)
  if type(args) ~= 'table' then
    raise(fn .. ': invalid type: ' .. type(args) .. ', expected struct ' .. struct.name .. ' [' .. struct.source .. ']')
  end
  for key, v in pairs(args) do
    if type(key) ~= 'string' then
      raise(fn .. ': positional entry in a table that ' .. struct.name .. ' reads by key [' .. struct.source .. ']')
    end
    local spec = struct.fields[key]
    if spec == nil then
      if struct.deny_unknown_fields then
        raise(fn .. ": unknown field '" .. key .. "': " .. struct.name .. ' has deny_unknown_fields [' .. struct.source .. ']')
      end
      table.insert(M.ignored_keys, fn .. '.' .. key)
    else
      check_value(fn .. '.' .. key, spec, v)
    end
  end
  for name, spec in pairs(struct.fields) do
    if spec.required and args[name] == nil then
      raise(fn .. ": missing field '" .. name .. "' [" .. struct.source .. ']')
    end
  end
end

local function copy(t)
  if type(t) ~= 'table' then return t end
  local out = {}
  for k, v in pairs(t) do out[k] = copy(v) end
  return out
end
M.copy = copy

------------------------------------------------------------------------------ keysources

local function read_file(path)
  if M.root == nil or path:sub(1, 1) ~= '/' then return nil end
  local fh = io.open(M.root .. path, 'rb')
  if not fh then return nil end
  local data = fh:read('a')
  fh:close()
  return data
end

-- KeySource::get (crates/data-loader/src/lib.rs): a file that cannot be read is an error.
function M.load_keysource(source)
  check_value('keysource', { kind = 'keysource' }, source)
  if type(source) == 'table' then
    if source.key_data then return source.key_data end
    raise('the double loads only file and key_data keysources')
  end
  local data = read_file(source)
  if data == nil then raise('KeySource failed to load data from file `' .. source .. '`') end
  return data
end

------------------------------------------------------------------------------- functions

local implemented = {}

local function struct_function(name)
  local struct = assert(facts.structs[name], name .. ': no struct in the facts')
  return function(args)
    check_struct(name, struct, args)
    local value = copy(args)
    record(name:gsub('^kumo%.', ''), value)
    made[value] = name
    return value
  end
end

implemented['kumo.start_esmtp_listener'] = struct_function('kumo.start_esmtp_listener')
implemented['kumo.start_http_listener'] = struct_function('kumo.start_http_listener')
implemented['kumo.define_spool'] = struct_function('kumo.define_spool')
implemented['kumo.configure_local_logs'] = struct_function('kumo.configure_local_logs')
-- LimitSpec (crates/throttle/src/lib.rs:344-430): a whole number >= 1, or a string of one
-- ('_' and ',' allowed as separators), optionally 'local:' (not shared through Redis).
local function limit_spec_problem(v)
  if is_integer(v) then return v < 1 and 'limit must be 1 or larger' or nil end
  if type(v) ~= 'string' then return 'expected a string or numeric limit spec' end
  local digits = (v:match('^local:(.*)$') or v):gsub('[_,]', '')
  if not digits:match('^%d+$') then return "invalid limit '" .. digits .. "'" end
  if tonumber(digits) == 0 then return 'limit must be greater than 0' end
  return nil
end

local check_egress_path = struct_function('kumo.make_egress_path')
implemented['kumo.make_egress_path'] = function(args)
  if type(args) == 'table' and args.connection_limit ~= nil then
    local problem = limit_spec_problem(args.connection_limit)
    if problem then raise('kumo.make_egress_path.connection_limit: ' .. problem) end
  end
  return check_egress_path(args)
end
implemented['kumo.make_listener_domain'] = struct_function('kumo.make_listener_domain')

local make_queue_config = struct_function('kumo.make_queue_config')
implemented['kumo.make_queue_config'] = function(args)
  -- protocol is DeliveryProto, an untagged enum (crates/kumod/src/queue/delivery_proto.rs):
  -- a table that matches none of its variants is an error.
  if type(args) == 'table' and args.protocol ~= nil then
    local proto = facts.nested['kumo.make_queue_config.protocol']
    local p = args.protocol
    if type(p) ~= 'table' then raise('kumo.make_queue_config.protocol: expected a table [' .. proto.source .. ']') end
    local matched = false
    for _, key in ipairs(proto.variant_keys) do if p[key] ~= nil then matched = true end end
    if not matched then
      raise('kumo.make_queue_config.protocol: data did not match any variant of untagged enum DeliveryProto [' .. proto.source .. ']')
    end
    if p.smtp ~= nil then
      check_struct('kumo.make_queue_config.protocol.smtp', facts.nested['kumo.make_queue_config.protocol.smtp'], p.smtp)
    end
  end
  return make_queue_config(args)
end

-- crates/message/src/dkim.rs: SignerConfig (unknown keys silently ignored), then the key is
-- loaded while the signer is built: a key that cannot be loaded raises here.
local check_signer = struct_function('kumo.dkim.rsa_sha256_signer')
implemented['kumo.dkim.rsa_sha256_signer'] = function(args)
  local config = check_signer(args)
  local signer = { signer = config, key_data = M.load_keysource(args.key) }
  made[signer] = 'kumo.dkim.rsa_sha256_signer'
  return signer
end

-- crates/data-loader/src/lib.rs register: kumo.secrets.load(keysource) -> the bytes.
implemented['kumo.secrets.load'] = function(source)
  local data = M.load_keysource(source)
  record('secrets.load', source)
  return data
end

-- crates/kumo-server-common/src/lib.rs: log_* take any values, joined with spaces.
for _, level in ipairs({ 'error', 'warn', 'info', 'debug' }) do
  implemented['kumo.log_' .. level] = function(...)
    local parts = {}
    for i = 1, select('#', ...) do parts[i] = tostring((select(i, ...))) end
    table.insert(M.logs, { level = level, message = table.concat(parts, ' ') })
  end
end

-------------------------------------------------------------------------------- JSON
-- serde_json as kumo.json_load reads a file (crates/mod-serde/src/lib.rs): objects, arrays,
-- strings (with escapes), numbers, true/false/null; anything else raises.
local function json_decode(text)
  local i = 1
  local function fail(what) raise('json_load: ' .. what .. ' at byte ' .. i) end
  local function ws() i = text:match('^[ \t\r\n]*()', i) end
  local value
  local function str()
    i = i + 1
    local out = {}
    while true do
      local c = text:sub(i, i)
      if c == '' then fail('unterminated string') end
      if c == '"' then i = i + 1 return table.concat(out) end
      if c == '\\' then
        local e = text:sub(i + 1, i + 1)
        local map = { ['"'] = '"', ['\\'] = '\\', ['/'] = '/', b = '\b', f = '\f', n = '\n', r = '\r', t = '\t' }
        if map[e] then table.insert(out, map[e]); i = i + 2
        elseif e == 'u' then
          local hex = text:sub(i + 2, i + 5)
          if not hex:match('^%x%x%x%x$') then fail('bad \\u escape') end
          table.insert(out, utf8.char(tonumber(hex, 16))); i = i + 6
        else fail('bad escape') end
      elseif c:byte() < 32 then fail('control character in a string')
      else table.insert(out, c); i = i + 1 end
    end
  end
  value = function()
    ws()
    local c = text:sub(i, i)
    if c == '{' then
      i = i + 1
      local obj = {}
      ws()
      if text:sub(i, i) == '}' then i = i + 1 return obj end
      while true do
        ws()
        if text:sub(i, i) ~= '"' then fail('expected a key') end
        local k = str()
        ws()
        if text:sub(i, i) ~= ':' then fail("expected ':'") end
        i = i + 1
        obj[k] = value()
        ws()
        local sep = text:sub(i, i)
        i = i + 1
        if sep == '}' then return obj end
        if sep ~= ',' then fail("expected ',' or '}'") end
      end
    elseif c == '[' then
      i = i + 1
      local arr = {}
      ws()
      if text:sub(i, i) == ']' then i = i + 1 return arr end
      while true do
        table.insert(arr, value())
        ws()
        local sep = text:sub(i, i)
        i = i + 1
        if sep == ']' then return arr end
        if sep ~= ',' then fail("expected ',' or ']'") end
      end
    elseif c == '"' then return str()
    elseif text:sub(i, i + 3) == 'true' then i = i + 4 return true
    elseif text:sub(i, i + 4) == 'false' then i = i + 5 return false
    elseif text:sub(i, i + 3) == 'null' then i = i + 4 return nil
    else
      local num, after = text:match('^(-?%d+%.?%d*[eE]?[-+]?%d*)()', i)
      if not num then fail('unexpected ' .. (c == '' and 'end of input' or c)) end
      i = after
      return math.tointeger(tonumber(num)) or tonumber(num)
    end
  end
  local result = value()
  ws()
  if i <= #text then fail('trailing characters') end
  return result
end
M.json_decode = json_decode

implemented['kumo.json_load'] = function(path)
  if type(path) ~= 'string' then raise('json_load: expected a file name') end
  local data = read_file(path)
  if data == nil then raise('json_load: cannot read ' .. path) end
  record('json_load', path)
  return json_decode(data)
end

------------------------------------------------------------------------ more functions

implemented['kumo.make_egress_source'] = struct_function('kumo.make_egress_source')
implemented['kumo.configure_bounce_classifier'] = struct_function('kumo.configure_bounce_classifier')
implemented['kumo.configure_log_hook'] = struct_function('kumo.configure_log_hook')

-- EgressPool (crates/kumod/src/egress_source.rs): entries are EgressPoolEntry {name, weight}.
local check_pool = struct_function('kumo.make_egress_pool')
implemented['kumo.make_egress_pool'] = function(args)
  local pool = check_pool(args)
  for i, entry in ipairs(pool.entries or {}) do
    if type(entry) ~= 'table' or type(entry.name) ~= 'string' then
      raise('kumo.make_egress_pool.entries[' .. i .. ']: missing field `name`')
    end
    for key in pairs(entry) do
      if key ~= 'name' and key ~= 'weight' then raise("kumo.make_egress_pool.entries: unknown field '" .. tostring(key) .. "'") end
    end
    if entry.weight ~= nil and not is_integer(entry.weight) then raise('kumo.make_egress_pool.entries.weight: expected u32') end
  end
  return pool
end

-- RedisConnKey.node is NodeSpec (crates/mod-redis/src/lib.rs), untagged: a URL or a list of them.
local check_redis = struct_function('kumo.configure_redis_throttles')
implemented['kumo.configure_redis_throttles'] = function(args)
  if type(args) == 'table' then
    local node = args.node
    local ok = type(node) == 'string'
    if type(node) == 'table' then
      ok = #node > 0
      for _, n in ipairs(node) do if type(n) ~= 'string' then ok = false end end
    end
    if not ok then raise('kumo.configure_redis_throttles.node: data did not match any variant of untagged enum NodeSpec') end
    local url = type(node) == 'string' and node or node[1]
    if not (url:match('^redis://') or url:match('^rediss://')) then
      raise('kumo.configure_redis_throttles: building redis client: invalid URL scheme')
    end
  end
  return check_redis(args)
end

-- crates/mod-memoize/src/lib.rs: MemoizeParams checked (deny_unknown_fields), a name that a
-- built-in cache uses refused; the memoized function answers from the cache until the test
-- calls expire_memos() (its TTL passing).
local check_memoize = struct_function('kumo.memoize')
implemented['kumo.memoize'] = function(func, params)
  if type(func) ~= 'function' then raise('kumo.memoize: expected a function') end
  check_memoize(params)
  M.memo_caches[params.name] = M.memo_caches[params.name] or {}
  local function key_of(v)
    if type(v) ~= 'table' then return type(v) .. ':' .. tostring(v) end
    local keys, parts = {}, {}
    for k in pairs(v) do table.insert(keys, tostring(k)) end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local value = v[k]
      if value == nil then value = v[tonumber(k)] end
      table.insert(parts, k .. '=' .. key_of(value))
    end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return function(...)
    local cache = M.memo_caches[params.name]
    local key = key_of({ ... })
    local hit = cache[key]
    if hit == nil then
      hit = { value = func(...) }
      cache[key] = hit
    end
    return hit.value
  end
end

function M.expire_memos()
  for name in pairs(M.memo_caches) do M.memo_caches[name] = {} end
end

-- crates/kumod/src/http_server/admin_suspend_v1.rs register: a list of SuspendV1ListEntry.
implemented['kumo.api.admin.suspend.list'] = function()
  return copy(M.suspensions)
end

-- crates/kumod/src/mod_kumo.rs: kumo.reject(code: u16, message: String) raises a RejectError,
-- which kumod answers with (smtp_server.rs) or reports per recipient (http inject).
implemented['kumo.reject'] = function(code, message)
  if not is_integer(code) or code < 0 or code > 65535 then raise('kumo.reject: code must be a u16') end
  if type(message) ~= 'string' then raise('kumo.reject: message must be a string') end
  error(setmetatable({ message = code .. ' ' .. message, code = code, reply = message }, KumoError))
end

-- crates/kumo-server-common/src/authn_authz.rs: Vec<AccessControlRule> {criteria: ACLRuleTerm,
-- privilege: String, access: Access}; serde's externally tagged enums.
local IDENTITY_VARIANTS = { Individual = 'string', Group = 'string', Machine = 'ip', MachineSet = 'table',
  Authenticated = 'unit', Unauthenticated = 'unit', Any = 'unit' }
local function check_term(where, term)
  if type(term) ~= 'table' then raise(where .. ': expected an ACLRuleTerm table') end
  local key, value = next(term)
  if key == nil or next(term, key) ~= nil then raise(where .. ': an ACLRuleTerm is one of AllOf, AnyOf, Not, Identity') end
  if key == 'AllOf' or key == 'AnyOf' then
    for i, t in ipairs(value) do check_term(where .. '.' .. key .. '[' .. i .. ']', t) end
  elseif key == 'Not' then check_term(where .. '.Not', value)
  elseif key == 'Identity' then
    if type(value) == 'string' then
      if IDENTITY_VARIANTS[value] ~= 'unit' then raise(where .. ': unknown ACLIdentity ' .. value) end
      return
    end
    if type(value) ~= 'table' then raise(where .. ': expected an ACLIdentity') end
    local kind, v = next(value)
    local want = IDENTITY_VARIANTS[kind]
    if want == nil or next(value, kind) ~= nil then raise(where .. ': unknown ACLIdentity ' .. tostring(kind)) end
    if want == 'string' and type(v) ~= 'string' then raise(where .. '.' .. kind .. ': expected a string') end
    if want == 'ip' and not is_ip(v) then raise(where .. '.' .. kind .. ': expected an IP address') end
    if want == 'table' then
      -- MachineSet(CidrSet): #[serde(try_from = "Vec<String>")], each entry through parse_cidr
      -- (crates/cidr-map/src/set.rs; crates/kumo-server-common/src/authn_authz.rs ACLIdentity).
      if type(v) ~= 'table' then raise(where .. '.' .. kind .. ': expected a list of IPs/CIDRs') end
      for key in pairs(v) do
        if not is_integer(key) or key < 1 or key > #v then raise(where .. '.' .. kind .. ': expected a sequence') end
      end
      for i, entry in ipairs(v) do
        local problem = cidr_problem(entry)
        if problem then raise(where .. '.' .. kind .. '[' .. i .. ']: ' .. tostring(entry) .. ': ' .. problem) end
      end
    end
  else
    raise(where .. ': unknown variant ' .. tostring(key) .. ', expected AllOf, AnyOf, Not or Identity')
  end
end

implemented['kumo.aaa.make_access_control_list'] = function(rules)
  if type(rules) ~= 'table' then raise('make_access_control_list: expected a list of rules') end
  for i, rule in ipairs(rules) do
    local where = 'make_access_control_list[' .. i .. ']'
    for key in pairs(rule) do
      if key ~= 'criteria' and key ~= 'privilege' and key ~= 'access' then raise(where .. ": unknown field '" .. tostring(key) .. "'") end
    end
    check_term(where .. '.criteria', rule.criteria)
    if type(rule.privilege) ~= 'string' then raise(where .. '.privilege: expected a string') end
    if rule.access ~= 'Allow' and rule.access ~= 'Deny' then raise(where .. '.access: expected Allow or Deny') end
  end
  local acl = { rules = copy(rules) }
  made[acl] = 'kumo.aaa.make_access_control_list'
  record('aaa.make_access_control_list', acl.rules)
  return acl
end

-- Documented only (docs/reference/kumo/shaping/load.md): kumo.shaping.load(files, options)
-- returns the merged shaping data. The double answers KumoMTA's shipped "default" section
-- (assets/policy-extras/shaping.toml) for every path; M.shaping_params replaces it.
M.shaping_params = {
  connection_limit = 10, max_connection_rate = '100/min', max_deliveries_per_connection = 100,
  max_message_rate = '100/s', idle_timeout = '60s', data_timeout = '30s', data_dot_timeout = '60s',
  enable_tls = 'Opportunistic', consecutive_connection_failures_before_delay = 100,
  remember_broken_tls = '3 days',
}
implemented['kumo.shaping.load'] = function(files, options)
  if type(files) ~= 'table' or #files == 0 then raise('kumo.shaping.load: expected a list of file names') end
  for i, f in ipairs(files) do
    if type(f) ~= 'string' then raise('kumo.shaping.load[' .. i .. ']: expected a string') end
  end
  if options ~= nil and type(options) ~= 'table' then raise('kumo.shaping.load: options must be a table') end
  record('shaping.load', copy(files))
  local data = {}
  function data:get_egress_path_config(domain, source, site)
    return copy(M.shaping_params)
  end
  function data:get_errors() return {} end
  function data:get_warnings() return {} end
  return data
end

-- crates/kumo-server-common/src/lib.rs: spawn_task{event_name, args} calls that event's
-- handler in a task of its own; an event without a handler fails there.
implemented['kumo.spawn_task'] = function(params)
  if type(params) ~= 'table' or type(params.event_name) ~= 'string' or type(params.args) ~= 'table' then
    raise('kumo.spawn_task: expected {event_name=..., args={...}}')
  end
  if M.handlers[params.event_name] == nil then raise('kumo.spawn_task: ' .. params.event_name .. ' has not been registered') end
  record('spawn_task', copy(params))
end

-- crates/kumo-server-common/src/lib.rs kumo.on: any event name is accepted by kumod (a
-- misspelt one silently never fires; the double refuses it), a second handler for a Single
-- event is an error, and so is kumo.on inside a running handler other than main.
implemented['kumo.on'] = function(name, handler)
  if type(name) ~= 'string' then raise('kumo.on: event name must be a string') end
  if type(handler) ~= 'function' then raise('kumo.on: handler must be a function') end
  if M.current_event ~= nil and M.current_event ~= 'main' then
    raise("kumo.on('" .. name .. "', ...) from within the event handler '" .. M.current_event .. "'")
  end
  local event = facts.events[name] or M.helper_events[name]
  if event == nil then
    raise("kumo.on: '" .. name .. "' is not an event KumoMTA raises: kumod would accept it silently and it would never fire")
  end
  if not M.daemon_raises(event) then
    raise("kumo.on: '" .. name .. "' is never raised by " .. M.daemon .. ' [' .. event.source .. ']')
  end
  if event.args and debug.getinfo(handler, 'u').nparams > #event.args then
    raise("kumo.on: the handler for '" .. name .. "' declares more parameters than the event passes ("
      .. table.concat(event.args, ', ') .. ') [' .. event.source .. ']')
  end
  if event.multiple then
    M.handlers[name] = M.handlers[name] or {}
    table.insert(M.handlers[name], handler)
    return
  end
  if M.handlers[name] ~= nil then
    raise(name .. ' event already has a handler defined [' .. event.source .. ']')
  end
  M.handlers[name] = handler
end

-- Events a policy-extras helper names itself (shaping.lua: its constructors and tasks), which
-- kumod raises because the helper asks it to (spawn_task, a log hook's constructor).
M.helper_events = {}
function M.helper_event(name, source)
  M.helper_events[name] = { source = source, kumod = true, multiple = false, returns = '?' }
end

-- Which events the loading daemon raises: kumod's own, or tsa-daemon's (crates/tsa-daemon) and
-- those of the server code both share (crates/kumo-server-common, crates/config).
function M.daemon_raises(event)
  if M.daemon == 'kumod' then return event.kumod end
  local src = event.source or ''
  return src:find('^crates/tsa%-daemon/') ~= nil or src:find('^crates/kumo%-server%-common/') ~= nil
    or src:find('^crates/config/') ~= nil
end

local function daemon_has_function(name, info)
  if M.daemon == 'kumod' then return info.kumod end
  local src = info.source or ''
  return not name:find('^tsa%.') and src:find('^crates/kumod/') == nil and info.kumod
end

-- The `kumo` module: every name kumod registers, implemented above or raising when called;
-- a name kumod does not register raises when read (in kumod it is nil, and calling it fails).
local function build_module()
  local modules = {}
  local function module_for(path)
    if modules[path] then return modules[path] end
    local prefix = path
    local mod = setmetatable({}, {
      __index = function(_, key)
        raise("kumo: '" .. prefix .. '.' .. tostring(key) .. "' is not a function kumod registers")
      end,
    })
    modules[path] = mod
    return mod
  end
  local root = module_for('kumo')
  for name, info in pairs(facts.functions) do
    if daemon_has_function(name, info) and name:find('^kumo%.') then
      local parts = {}
      for part in name:gmatch('[^.]+') do table.insert(parts, part) end
      local path = parts[1]
      local parent = root
      for i = 2, #parts - 1 do
        path = path .. '.' .. parts[i]
        local child = rawget(parent, parts[i])
        if child == nil then
          child = module_for(path)
          rawset(parent, parts[i], child)
        end
        parent = child
      end
      rawset(parent, parts[#parts], implemented[name] or function()
        raise(name .. ' is a real kumod function the double does not implement [' .. info.source .. ']')
      end)
    end
  end
  for name in pairs(implemented) do
    assert(facts.functions[name] and facts.functions[name].kumod, name .. ' is implemented but kumod has no such function')
  end
  return root
end

local module = build_module()

-- tsa-daemon's own module (crates/tsa-daemon/src/mod_auto.rs), for tsa_init.lua only.
if M.daemon == 'tsa' then
  M.tsa_module = {
    start_http_listener = struct_function('tsa.start_http_listener'),
    configure_tsa_db_path = function(path)
      if type(path) ~= 'string' then raise('tsa.configure_tsa_db_path: expected a path') end
      record('tsa.configure_tsa_db_path', path)
    end,
  }
end

-------------------------------------------------------------------------- header parsing
-- A recursive-descent parser for the RFC 5322 address-list grammar mailparsing implements
-- (crates/mailparsing/src/rfc5322_parser.rs: address_list, address, mailbox, group,
-- name_addr, angle_addr, addr_spec, with CFWS and quoted strings), all-consuming like its
-- parse_with. Obsolete syntax and RFC 2047 decoding are not modelled: the double refuses
-- some headers KumoMTA accepts, never the reverse for the forms tests use.

local ATEXT = "[%w!#%$%%&'%*%+%-/=%?%^_`{|}~\128-\255]"

local function cfws(s, i)
  while true do
    i = s:match('^[ \t\r\n]*()', i)
    if s:sub(i, i) ~= '(' then return i end
    local depth = 0
    repeat
      local c = s:sub(i, i)
      if c == '' then return nil end
      if c == '\\' then
        i = i + 2
      else
        if c == '(' then depth = depth + 1 elseif c == ')' then depth = depth - 1 end
        i = i + 1
      end
    until depth == 0
  end
end

local function quoted_string(s, i)
  i = cfws(s, i)
  if i == nil or s:sub(i, i) ~= '"' then return nil end
  local out, j = {}, i + 1
  while true do
    local c = s:sub(j, j)
    if c == '' then return nil end
    if c == '"' then break end
    if c == '\\' then
      c = s:sub(j + 1, j + 1)
      if c == '' then return nil end
      j = j + 1
    end
    table.insert(out, c)
    j = j + 1
  end
  local after = cfws(s, j + 1)
  if after == nil then return nil end
  return table.concat(out), after
end

local function atom(s, i)
  i = cfws(s, i)
  if i == nil then return nil end
  local text, j = s:match('^(' .. ATEXT .. '+)()', i)
  if not text then return nil end
  local after = cfws(s, j)
  if after == nil then return nil end
  return text, after
end

local function dot_atom(s, i)
  i = cfws(s, i)
  if i == nil then return nil end
  local text, j = s:match('^(' .. ATEXT .. '+)()', i)
  if not text then return nil end
  while true do
    local more, k = s:match('^%.(' .. ATEXT .. '+)()', j)
    if not more then break end
    text, j = text .. '.' .. more, k
  end
  local after = cfws(s, j)
  if after == nil then return nil end
  return text, after
end

local function word(s, i)
  local w, j = atom(s, i)
  if w then return w, j end
  return quoted_string(s, i)
end

local function phrase(s, i)
  local words = {}
  local w, j = word(s, i)
  if not w then return nil end
  while w do
    table.insert(words, w)
    i = j
    w, j = word(s, i)
    if not w and s:sub(i, i) == '.' then w, j = '.', i + 1 end -- obs-phrase: "Dr. Who"
  end
  return table.concat(words, ' '), i
end

local function domain_literal(s, i)
  i = cfws(s, i)
  if i == nil then return nil end
  local body, j = s:match('^(%[[^%[%]\\]*%])()', i)
  if not body then return nil end
  local after = cfws(s, j)
  if after == nil then return nil end
  return body, after
end

local function addr_spec(s, i)
  local user, j = dot_atom(s, i)
  if not user then user, j = quoted_string(s, i) end
  if not user or s:sub(j, j) ~= '@' then return nil end
  local domain, k = dot_atom(s, j + 1)
  if not domain then domain, k = domain_literal(s, j + 1) end
  if not domain then return nil end
  return { user = user, domain = domain }, k
end

local function angle_addr(s, i)
  i = cfws(s, i)
  if i == nil or s:sub(i, i) ~= '<' then return nil end
  local addr, j = addr_spec(s, i + 1)
  if not addr or s:sub(j, j) ~= '>' then return nil end
  local after = cfws(s, j + 1)
  if after == nil then return nil end
  return addr, after
end

local function mailbox(s, i)
  local name, j = phrase(s, i)
  local addr, k = angle_addr(s, j or i)
  if addr then
    addr.name = name
    return addr, k
  end
  return addr_spec(s, i)
end

local function group(s, i)
  local name, j = phrase(s, i)
  if not name or s:sub(j, j) ~= ':' then return nil end
  local members = {}
  local k = cfws(s, j + 1)
  if k == nil then return nil end
  local first, next_k = mailbox(s, k)
  if first then
    table.insert(members, first)
    k = next_k
    while s:sub(k, k) == ',' do
      local m, mk = mailbox(s, k + 1)
      if not m then return nil end
      table.insert(members, m)
      k = mk
    end
  end
  if s:sub(k, k) ~= ';' then return nil end
  local after = cfws(s, k + 1)
  if after == nil then return nil end
  return { group = true, name = name, addresses = members }, after
end

local function address(s, i)
  local m, j = mailbox(s, i)
  if m then return m, j end
  return group(s, i)
end

-- Header::as_address_list -> Parser::parse_address_list_header: one or more addresses,
-- comma separated, consuming the whole value; anything else is a parse error.
function M.parse_address_list(value)
  local entries = {}
  local entry, i = address(value, 1)
  if not entry then return nil end
  table.insert(entries, entry)
  while value:sub(i, i) == ',' do
    entry, i = address(value, i + 1)
    if not entry then return nil end
    table.insert(entries, entry)
  end
  if i <= #value then return nil end
  return entries
end

------------------------------------------------------------------- address list userdata

local function strict_object(kind, fields)
  -- mlua userdata: reading a field that has no getter raises "attempt to get an unknown field".
  return setmetatable({}, {
    __name = kind,
    __index = function(_, key)
      local getter = fields[key]
      if getter == nil then raise("attempt to get an unknown field '" .. tostring(key) .. "'") end
      return getter()
    end,
    __newindex = function(_, key) raise("attempt to set an unknown field '" .. tostring(key) .. "'") end,
  })
end

-- AddrSpec::encode_value: the local part as written when it is a dot-atom, quoted otherwise.
local function email_of(addr)
  local user = addr.user
  local dot_atom = user ~= ''
  for part in (user .. '.'):gmatch('(.-)%.') do
    if not part:match('^' .. ATEXT .. '+$') then dot_atom = false end
  end
  if not dot_atom then user = '"' .. user:gsub('[\\"]', '\\%0') .. '"' end
  return user .. '@' .. addr.domain
end

-- crates/message/src/address.rs impl UserData for HeaderAddress.
local function header_address(addr)
  return strict_object('HeaderAddress', {
    user = function() return addr.user end,
    domain = function() return addr.domain end,
    email = function() return email_of(addr) end,
    name = function() return addr.name end,
  })
end

-- crates/message/src/address.rs impl UserData for HeaderAddressList: user, domain, email and
-- name go through single_address(), which raises for a group or for several addresses.
local function header_address_list(entries)
  local function single()
    if #entries == 0 then raise('no addresses') end
    if #entries > 1 then raise('is not a simple single address') end
    if entries[1].group then raise('is not a simple address') end
    return entries[1]
  end
  local fields = {
    user = function() return single().user end,
    domain = function() return single().domain end,
    email = function() return email_of(single()) end,
    name = function() return single().name end,
    list = function()
      local flat = {}
      for _, e in ipairs(entries) do
        if e.group then
          for _, a in ipairs(e.addresses) do table.insert(flat, header_address(a)) end
        else
          table.insert(flat, header_address(e))
        end
      end
      return flat
    end,
  }
  for name in pairs(fields) do
    assert(facts.header_address_list_fields[name], 'HeaderAddressList has no field ' .. name)
  end
  return strict_object('HeaderAddressList', fields)
end

----------------------------------------------------------------------------- messages

-- A fake message. headers: list of { name, value } in order (default: From = sender).
-- Methods are those of crates/message/src/message.rs impl UserData for Message; one the
-- double does not implement raises when called, a name Message does not have raises when read.
function M.new_message(sender, recipient, headers)
  local state = {
    meta = {}, signed = {}, order = {},
    sender = sender, recipient = recipient,
    headers = headers or { { 'From', sender } },
    id = nil,
  }
  M.message_count = (M.message_count or 0) + 1
  state.id = string.format('%032x', M.message_count)
  local msg = {}
  local function own(self, method)
    if self ~= msg then raise('Message:' .. method .. ': call it as msg:' .. method .. '(...)') end
  end
  local function envelope(addr)
    return { email = addr, user = addr:match('^(.*)@'), domain = addr:match('@([^@]+)$') }
  end
  local function address_header(name)
    for _, h in ipairs(state.headers) do
      if h[1]:lower() == name:lower() then
        local entries = M.parse_address_list(h[2])
        if entries == nil then raise('failed to parse header ' .. h[1] .. ': ' .. h[2]) end
        return header_address_list(entries)
      end
    end
    return nil
  end
  local methods = {
    id = function(self) own(self, 'id'); return state.id end,
    set_meta = function(self, key, value)
      own(self, 'set_meta')
      if type(key) ~= 'string' then raise('set_meta: key must be a string') end
      if type(value) == 'function' or type(value) == 'userdata' then raise('set_meta: value is not serializable') end
      state.meta[key] = value
      table.insert(state.order, 'set_meta:' .. key)
    end,
    get_meta = function(self, key) own(self, 'get_meta'); return state.meta[key] end,
    sender = function(self) own(self, 'sender'); return envelope(state.sender) end,
    recipient = function(self) own(self, 'recipient'); return envelope(state.recipient) end,
    -- Message::get_address_header: nil without the header; a parse error raises.
    get_address_header = function(self, name) own(self, 'get_address_header'); return address_header(name) end,
    from_header = function(self) own(self, 'from_header'); return address_header('From') end,
    to_header = function(self) own(self, 'to_header'); return address_header('To') end,
    dkim_sign = function(self, signer)
      own(self, 'dkim_sign')
      if made[signer] ~= 'kumo.dkim.rsa_sha256_signer' then
        raise('dkim_sign: expected a Signer from kumo.dkim.*_signer')
      end
      table.insert(state.signed, signer)
      table.insert(state.order, 'dkim_sign')
    end,
  }
  for name in pairs(methods) do assert(facts.message_methods[name], 'Message has no method ' .. name) end
  setmetatable(msg, {
    __name = 'Message',
    __index = function(_, key)
      if methods[key] then return methods[key] end
      if facts.message_methods[key] then
        return function() raise('Message:' .. key .. ' is real but the double does not implement it [' .. facts.message_methods[key] .. ']') end
      end
      raise("attempt to get an unknown field '" .. tostring(key) .. "'")
    end,
    __newindex = function(_, key) raise("attempt to set an unknown field '" .. tostring(key) .. "' on a Message") end,
  })
  M.message_state = M.message_state or setmetatable({}, { __mode = 'k' })
  M.message_state[msg] = state
  return msg
end

function M.state_of(msg) return M.message_state[msg] end

------------------------------------------------------------------------------- events

-- What kumod deserializes an event's return value into (the 'returns' fact): config events
-- need the value a kumo.make_* call made; auth events a bool or an AuthInfo table.
local RETURN_CHECKS = {
  EgressPathConfig = function(v) return made[v] == 'kumo.make_egress_path' end,
  QueueConfig = function(v) return made[v] == 'kumo.make_queue_config' end,
  ['Option<UserDataRef<AccessControlListWrap>>'] = function(v)
    return v == nil or made[v] == 'kumo.aaa.make_access_control_list'
  end,
  ['SerdeWrappedValue<AuthKindResult>'] = function(v)
    if type(v) == 'boolean' then return true end
    if type(v) ~= 'table' then return false end
    for key in pairs(v) do
      if key ~= 'identities' and key ~= 'groups' and key ~= 'peer_address' then return false end
    end
    return true
  end,
}

-- Calls the handler(s) of an event as kumod would; errors propagate to the caller.
function M.fire(event, ...)
  local info = assert(facts.events[event], 'the test fires an event KumoMTA does not have: ' .. event)
  local registered = M.handlers[event]
  if registered == nil then return nil end
  local handlers = info.multiple and registered or { registered }
  local previous = M.current_event
  M.current_event = event
  local result, returned
  for _, handler in ipairs(handlers) do
    local packed = table.pack(pcall(handler, ...))
    if not packed[1] then
      M.current_event = previous
      error(packed[2], 0)
    end
    -- kumod goes on to the next handler only when one returns no value at all: a returned nil
    -- is an answer (crates/config/src/lib.rs CallbackSignature::call, result.is_empty()).
    if packed.n > 1 then result, returned = packed[2], true break end
  end
  M.current_event = previous
  local check = RETURN_CHECKS[info.returns]
  -- A Multiple event whose handlers all return nothing leaves kumod to its defaults.
  if check and not (info.multiple and not returned) and not check(result) then
    raise(event .. ': the handler returned ' .. tostring(result) .. ', which kumod cannot use as ' .. info.returns
      .. ' [' .. info.source .. ']')
  end
  return result
end

-------------------------------------------------------------------------- HTTP access
-- KumoMTA's default ACL map (assets/acls/default.toml, compiled into kumod), for kumod's listener.
local function rule(identity, privileges)
  local out = {}
  for _, p in ipairs(privileges) do
    table.insert(out, { criteria = { Identity = identity }, privilege = p, access = 'Allow' })
  end
  return out
end
local TRUSTED_GROUP = { Group = 'kumomta:http-listener-trusted-ip' }
local function concat(...)
  local out = {}
  for _, list in ipairs({ ... }) do for _, x in ipairs(list) do table.insert(out, x) end end
  return out
end
M.default_acl = {
  ['http_listener/*/api/check-liveness'] = rule('Any', { 'GET' }),
  ['http_listener/*/rapidoc'] = rule('Any', { 'GET' }),
  ['http_listener/*/api-docs/openapi.json'] = rule('Any', { 'GET' }),
  ['http_listener/*/api/inject'] = concat(rule(TRUSTED_GROUP, { 'POST' }), rule('Authenticated', { 'POST' })),
  ['http_listener/*/api/admin'] = rule(TRUSTED_GROUP, { 'GET', 'DELETE', 'POST' }),
  ['http_listener/*/api/machine-info'] = rule(TRUSTED_GROUP, { 'GET' }),
  ['http_listener/*/metrics'] = rule(TRUSTED_GROUP, { 'GET' }),
  ['http_listener/*/metrics.json'] = rule(TRUSTED_GROUP, { 'GET' }),
  ['http_listener/*/api/xfer'] = rule(TRUSTED_GROUP, { 'POST' }),
}

-- crates/kumo-server-common/src/http_server/auth.rs HttpEndpointResource::new: the listener's
-- own names from the full path down, then the wildcard ones, then 'http_listener'.
function M.http_resources(listen, path)
  -- path[1..].splitn(MAX_ACL_PATH_COMPONENTS + 1, '/'), truncated to 10 components
  local split, rest = {}, path:sub(2)
  while #split < 10 do
    local slash = rest:find('/', 1, true)
    if not slash then table.insert(split, rest) break end
    table.insert(split, rest:sub(1, slash - 1))
    rest = rest:sub(slash + 1)
  end
  local own, wild = {}, {}
  for n = #split, 1, -1 do
    local p = table.concat(split, '/', 1, n)
    table.insert(own, 'http_listener/' .. listen .. '/' .. p)
    table.insert(wild, 'http_listener/*/' .. p)
  end
  table.insert(own, 'http_listener/' .. listen)
  local all = concat(own, wild)
  table.insert(all, 'http_listener')
  return all
end

-- authn_authz.rs AuthInfo::matches_criteria / matches_identity.
local function matches(info, term)
  local key, value = next(term)
  if key == 'AllOf' then
    for _, t in ipairs(value) do if not matches(info, t) then return false end end
    return true
  elseif key == 'AnyOf' then
    for _, t in ipairs(value) do if matches(info, t) then return true end end
    return false
  elseif key == 'Not' then return not matches(info, value)
  end
  local id = value
  if id == 'Any' then return true end
  if id == 'Authenticated' then return #info.identities > 0 end
  if id == 'Unauthenticated' then return #info.identities == 0 end
  local kind, v = next(id)
  if kind == 'Individual' then
    for _, i in ipairs(info.identities) do if i == v then return true end end
  elseif kind == 'Group' then
    for _, g in ipairs(info.groups) do if g == v then return true end end
  elseif kind == 'Machine' then return info.peer_address ~= nil and is_ip(info.peer_address)
    and table.concat(ip_bytes(info.peer_address), '.') == table.concat(ip_bytes(v), '.')
  elseif kind == 'MachineSet' then return info.peer_address ~= nil and cidrs_contain(v, info.peer_address)
  end
  return false
end

-- AccessControlList::query_resource_access: each resource in turn; get_acl_definition's answer,
-- or (answering nothing, fall_back_to_acl_map's default) the default map's; the first rule whose
-- criteria and privilege match decides; a resource with no deciding rule passes to the next.
-- info: { identities = {...}, groups = {...}, peer_address = '...' }. An error raised by
-- get_acl_definition fails the whole check: 500 'try again later' (http_server/auth.rs
-- auth_middleware, the Err arm of query_resource_access).
function M.http_access(listen, path, method, info)
  for _, resource in ipairs(M.http_resources(listen, path)) do
    local ok, acl = pcall(M.fire, 'get_acl_definition', resource)
    if not ok then
      return { access = 'Error', status = 500, resource = resource, error = tostring(acl) }
    end
    local rules
    if acl ~= nil then
      if made[acl] ~= 'kumo.aaa.make_access_control_list' then
        raise('get_acl_definition: returned ' .. tostring(acl) .. ', not an ACL from kumo.aaa.make_access_control_list')
      end
      rules = acl.rules
    else
      rules = M.default_acl[resource]
    end
    for _, r in ipairs(rules or {}) do
      if matches(info, r.criteria) and r.privilege == method then
        return { access = r.access, resource = resource }
      end
    end
  end
  return { access = 'DenyByDefault' }
end

-- auth_middleware: a peer in the listener's trusted_hosts (CidrSet::default_trusted_hosts,
-- loopback, when the policy names none: crates/cidr-map/src/set.rs) joins the group
-- 'kumomta:http-listener-trusted-ip'. listen: as the policy started the listener.
function M.trusted_by_listener(listen, peer_address)
  for _, c in ipairs(M.calls) do
    if c.fn == 'start_http_listener' and c.args.listen == listen then
      return cidrs_contain(c.args.trusted_hosts or { '127.0.0.1', '::1' }, peer_address)
    end
  end
  error('no HTTP listener on ' .. listen)
end

M.module = module
return M
