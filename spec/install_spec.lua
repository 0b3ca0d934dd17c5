-- `make install` puts genaudit where the stock interpreters look: the layout
-- in a DESTDIR is checked against lua5.4's and luajit's own default
-- package.path/cpath, the installed interpreters and CLI run from another
-- directory with only those (DESTDIR-prefixed) paths, and `make uninstall`
-- removes every file again.
local tmp = require("spec.support.tmp")
local q = require("spec.support.util").q

local PREFIX = "/usr/local"

-- Runs a shell command; returns its stdout+stderr and whether it succeeded.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, tonumber(rc) == 0
end

local CLEAN_ENV = "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u GENAUDIT_PRICES "
  .. "-u GENAUDIT_MIGRATIONS "

-- The interpreter's default path and cpath (no LUA_PATH/LUA_CPATH set).
local function default_paths(interp)
  local out, ok = run("cd /tmp && " .. CLEAN_ENV .. interp .. " -e 'print(package.path) print(package.cpath)'")
  assert(ok, out)
  local path, cpath = out:match("^([^\n]*)\n([^\n]*)\n$")
  return path, cpath
end

-- The default search path with every PREFIX entry moved under destdir; the
-- other system entries (Debian's cjson, argparse) stay, relative ones go.
local function relocate(search, destdir)
  local out = {}
  for entry in search:gmatch("[^;]+") do
    if entry:sub(1, #PREFIX + 1) == PREFIX .. "/" then
      out[#out + 1] = destdir .. entry
    elseif entry:sub(1, 1) == "/" then
      out[#out + 1] = entry
    end
  end
  return table.concat(out, ";")
end

-- package.searchpath through the PREFIX entries of a default path only
local function search_prefix(name, search, destdir)
  local mine = {}
  for entry in search:gmatch("[^;]+") do
    if entry:sub(1, #PREFIX + 1) == PREFIX .. "/" then mine[#mine + 1] = destdir .. entry end
  end
  local file = name:gsub("%.", "/")
  for _, template in ipairs(mine) do
    local candidate = template:gsub("%?", file)
    local f = io.open(candidate, "rb")
    if f then
      f:close()
      return candidate
    end
  end
  return nil
end

local function files_under(dir)
  local out = run("find " .. q(dir) .. " -type f | sort")
  local list = {}
  for l in out:gmatch("[^\n]+") do list[#list + 1] = l end
  return list
end

describe("make install", function()
  local destdir, work

  setup(function()
    destdir = tmp.dir()
    work = tmp.dir()
    local out, ok = run("make -s install DESTDIR=" .. q(destdir))
    assert(ok, out)
  end)

  teardown(function()
    tmp.rm(destdir)
    tmp.rm(work)
  end)

  for _, case in ipairs({
    { interp = "lua5.4", lib = "/lib/lua/5.4", share = "/share/lua/5.4" },
    { interp = "luajit", lib = "/lib/lua/5.1", share = "/share/lua/5.1" },
  }) do
    describe("for " .. case.interp, function()
      it("installs the modules and the C core where its default package.path and cpath look", function()
        local path, cpath = default_paths(case.interp)
        assert.equal(destdir .. PREFIX .. case.share .. "/genaudit/init.lua",
          search_prefix("genaudit", path, destdir))
        assert.equal(destdir .. PREFIX .. case.share .. "/genaudit/pricing.lua",
          search_prefix("genaudit.pricing", path, destdir))
        assert.equal(destdir .. PREFIX .. case.lib .. "/genaudit/core.so",
          search_prefix("genaudit.core", cpath, destdir))
      end)

      it("loads genaudit, its migrations and its price map from the installed tree only", function()
        local path, cpath = default_paths(case.interp)
        local script = "local g = require('genaudit') local s = assert(g.open('sqlite:x.db')) " ..
          "io.write(s:schema_version(), ' ', assert(g.pricing.default()):count(), '\\n', " ..
          "package.searchpath('genaudit', package.path), '\\n', package.searchpath('genaudit.core', package.cpath), " ..
          "'\\n', (g.pricing.default_path()), '\\n') s:close()"
        local out, ok = run("cd " .. q(work) .. " && " .. CLEAN_ENV .. "LUA_PATH=" .. q(relocate(path, destdir)) ..
          " LUA_CPATH=" .. q(relocate(cpath, destdir)) .. " " .. case.interp .. " -e " .. q(script))
        assert(ok, out)
        assert.same({ "8 217", destdir .. PREFIX .. case.share .. "/genaudit/init.lua",
          destdir .. PREFIX .. case.lib .. "/genaudit/core.so",
          destdir .. PREFIX .. case.share .. "/genaudit/data/litellm-model-prices-2026-07.json" },
          { out:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n$") })
        os.remove(work .. "/x.db")
      end)
    end)
  end

  describe("the installed genaudit", function()
    local function installed(args)
      local path, cpath = default_paths("lua5.4")
      return run("cd " .. q(work) .. " && " .. CLEAN_ENV .. "LUA_PATH=" .. q(relocate(path, destdir)) ..
        " LUA_CPATH=" .. q(relocate(cpath, destdir)) .. " " .. q(destdir .. PREFIX .. "/bin/genaudit") .. " " .. args)
    end

    it("prints its version and the installed modules it runs on", function()
      local out, ok = installed("--version")
      assert(ok, out)
      assert.equal("genaudit 0.1.0 (Lua 5.4, modules " .. destdir .. PREFIX .. "/share/lua/5.4/genaudit/init.lua)\n",
        out)
    end)

    it("migrates a new database in another directory", function()
      local out, ok = installed("--db x.db migrate")
      assert(ok, out)
      assert.equal("schema version 8 (8 migrations applied)\n", out)
      assert.truthy(io.open(work .. "/x.db")):close()
      os.remove(work .. "/x.db")
    end)

    it("uses the price map installed with the modules", function()
      local out, ok = installed("prices")
      assert(ok, out)
      assert.truthy(out:find("price map: " .. destdir .. PREFIX ..
        "/share/lua/5.4/genaudit/data/litellm-model-prices-2026-07.json\n", 1, true), out)
      assert.truthy(out:find("models:    217\n", 1, true), out)
    end)
  end)

  it("installs the licence of the price map beside it, in both trees", function()
    for _, share in ipairs({ "/share/lua/5.4", "/share/lua/5.1" }) do
      assert.truthy(io.open(destdir .. PREFIX .. share .. "/genaudit/data/LICENSE.litellm-model-prices"), share)
    end
  end)

  it("honours the directory variables", function()
    local other = tmp.dir()
    local out, ok = run("make -s install DESTDIR=" .. q(other) .. " PREFIX=/opt/ga LUA_MODULE_DIR=/opt/ga/lua54 " ..
      "LUAJIT_CMODULE_DIR=/opt/ga/jitlib BINDIR=/opt/ga/sbin")
    assert(ok, out)
    local found = {}
    for _, f in ipairs(files_under(other)) do found[f:sub(#other + 1)] = true end
    tmp.rm(other)
    assert.is_true(found["/opt/ga/lua54/genaudit/init.lua"])
    assert.is_true(found["/opt/ga/lib/lua/5.4/genaudit/core.so"])
    assert.is_true(found["/opt/ga/jitlib/genaudit/core.so"])
    assert.is_true(found["/opt/ga/share/lua/5.1/genaudit/init.lua"])
    assert.is_true(found["/opt/ga/sbin/genaudit"])
  end)

  it("is undone by make uninstall, which leaves no file behind and nothing else touched", function()
    local other = tmp.dir()
    local out, ok = run("make -s install DESTDIR=" .. q(other))
    assert(ok, out)
    assert.is_true(#files_under(other) > 20)
    -- a file that is not genaudit's stays
    assert(os.execute("mkdir -p " .. q(other .. PREFIX .. "/share/lua/5.4/other")))
    tmp.write(other .. PREFIX .. "/share/lua/5.4/other/init.lua", "return {}\n")
    out, ok = run("make -s uninstall DESTDIR=" .. q(other))
    assert(ok, out)
    local left = files_under(other)
    tmp.rm(other)
    assert.same({ other .. PREFIX .. "/share/lua/5.4/other/init.lua" }, left)
  end)
end)
