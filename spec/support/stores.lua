-- spec.support.stores — one suite run on both stores. suite(name, open,
-- describe_fn) is the spec's own; open(dir) -> store, db (what bin/genaudit's
-- --db takes for that store): a SQLite file in the test's directory, or a
-- fresh PostgreSQL schema of the test server (describe_fn = pg.describe,
-- which fails or skips the suite when no server is configured).
local genaudit = require("genaudit")
local pg = require("spec.support.pg")
local busted = require("busted")

local M = {}

function M.sqlite(dir)
  local path = dir .. "/audit.db"
  return assert(genaudit.open("sqlite:" .. path)), path
end

function M.postgresql()
  local schema = pg.schema()
  return assert(pg.open(schema)), pg.url_for(schema)
end

-- M.both(name, suite): suite(name .. " (SQLite)", ...) and
-- suite(name .. " (PostgreSQL) #postgresql", ...).
function M.both(name, suite)
  suite(name .. " (SQLite)", M.sqlite, busted.describe)
  suite(name .. " (PostgreSQL) #postgresql", M.postgresql, pg.describe)
end

return M
