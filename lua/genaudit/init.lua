-- genaudit — the public entry point. Everything a user needs is reachable
-- from this table; genaudit.core (the C module) is an implementation detail.
local core = require("genaudit.core")
local store = require("genaudit.store")

local M = {
  _VERSION = "0.1.0",
  null = core.null, -- SQL NULL in query parameters
}

-- genaudit.open(url, opts) -> store | nil, err, code (runs migrations)
M.open = store.open
-- genaudit.persister(store) -> the SnapshotPersister (the store itself)
M.persister = store.persister
-- genaudit.stopwatch() -> a running monotonic stopwatch
M.stopwatch = core.stopwatch

-- genaudit.pipeline{ store, provider, templates, rules, pricing, ... }
function M.pipeline(opts)
  return require("genaudit.pipeline").new(opts)
end

-- genaudit.replay(store, id, { provider, pricing, record = true }) -> result
-- | nil, err, code (see genaudit/replay.lua)
function M.replay(store_obj, id, opts)
  return require("genaudit.replay").run(store_obj, id, opts)
end

-- Submodules loaded on first use: genaudit.providers, genaudit.pricing,
-- genaudit.dto, genaudit.composer, genaudit.validator, genaudit.report,
-- genaudit.redact, genaudit.audit, genaudit.budget, genaudit.otel.
local lazy = { providers = true, pricing = true, dto = true, composer = true, validator = true, report = true,
               redact = true, audit = true, budget = true, otel = true }
setmetatable(M, {
  __index = function(t, k)
    if lazy[k] then
      local mod = require("genaudit." .. k)
      rawset(t, k, mod)
      return mod
    end
    return nil
  end,
})

return M
