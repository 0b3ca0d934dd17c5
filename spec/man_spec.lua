-- man/genaudit.1 documents the CLI as it is: it renders without groff
-- warnings, names every command and global option `genaudit --help` lists
-- and every environment variable bin/genaudit reads, `genaudit help CMD`
-- works, and `make install` puts the page in MANDIR.
local tmp = require("spec.support.tmp")
local q = require("spec.support.util").q

local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, tonumber(rc)
end

local CLI = "lua5.4 bin/genaudit"

describe("man/genaudit.1", function()
  local text

  setup(function()
    local out, rc = run("MANWIDTH=200 groff -man -Tutf8 -ww -P-cbou man/genaudit.1")
    assert.equal(0, rc, out)
    text = out
  end)

  it("renders with no groff warning", function()
    local out, rc = run("groff -man -ww -z man/genaudit.1")
    assert.same({ "", 0 }, { out, rc })
  end)

  it("documents every command and global option of genaudit --help", function()
    local help, rc = run(CLI .. " --help")
    assert.equal(0, rc, help)
    local commands = help:match("\nCommands:\n(.-)\n\n")
    local n = 0
    for line in (commands .. "\n"):gmatch("([^\n]*)\n") do
      local name = line:match("^   (%S+)")
      if name and name ~= "help" then
        n = n + 1
        assert.truthy(text:find("\n       " .. name .. "[ \n]"), name)
      end
    end
    assert.is_true(n >= 8, "commands found in --help: " .. n)
    for opt in help:match("\nOptions:\n(.-)\n\n"):gmatch("(%-%-[%w-]+)") do
      assert.truthy(text:find(opt, 1, true), opt)
    end
  end)

  it("lists every environment variable bin/genaudit reads or names in its help", function()
    local src = tmp.read("bin/genaudit")
    local env = text:match("\nENVIRONMENT\n(.-)\nEXIT STATUS")
    local n = 0
    for name in src:gmatch("GENAUDIT_[%u_]+") do
      n = n + 1
      assert.truthy(env:find(name, 1, true), name)
    end
    assert.is_true(n >= 4)
  end)

  it("gives the exit statuses the CLI uses", function()
    for _, code in ipairs({ "0", "1", "2", "130" }) do
      assert.truthy(text:find("\n       " .. code .. "%s"), code)
    end
  end)

  it("is there as `genaudit help CMD` too", function()
    local out, rc = run(CLI .. " help report")
    assert.equal(0, rc, out)
    assert.truthy(out:find("Usage: genaudit report", 1, true), out)
  end)

  it("is installed into MANDIR by make install", function()
    local destdir = tmp.dir()
    local out, rc = run("make -s install DESTDIR=" .. q(destdir) .. " MANDIR=/opt/man/man1")
    assert.equal(0, rc, out)
    assert.equal(tmp.read("man/genaudit.1"), tmp.read(destdir .. "/opt/man/man1/genaudit.1"))
    tmp.rm(destdir)
  end)
end)
