-- A test double of KumoMTA's `kumo` Lua module, following its documented API
-- (docs/reference/kumo/*.md). It records what a policy asks for so tests can
-- assert on it, and lets a test fire events with fake messages.
local M = { handlers = {}, calls = {} }

local function record(name, args)
  table.insert(M.calls, { fn = name, args = args })
  return args
end

function M.on(event, handler)
  assert(type(event) == 'string', 'kumo.on: event name must be a string')
  assert(type(handler) == 'function', 'kumo.on: handler must be a function')
  -- KumoMTA allows one handler per event for most events; a second registration is a bug.
  assert(M.handlers[event] == nil, 'kumo.on: handler for ' .. event .. ' registered twice')
  M.handlers[event] = handler
end

local function table_arg(name)
  return function(args)
    assert(type(args) == 'table', 'kumo.' .. name .. ' takes a table')
    return record(name, args)
  end
end

M.start_esmtp_listener = table_arg('start_esmtp_listener')
M.start_http_listener = table_arg('start_http_listener')
M.define_spool = table_arg('define_spool')
M.configure_local_logs = table_arg('configure_local_logs')
M.make_egress_path = table_arg('make_egress_path')
M.make_queue_config = table_arg('make_queue_config')
M.make_listener_domain = table_arg('make_listener_domain')

M.dkim = {
  rsa_sha256_signer = function(args)
    assert(type(args.domain) == 'string' and type(args.selector) == 'string', 'dkim signer needs domain and selector')
    assert(type(args.key) == 'string' or type(args.key) == 'table', 'dkim signer needs a key')
    record('dkim.rsa_sha256_signer', args)
    return { signer = args }
  end,
}

-- A fake message: meta values, sender/recipient, and the DKIM signatures applied.
function M.new_message(sender, recipient)
  local msg = { meta = {}, signed = {}, _sender = sender, _recipient = recipient, order = {} }
  function msg:set_meta(k, v) self.meta[k] = v; table.insert(self.order, 'set_meta:' .. k) end
  function msg:get_meta(k) return self.meta[k] end
  function msg:sender() return { domain = self._sender:match('@(.+)$'), email = self._sender } end
  function msg:recipient() return { domain = self._recipient:match('@(.+)$'), email = self._recipient } end
  function msg:from_header() return { domain = self._sender:match('@(.+)$'), email = self._sender } end
  function msg:dkim_sign(signer) table.insert(self.signed, signer); table.insert(self.order, 'dkim_sign') end
  return msg
end

function M.fire(event, ...)
  local handler = M.handlers[event]
  if handler == nil then return nil end
  return handler(...)
end

return M
