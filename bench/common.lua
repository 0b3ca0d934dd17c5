-- bench/common.lua — what the benchmarks in bench/ share: the size switch
-- (BENCH_SIZE=small for the quick run the specs do), realistic snapshot rows,
-- timing and percentiles, the machine-readable BENCH line, RSS readings,
-- machine facts, scratch directories and the C helpers in build/bench/.
--
-- A benchmark script starts with
--   local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
--   package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
--   package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath
--   local common = require("bench.common")
local core = require("genaudit.core")

local M = {}

M.root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
M.engine = rawget(_G, "jit") and "luajit" or "lua5.4"
M.small = os.getenv("BENCH_SIZE") == "small"
M.now_us = core.monotonic_us

-- M.size{ small = x, full = y } -> the value for this run's size.
function M.size(t) return M.small and t.small or t.full end

-- ---- numbers ----

-- Nearest-rank percentile (p in 0..100) of an array of numbers (sorted copy).
function M.percentile(values, p)
  local s = {}
  for i, v in ipairs(values) do s[i] = v end
  table.sort(s)
  if #s == 0 then return 0 / 0 end
  local rank = math.ceil(p / 100 * #s)
  if rank < 1 then rank = 1 end
  return s[rank]
end

function M.median(values) return M.percentile(values, 50) end

function M.mean(values)
  local sum = 0
  for _, v in ipairs(values) do sum = sum + v end
  return #values > 0 and sum / #values or 0 / 0
end

-- A number for a BENCH field: integers and numbers above 1000 without
-- decimals, else 3-4 significant digits; never exponent notation.
function M.num(x)
  if x ~= x then return "nan" end
  local a = math.abs(x)
  if a >= 1000 or (x == math.floor(x) and a < 1e15) then return string.format("%d", math.floor(x + 0.5)) end
  if a >= 100 then return string.format("%.1f", x) end
  if a >= 1 then return string.format("%.2f", x) end
  if a >= 0.001 or a == 0 then return string.format("%.4f", x) end
  return string.format("%.7f", x)
end

-- ---- output ----

-- M.bench(name, unit, fields): prints
--   BENCH name=<name> engine=<engine> unit=<unit> k=v ...
-- fields is an array of { key, value }; numbers go through M.num, strings as
-- they are (e.g. baseline = "raw_c:22311", target = ">=0.90"). Every line
-- carries ratio= (genaudit / baseline, same run) and target= (what the ratio
-- must meet; "info" for a figure that is reported, not judged): a line
-- without them is a bench bug, refused here.
function M.bench(name, unit, fields)
  local parts = { "BENCH", "name=" .. name, "engine=" .. M.engine, "unit=" .. unit }
  local has = {}
  for _, f in ipairs(fields) do
    local v = f[2]
    if type(v) == "number" then v = M.num(v) end
    parts[#parts + 1] = f[1] .. "=" .. tostring(v)
    has[f[1]] = true
  end
  if not (has.ratio and has.target) then error("BENCH " .. name .. ": every line needs ratio= and target=", 2) end
  print(table.concat(parts, " "))
  io.stdout:flush()
end

-- M.chain(name, label, hash, plain, cpu_hash, cpu_plain): the chain's cost
-- (issue 14) from rounds of bench/raw_insert.c in `hash` and `plain` mode run
-- back to back (arrays of rows/s and of CPU us per row, one entry per round):
--   BENCH name=<name> ... raw_c_hash=<median> baseline=<label>:<median>
--     ratio=<median of the rounds' hash/plain> chain_cost=<1 - ratio>
--     chain_cpu_us=<CPU us per row of the hashing> cpu_cost=<that / hash's wall us per row>
--     target=>=0.95
-- The ratio pairs each round's two runs (same disk and page-cache state), so a
-- slow round does not count against one mode only; cpu_cost does not depend on
-- the disk at all. Then one detail line.
function M.chain(name, label, hash, plain, cpu_hash, cpu_plain)
  local ratios, cpu = {}, {}
  for i = 1, #hash do
    ratios[i] = hash[i] / plain[i]
    cpu[i] = cpu_hash[i] - cpu_plain[i]
  end
  local ratio, r = M.median(ratios), M.median(hash)
  local chain_us = M.median(cpu)
  M.bench(name, "rows/s", {
    { "raw_c_hash", r }, { "baseline", label .. ":" .. M.num(M.median(plain)) },
    { "ratio", string.format("%.3f", ratio) }, { "chain_cost", string.format("%.3f", 1 - ratio) },
    { "chain_cpu_us", chain_us }, { "cpu_cost", string.format("%.3f", chain_us / (1e6 / r)) }, { "target", ">=0.95" },
  })
  local shown = {}
  for i, x in ipairs(ratios) do shown[i] = string.format("%.3f", x) end
  M.say("the chain (raw C hash vs plain, back to back): hash/plain per round %s; CPU per row: hash %.1f us, plain"
    .. " %.1f us (medians): the hashing %.1f us of %.1f us per row", table.concat(shown, " "), M.median(cpu_hash),
    M.median(cpu_plain), chain_us, 1e6 / r)
end

-- Human-readable detail, indented under the BENCH lines.
function M.say(fmt, ...)
  print("  " .. string.format(fmt, ...))
  io.stdout:flush()
end

function M.title(text)
  print("")
  print("== " .. text .. (M.small and "   [BENCH_SIZE=small]" or ""))
  io.stdout:flush()
end

-- ---- files and processes ----

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end
M.read_file = read_file

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
M.quote = shell_quote

-- A fresh scratch directory under $BENCH_TMPDIR (or /tmp); M.rm removes it.
function M.tmpdir(tag)
  local base = os.getenv("BENCH_TMPDIR")
  if not base or base == "" then base = "/tmp" end
  local p = string.format("%s/genaudit-bench-%s-%d-%d", base, tag, os.time(), math.floor(os.clock() * 1e6))
  assert(os.execute("rm -rf " .. shell_quote(p) .. " && mkdir -p " .. shell_quote(p)))
  return p
end

function M.rm(path)
  if path and path:match("/genaudit%-bench%-") then os.execute("rm -rf " .. shell_quote(path)) end
end

-- Removes a database and its -wal/-shm files.
function M.rmdb(path)
  for _, suffix in ipairs({ "", "-wal", "-shm" }) do os.remove(path .. suffix) end
end

-- Bytes of a file (0 when missing).
function M.file_size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

-- Runs a shell command, returns its stdout (raises when it fails).
function M.run(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, how, code = p:close()
  if not ok then error(string.format("command failed (%s %s): %s\n%s", tostring(how), tostring(code), cmd, out), 2) end
  return out
end

-- Path of a C helper built by `make bench` (build/bench/NAME).
function M.tool(name)
  local path = M.root .. "/build/bench/" .. name
  if not io.open(path, "rb") then
    error("missing " .. path .. ": build it with `make build/bench/" .. name .. "` (make bench does)", 0)
  end
  return path
end

-- Parses "k=v k=v" output of the C helpers into a table of numbers.
function M.kv(text)
  local t = {}
  for k, v in text:gmatch("([%w_]+)=(%S+)") do t[k] = tonumber(v) or v end
  return t
end

-- The running interpreter (for subprocesses: the CLI under the same engine).
function M.interpreter()
  local a = _G.arg
  local i = -1
  if type(a) ~= "table" or type(a[-1]) ~= "string" then return M.engine == "luajit" and "luajit" or "lua5.4" end
  while type(a[i - 1]) == "string" do i = i - 1 end
  return a[i]
end

-- ---- memory ----

-- M.rss() -> VmRSS, VmHWM of this process in KiB.
function M.rss()
  local s = read_file("/proc/self/status") or ""
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0, tonumber(s:match("VmHWM:%s*(%d+)")) or 0
end

-- ---- the machine ----

function M.machine()
  local cpuinfo = read_file("/proc/cpuinfo") or ""
  local meminfo = read_file("/proc/meminfo") or ""
  local ncpu = 0
  for _ in cpuinfo:gmatch("\nprocessor%s*:") do ncpu = ncpu + 1 end
  if cpuinfo:match("^processor%s*:") then ncpu = ncpu + 1 end
  local nproc = (M.run("nproc 2>/dev/null || echo ?"):gsub("%s+$", ""))
  return {
    nproc = nproc,
    cpus = ncpu,
    cpu = cpuinfo:match("model name%s*:%s*([^\n]+)") or "?",
    mhz = cpuinfo:match("cpu MHz%s*:%s*([^\n]+)") or "?",
    mem_mib = math.floor((tonumber(meminfo:match("MemTotal:%s*(%d+)")) or 0) / 1024),
    kernel = ((read_file("/proc/sys/kernel/osrelease") or "?"):gsub("%s+$", "")),
    sqlite = core.sqlite_version,
    lua = rawget(_G, "jit") and _G.jit.version or _VERSION,
  }
end

-- ---- realistic rows ----

-- Deterministic text: Park-Miller generator, the same under Lua 5.4 and LuaJIT.
local function generator(seed)
  local state = seed
  return function(lo, hi)
    state = (state * 48271) % 2147483647
    return lo + state % (hi - lo + 1)
  end
end

local WORDS = {
  "today", "we", "are", "launching", "a", "new", "way", "to", "ship", "faster", "with", "less", "stress", "our",
  "team", "built", "this", "for", "builders", "who", "care", "about", "quality", "every", "release", "matters",
  "and", "feedback", "shapes", "the", "product", "customers", "mention", "reliability", "most", "concrete", "warm",
  "voice", "brand", "audience", "post", "platform", "constraint", "knowledge", "facts", "tone", "formal", "calm",
}

-- About `bytes` bytes of words (and the odd newline) from generator r.
local function text(r, bytes)
  local out, n = {}, 0
  while n < bytes do
    local w = WORDS[r(1, #WORDS)]
    if r(1, 12) == 1 then w = w .. "\n" end
    out[#out + 1] = w
    n = n + #w + 1
  end
  return table.concat(out, " "):sub(1, bytes)
end
M.text = text

local TEMPLATES = { "launch-post", "weekly-tips", "event-invite", "customer-story" }
local PLATFORMS = { "linkedin", "x", "instagram" }

-- M.rows(k) -> k distinct persist_generation rows as a pipeline produces them:
-- a ~5 KB system prompt per template (4 templates, repeated across rows), a
-- ~2 KB user prompt and ~1 KB of content per row, the two drafts of the
-- repaired generation (the first, too long, and the final one: ~2 KB), token
-- usage with a calls array (initial + repair call), performance with
-- per-call timings, repair info with a repair log, request params. Exact cost values (picodollar
-- sums). The same tables are fed to every contender of a benchmark.
function M.rows(k)
  local r = generator(20240601)
  local systems = {}
  for i, id in ipairs(TEMPLATES) do
    systems[i] = "You write for the brand behind " .. id .. ": concrete, warm, no hype words.\n\nConstraints:\n"
      .. "- Stay under the platform's word limit.\n- End with exactly one hashtag line.\n\nStyle guide:\n"
    systems[i] = systems[i] .. text(r, 5120 - #systems[i])
  end
  local rows = {}
  for i = 1, k do
    local t = (i - 1) % #TEMPLATES + 1
    local platform = PLATFORMS[(i - 1) % #PLATFORMS + 1]
    local p1, c1 = 1750 + r(0, 400), 200 + r(0, 150)
    local p2, c2 = p1 + c1 + 40, 150 + r(0, 100)
    -- as genaudit's meter makes them: exact picodollar sums, then one division
    local pico1, pico2 = p1 * 150000 + c1 * 600000, p2 * 150000 + c2 * 600000
    local cost1, cost2 = pico1 / 1e12, pico2 / 1e12
    local w1, w2 = 400000 + r(0, 2500000), 300000 + r(0, 1500000)
    local words = 85 + r(0, 30)
    local issue = ("The post has %d words; the limit on %s is 80."):format(words, platform)
    local function timings(w)
      return { connect_us = r(0, 3000), dns_us = r(5, 40), first_byte_us = w - 200, pretransfer_us = r(40, 9000),
               tls_us = r(0, 8000), total_us = w - 20, wait_us = w }
    end
    rows[i] = {
      org_id = 1000 + i % 7, user_id = 10000 + i % 31, platform = platform, template_id = TEMPLATES[t],
      template_version = "3",
      final_system_prompt = systems[t],
      final_user_prompt = "Write a " .. platform .. " post announcing the Anvil " .. i .. ".\n\nKnowledge:\n- "
        .. text(r, 1900) .. "\n\nFacts:\n- product: Anvil " .. i .. "\n\nTone: playful",
      content = text(r, 1024),
      token_usage = {
        prompt_tokens = p1 + p2, completion_tokens = c1 + c2, total_tokens = p1 + p2 + c1 + c2,
        estimated_cost = (pico1 + pico2) / 1e12, cached_prompt_tokens = 0, cache_write_tokens = 0, reasoning_tokens = 0,
        cost_source = "local_estimate", initial_cost = cost1, repair_cost = cost2,
        calls = {
          { kind = "initial", model = "gpt-4o-mini-2024-07-18", prompt_tokens = p1, completion_tokens = c1,
            total_tokens = p1 + c1, cost = cost1, provider_wait_us = w1, cached_prompt_tokens = 0,
            cache_write_tokens = 0, reasoning_tokens = 0 },
          { kind = "repair", model = "gpt-4o-mini-2024-07-18", prompt_tokens = p2, completion_tokens = c2,
            total_tokens = p2 + c2, cost = cost2, provider_wait_us = w2, cached_prompt_tokens = 0,
            cache_write_tokens = 0, reasoning_tokens = 0 },
        },
      },
      performance = {
        -- as genaudit's stopwatch reports them: whole microseconds / 1000
        total_latency_ms = (w1 + w2 + 173) / 1000, provider_latency_ms = (w1 + w2) / 1000,
        model_identifier = "gpt-4o-mini-2024-07-18", requested_model = "gpt-4o-mini", provider = "openai",
        attempts = 2,
        calls = {
          { kind = "initial", attempts = 1, status = 200, wait_ms = w1 / 1000, timings = timings(w1), tries = {} },
          { kind = "repair", attempts = 1, status = 200, wait_ms = w2 / 1000, timings = timings(w2), tries = {} },
        },
      },
      repair_info = {
        repair_count = 1, repair_types = { "length_exceeded" }, initial_validation_score = 70,
        final_validation_score = 100, stop_reason = "passed",
        repair_log = {
          { attempt = 1, score_before = 70, score_after = 100, issues_after = {},
            issues = { { slug = "length_exceeded", message = issue, penalty = 30 } },
            feedback = "Please revise your post. Fix these problems and keep everything else:\n- " .. issue },
        },
      },
      request_params = { temperature = 0.7, max_tokens = 400, seed = i },
      status = "completed",
    }
    -- the model's drafts as the pipeline stores them: the first, over the
    -- limit, then the repaired one, which is the content
    local content = rows[i].content
    rows[i].drafts = { content .. "\n\nAnd one more paragraph that took the post over the word limit of the platform.",
                       content }
  end
  return rows
end

-- Bytes of the text a row stores (prompts, content, drafts; the JSON comes on top).
function M.row_text_bytes(row)
  local n = #row.final_system_prompt + #row.final_user_prompt + #row.content
  for _, d in ipairs(row.drafts or {}) do n = n + #d end
  return n
end

return M
