-- bench/tokens.lua — issue 18: genaudit.tokens (C BPE, with either
-- pre-tokeniser: the hand-written scanner, the default, or PCRE2 JIT) against
-- OpenAI's tokenizer as the npm `tiktoken` package (Rust compiled to WASM, run
-- by node), on the same corpus file, in the same run. The corpus (>= 5 MB;
-- 0.5 MB at BENCH_SIZE=small) is this repository's prose and code (README, man
-- page, C and Lua sources) and the golden corpus's multilingual cases,
-- repeated; both sides read the same bytes.
--   tokens_<enc>        MB/s of tokens.count() (the default pre-tokeniser, the
--                       scanner), baseline=tiktoken_wasm:<MB/s of
--                       encode_ordinary()>, ratio, target=>=3; the token
--                       counts of both sides must be equal (else it fails)
--   tokens_<enc>_pcre2  the same with the PCRE2 pre-tokeniser (same baseline,
--                       same target, same count required)
--   tokens_pretok_<enc> the pre-tokenisers alone (no merging): scanner MB/s,
--                       baseline=pcre2:<MB/s>, ratio, target=>=1 (the
--                       default must be the faster); piece counts must agree
--   tokens_memory_<enc> bytes held by one loaded encoding (its rank table,
--                       reverse table and compiled patterns) and the load time;
--                       scanner_tables_bytes: the scanner's tables (static in
--                       core.so, shared by both encodings, not per encoding)
--   tokens_linear       a run of one character (one pre-tokeniser piece): the
--                       time for 2 MB over the time for 1 MB (2 = linear); and
--                       giveback_ratio, the same for the scanner's split alone
--                       of "中AAAA" repeated (its backtracking case)
-- tools/tiktoken-node.sh installs the npm package into build/node-tiktoken (cached).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local core = require("genaudit.core")
local cjson = require("cjson")
local tokens = require("genaudit.tokens")

local TARGET_BYTES = common.size{ small = 500000, full = 5500000 }
local MIN_SECONDS = common.size{ small = 0.3, full = 2.0 }
local now = common.now_us
local q = common.quote

common.title("tokens: genaudit.tokens (C BPE) vs tiktoken (npm, WASM), MB/s on the same corpus")

