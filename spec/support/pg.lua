-- spec.support.pg — the PostgreSQL server the #postgresql specs run against:
-- GENAUDIT_PG_URL, set by `make test` (tools/run-tests.sh starts
-- tools/pg-test-server.sh). Every test gets a schema of its own, dropped at
-- the end of the spec file. Without GENAUDIT_PG_URL the specs fail loudly;
-- GENAUDIT_SKIP_PG=1 turns them into pending ones for local runs.
local busted = require("busted") -- describe, it, ... (globals only in spec files)
local genaudit = require("genaudit")

local M = {}

M.url = os.getenv("GENAUDIT_PG_URL")
if M.url == "" then M.url = nil end
M.skip = os.getenv("GENAUDIT_SKIP_PG") == "1"

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.shq = shq

-- Runs a shell command; returns its stdout and stderr together, and whether
-- it exited 0 (read from the shell: LuaJIT's close() does not tell).
function M.sh(cmd)
  local f = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\""))
  local all = f:read("*a")
  f:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, rc == "0"
end

local pid = (io.open("/proc/self/stat") or { read = function() return tostring(os.time()) end }):read("*l")
  :match("^(%d+)")
-- busted loads this module afresh for every spec file (insulation), so the
-- counter below restarts: a token of this load keeps two files' schemas apart
-- (a file whose teardown did not run must not hand its rows to the next).
local prefix = "ga_spec_" .. pid .. "_" .. tostring({}):match("(%x+)$") .. "_"
local counter = 0

-- M.describe(name, fn): busted's describe when a server is configured; else
-- one failing spec saying why (or a pending one with GENAUDIT_SKIP_PG=1).
function M.describe(name, fn)
  if M.url and not M.skip then return busted.describe(name, fn) end
  busted.describe(name, function()
    if M.skip then
      busted.pending("GENAUDIT_SKIP_PG=1: PostgreSQL specs skipped")
    else
      busted.it("needs a PostgreSQL server", function()
        error("GENAUDIT_PG_URL is not set: run the specs with `make test` (it starts a PostgreSQL server with"
          .. " tools/pg-test-server.sh), or set GENAUDIT_SKIP_PG=1 to skip them on purpose", 0)
      end)
    end
  end)
end

-- A schema name no other test (or concurrent run) uses.
function M.schema()
  counter = counter + 1
  return prefix .. counter
end

-- M.open(schema, opts) -> genaudit.open on the test server in that schema.
function M.open(schema, opts)
  local o = { schema = schema, reconnect_timeout = 2000 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return genaudit.open(M.url, o)
end

-- The server URL with `schema` first on the search_path (libpq's options),
-- for processes such as bin/genaudit.
function M.url_for(schema)
  return M.url .. (M.url:find("?", 1, true) and "&" or "?") .. "options=-csearch_path%3D" .. schema
end

-- Runs SQL with psql in `schema` (nil: none); returns psql's output, success.
function M.psql(sql, schema)
  local env = "PGOPTIONS=" .. shq("-c client_min_messages=warning"
    .. (schema and (" -c search_path=" .. schema) or ""))
  return M.sh(env .. " psql -X -q -v ON_ERROR_STOP=1 -tA " .. shq(M.url) .. " -c " .. shq(sql))
end

-- Drops every schema this process created.
function M.drop_schemas()
  if not M.url or M.skip then return end
  M.psql("DO $$ DECLARE s text; BEGIN FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE '"
    .. prefix:gsub("_", "\\_") .. "%' LOOP EXECUTE format('DROP SCHEMA %I CASCADE', s); END LOOP; END $$")
end

-- True when GENAUDIT_PG_URL is the server tools/pg-test-server.sh runs (the
-- one the specs may restart).
function M.restartable()
  local out, ok = M.sh("sh tools/pg-test-server.sh status")
  return ok and out:gsub("%s+$", "") == M.url
end

-- Restarts the test server (pg_ctl restart -m fast): every connection is cut.
function M.restart()
  local out, ok = M.sh("sh tools/pg-test-server.sh restart")
  assert(ok, "restart failed: " .. out)
end

return M
