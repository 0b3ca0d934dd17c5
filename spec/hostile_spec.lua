-- Hostile inputs through the public API: each ends in a clear error (nothing
-- written) or a failed-status snapshot — never a crash, a hang or a partial
-- row. Prompts with NUL bytes and invalid UTF-8, 50 MB prompts, provider
-- bodies that are huge, deeply nested, not JSON or truncated, absurd token
-- counts, unknown models, 429/5xx, timeouts, connection resets, SQL
-- injection in every string field and report filter; and the security
-- properties: the API key never reaches the database files or an error, and
-- an unverified TLS setting is recorded on the snapshot.
local genaudit = require("genaudit")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local KEY = "sk-hostile-5e4d3c2b1a-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }
local INJECT = "x'); DROP TABLE generation_snapshots;--"

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function row(over)
  local r = {
    org_id = 1, user_id = 2, platform = "x", template_id = "t",
    final_system_prompt = "system", final_user_prompt = "user",
    token_usage = { prompt_tokens = 3, completion_tokens = 4 },
    performance = { total_latency_ms = 1.5, provider_latency_ms = 1 }, repair_info = {},
  }
  for k, v in pairs(over or {}) do r[k] = v end
  return r
end

local function count(store)
  return assert(store:query("SELECT count(*) AS n FROM generation_snapshots"))[1].n
end

local function get(store, id)
  return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
end

