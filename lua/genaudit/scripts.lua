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
local monotonic_us = core.monotonic_us
local DEFAULT_LIMIT_MS = 1000

-- Size caps on what scripts produce (README "Writing rules"): no string
-- function of the sandbox builds a string over MAX_STRING_BYTES, and a
-- template's prompts and a policy's feedback are refused over it; an issue's
-- slug and message over MAX_MESSAGE_BYTES are refused, error texts are cut
-- there; a rule returns at most MAX_ISSUES issues. string.gsub callbacks nest
-- at most MAX_CALLBACK_DEPTH deep (deeper, LuaJIT overflows the C stack).
M.MAX_STRING_BYTES = 16 * 1024 * 1024
M.MAX_MESSAGE_BYTES = 64 * 1024
M.MAX_ISSUES = 100
M.MAX_CALLBACK_DEPTH = 32

-- The time-limited calls under way (innermost last): the hook marks one
-- expired, and the sandbox's pcall/xpcall re-raise it, so a script cannot
-- catch its own time-out and loop on.
local active = {}

local function reraise_if_expired(...)
  local top = active[#active]
  if top and top.expired then error(top.message, 0) end
  return ...
end

-- Raises the time-out of the innermost call once its deadline has passed:
-- run after every C function of the sandbox, because the hook sees only VM
-- instructions and a loop of slow C calls would otherwise overrun the limit.
local function check_deadline()
  local top = active[#active]
  if top and (top.expired or monotonic_us() > top.deadline) then
    top.expired = true
    error(top.message, 0)
  end
end

local function sandbox_pcall(f, ...) return reraise_if_expired(pcall(f, ...)) end
-- The message handler runs where the error was raised: for the time-out, that
-- is inside the hook, where hooks are off — so it is skipped once expired.
local function sandbox_xpcall(f, handler, ...)
  return reraise_if_expired(xpcall(f, function(e)
    local top = active[#active]
    if top and top.expired then return e end
    return handler(e)
  end, ...))
end

-- A finalizer runs wherever the collector happens to be, in host code with
-- no time limit (Lua 5.4 finalizes tables; LuaJIT only userdata, which
-- scripts cannot make): scripts may not set one. 5.4 marks an object for
-- finalization only when setmetatable sees the field, so adding it later
-- does nothing.
local function sandbox_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: a __gc metamethod is not allowed in scripts", 2)
  end
  return setmetatable(t, mt)
end

-- M.text(v) -> a host string for a script value (an error object, a reason)
-- without running any of its metamethods: strings are cut at
-- MAX_MESSAGE_BYTES, numbers and booleans written out, anything else named
-- by its type.
function M.text(v)
  local ty = type(v)
  if ty == "string" then
    if #v > M.MAX_MESSAGE_BYTES then return v:sub(1, M.MAX_MESSAGE_BYTES) .. "... (truncated)" end
    return v
  elseif ty == "number" or ty == "boolean" or ty == "nil" then
    return tostring(v)
  end
  return "(error object of type " .. ty .. ")"
end

-- M.copy(v) -> a deep copy of a host value (the context, the parts, the
-- issues) for a script to read or spoil: tables are copied raw, keys too,
-- cycles and shared tables kept, metatables dropped (core.copy, csrc/ga_copy.c:
-- about twice as fast as a Lua copy under Lua 5.4, as fast under LuaJIT,
-- and no depth limit).
M.copy = core.copy

local function too_big(what, n, limit)
  return ("%s: result of %d bytes is over the limit of %d bytes"):format(what, n, limit)
end

-- The sandbox's C functions, each followed by a deadline check; string.rep
-- and table.concat refuse results over MAX_STRING_BYTES before building them,
-- string.gsub counts its nesting.
local guarded = {}
local function after(...)
  check_deadline()
  return ...
end
-- (Checked after the call only: a call starts either a script call, whose
-- deadline is fresh, or after VM instructions, which the hook counts, or
-- after another checked C call.)
local function guard(f)
  return function(...)
    return after(f(...))
  end
end
for _, lib in ipairs({ "string", "table", "utf8" }) do
  local src = rawget(_G, lib)
  if type(src) == "table" then
    local g = {}
    for k, f in pairs(src) do
      if type(f) == "function" then g[k] = guard(f) else g[k] = f end
    end
    guarded[lib] = g
  end
end

local raw_rep, raw_concat, raw_gsub, floor = string.rep, table.concat, string.gsub, math.floor
-- The size is known in advance; so is the count, which alone can hang Lua 5.4
-- (string.rep("", 2^40) copies nothing 2^40 times).
guarded.string.rep = function(s, n, sep)
  if (type(s) == "string" or type(s) == "number") and type(n) == "number" and n >= 1 then
    local ls = #tostring(s)
    local lsep = (type(sep) == "string" or type(sep) == "number") and #tostring(sep) or 0
    local total = ls * floor(n) + lsep * (floor(n) - 1)
    if total > M.MAX_STRING_BYTES then error(too_big("string.rep", total, M.MAX_STRING_BYTES), 2) end
    if n > M.MAX_STRING_BYTES then
      error(("string.rep: a count of %.0f is over the limit of %d"):format(n, M.MAX_STRING_BYTES), 2)
    end
  end
  check_deadline()
  return after(raw_rep(s, n, sep))
end
-- Collects the pieces (metamethods of a proxy run here, in the script's
-- call) so their total size is known before anything is built.
guarded.table.concat = function(t, sep, i, j)
  if type(t) ~= "table" then return raw_concat(t, sep, i, j) end
  i = i == nil and 1 or i
  j = j == nil and #t or j
  if type(i) ~= "number" or type(j) ~= "number" then return raw_concat(t, sep, i, j) end
  local lsep = (type(sep) == "string" or type(sep) == "number") and #tostring(sep) or 0
  local parts, total = {}, 0
  for k = i, j do
    check_deadline()
    local v = t[k]
    if type(v) == "string" or type(v) == "number" then
      total = total + #tostring(v) + (k > i and lsep or 0)
      if total > M.MAX_STRING_BYTES then error(too_big("table.concat", total, M.MAX_STRING_BYTES), 2) end
    end
    parts[#parts + 1] = v
    if v == nil then return raw_concat(t, sep, i, j) end -- the stock error message
  end
  return after(raw_concat(parts, sep))
end
local gsub_depth = 0
local function gsub_result(res, count)
  check_deadline()
  if type(res) == "string" and #res > M.MAX_STRING_BYTES then
    error(too_big("string.gsub", #res, M.MAX_STRING_BYTES), 0)
  end
  return res, count
end
local function gsub_done(ok, res, count)
  gsub_depth = gsub_depth - 1
  if not ok then error(res, 0) end
  return gsub_result(res, count)
end
-- The result of a gsub is bounded before it is built: C's gsub checks no
-- size, and one call with a replacement of many "%0" (each a copy of the
-- match) built a gigabyte over many seconds, far past the time limit, before
-- the size check after it. Matches do not overlap, so with count matches a
-- string replacement of length r holding k captures ("%0".."%9") yields at
-- most #s + count * r + k * (#s + 20 * count) bytes (20: a position capture's
-- digits); a function's or a table's values are summed as they come.
local function gsub_bound(s, pattern, repl, n)
  if type(s) ~= "string" and type(s) ~= "number" then return end
  if type(repl) ~= "string" and type(repl) ~= "number" then return end
  local ls, r = #tostring(s), tostring(repl)
  local k = select(2, raw_gsub(r, "%%%d", ""))
  if #r == 0 or (k == 0 and #r <= 1) then return end -- never longer than s (plus count * 1 <= #s + 1)
  local count = select(2, raw_gsub(s, pattern, "", n))
  check_deadline()
  local bound = ls + count * #r + k * (ls + 20 * count)
  if bound > M.MAX_STRING_BYTES then
    error(("string.gsub: a result of up to %.0f bytes is over the limit of %d bytes"):format(bound,
      M.MAX_STRING_BYTES), 3)
  end
end

local function sized(repl)
  local total = 0
  local function add(v)
    if type(v) == "string" or type(v) == "number" then
      total = total + #tostring(v)
      if total > M.MAX_STRING_BYTES then error(too_big("string.gsub", total, M.MAX_STRING_BYTES), 0) end
    end
    return v
  end
  if type(repl) == "function" then return function(...) return add(repl(...)) end end
  return function(c) return add(repl[c]) end
end

-- A callback (a function, or a table's __index) that calls gsub again nests
-- C calls: LuaJIT has no C stack check there and crashes some 900 deep.
guarded.string.gsub = function(s, pattern, repl, n)
  check_deadline()
  local ty = type(repl)
  if ty ~= "function" and ty ~= "table" then
    gsub_bound(s, pattern, repl, n)
    return gsub_result(raw_gsub(s, pattern, repl, n))
  end
  if gsub_depth >= M.MAX_CALLBACK_DEPTH then
    error(("string.gsub: callbacks nested more than %d deep"):format(M.MAX_CALLBACK_DEPTH), 2)
  end
  gsub_depth = gsub_depth + 1
  return gsub_done(pcall(raw_gsub, s, pattern, sized(repl), n))
end
-- gmatch's iterator is a C function of its own: each step is checked too.
local raw_gmatch = string.gmatch
guarded.string.gmatch = function(...)
  check_deadline()
  local step = raw_gmatch(...)
  return function() return after(step()) end
end
local guarded_unpack, guarded_select = guard(unpack), guard(select)

-- While a guarded call runs, string methods ("s:rep(n)") resolve to the
-- guarded functions too: the string metatable's __index is swapped for the
-- call and put back after it.
local string_mt = getmetatable("")

-- A fresh environment per script: pure functions only unless the host opts in.
local function sandbox_env(extra)
  local env = {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    pcall = sandbox_pcall, select = guarded_select, tonumber = tonumber, tostring = tostring,
    type = type, unpack = guarded_unpack, xpcall = sandbox_xpcall, rawequal = rawequal,
    rawget = rawget, rawset = rawset, rawlen = _G.rawlen, setmetatable = sandbox_setmetatable,
    _VERSION = _VERSION,
  }
  local function copy(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
  end
  env.string, env.table, env.math = copy(guarded.string), copy(guarded.table), copy(math)
  if guarded.utf8 then env.utf8 = copy(guarded.utf8) end
  env.os = { time = os.time, clock = os.clock, date = guard(os.date), difftime = os.difftime }
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

-- scripts.loader{ sandbox = true, env = {extra globals},
--   validate = fn(value) -> host_copy (or true) | nil, err,
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

-- loader:load(path[, version]) -> value, err_or_nil. value is the script's
-- result (the newest good version); err says why the newest file version
-- could not be used (the previous value is still returned then). nil, err
-- when no good version ever loaded. version: the file's core.file_version
-- when the caller has just read it (one stat, not two).
function Loader:load(path, version)
  local entry = self.cache[path]
  local err
  if not version then version, err = core.file_version(path) end
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
  -- the bytes of the version being tried, pinned by their SHA-256: they become
  -- the active version's (loader:script) or the failed one's (loader:failed)
  local tried = src and { path = path, source = src, digest = core.sha256(src) } or nil
  if src then
    local env = self.sandbox and sandbox_env(self.env) or setmetatable({}, { __index = _G })
    local fn
    fn, err = compile(path, src, env)
    if fn then
      if jit then jit.off(fn, true) end -- hooks must fire inside script loops
      local ok, res = self:call(fn)
      if not ok then
        err = res
      elseif res == nil then
        err = path .. ": script returned nothing"
      elseif self.validate then
        -- validate reads the script's value raw and returns the host's own
        -- copy of it (or true to keep the value itself)
        local v, verr = self.validate(res, path)
        if v then value = v == true and res or v else err = path .. ": " .. M.text(verr) end
      else
        value = res
      end
    end
  end
  entry.failed = nil
  if value ~= nil then
    entry.value, entry.error, entry.script = value, nil, tried
    return value
  end
  entry.failed = tried
  entry.error = "SCRIPT: " .. tostring(err)
  if entry.value ~= nil then return entry.value, entry.error end
  return nil, entry.error, "SCRIPT"
end

-- loader:script(path) -> { path, source, digest } of the active version of
-- a script (the newest that loaded: the one load() returns), or nil when none
-- ever loaded. source is its exact bytes, digest their SHA-256 (hex).
function Loader:script(path)
  local e = self.cache[path]
  return e and e.value ~= nil and e.script or nil
end

-- loader:failed(path) -> { path, source, digest } of the newest version of a
-- script when it could be read but not loaded, or nil.
function Loader:failed(path)
  local e = self.cache[path]
  return e and e.failed or nil
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

-- The time-limited calls run on worker coroutines, reused from call to call
-- (a coroutine, its hook and the hook's closure cost more than a short rule
-- check): a worker runs one call, yields DONE and its results, and waits for
-- the next. A call that raises (or times out) kills its worker, and one that
-- yields by itself leaves its worker suspended in the script: either is
-- dropped, and the next call gets a fresh one. A worker runs one call at a
-- time (a script call made from host code inside a script call takes another
-- worker); at most MAX_IDLE_WORKERS wait between calls. Idle workers are
-- kept per calling coroutine (weakly), so a worker is only ever resumed
-- from the coroutine that created it.
local DONE = {}
local MAX_IDLE_WORKERS = 4
local idle_of = setmetatable({}, { __mode = "k" }) -- calling coroutine -> its idle workers
local MAIN = {} -- the key of the main thread (LuaJIT's coroutine.running() is nil there)
-- Inside nginx (OpenResty) workers are not reused: a fresh coroutine per
-- call, as before. Reusing them, even per request coroutine, killed the
-- nginx worker process under bench/openresty_load.lua (cause not found yet).
local NGX = rawget(_G, "ngx") ~= nil
local yield, running = coroutine.yield, coroutine.running

local function loop(fn, ...)
  return loop(yield(DONE, fn(...))) -- a tail call: the stack does not grow
end
if jit then jit.off(loop) end

local function new_worker()
  local w = { co = coroutine.create(loop) }
  local co = w.co
  -- the hook acts only inside the worker's coroutine: LuaJIT keeps one hook
  -- for all coroutines (it also fires in the host code between resume and
  -- the hook's removal, where an error would leave all of this in place)
  w.hook = function()
    if running() ~= co then return end
    local state = w.state
    if state and (state.expired or monotonic_us() > state.deadline) then
      state.expired = true
      error(state.message, 0)
    end
  end
  -- Lua 5.4's hooks are per coroutine: set once; LuaJIT's is set per call
  if not jit then debug.sethook(co, w.hook, "", 1000) end
  return w
end

local messages = {} -- limit_ms -> the time-out's message
local function limit_message(limit_ms)
  local m = messages[limit_ms]
  if not m then
    m = ("script exceeded its time limit (%d ms)"):format(limit_ms)
    messages[limit_ms] = m
  end
  return m
end

-- After a worker's call: the host's hook and string methods back, the
-- worker kept for the next call when it is done cleanly; the call's results.
local function finish(w, old_index, old_hook, old_mask, old_count, ok, tag, ...)
  if jit then
    if old_hook then debug.sethook(old_hook, old_mask, old_count) else debug.sethook() end
  end
  active[#active] = nil
  w.state = nil
  if old_index then string_mt.__index = old_index end
  if not ok then return false, M.text(tag) end
  if tag ~= DONE then return false, "script yielded; scripts must run to completion" end
  local idle = w.idle
  if idle and #idle < MAX_IDLE_WORKERS then idle[#idle + 1] = w end
  return true, ...
end

-- Runs fn(...) protected: returns true, results... (the script's own values:
-- read them raw) | false, err (a host string, see M.text). With limit_ms > 0
-- the call is time-limited: the hook checks the deadline every 1000 VM
-- instructions on a worker coroutine (JIT compilation is off for script
-- code, or LuaJIT's traces would skip hooks), and every C function of the
-- sandbox checks it after it returns. With sandboxed, string methods resolve
-- to the sandbox's guarded functions for the call.
local function run(fn, limit_ms, sandboxed, ...)
  limit_ms = limit_ms or DEFAULT_LIMIT_MS
  local old_index = string_mt.__index
  if limit_ms <= 0 then
    if sandboxed then string_mt.__index = guarded.string end
    local res = pack(pcall(fn, ...))
    if sandboxed then string_mt.__index = old_index end
    if not res[1] then return false, M.text(res[2]) end
    return unpack(res, 1, res.n)
  end
  local w
  if NGX then
    w = new_worker()
  else
    local caller = running() or MAIN
    local idle = idle_of[caller]
    if not idle then
      idle = {}
      idle_of[caller] = idle
    end
    w = idle[#idle]
    if w then idle[#idle] = nil else w = new_worker() end
    w.idle = idle
  end
  local state = { expired = false, deadline = monotonic_us() + limit_ms * 1000, message = limit_message(limit_ms) }
  w.state = state
  local old_hook, old_mask, old_count
  if jit then
    old_hook, old_mask, old_count = debug.gethook()
    debug.sethook(w.co, w.hook, "", 1000)
  end
  if sandboxed then string_mt.__index = guarded.string end
  active[#active + 1] = state
  return finish(w, sandboxed and old_index, old_hook, old_mask, old_count, coroutine.resume(w.co, fn, ...))
end

-- scripts.call(fn, limit_ms, ...) -> true, results... | false, err: runs
-- untrusted code protected, time-limited and with guarded string methods: a
-- script that raises, or runs longer than limit_ms (an endless loop), never
-- takes the pipeline down.
function M.call(fn, limit_ms, ...) return run(fn, limit_ms, true, ...) end

-- loader:call(fn, ...) -> like scripts.call with this loader's time limit
-- (string methods are guarded only for sandboxed loaders).
function Loader:call(fn, ...)
  return run(fn, self.limit_ms, self.sandbox, ...)
end

return M