-- ---- the corpus ----
local pieces = {}
local function add_file(path)
  local s = common.read_file(root .. "/" .. path)
  if s and core.utf8_valid == nil or (s and core.utf8_valid(s)) then pieces[#pieces + 1] = s end
end
for _, p in ipairs({ "README.md", "man/genaudit.1", "bench/RESULTS.md" }) do add_file(p) end
do
  local ls = io.popen("ls " .. q(root) .. "/csrc/*.c " .. q(root) .. "/lua/genaudit/*.lua 2>/dev/null")
  for line in ls:lines() do add_file(line:sub(#root + 2)) end
  ls:close()
end
do
  local golden = cjson.decode(common.read_file(root .. "/spec/fixtures/tokens/golden.json"))
  for _, c in ipairs(golden) do
    if not c.name:find("invalid") and not c.name:find("bytes") and not c.name:find("_%d+$") then
      pieces[#pieces + 1] = core.base64_decode(c.b64) .. "\n"
    end
  end
end
local unit = table.concat(pieces, "\n")
local corpus = string.rep(unit, math.ceil(TARGET_BYTES / #unit))
local dir = common.tmpdir("tokens")
local corpus_path = dir .. "/corpus.txt"
do
  local f = assert(io.open(corpus_path, "wb"))
  f:write(corpus)
  f:close()
end
local mb = #corpus / 1e6

-- ---- tiktoken (node) ----
local function sh(cmd)
  local p = assert(io.popen(cmd .. " 2>&1; echo \"__exit=$?\""))
  local out = p:read("*a")
  p:close()
  local status = tonumber(out:match("__exit=(%d+)%s*$"))
  return out:gsub("__exit=%d+%s*$", ""), status
end
local node_out, st = sh("cd " .. q(root) .. " && sh tools/tiktoken-node.sh")
local node_dir = node_out:match("([^\n]+)\n?$")
if st ~= 0 or not node_dir then
  io.stderr:write("bench/tokens.lua: cannot install the npm tiktoken package:\n" .. node_out)
  os.exit(1)
end
if node_dir:sub(1, 1) ~= "/" then node_dir = root .. "/" .. node_dir end

local function tiktoken(enc)
  local out, s = sh("NODE_PATH=" .. q(node_dir .. "/node_modules") .. " node " .. q(root .. "/tools/tiktoken-golden.js")
    .. " bench " .. q(corpus_path) .. " " .. enc)
  local rate, count = out:match("MB/s ([%d.]+) tokens (%d+)")
  if s ~= 0 or not rate then
    io.stderr:write("bench/tokens.lua: node tiktoken bench failed:\n" .. out)
    os.exit(1)
  end
  return tonumber(rate), tonumber(count)
end

-- ---- genaudit.tokens ----
-- The scanner and PCRE2 timed in alternation (a run of one, then of the
-- other, >= 3 rounds and 2 * MIN_SECONDS), so machine load falls on both
-- alike: the best MB/s of each and their results.
local function both_rates(f)
  assert(f(corpus, "scanner"))
  assert(f(corpus, "pcre2")) -- warm-up
  local best, res, rounds, t_all = { scanner = 0, pcre2 = 0 }, {}, 0, now()
  repeat
    for _, which in ipairs({ "scanner", "pcre2" }) do
      local t0 = now()
      res[which] = assert(f(corpus, which))
      best[which] = math.max(best[which], mb / ((now() - t0) / 1e6))
    end
    rounds = rounds + 1
  until rounds >= 3 and (now() - t_all) / 1e6 >= 2 * MIN_SECONDS
  return best.scanner, res.scanner, best.pcre2, res.pcre2
end

local failed = false
for _, enc in ipairs({ "o200k_base", "cl100k_base" }) do
  local kb0 = common.rss()
  local t0 = now()
  assert(tokens.load(enc))
  local load_ms = (now() - t0) / 1000
  local kb1 = common.rss()
  local mem = tokens.memory(enc)
  local e = assert(tokens.load(enc))
  assert(e:pretokenizer() == "scanner" or os.getenv("GENAUDIT_PRETOKENIZER"), "the default is not the scanner")
  local rate, n, prate, pn = both_rates(function(s, which) return e:count(s, which) end)
  local base, bn = tiktoken(enc)
  common.bench("tokens_" .. enc, "MB/s", {
    { "mbps", rate }, { "baseline", "tiktoken_wasm:" .. common.num(base) },
    { "ratio", string.format("%.2f", rate / base) }, { "corpus_mb", mb }, { "tokens", n }, { "target", ">=3" },
  })
  common.bench("tokens_" .. enc .. "_pcre2", "MB/s", {
    { "mbps", prate }, { "baseline", "tiktoken_wasm:" .. common.num(base) },
    { "ratio", string.format("%.2f", prate / base) }, { "corpus_mb", mb }, { "tokens", pn }, { "target", ">=3" },
  })
  common.say("%s: %.1f MB corpus, %d tokens (pcre2 %d, tiktoken: %d)%s", enc, mb, n, pn, bn,
    (n == bn and pn == bn) and "" or "  MISMATCH")
  if n ~= bn or pn ~= bn then failed = true end
  -- the pre-tokenisers alone
  local srate, sp, crate, cp = both_rates(function(s, which) return e:count_pieces(s, which) end)
  common.bench("tokens_pretok_" .. enc, "MB/s", {
    { "mbps", srate }, { "baseline", "pcre2:" .. common.num(crate) }, { "ratio", string.format("%.2f", srate / crate) },
    { "pieces", sp }, { "target", ">=1" },
  })
  common.say("%s pre-tokenisation alone: scanner %.1f MB/s, PCRE2 JIT %.1f MB/s, %d pieces (pcre2: %d)%s", enc,
    srate, crate, sp, cp, sp == cp and "" or "  MISMATCH")
  if sp ~= cp then failed = true end
  local tables = core.bpe_scanner_info()
  common.bench("tokens_memory_" .. enc, "bytes", {
    { "bytes", mem }, { "rss_kib", kb1 - kb0 }, { "load_ms", load_ms },
    { "scanner_tables_bytes", tables.table_bytes },
    -- what the encoding object says it holds against what the process grew by loading it
    { "baseline", "rss_growth_bytes:" .. common.num(math.max(1, (kb1 - kb0) * 1024)) },
    { "ratio", string.format("%.3f", mem / math.max(1, (kb1 - kb0) * 1024)) }, { "target", "info" },
  })
  common.say("%s loaded in %.1f ms: %.1f MB held by the encoding object (RSS +%d KiB); the scanner's tables: %d"
    .. " bytes, static and shared (Unicode %s, PCRE2's)", enc, load_ms, mem / 1e6, kb1 - kb0, tables.table_bytes,
    tables.unicode)
end

-- ---- linearity: one piece of 1 MB and of 2 MB ----
do
  local function best_of(s, enc)
    local best = math.huge
    for _ = 1, 3 do
      local t0 = now()
      assert(tokens.count(s, enc))
      best = math.min(best, now() - t0)
    end
    return best
  end
  local small = common.size{ small = 250000, full = 1000000 }
  local t1 = best_of(string.rep(" ", small), "o200k_base")
  local t2 = best_of(string.rep(" ", 2 * small), "o200k_base")
  local a1 = best_of(string.rep("a", small), "o200k_base")
  local a2 = best_of(string.rep("a", 2 * small), "o200k_base")
  -- the scanner's give-back case, pre-tokenisation alone: [UP]*[LO]+ over
  -- "中AAAA中AAAA..." (中 is upper and lower, A upper only) scans the whole
  -- run, then gives characters back to the last 中
  local o200k = assert(tokens.load("o200k_base"))
  -- (milliseconds only: best of 7 in CPU time, os.clock, on 8 and 16 times the size)
  local function split_time(s)
    local best = math.huge
    for _ = 1, 7 do
      local t0 = os.clock()
      assert(o200k:count_pieces(s, "scanner"))
      best = math.min(best, (os.clock() - t0) * 1e6)
    end
    return best
  end
  local gb = "中AAAA"
  local b1 = split_time(string.rep(gb, math.floor(8 * small / #gb)))
  local b2 = split_time(string.rep(gb, math.floor(16 * small / #gb)))
  common.bench("tokens_linear", "ratio", {
    { "spaces_ratio", string.format("%.2f", t2 / t1) }, { "letters_ratio", string.format("%.2f", a2 / a1) },
    { "giveback_ratio", string.format("%.2f", b2 / b1) }, { "spaces_1x_ms", t1 / 1000 },
    -- twice the input, twice the time: linear is 2 (quadratic would be 4)
    { "ratio", string.format("%.2f", math.max(t2 / t1, a2 / a1, b2 / b1)) }, { "target", "<=2.5" },
  })
  common.say("a run of %d vs %d spaces: %.0f ms vs %.0f ms; letters %.0f ms vs %.0f ms; the scanner's give-back"
    .. " split of %d vs %d bytes %.1f ms vs %.1f ms CPU (2.0 = linear)", small, 2 * small, t1 / 1000, t2 / 1000,
    a1 / 1000, a2 / 1000, 8 * small, 16 * small, b1 / 1000, b2 / 1000)
end

common.rm(dir)
if failed then
  io.stderr:write("bench/tokens.lua: token counts differ from tiktoken's\n")
  os.exit(1)
end
