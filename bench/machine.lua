-- bench/machine.lua — prints the machine facts bench/RESULTS.md records:
-- cores, CPU model, memory, kernel, SQLite and Lua versions.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")

local m = common.machine()
print(string.format("machine: nproc=%s cpus=%d cpu=%q mhz=%s mem=%d MiB kernel=%s sqlite=%s lua=%q", m.nproc, m.cpus,
  m.cpu, m.mhz, m.mem_mib, m.kernel, m.sqlite, m.lua))
print(string.format("date: %s UTC; size: %s", os.date("!%Y-%m-%d %H:%M:%S"), common.small and "small" or "full"))
