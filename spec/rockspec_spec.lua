-- The rockspec lists every C source and Lua module, and `luarocks make`
-- builds an installable rock whose genaudit opens a migrated store.
local core = require("genaudit.core")
local tmp = require("spec.support.tmp")

local ROCKSPEC = "rockspec/genaudit-scm-1.rockspec"

local function load_rockspec()
  local env = {}
  local fn = assert(loadfile and load(tmp.read(ROCKSPEC), "@" .. ROCKSPEC, "t", env))
  if rawget(_G, "setfenv") then _G.setfenv(fn, env) end
  fn()
  return env
end

describe("rockspec", function()
  it("compiles every csrc/*.c into genaudit.core", function()
    local spec = load_rockspec()
    local listed = {}
    for _, src in ipairs(spec.build.modules["genaudit.core"].sources) do listed[src] = true end
    local missing = {}
    for _, name in ipairs(core.listdir("csrc")) do
      if name:match("%.c$") and not listed["csrc/" .. name] then missing[#missing + 1] = name end
    end
    assert.same({}, missing)
  end)

  it("installs every lua/genaudit/*.lua module", function()
    local spec = load_rockspec()
    local listed = {}
    for _, file in pairs(spec.build.modules) do
      if type(file) == "string" then listed[file] = true end
    end
    local missing = {}
    for _, name in ipairs(core.listdir("lua/genaudit")) do
      if name:match("%.lua$") and not listed["lua/genaudit/" .. name] then missing[#missing + 1] = name end
    end
    assert.same({}, missing)
  end)

  it("installs the shipped price map and its licence with the modules", function()
    local spec = load_rockspec()
    local listed = {}
    for _, file in pairs(spec.build.install.lua or {}) do listed[file] = true end
    local missing = {}
    for _, name in ipairs(core.listdir("lua/genaudit/data")) do
      if name ~= "README.md" and not listed["lua/genaudit/data/" .. name] then missing[#missing + 1] = name end
    end
    assert.same({}, missing)
  end)

  it("names a real source URL and a busted test section", function()
    local spec = load_rockspec()
    assert.equal("git+https://github.com/genaudit/genaudit.git", spec.source.url)
    assert.equal("busted", spec.test.type)
    assert.equal("MIT", spec.description.license)
    assert.truthy(tmp.read("LICENSE"):find("genaudit authors", 1, true))
  end)

  it("builds with luarocks make and opens a migrated store from the installed tree #lua54", function()
    if _VERSION ~= "Lua 5.4" then return pending("built once, under Lua 5.4") end
    local tree = tmp.dir()
    local ok = os.execute("make -s rock ROCKTREE=" .. tree .. " >" .. tree .. ".log 2>&1")
    local log = tmp.read(tree .. ".log")
    assert(ok == true or ok == 0, log)
    local cmd = "cd /tmp && eval \"$(luarocks --lua-version 5.4 --tree " .. tree .. " path)\" && " ..
      "LUA_PATH=\"" .. tree .. "/share/lua/5.4/?.lua;" .. tree .. "/share/lua/5.4/?/init.lua;;\" " ..
      "env -u GENAUDIT_PRICES lua5.4 -e 'local g = require(\"genaudit\"); " ..
      "local s = assert(g.open(\"sqlite::memory:\")); " ..
      "io.write(s:schema_version(), \" \", package.searchpath(\"genaudit.core\", package.cpath), \" \", " ..
      "assert(g.pricing.default()):count(), \" \", (g.pricing.default_path()))'"
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    tmp.rm(tree)
    os.remove(tree .. ".log")
    assert.equal("8 " .. tree .. "/lib/lua/5.4/genaudit/core.so 217 " .. tree ..
      "/share/lua/5.4/genaudit/data/litellm-model-prices-2026-07.json", out)
    -- Debian's lua-cjson and lua-argparse are there, just not as rocks
    assert.falsy(log:find("Missing dependencies", 1, true), log)
  end)
end)
