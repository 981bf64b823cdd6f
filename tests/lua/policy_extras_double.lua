-- Test doubles of KumoMTA's policy-extras helpers the rendered policy requires, installed as
-- package.preload entries: 'policy-extras.shaping' (assets/policy-extras/shaping.lua) and
-- 'policy-extras.sources' (assets/policy-extras/sources.lua), repository KumoCorp/kumomta.
-- They follow those files' interfaces and side effects on kumod: which events they register
-- (so a policy registering the same Single event fails here as in kumod), what they call on
-- `kumo`, and what they refuse (a second setup). The line numbers cite those files.
local M = {}

function M.install(double)
  local kumo = double.module
  local raise, copy = double.raise, double.copy

  ------------------------------------------------------------------ policy-extras.shaping
  package.preload['policy-extras.shaping'] = function()
    local mod = {}
    -- setup_with_automation's options (shaping.lua:354-460); the double refuses any other key,
    -- which shaping.lua would silently ignore (a misspelt option).
    local OPTIONS = {
      publish = 'table', subscribe = 'table', extra_files = 'table', no_default_files = 'boolean',
      tsa_queue_config = 'table', back_pressure = 'number', load_validation_options = 'table',
      validation_options = 'table', cache_ttl = 'string', skip_log_record_types = 'table',
      additional_skip_log_record_types = 'table', pre_filter = 'boolean', publish_timeout = 'string',
      publish_pool_idle_timeout = 'string', publish_connection_verbose = 'boolean',
      shaping_data_populate_timeout = 'string', allow_stale_shaping_data = 'boolean',
      retry_shaping_data_fetch_on_populate_timeout = 'boolean',
    }

    -- Module level (shaping.lua:229, 342, 587): registered when the module is required.
    double.helper_event('kumo.tsa.config.monitor', 'assets/policy-extras/shaping.lua:229')
    double.helper_event('kumo.tsa.suspension.subscriber', 'assets/policy-extras/shaping.lua:342')
    kumo.on('kumo.tsa.config.monitor', function(args) end)
    kumo.on('kumo.tsa.suspension.subscriber', function(args) end)
    kumo.on('validate_config', function() end)

    function mod:setup(extra_files)
      return self:setup_with_automation({ extra_files = extra_files, publish = {}, subscribe = {} })
        .get_egress_path_config
    end

    function mod:setup_with_automation(options)
      if mod.CONFIGURED then raise 'shaping module has already been configured' end
      if type(options) ~= 'table' then raise('setup_with_automation: expected an options table') end
      for key, value in pairs(options) do
        local want = OPTIONS[key]
        if want == nil then raise("setup_with_automation: unknown option '" .. tostring(key) .. "'") end
        if type(value) ~= want then raise('setup_with_automation.' .. key .. ': expected a ' .. want) end
      end
      local cached_load = kumo.memoize(kumo.shaping.load, {
        name = 'shaping_data', ttl = options.cache_ttl or '1 minute', capacity = 16,
        invalidate_with_epoch = true,
      })
      -- shaping.lua:449-466: the default rules unless no_default_files, extra_files, then
      -- each subscribed TSA's generated rules.
      local file_names = {}
      if not options.no_default_files then
        table.insert(file_names, '/opt/kumomta/share/policy-extras/shaping.toml')
      end
      for _, f in ipairs(options.extra_files or {}) do
        if type(f) ~= 'string' then raise('setup_with_automation.extra_files: expected file names') end
        table.insert(file_names, f)
      end
      for _, url in ipairs(options.subscribe or {}) do
        table.insert(file_names, string.format('%s/get_config_v1/shaping.toml', url))
      end
      -- shaping.lua:468-488: one log hook and constructor event per TSA published to.
      local publish = {}
      for _, destination in ipairs(options.publish or {}) do
        if type(destination) ~= 'string' or not destination:match('^https?://') then
          raise('setup_with_automation.publish: expected http URLs, got ' .. tostring(destination))
        end
        local hook_name = string.format('%s.tsa.kumomta', destination)
        local constructor = string.format('make.%s', hook_name)
        publish[hook_name] = { endpoint = destination, hook_name = hook_name, constructor = constructor }
        double.helper_event(constructor, 'assets/policy-extras/shaping.lua:485')
        kumo.on(constructor, function(domain, _tenant, _campaign) return {} end)
      end
      double.shaping_setup = { options = copy(options), file_names = copy(file_names), publish = copy(publish) }

      local function setup_publish()
        -- shaping.lua:490-517
        for _, params in pairs(publish) do
          kumo.configure_log_hook { name = params.hook_name, per_record = {} }
        end
        if options.subscribe then
          for _, url in ipairs(options.subscribe) do
            kumo.spawn_task { event_name = 'kumo.tsa.suspension.subscriber', args = { url } }
          end
          kumo.spawn_task { event_name = 'kumo.tsa.config.monitor', args = {} }
        end
      end

      -- shaping.lua:523-553; skip_make returns the parameters instead of an egress path.
      local function get_egress_path_config(domain, egress_source, site_name, skip_make)
        local data = cached_load(file_names, options.load_validation_options)
        local params = data:get_egress_path_config(domain, egress_source, site_name)
        if not params.refresh_strategy then params.refresh_strategy = 'Epoch' end
        if skip_make then return params end
        return kumo.make_egress_path(params)
      end

      -- shaping.lua:563-572: its own handlers of two Multiple events.
      kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
        for _, data in pairs(publish) do
          if data.hook_name == domain then
            return kumo.make_queue_config {
              retry_interval = '1m', max_retry_interval = '20m',
              protocol = { custom_lua = { constructor = data.constructor } },
            }
          end
        end
      end)
      kumo.on('should_enqueue_log_record', function(msg, hook_name) end)

      mod.CONFIGURED = {
        _file_names = file_names,
        _options = options,
        load_shaping_data = function() return cached_load(file_names, options.load_validation_options) end,
        get_egress_path_config = get_egress_path_config,
        setup_publish = setup_publish,
      }
      return mod.CONFIGURED
    end
    return mod
  end

  ------------------------------------------------------------------ policy-extras.sources
  package.preload['policy-extras.sources'] = function()
    local mod = {}
    kumo.on('validate_config', function() end) -- sources.lua:161

    -- sources.lua:40-81 with policy_utils.lua load_json_or_toml_file: a table is used as is, a
    -- file name ending .toml is TOML (the double reads JSON only), any other JSON. Sources merge
    -- by name; each pool's entries are appended.
    local function load_data(data_files)
      local target = { sources = {}, pools = {} }
      for _, file in ipairs(data_files) do
        local data
        if type(file) == 'table' then
          data = file
        elseif type(file) == 'string' and not file:match('%.toml$') then
          data = kumo.json_load(file)
        else
          raise('sources double: reads inline tables and JSON files only, got ' .. tostring(file))
        end
        for key in pairs(data) do
          if key ~= 'source' and key ~= 'pool' then raise("SourcesHelperConfig: unknown field '" .. tostring(key) .. "'") end
        end
        for source, params in pairs(data.source or {}) do
          target.sources[source] = target.sources[source] or { name = source }
          for k, v in pairs(params) do target.sources[source][k] = v end
        end
        for pool, pool_def in pairs(data.pool or {}) do
          target.pools[pool] = target.pools[pool] or { name = pool, entries = {} }
          for pool_source, params in pairs(pool_def) do
            local entry = copy(params)
            entry.name = pool_source
            table.insert(target.pools[pool].entries, entry)
          end
        end
      end
      return target
    end

    function mod:setup(data_files)
      if mod.CONFIGURED then raise 'sources module has already been configured' end
      if type(data_files) ~= 'table' then raise('sources:setup: expected a list') end
      double.sources_files = copy(data_files)
      mod.CONFIGURED = { data_files = data_files, get_data = function() return load_data(data_files) end }
      -- sources.lua:142-158: both Single events.
      kumo.on('get_egress_source', function(source_name)
        return kumo.make_egress_source(load_data(data_files).sources[source_name])
      end)
      kumo.on('get_egress_pool', function(pool_name)
        return kumo.make_egress_pool(load_data(data_files).pools[pool_name])
      end)
    end
    return mod
  end
end

return M
