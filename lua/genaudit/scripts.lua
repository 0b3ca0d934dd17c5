-- genaudit.scripts — loads user scripts (templates, rules, repair policies):
-- each in its own restricted environment, cached by path and file version,
-- reloaded when the file changes. A script that fails to load keeps its last
-- good version active; the error is kept for the host to report.
local core = require("genaudit.core")

local M = {}

local unpack = rawget(table, "unpack") or _G.unpack
local setfenv = _G.setfenv -- LuaJIT / 5.1 only
local pack = rawget(table, "pack") or function(...) return { n = select("#", ...), ... } end
local jit = rawget(_G, "jit")
local DEFAULT_LIMIT_MS = 1000

-- The time-limited calls under way (innermost last): the hook marks one
-- expired, and the sandbox's pcall/xpcall re-raise it, so a script cannot
-- catch its own time-out and loop on.
local active = {}

local function reraise_if_expired(...)
  local top = active[#active]
  if top and top.expired then error(top.message, 0) end
  return ...
end

local function sandbox_pcall(f, ...) return reraise_if_expired(pcall(f, ...)) end
local function sandbox_xpcall(f, handler, ...) return reraise_if_expired(xpcall(f, handler, ...)) end

-- A fresh environment per script: pure functions only unless the host opts in.
local function sandbox_env(extra)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = sandbox_pcall, select = select, tonumber = tonumber, tostring = tostring,
    type = type, unpack = unpack, xpcall = sandbox_xpcall, rawequal = rawequal,
    rawget = rawget, rawset = rawset, rawlen = _G.rawlen, setmetatable = setmetatable,
    _VERSION = _VERSION,
  }
  local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end
  env.string, env.table, env.math = copy(string), copy(table), copy(math)
  if _G.utf8 then env.utf8 = copy(_G.utf8) end
  env.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }
  env._G = env
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function compile(path, src, env)
  local fn, err = load(src, "@" .. path, "t", env)
  if fn and setfenv then setfenv(fn, env) end -- LuaJIT/5.1: load ignores env
  return fn, err
end

local Loader = {}
Loader.__index = Loader

-- scripts.loader{ sandbox = true, env = {extra globals}, validate = fn(value) -> ok, err,
--   limit_ms = 1000 (per script call; 0 = no limit) }
function M.loader(opts)
  opts = opts or {}
  return setmetatable({
    cache = {},          -- path -> { version, value, error }
    listings = {},       -- dir -> { version, paths }
    sandbox = opts.sandbox ~= false,
    env = opts.env,
    validate = opts.validate,
    limit_ms = opts.limit_ms or DEFAULT_LIMIT_MS,
  }, Loader)
end

-- loader:load(path) -> value, err_or_nil. value is the script's result (the
-- newest good version); err says why the newest file version could not be
-- used (the previous value is still returned then). nil, err when no good
-- version ever loaded.
function Loader:load(path)
  local entry = self.cache[path]
  local version, err = core.file_version(path)
  if not version then
    err = err:gsub("^%u+: ", "")
    if entry and entry.value ~= nil then return entry.value, "SCRIPT: " .. err end
    return nil, "SCRIPT: " .. err, "SCRIPT"
  end
  if entry and entry.version == version then return entry.value, entry.error end
  entry = entry or {}
  self.cache[path] = entry
  entry.version = version
  local src
  src, err = core.read_file(path)
  local value
  if src then
    local env = self.sandbox and sandbox_env(self.env) or setmetatable({}, { __index = _G })
    local fn
    fn, err = compile(path, src, env)
    if fn then
      if jit then jit.off(fn, true) end -- hooks must fire inside script loops
      local ok, res = self:call(fn)
      if not ok then
        err = tostring(res)
      elseif res == nil then
        err = path .. ": script returned nothing"
      elseif self.validate then
        local vok, verr = self.validate(res, path)
        if vok then value = res else err = path .. ": " .. tostring(verr) end
      else
        value = res
      end
    end
  end
  if value ~= nil then
    entry.value, entry.error = value, nil
    return value
  end
  entry.error = "SCRIPT: " .. tostring(err)
  if entry.value ~= nil then return entry.value, entry.error end
  return nil, entry.error, "SCRIPT"
end

-- loader:dir(dir) -> sorted array of "*.lua" paths in dir (empty when missing).
-- The listing is cached until the directory itself changes (a file added,
-- removed or renamed changes its mtime); edits of a file are caught by load().
function Loader:dir(dir, exclude)
  local version = core.file_version(dir)
  local cached = self.listings[dir]
  if cached and version and cached.version == version then return cached.paths end
  local out = {}
  for _, name in ipairs(core.listdir(dir) or {}) do
    if name:match("%.lua$") and not (exclude and exclude[name]) then out[#out + 1] = dir .. "/" .. name end
  end
  self.listings[dir] = { version = version, paths = out }
  return out
end

-- scripts.call(fn, limit_ms, ...) -> true, results... | false, err. Runs user
-- code protected and time-limited: a script that raises, or runs longer than
-- limit_ms (an endless loop), never takes the pipeline down. The limit is
-- checked every 1000 VM instructions by a hook on a private coroutine (JIT
-- compilation is off for script code, or LuaJIT's traces would skip hooks).
function M.call(fn, limit_ms, ...)
  limit_ms = limit_ms or DEFAULT_LIMIT_MS
  if limit_ms <= 0 then return pcall(fn, ...) end
  local deadline = core.monotonic_us() + limit_ms * 1000
  local state = { expired = false, message = ("script exceeded its time limit (%d ms)"):format(limit_ms) }
  local co = coroutine.create(fn)
  -- LuaJIT keeps one hook for all coroutines: remember the host's, put it back
  local old_hook, old_mask, old_count = debug.gethook()
  debug.sethook(co, function()
    if state.expired or core.monotonic_us() > deadline then
      state.expired = true
      error(state.message, 0)
    end
  end, "", 1000)
  active[#active + 1] = state
  local res = pack(coroutine.resume(co, ...))
  active[#active] = nil
  if jit then
    if old_hook then debug.sethook(old_hook, old_mask, old_count) else debug.sethook() end
  end
  if res[1] and coroutine.status(co) ~= "dead" then
    return false, "script yielded; scripts must run to completion"
  end
  return unpack(res, 1, res.n)
end

-- loader:call(fn, ...) -> like scripts.call with this loader's time limit.
function Loader:call(fn, ...)
  return M.call(fn, self.limit_ms, ...)
end

return M
