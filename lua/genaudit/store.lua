-- genaudit.store — opens a snapshot store from a URL, finds and applies its
-- migrations, and wraps the C connection in the public store object.
local core = require("genaudit.core")

local M = {}

local Store = {}
Store.__index = Store

-- Where migrations/<dialect>/ may live: an explicit option, the environment,
-- beside the installed module, or the source tree the module was loaded from.
local function migration_dirs(dialect, opts)
  local dirs = {}
  if opts.migrations_dir then dirs[#dirs + 1] = opts.migrations_dir end
  local env = os.getenv("GENAUDIT_MIGRATIONS")
  if env and env ~= "" then dirs[#dirs + 1] = env .. "/" .. dialect end
  local src = debug.getinfo(1, "S").source
  if src:sub(1, 1) == "@" then
    local moddir = src:sub(2):match("^(.*)/[^/]*$") or "."
    dirs[#dirs + 1] = moddir .. "/migrations/" .. dialect           -- make install
    dirs[#dirs + 1] = moddir .. "/../../migrations/" .. dialect     -- source tree
    -- luarocks: <tree>/share/lua/5.x/genaudit -> <tree>/lib/luarocks/rocks-5.x/genaudit/<ver>/migrations
    local tree, luaver = moddir:match("^(.*)/share/lua/(%d%.%d)/genaudit$")
    if tree then
      local rocks = tree .. "/lib/luarocks/rocks-" .. luaver .. "/genaudit"
      for _, ver in ipairs(core.listdir(rocks) or {}) do
        dirs[#dirs + 1] = rocks .. "/" .. ver .. "/migrations/" .. dialect
      end
    end
  end
  return dirs
end

-- Returns the sorted list { {version=, name=, sql=} } for a dialect, or nil, err.
function M.load_migrations(dialect, opts)
  opts = opts or {}
  local tried = {}
  for _, dir in ipairs(migration_dirs(dialect, opts)) do
    local names = core.listdir(dir)
    if names then
      local list = {}
      for _, name in ipairs(names) do
        local num, stem = name:match("^(%d%d%d%d)_([%w_]+)%.sql$")
        if num then
          local sql, err = core.read_file(dir .. "/" .. name)
          if not sql then return nil, "MIGRATION: " .. err:gsub("^IO: ", ""), "MIGRATION" end
          list[#list + 1] = { version = tonumber(num), name = stem, sql = sql }
        end
      end
      if #list > 0 then return list end
    end
    tried[#tried + 1] = dir
  end
  return nil, "MIGRATION: no " .. dialect .. " migrations found (looked in " .. table.concat(tried, ", ")
    .. "; set GENAUDIT_MIGRATIONS)", "MIGRATION"
end

local function parse_url(url)
  if type(url) ~= "string" then
    error("bad argument #1 to 'open' (string expected, got " .. type(url) .. ")", 3)
  end
  local path = url:match("^sqlite:(.*)$")
  if path then
    path = path:gsub("^//", "")
    if path == "" then return nil, "OPEN: sqlite URL has no path (use sqlite:PATH or sqlite::memory:)", "OPEN" end
    return "sqlite", path
  end
  if url:match("^postgresql://") or url:match("^postgres://") then return "postgresql", url end
  return nil, "OPEN: unsupported store URL '" .. url
    .. "' (expected sqlite:PATH, sqlite::memory: or postgresql://USER@HOST:PORT/DB)", "OPEN"
end

-- genaudit.open(url, opts) -> store | nil, err, code. Runs pending migrations
-- unless opts.migrate == false. opts: synchronous, journal_mode,
-- busy_timeout (ms), readonly, length_limit (SQLite: bytes per value and per
-- row, lowers SQLITE_LIMIT_LENGTH), query_timeout (ms: the longest a query()
-- call or an each() step runs; both stores; M.QUERY_TIMEOUT_MS by default, 0 =
-- no limit), migrations_dir, async (true or the options of
-- store:start_async); PostgreSQL: connect_timeout (s), reconnect_timeout (ms),
-- lock_timeout (ms: the wait for the migration lock), schema (created by
-- migrate, first on the search_path).
-- A query cannot hang the host by default: a minute is far beyond any report
-- on 1M rows (tens of ms) and still a bound.
M.QUERY_TIMEOUT_MS = 60000

function M.open(url, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #2 to 'open' (table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  local backend, path, code = parse_url(url)
  if not backend then return nil, path, code end
  local query_timeout = opts.query_timeout
  if query_timeout == nil then query_timeout = M.QUERY_TIMEOUT_MS end
  local conn, err
  if backend == "postgresql" then
    conn, err, code = core.pg_open(path, { connect_timeout = opts.connect_timeout,
      reconnect_timeout = opts.reconnect_timeout, lock_timeout = opts.lock_timeout, schema = opts.schema,
      readonly = opts.readonly, query_timeout = query_timeout })
  else
    conn, err, code = core.sqlite_open(path, {
      synchronous = opts.synchronous, journal_mode = opts.journal_mode,
      busy_timeout = opts.busy_timeout, readonly = opts.readonly, length_limit = opts.length_limit,
      query_timeout = query_timeout,
    })
  end
  if not conn then return nil, err, code end
  -- url: a PostgreSQL URL without its password
  local self = setmetatable({ backend = backend, url = backend == "postgresql" and conn:url() or url, _conn = conn,
                              _opts = opts }, Store)
  if opts.migrate ~= false and not opts.readonly then
    local ok
    ok, err, code = self:migrate()
    if not ok then
      conn:close()
      return nil, err, code
    end
  end
  if opts.async then
    local ok
    ok, err, code = self:start_async(opts.async ~= true and opts.async or nil)
    if not ok then
      conn:close()
      return nil, err, code
    end
  end
  return self
end

-- store:migrate() -> applied_count, schema_version | nil, err, code
function Store:migrate()
  local list, err, code = M.load_migrations(self.backend, self._opts)
  if not list then return nil, err, code end
  return self._conn:migrate(list)
end

function Store:schema_version() return self._conn:schema_version() end

-- store:persist_generation{ org_id, user_id, platform, template_id,
--   template_version, final_system_prompt, final_user_prompt, token_usage,
--   performance, repair_info, content, status, error, request_params,
--   replay_of } -> snapshot id (26-char ULID) | nil, err, code.
-- Nothing is written unless every field is valid (the C row builder checks).
function Store:persist_generation(row)
  if type(row) ~= "table" then
    error("bad argument #1 to 'persist_generation' (table expected, got " .. type(row) .. ")", 2)
  end
  return self._conn:persist(row)
end

-- store:put_script(path, source) -> digest | nil, err, code. Stores the exact
-- bytes of a template, rule or policy script once in the scripts table, under
-- their SHA-256 (64 lower-case hex digits, what core.sha256 gives): a digest
-- stored already is a no-op success. Committed before it returns, in async
-- mode too (the script goes through the store's own connection, not the
-- queue), so a row persisted after it never names a script that is not
-- stored. Source that is not UTF-8 or holds a NUL byte is stored as base64
-- (encoding 'base64'); path must be non-empty UTF-8 without NUL bytes.
function Store:put_script(path, source)
  if type(path) ~= "string" then
    error("bad argument #1 to 'put_script' (string expected, got " .. type(path) .. ")", 2)
  end
  if type(source) ~= "string" then
    error("bad argument #2 to 'put_script' (string expected, got " .. type(source) .. ")", 2)
  end
  return self._conn:put_script(path, source)
end

-- store:get_script(digest) -> { digest, path, encoding, source, first_seen }
-- | nil (no such script) | nil, err, code. source is the exact bytes stored
-- (base64 decoded); encoding says how the table holds them.
function Store:get_script(digest)
  if type(digest) ~= "string" then
    error("bad argument #1 to 'get_script' (string expected, got " .. type(digest) .. ")", 2)
  end
  local rows, err, code = self:query(
    "SELECT digest, path, encoding, source, first_seen FROM scripts WHERE digest = ?", { digest })
  if not rows then return nil, err, code end
  local r = rows[1]
  if not r then return nil end
  if r.encoding == "base64" then
    local raw
    raw, err = core.base64_decode(r.source)
    if not raw then return nil, "CORRUPT: script " .. digest .. ": " .. tostring(err), "CORRUPT" end
    r.source = raw
  end
  return r
end

-- store:purge(older_than, what) -> rows purged | nil, err, code (C; see
-- genaudit.audit.purge, which checks the arguments).
function Store:purge(older_than, what)
  if type(older_than) ~= "string" then
    error("bad argument #1 to 'purge' (string expected, got " .. type(older_than) .. ")", 2)
  end
  return self._conn:purge(older_than, what or "payloads")
end

-- store:verify([opts]) -> report | nil, err, code: genaudit.audit.verify.
function Store:verify(opts)
  return require("genaudit.audit").verify(self, opts)
end

-- store:query(sql, params) -> array of rows keyed by column name | nil, err, code
function Store:query(sql, params)
  if type(sql) ~= "string" then
    error("bad argument #1 to 'query' (string expected, got " .. type(sql) .. ")", 2)
  end
  if params ~= nil and type(params) ~= "table" then
    error("bad argument #2 to 'query' (table expected, got " .. type(params) .. ")", 2)
  end
  return self._conn:query(sql, params)
end

-- store:each(sql, params, fn) -> rows_seen | nil, err, code. Streams rows to
-- fn(row) in constant memory; fn returning false stops early.
function Store:each(sql, params, fn)
  if type(sql) ~= "string" then
    error("bad argument #1 to 'each' (string expected, got " .. type(sql) .. ")", 2)
  end
  if type(fn) ~= "function" then
    error("bad argument #3 to 'each' (function expected, got " .. type(fn) .. ")", 2)
  end
  return self._conn:each(sql, params, fn)
end

-- store:start_async{ queue = 10000, batch = 100, max_bytes = 256 MiB,
-- on_full = "block" | "error", linger_ms = 0 } -> true | nil, err, code. From then on
-- persist_generation checks the row, queues it and returns its id; a writer
-- thread commits queued rows in batched transactions on its own connection
-- (linger_ms: a batch short of `batch` rows waits up to that long for more).
function Store:start_async(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #1 to 'start_async' (table expected, got " .. type(opts) .. ")", 2)
  end
  return self._conn:start_async(opts)
end

-- store:flush([timeout_ms]) -> true | nil, err, code: waits until every row
-- persisted so far is committed (a no-op in synchronous mode).
function Store:flush(timeout_ms) return self._conn:flush(timeout_ms) end

-- store:stats() -> { mode, queued, written, failed, pending, max_depth, batches,
-- retries, pending_bytes, last_error }
function Store:stats() return self._conn:stats() end

function Store:filename() return self._conn:filename() end

-- store:close() -> true; drains the async queue first; closing twice is fine.
function Store:close() return self._conn:close() end

-- genaudit.persister(store) -> the seed's SnapshotPersister: a store is its
-- own persister (persister:persist_generation is store:persist_generation);
-- anything with a persist_generation method is accepted.
function M.persister(store)
  if type(store) ~= "table" or type(store.persist_generation) ~= "function" then
    error("bad argument #1 to 'persister' (store expected, got " .. type(store) .. ")", 2)
  end
  return store
end

Store.__close = Store.close
Store.__tostring = function(self) return "genaudit.store " .. tostring(self._conn) end

return M
