-- spec/bench_spec.lua
-- Owns: keeping the benchmarks in bench/ working. Each benchmark runs once at
-- its tiny size (BENCH_SIZE=small) under the engine running the specs; the
-- spec checks only that it exits 0 and prints every expected machine-readable
-- line "BENCH name=<name> engine=<engine> unit=<unit> k=v ..." with numeric
-- values (baseline=<label>:<number>, target=<text>). No timing is asserted:
-- benchmarks are not tests. pg_persist.lua, pg_analytics.lua and scale.lua write to
-- the spec server (GENAUDIT_PG_URL, #postgresql; pending with GENAUDIT_SKIP_PG=1).
local pg = require("spec.support.pg")
local provider = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local ENGINE = rawget(_G, "jit") and "luajit" or "lua5.4"
local INTERP = provider.interpreter()

local EXPECTED = {
  persist_sync = { "persist_sync", "persist_sync_vs_lua", "persist_sync_chain" },
  async = { "async_caller", "async_throughput", "async_chain", "verify", "async_stats", "async_queue_full",
            "async_close_drain" },
  overhead = { "overhead_async", "overhead_async_split", "own_time_vs_floor", "overhead", "overhead_split",
               "overhead_linear_rule", "overhead_linear_rule_split",
               "overhead_linear_rule_async", "overhead_linear_rule_async_split" },
  analytics = { "analytics_generate", "analytics_financial", "analytics_financial_report", "analytics_stability",
                "analytics_stability_report", "analytics_latency_report", "analytics_cli_financial",
                "analytics_open_analyze" },
  memory = { "memory_async", "memory_export" },
  pg_persist = { "pg_persist_sync", "pg_persist_async" },
  pg_analytics = { "pg_analytics_fill", "pg_analytics_cost", "pg_analytics_cost_all", "pg_analytics_repairs",
                   "pg_analytics_latency" },
  copy = { "copy_throughput" },
  stream = { "stream_chunk" },
  openresty_load = { "openresty_load", "openresty_load_delay100" },
  tokens = { "tokens_o200k_base", "tokens_cl100k_base", "tokens_o200k_base_pcre2", "tokens_cl100k_base_pcre2",
             "tokens_pretok_o200k_base", "tokens_pretok_cl100k_base", "tokens_memory_o200k_base",
             "tokens_memory_cl100k_base", "tokens_linear" },
  scale = {},
}
-- bench/scale.lua at BENCH_SIZE=small: every quantity at 1k and 5k rows, on both stores
for _, store in ipairs({ "sqlite", "postgresql" }) do
  for _, q in ipairs({ "persist", "verify", "report_cost_7d", "report_cost_all", "report_repairs_7d",
                       "report_latency_7d", "financial", "bytes_per_row" }) do
    for _, size in ipairs({ "1k", "5k" }) do
      table.insert(EXPECTED.scale, "scale_" .. store .. "_" .. q .. "_" .. size)
    end
  end
end
local ORDER = { "persist_sync", "async", "pg_persist", "overhead", "analytics", "pg_analytics", "memory", "copy",
                "stream", "openresty_load", "tokens", "scale" }
local NEEDS_PG = { pg_persist = true, pg_analytics = true, scale = true }
local TEXT_FIELDS = { name = true, engine = true, unit = true, target = true, p99_target = true }

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs a shell command; returns its output (stderr included) and exit status.
local function run(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__exit=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("__exit=(%d+)%s*$"))
  return out:gsub("__exit=%d+%s*$", ""), status
end

-- { name = { key = value } } for the BENCH lines of out.
local function bench_lines(out)
  local lines = {}
  for line in out:gmatch("[^\n]+") do
    if line:match("^BENCH ") then
      local fields = {}
      for k, v in line:gmatch("([%w_]+)=(%S+)") do fields[k] = v end
      if fields.name then lines[fields.name] = fields end
    end
  end
  return lines
end

describe("bench", function()
  local dir

  setup(function()
    local out, status = run("make --no-print-directory -s build/bench/raw_insert build/bench/gen_rows"
      .. " build/bench/raw_sse build/bench/raw_pg build/bench/floor")
    assert(status == 0, "cannot build the C helpers of bench/:\n" .. out)
    dir = tmp.dir()
  end)

  teardown(function() tmp.rm(dir) end)

  for _, script in ipairs(ORDER) do
    local names = EXPECTED[script]
    local needs_pg = NEEDS_PG[script]
    local shown = #names > 12 and (#names .. " lines: " .. names[1] .. " ... " .. names[#names])
      or table.concat(names, ", ")
    local title = script .. ".lua at BENCH_SIZE=small exits 0 and prints " .. shown
      .. (needs_pg and " #postgresql" or "")
    local function body()
      assert(not needs_pg or pg.url, "GENAUDIT_PG_URL is not set (tools/run-tests.sh starts a server)")
      local out, status = run("BENCH_SIZE=small BENCH_TMPDIR=" .. q(dir) .. " " .. q(INTERP) .. " bench/" .. script
        .. ".lua")
      assert.are.equal(0, status, out)
      local lines = bench_lines(out)
      for _, name in ipairs(names) do
        local f = lines[name]
        assert.is_table(f, "no BENCH line name=" .. name .. " in:\n" .. out)
        assert.are.equal(ENGINE, f.engine)
        assert.is_string(f.unit)
        -- issue 16.7: a script can check every line against its target
        assert.is_truthy(f.ratio and tonumber(f.ratio), name .. ": no numeric ratio= in:\n" .. out)
        assert.is_truthy(f.target and f.target ~= "", name .. ": no target= in:\n" .. out)
        for k, v in pairs(f) do
          if k == "baseline" then
            assert.is_truthy(v:match("^[%w_]+:%-?[%d.]+$"), name .. ": baseline=" .. v)
          elseif not TEXT_FIELDS[k] then
            assert.is_number(tonumber(v), name .. ": " .. k .. "=" .. v .. " is not a number")
          end
        end
      end
    end
    if needs_pg and pg.skip then pending(title .. " (GENAUDIT_SKIP_PG=1)") else it(title, body) end
  end
end)
