-- bench/memory.lua — issue 7.5: memory stays flat.
--
-- 1. N realistic snapshots (1,000,000 at full size, ~10 KB each) go through
--    the async writer (queue 10,000 rows, batch 100, on_full = "block") as
--    fast as the caller can push them; VmRSS is sampled from /proc/self/status
--    200 times during the run. Flat means: bounded by the queue (at most
--    10,000 queued rows), not growing with N — the peak over the first 10% of
--    the rows is compared with the peak over the rest.
-- 2. `bin/genaudit export --format jsonl` streams those N rows to /dev/null,
--    run under /usr/bin/time -v (maximum resident set size), against the same
--    export of a 10,000-row store (bench/gen_rows.c) as the baseline.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")

local N = common.size{ small = 200, full = 1000000 }
local N_SMALL_EXPORT = common.size{ small = 100, full = 10000 }
local SAMPLES = 200
local K = 16
local now = common.now_us

local function mib(kib) return kib / 1024 end

common.title(string.format("memory: %d snapshots through the async writer, then exported as JSONL", N))
local dir = common.tmpdir("memory")
local rows = common.rows(K)

-- ---- 1. the async writer ----
local db = dir .. "/async.db"
local store = assert(genaudit.open("sqlite:" .. db, { async = { queue = 10000, batch = 100, on_full = "block" } }))
local persister = genaudit.persister(store)
collectgarbage()
local start_rss = common.rss()
local every = math.max(1, math.floor(N / SAMPLES))
local early_peak, late_peak, samples = 0, 0, {}
local t0 = now()
for i = 1, N do
  assert(persister:persist_generation(rows[(i - 1) % K + 1]))
  if i % every == 0 then
    local rss = common.rss()
    samples[#samples + 1] = rss
    if i <= N / 10 then
      if rss > early_peak then early_peak = rss end
    elseif rss > late_peak then
      late_peak = rss
    end
  end
end
assert(store:flush())
local seconds = (now() - t0) / 1e6
local st = store:stats()
local _, hwm = common.rss()
store:close()
collectgarbage()
local end_rss = common.rss()
local peak = math.max(early_peak, late_peak)
local row_bytes = common.row_text_bytes(rows[1])
common.bench("memory_async", "MiB", {
  { "rows", N }, { "start", mib(start_rss) }, { "peak", mib(peak) }, { "end", mib(end_rss) }, { "hwm", mib(hwm) },
  { "peak_first_10pct", mib(early_peak) }, { "peak_rest", mib(late_peak) },
  { "growth_after_10pct", mib(late_peak - early_peak) },
  -- bounded memory: the peak over the last 90% of the rows against the first 10%'s
  { "baseline", "peak_first_10pct:" .. common.num(mib(early_peak)) },
  { "ratio", string.format("%.3f", late_peak / early_peak) }, { "target", "<=1.25" },
})
common.say("%d rows (%d bytes of prompts, content and drafts each)"
  .. " in %.1f s (%s rows/s); written %d, failed %d, max_depth %d",
  N, row_bytes, seconds, common.num(N / seconds), st.written, st.failed, st.max_depth)
common.say("VmRSS start %.1f MiB, peak %.1f MiB (first 10%%: %.1f, rest: %.1f), end %.1f MiB; VmHWM %.1f MiB",
  mib(start_rss), mib(peak), mib(early_peak), mib(late_peak), mib(end_rss), mib(hwm))
local stored = common.file_size(db) / N -- bytes per row as stored: prompts, content and JSON
common.say("the queue bounds it: at most 10,000 rows x ~%.1f KB queued (the stored row size) = ~%.0f MiB",
  stored / 1024, 10000 * stored / 1048576)
do
  local line, step = {}, math.max(1, math.floor(#samples / 10))
  for i = step, #samples, step do line[#line + 1] = string.format("%.0f", mib(samples[i])) end
  common.say("VmRSS at each tenth of the run (MiB): %s", table.concat(line, " "))
end

-- ---- 2. bin/genaudit export --format jsonl ----
local function export(path)
  local tfile = dir .. "/time.txt"
  local cmd = table.concat({ "/usr/bin/time -v", common.quote(common.interpreter()),
    common.quote(root .. "/bin/genaudit"), "--db", common.quote(path),
    "export --format jsonl >/dev/null 2>" .. common.quote(tfile) }, " ")
  local t1 = now()
  local ok = os.execute(cmd)
  local secs = (now() - t1) / 1e6
  local out = common.read_file(tfile) or ""
  if not (ok == true or ok == 0) then error("export failed: " .. cmd .. "\n" .. out, 0) end
  local kib = tonumber(out:match("Maximum resident set size %(kbytes%): (%d+)"))
  return assert(kib, "no maximum resident set size in /usr/bin/time output"), secs
end

local small_db = dir .. "/small.db"
assert(genaudit.open("sqlite:" .. small_db)):close()
common.run(table.concat({ common.tool("gen_rows"), common.quote(small_db), string.format("%d", N_SMALL_EXPORT) }, " "))
local small_kib, small_secs = export(small_db)
local big_kib, big_secs = export(db)
common.bench("memory_export", "MiB", {
  { "rows", N }, { "genaudit", mib(big_kib) }, { "baseline", string.format("rows_%d:%s", N_SMALL_EXPORT,
    common.num(mib(small_kib))) }, { "ratio", string.format("%.3f", big_kib / small_kib) },
  { "rows_per_s", N / big_secs }, { "target", "<=1.5" },
})
common.say("export of %d rows: max RSS %.1f MiB in %.1f s (%s rows/s); of %d rows: max RSS %.1f MiB in %.2f s",
  N, mib(big_kib), big_secs, common.num(N / big_secs), N_SMALL_EXPORT, mib(small_kib), small_secs)
common.rm(dir)