local function bytes_of(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

describe("hostile inputs", function()
  local dir, store, dbfile

  before_each(function()
    dir = tmp.dir()
    dbfile = dir .. "/hostile.db"
    store = assert(genaudit.open("sqlite:" .. dbfile))
  end)
  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  describe("persist_generation()", function()
    it("stores prompts with NUL bytes and invalid UTF-8 byte for byte", function()
      local nul = "a\0b\0\0c" .. string.rep("\0", 10)
      local bad = "\xff\xfe\xc3\x28\xa0\xa1\xe2\x82\xf0\x28\x8c\xbc\xed\xa0\x80\0end"
      local id = assert(store:persist_generation(row{
        final_system_prompt = nul, final_user_prompt = bad, content = bad .. nul, error = nil,
        template_id = "t\0\xff", platform = "\xc3\xa9\0",
        performance = { total_latency_ms = 1, provider_latency_ms = 1, model_identifier = "m\0\xff" },
      }))
      local r = get(store, id)
      assert.same({ nul, bad, bad .. nul, "t\0\xff", "\xc3\xa9\0" },
        { r.final_system_prompt, r.final_user_prompt, r.content, r.template_id, r.platform })
      -- JSON text is always valid UTF-8: the invalid byte is U+FFFD there (spec/utf8_json_spec.lua)
      assert.is_truthy(r.performance_metrics:find('"model_identifier":"m\\u0000\xef\xbf\xbd"', 1, true))
    end)

    it("stores SQL injection strings in every string field verbatim, and they do nothing", function()
      local fields = { "org_id", "user_id", "platform", "template_id", "template_version", "content",
                       "final_system_prompt", "final_user_prompt", "replay_of" }
      local over = { status = "failed", error = INJECT,
                     performance = { total_latency_ms = 1, provider_latency_ms = 1, model_identifier = INJECT },
                     request_params = { [INJECT] = INJECT }, repair_info = { repair_types = { INJECT } } }
      for _, f in ipairs(fields) do over[f] = INJECT .. f end
      local id = assert(store:persist_generation(row(over)))
      local r = get(store, id)
      for _, f in ipairs(fields) do assert.equal(INJECT .. f, r[f]) end
      assert.same({ INJECT, INJECT, INJECT }, { r.error, r.model_identifier, cjson.decode(r.request_params)[INJECT] })
      assert.equal(1, count(store))
      assert.same({ { name = "generation_snapshots" } },
        store:query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'generation_snapshots'"))
    end)

    it("refuses absurd numbers and structures with INVALID and writes nothing", function()
      local nested = {}
      local t = nested
      for _ = 1, 100 do t[1] = {} t = t[1] end
      local cases = {
        { token_usage = { prompt_tokens = -1, completion_tokens = 1 } },
        { token_usage = { prompt_tokens = 1.5, completion_tokens = 1 } },
        { token_usage = { prompt_tokens = 2 ^ 63, completion_tokens = 1 } },
        { token_usage = { prompt_tokens = 1e300, completion_tokens = 1 } },
        { token_usage = { prompt_tokens = 0 / 0, completion_tokens = 1 } },
        { token_usage = { prompt_tokens = 1, completion_tokens = 1, estimated_cost = -0.5 } },
        { token_usage = { prompt_tokens = 1, completion_tokens = 1, estimated_cost = math.huge } },
        { performance = { total_latency_ms = 0 / 0, provider_latency_ms = 1 } },
        { repair_info = { repair_log = nested } },
        { request_params = { deep = nested } },
        { created_at = "2024-01-01 00:00:00'); DROP TABLE generation_snapshots;--" },
        { status = INJECT },
        { org_id = {} },
      }
      for i, over in ipairs(cases) do
        local id, err, code = store:persist_generation(row(over))
        assert.is_nil(id, "case " .. i)
        assert.equal("INVALID", code, "case " .. i)
        assert.matches("^INVALID: ", err)
      end
      assert.equal(0, count(store))
    end)

    -- In a child process, so its peak RSS (VmHWM) is the persist's alone.
    it("persists and reads back a 50 MB prompt without absurd memory use", function()
      local build = os.getenv("GENAUDIT_BUILD") or (rawget(_G, "jit") and "build/luajit" or "build/lua54")
      tmp.write(dir .. "/big.lua", [[
        local g = require("genaudit")
        local mode, db = ...
        local async = mode == "async" and { max_bytes = 64 * 1024 * 1024 } or nil
        local s = assert(g.open("sqlite:" .. db, { async = async }))
        local big = string.rep("0123456789abcde\0", 50 * 65536) -- 50 MiB, NULs included
        local id = assert(g.persister(s):persist_generation{ org_id = 1, user_id = 1, platform = "x",
          template_id = "big", final_system_prompt = "s", final_user_prompt = big,
          token_usage = { prompt_tokens = 1, completion_tokens = 1 },
          performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {} })
        assert(s:flush())
        local r = assert(s:query("SELECT final_user_prompt AS p FROM generation_snapshots WHERE id = ?", { id }))[1]
        assert(r.p == big, "read back differs")
        s:close()
        local hwm = io.open("/proc/self/status"):read("a"):match("VmHWM:%s*(%d+) kB")
        io.write(string.format("ok %d %d\n", #r.p, tonumber(hwm)))
      ]])
      for _, mode in ipairs({ "sync", "async" }) do
        local cmd = ("LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH=%s %s %s/big.lua %s %s 2>&1")
          :format(shq("./" .. build .. "/?.so;;"), shq(provider_server.interpreter()), dir, mode,
                  shq(dir .. "/big-" .. mode .. ".db"))
        local p = assert(io.popen(cmd))
        local out = p:read("a")
        p:close()
        local len, hwm_kb = out:match("^ok (%d+) (%d+)\n$")
        assert.is_not_nil(len, mode .. ": " .. out)
        assert.equal(50 * 1024 * 1024, tonumber(len))
        -- the prompt, its copy read back and SQLite's buffer for it; async adds
        -- the queued copy. ASan's quarantine keeps freed blocks: no bound there.
        if not (os.getenv("LD_PRELOAD") or ""):find("asan") then
          assert.is_true(tonumber(hwm_kb) < 300 * 1024, mode .. ": peak RSS " .. hwm_kb .. " kB")
        end
      end
    end)
  end)

  describe("the pipeline against a hostile provider", function()
    local srv

    setup(function() srv = provider_server.start{ api_key = KEY, quiet = true } end)
    teardown(function() srv:stop() end)
    before_each(function() srv:reset() end)

    local function pipeline(popts)
      local o = { base_url = srv.url, api_key = KEY, model = "gpt-4o-mini", timeout_ms = 5000 }
      for k, v in pairs(popts or {}) do o[k] = v end
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/policy.lua", [[return { budget = 0 }]])
      return genaudit.pipeline{
        store = store, provider = genaudit.providers.openai(o), templates = dir .. "/templates",
        rules = dir .. "/rules", pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 1, retries = 1,
      }
    end

    local function ctx(over)
      local t = { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
                  business = { name = "Acme" }, facts = { product = "Anvil" } }
      for k, v in pairs(over or {}) do t[k] = v end
      return t
    end

    -- Runs one generation that must fail; returns code, the stored failed row, err.
    local function failed(p, c)
      local res, err, code, sid = p:generate(ctx(c))
      assert.is_nil(res)
      assert.is_string(sid, "no failed snapshot for " .. tostring(err))
      local r = get(store, sid)
      assert.equal("failed", r.status)
      assert.equal(err, r.error)
      assert.matches("^[%u_]+: ", err) -- "CODE: ...", the code of the failure itself
      assert.equal("You are Acme.", r.final_system_prompt) -- a whole row: prompts and metrics
      assert.is_string(r.token_metrics)
      assert.is_string(r.repair_metrics)
      return code, r, err
    end

    it("a body over max_response_bytes: TOO_LARGE, stored as failed", function()
      srv:queue{ { content = string.rep("y", 20000) } }
      local code, r = failed(pipeline{ max_response_bytes = 4096 })
      assert.equal("TOO_LARGE", code)
      assert.matches("exceeds max_response_bytes=4096", r.error)
    end)

    it("100 000 nested '[', a body that is not JSON, a truncated one: BAD_RESPONSE", function()
      for _, body in ipairs({ string.rep("[", 100000), "<html>502 Bad Gateway</html>",
                              '{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tok' }) do
        srv:queue{ { body = body } }
        assert.equal("BAD_RESPONSE", (failed(pipeline())))
      end
    end)

    it("negative, fractional, 2^63 and 1e300 token counts, or a usage that is not an object: BAD_RESPONSE",
      function()
      for _, u in ipairs({ "-5", "2.5", "9223372036854775808", "1e300", "18446744073709551616" }) do
        srv:queue{ { body = '{"model":"gpt-4o-mini","choices":[{"message":{"content":"hi"}}],'
          .. '"usage":{"prompt_tokens":' .. u .. ',"completion_tokens":1}}' } }
        local code, r = failed(pipeline())
        assert.equal("BAD_RESPONSE", code, u)
        assert.matches("usage", r.error)
      end
      for _, u in ipairs({ '"none"', "0", "[]", "true" }) do
        srv:queue{ { body = '{"model":"gpt-4o-mini","choices":[{"message":{"content":"hi"}}],"usage":' .. u .. '}' } }
        local code, r = failed(pipeline())
        assert.equal("BAD_RESPONSE", code, u)
        assert.matches("usage", r.error)
      end
    end)

    it("an unknown model: completed, estimated_cost null, never 0", function()
      local res = assert(pipeline{ model = "mystery-model-9000" }:generate(ctx()))
      local r = get(store, res.snapshot_id)
      assert.equal("completed", r.status)
      assert.is_nil(r.estimated_cost)
      local tm = cjson.decode(r.token_metrics)
      assert.same({ cjson.null, "unpriced" }, { tm.estimated_cost, tm.cost_source })
    end)

    it("HTTP 429 and 5xx after the retries: RATE_LIMITED and PROVIDER_ERROR", function()
      srv:queue{ { status = 429, headers = { ["Retry-After"] = "0" } }, { status = 429 } }
      assert.equal("RATE_LIMITED", (failed(pipeline())))
      srv:queue{ { status = 503 }, { status = 500 } }
      local code, r = failed(pipeline())
      assert.equal("PROVIDER_ERROR", code)
      assert.equal(2, cjson.decode(r.performance_metrics).attempts)
    end)

    it("a provider that never answers: TIMEOUT within the time limit, no hang", function()
      srv:queue{ { hang = true }, { hang = true } }
      local sw = genaudit.stopwatch()
      local code = failed(pipeline{ timeout_ms = 300 })
      assert.equal("TIMEOUT", code)
      assert.is_true(sw:elapsed_ms() < 3000)
    end)

    it("connection resets: a failed snapshot naming the provider's host:port", function()
      srv:queue{ { reset = true }, { reset = true } }
      local code, r = failed(pipeline())
      assert.equal("HTTP", code)
      assert.matches("^HTTP: .*127%.0%.0%.1:%d+", r.error)
    end)

    it("never writes the API key to the database, the WAL or an error message", function()
      -- a provider that quotes the key back in its error (OpenAI does, masked)
      srv:queue{ { status = 401, body = '{"error":{"message":"Incorrect API key provided: ' .. KEY .. '"}}' } }
      local _, r, err = failed(pipeline())
      assert.is_nil(err:find(KEY, 1, true))
      assert.is_truthy(r.error:find("[REDACTED]", 1, true))
      srv:queue{ { status = 400, message = "bad " .. KEY } }
      failed(pipeline())
      assert(pipeline():generate(ctx()))
      local files = { dbfile, dbfile .. "-wal", dbfile .. "-shm" }
      for _, f in ipairs(files) do assert.is_nil(bytes_of(f):find(KEY, 1, true), f) end
      assert.is_true(#bytes_of(dbfile .. "-wal") > 0)
    end)

    it("never stores the key a provider echoes in model, content or errors, in any encoding or case", function()
      local function b64(x, url) -- coreutils' base64, an encoder independent of genaudit's
        local f = assert(io.open(dir .. "/k", "wb"))
        f:write(x)
        f:close()
        local p = assert(io.popen("base64 -w0 " .. shq(dir .. "/k")))
        local out = p:read("a")
        p:close()
        if url then out = out:gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" }) end
        return out
      end
      local hex = KEY:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
      local pct = KEY:gsub(".", function(c) return ("%%%02X"):format(c:byte()) end)
      local forms = { raw = KEY, upper = KEY:upper(), lower = KEY:lower(), base64 = b64(KEY),
                      base64url = b64(KEY, true), basic = b64("user:" .. KEY), hex = hex, hex_upper = hex:upper(),
                      percent = pct }
      local p = pipeline()
      local errors = {}
      local function gen() -- every generation, completed or failed, is stored
        local res, err = p:generate(ctx())
        if not res then errors[#errors + 1] = err end
      end
      srv:queue{ { model = KEY, content = "model echo" } } gen()
      srv:queue{ { content = "Your key is " .. KEY .. " or " .. KEY:upper() .. "; " .. b64(KEY) } } gen()
      srv:queue{ { content = "Authorization: Basic " .. b64("user:" .. KEY) .. " hex " .. hex .. " " .. pct } } gen()
      srv:queue{ { model = "m-" .. b64(KEY, true), usage = false, content = "unbilled " .. KEY } } gen()
      srv:queue{ { model = "m-" .. b64(KEY), usage = { prompt_tokens = -1, completion_tokens = 1 },
                   content = "lied about " .. KEY:upper() } } gen()
      srv:queue{ { status = 401, body = '{"error":{"message":"Bearer ' .. b64(KEY) .. ' refused"}}' } } gen()
      srv:queue{ { status = 400, message = "key " .. KEY:upper() .. " is not valid" } } gen()
      srv:queue{ { status = 503, body = "upstream said: " .. hex:upper() }, { status = 503, body = pct } } gen()
      assert.equal(8, count(store))
      assert.equal(4, #errors)
      local rows = assert(store:query("SELECT * FROM generation_snapshots"))
      local texts = {}
      for _, r in ipairs(rows) do
        for _, v in pairs(r) do texts[#texts + 1] = tostring(v) end
      end
      for _, e in ipairs(errors) do texts[#texts + 1] = e end
      local all = table.concat(texts, "\n")
      assert.truthy(all:find("[REDACTED]", 1, true))
      assert.truthy(all:find("model echo", 1, true)) -- the rows are really there
      local files = { dbfile, dbfile .. "-wal", dbfile .. "-shm" }
      for name, f in pairs(forms) do
        assert.falsy(all:lower():find(f:lower(), 1, true), name)
        for _, path in ipairs(files) do
          assert.falsy(bytes_of(path):lower():find(f:lower(), 1, true), name .. " in " .. path)
        end
      end
    end)

    it("a hostile rule can neither falsify the row nor lose it (more in spec/sandbox_spec.lua)", function()
      local p = pipeline()
      tmp.write(dir .. "/rules/evil.lua", [[return function(draft, ctx)
        ctx.org_id, ctx.template_id, ctx.params.temperature = "evil", "x", 9
        return setmetatable({ message = "m", penalty = math.huge },
          { __index = function() error("__index ran in the host", 0) end })
      end]])
      local c = ctx{ params = { temperature = 0.25 } }
      -- the broken rule fails the draft (a rule error counts), the row is stored as failed
      local res, _, code, id = p:generate(c)
      assert.same({ nil, "REPAIR_EXHAUSTED" }, { res, code })
      local r = get(store, id)
      assert.same({ "42", "launch", "failed" }, { r.org_id, r.template_id, r.status })
      assert.same({ temperature = 0.25 }, cjson.decode(r.request_params))
      assert.equal(0.25, c.params.temperature)
      assert.equal("SCRIPT: penalty must be a number from 0 to 100", p:script_errors()[dir .. "/rules/evil.lua"])
    end)

    it("records verify_tls on every snapshot: true by default, false when turned off", function()
      local on = assert(pipeline():generate(ctx()))
      local off = assert(pipeline{ verify_tls = false }:generate(ctx()))
      assert.is_true(cjson.decode(get(store, on.snapshot_id).performance_metrics).verify_tls)
      assert.is_false(cjson.decode(get(store, off.snapshot_id).performance_metrics).verify_tls)
    end)
  end)

  describe("reports", function()
    local function seed()
      for i = 1, 6 do
        assert(store:persist_generation(row{ org_id = i <= 4 and "org-a" or "org-b",
          template_id = i <= 4 and "a-only" or "b-only",
          token_usage = { prompt_tokens = i, completion_tokens = 1, estimated_cost = i / 1000 } }))
      end
    end

    it("filters by --org / --template with injection strings: no rows, nothing broken", function()
      seed()
      local evils = { "x' OR '1'='1", INJECT, "%", "org-a' --", "' UNION SELECT id FROM generation_snapshots --" }
      for _, evil in ipairs(evils) do
        for _, name in ipairs({ "cost", "repairs", "latency" }) do
          local opts = { org = evil, by = name ~= "repairs" and "template" or nil }
          local res = assert(genaudit.report[name](store, opts))
          assert.same({}, res.rows, name .. " org=" .. evil)
        end
        local res = assert(genaudit.report.cost(store, { by = "template", template = evil }))
        assert.same({}, res.rows)
      end
      -- the CLI, with the argument passed verbatim
      for _, args in ipairs({ "report cost --by template --org " .. shq(INJECT),
                              "report cost --by template --template " .. shq(INJECT),
                              "export --format jsonl --org " .. shq("x' OR '1'='1") }) do
        local p = assert(io.popen("lua5.4 bin/genaudit --db " .. shq(dbfile) .. " " .. args .. " 2>&1; echo rc=$?"))
        local out = p:read("a")
        p:close()
        assert.matches("rc=0\n$", out, args)
        assert.is_nil(out:find("a-only", 1, true), args)
      end
      assert.equal(6, count(store))
    end)

    it("scoped to one org never shows another tenant's rows", function()
      seed()
      local a = assert(genaudit.report.cost(store, { by = "template", org = "org-a" }))
      assert.equal(1, #a.rows)
      assert.same({ "a-only", 4 }, { a.rows[1][a.columns[1]], a.rows[1].posts })
      local buf = {}
      local sink = { write = function(_, s) buf[#buf + 1] = s return true end }
      assert.equal(2, genaudit.report.export(store, { format = "jsonl", org = "org-b", out = sink }))
      local orgs = {}
      for line in table.concat(buf):gmatch("[^\n]+") do orgs[#orgs + 1] = cjson.decode(line).org_id end
      assert.same({ "org-b", "org-b" }, orgs)
    end)
  end)
end)
