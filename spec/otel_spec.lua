-- spec/otel_spec.lua — genaudit.otel and core.otlp_exporter: the OTLP/HTTP
-- JSON span export of each generation. A loopback collector stand-in (the
-- real HTTP server of spec/support/http_server.lua) captures the POST
-- /v1/traces bodies; tools/otlp_decode.js decodes them with the official
-- opentelemetry-proto definitions (protobufjs, installed by
-- tools/otlp-proto.sh into build/node; the spec FAILS when it cannot be
-- installed) and the decoded attributes are compared with the stored
-- snapshot row. The model calls go to tools/local_provider.lua.
local genaudit = require("genaudit")
local core = require("genaudit.core")
local json = require("genaudit.json")
local otel = require("genaudit.otel")
local provider_server = require("spec.support.provider")
local http_server = require("spec.support.http_server")
local tmp = require("spec.support.tmp")
local otlp = require("spec.support.otlp")

local KEY = "sk-otel-test-5e4d3c2b1a-SECRET"
local TOKEN = "collector-token-77aa-SECRET"

local run, decode, by_kind, decoder_dir = otlp.run, otlp.decode, otlp.split, otlp.dir

-- a <= b for two decimal strings of epoch nanoseconds
local function ns_le(a, b)
  if #a ~= #b then return #a < #b end
  return a <= b
end

local function s(v) return v ~= nil and string.format("%d", v) or nil end

describe("genaudit.otel", function()
  local prov, collector, dir, store

  local function pipeline(otel_opts, over)
    over = over or {}
    return genaudit.pipeline{
      store = store, templates = dir .. "/templates", rules = dir .. "/rules", backoff_ms = 10,
      provider = genaudit.providers.openai{ base_url = prov.url, api_key = KEY, model = "gpt-4o-mini" },
      retries = over.retries, otel = otel_opts,
    }
  end

  local function ctx()
    return { org_id = 42, user_id = 7, platform = "linkedin", template_id = "launch",
             business = { name = "Acme" }, params = { temperature = 1, max_tokens = 200 } }
  end

  local function row(id)
    local r = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
    for _, k in ipairs({ "token_metrics", "performance_metrics", "repair_metrics" }) do
      r[k] = assert(json.decode(r[k]))
    end
    return r
  end

  setup(function()
    decoder_dir() -- installs (once) or fails here, clearly
    prov = provider_server.start{ api_key = KEY }
    collector = http_server.start()
  end)
  teardown(function()
    prov:stop()
    collector:stop()
  end)

  before_each(function()
    prov:reset()
    collector:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/launch.lua", [[return { version = "7",
      voice_signature = "You are {{business.name}}.", task = "Announce the launch." }]])
    tmp.write(dir .. "/rules/length.lua", [[return { slug = "too_long", check = function(d)
      if #d > 40 then return { message = #d .. " bytes, limit 40", penalty = 50 } end end }]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 2 }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)

  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  describe("export", function()
    it("sends a generation span and a child span per call that the official OTLP definitions decode, "
       .. "with the stored snapshot's figures", function()
      local p = pipeline{ endpoint = collector.url, headers = { Authorization = "Bearer " .. TOKEN },
                          service_name = "otel-spec" }
      prov:queue{
        { content = string.rep("far too long a draft ", 4),
          usage = { prompt_tokens = 31, completion_tokens = 17, total_tokens = 48,
                    prompt_tokens_details = { cached_tokens = 8 },
                    completion_tokens_details = { reasoning_tokens = 5 } } },
        { content = "Acme launches.", model = "gpt-4o-mini-2024-07-18" },
      }
      local tp_trace, tp_parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
      local res = assert(p:generate(ctx(), { traceparent = "00-" .. tp_trace .. "-" .. tp_parent .. "-01" }))
      assert(p:otel_flush(20000))
      local st = p:otel_stats()
      assert.same({ exported = 3, dropped = 0, failed = 0, pending = 0 },
                  { exported = st.exported, dropped = st.dropped, failed = st.failed, pending = st.pending })
      p:close()

      local d = decode(collector:bodies())
      assert.equal(1, d.requests)
      assert.equal("otel-spec", d.resources[1]["service.name"])
      assert.same({ name = "genaudit", version = otel.SCOPE_VERSION }, d.scopes[1])
      assert.equal(3, #d.spans)
      local gen, calls = by_kind(d.spans)
      local r = row(res.snapshot_id)
      local tm, pm = r.token_metrics, r.performance_metrics

      assert.equal("chat gpt-4o-mini", gen.name)
      assert.equal("SPAN_KIND_CLIENT", gen.kind)
      assert.equal(tp_trace, gen.traceId)
      assert.equal(tp_parent, gen.parentSpanId)
      assert.same({
        ["gen_ai.operation.name"] = "chat", ["gen_ai.provider.name"] = "openai",
        ["gen_ai.request.model"] = "gpt-4o-mini", ["gen_ai.response.model"] = pm.model_identifier,
        ["gen_ai.response.id"] = pm.calls[2].response_id, ["gen_ai.response.finish_reasons"] = { "stop" },
        ["gen_ai.usage.input_tokens"] = s(tm.prompt_tokens), ["gen_ai.usage.output_tokens"] = s(tm.completion_tokens),
        ["gen_ai.usage.cache_read.input_tokens"] = s(tm.cached_prompt_tokens),
        ["gen_ai.usage.cache_creation.input_tokens"] = s(tm.cache_write_tokens),
        ["gen_ai.usage.reasoning.output_tokens"] = s(tm.reasoning_tokens),
        ["gen_ai.request.temperature"] = 1, ["gen_ai.request.max_tokens"] = "200",
        ["gen_ai.prompt.name"] = r.template_id, ["gen_ai.prompt.version"] = r.template_version,
        ["genaudit.snapshot.id"] = r.id, ["genaudit.status"] = r.status, ["genaudit.org_id"] = r.org_id,
        ["genaudit.platform"] = r.platform, ["genaudit.repair.count"] = "1", ["genaudit.validation.score"] = 100,
      }, gen.attributes)
      assert.equal("gpt-4o-mini-2024-07-18", pm.model_identifier)
      assert.matches("^chatcmpl%-%w+$", pm.calls[2].response_id)
      assert.are_not.equal(pm.calls[1].response_id, pm.calls[2].response_id)
      assert.equal("7", r.template_version)
      assert.equal("8", gen.attributes["gen_ai.usage.cache_read.input_tokens"])
      assert.is_nil(gen.status)

      assert.equal(2, #calls)
      for i, c in ipairs(calls) do
        local tc, pc = tm.calls[i], pm.calls[i]
        assert.equal("chat gpt-4o-mini", c.name)
        assert.equal("SPAN_KIND_CLIENT", c.kind)
        assert.equal(tp_trace, c.traceId)
        assert.equal(gen.spanId, c.parentSpanId)
        assert.same({
          ["gen_ai.operation.name"] = "chat", ["gen_ai.provider.name"] = "openai",
          ["gen_ai.request.model"] = "gpt-4o-mini", ["gen_ai.response.model"] = tc.served_model,
          ["gen_ai.response.id"] = pc.response_id, ["gen_ai.response.finish_reasons"] = { pc.finish_reason },
          ["gen_ai.usage.input_tokens"] = s(tc.prompt_tokens), ["gen_ai.usage.output_tokens"] = s(tc.completion_tokens),
          ["gen_ai.usage.cache_read.input_tokens"] = s(tc.cached_prompt_tokens),
          ["gen_ai.usage.cache_creation.input_tokens"] = s(tc.cache_write_tokens),
          ["gen_ai.usage.reasoning.output_tokens"] = s(tc.reasoning_tokens),
          ["gen_ai.request.temperature"] = 1, ["gen_ai.request.max_tokens"] = "200",
          ["genaudit.call.kind"] = pc.kind, ["genaudit.call.attempts"] = "1",
          ["http.response.status_code"] = "200",
        }, c.attributes)
        -- real wall-clock times, each call inside the generation
        assert.is_true(ns_le(gen.startTimeUnixNano, c.startTimeUnixNano))
        assert.is_true(ns_le(c.startTimeUnixNano, c.endTimeUnixNano))
        assert.is_true(ns_le(c.endTimeUnixNano, gen.endTimeUnixNano))
      end
      assert.same({ "initial", "repair" }, { calls[1].attributes["genaudit.call.kind"],
                                            calls[2].attributes["genaudit.call.kind"] })
      assert.equal("31", calls[1].attributes["gen_ai.usage.input_tokens"])
      assert.equal("5", calls[1].attributes["gen_ai.usage.reasoning.output_tokens"])
      assert.is_nil(calls[1].spanId == calls[2].spanId or nil)
      -- the configured header and the JSON content type went with it
      local got = collector:bodies()[1]
      assert.equal("Bearer " .. TOKEN, got.headers.authorization)
      assert.equal("application/json", got.headers["content-type"])
      -- no prompt or answer text without the opt-in, and no secret anywhere
      local body = got.body
      assert.is_nil(body:find("gen_ai.input.messages", 1, true))
      assert.is_nil(body:find("Announce the launch", 1, true))
      assert.is_nil(body:find("SECRET", 1, true))
    end)

    it("starts a new trace (a root span with fresh ids) without a valid traceparent", function()
      local p = pipeline{ endpoint = collector.url }
      prov:queue{ { content = "Short." }, { content = "Short too." } }
      assert(p:generate(ctx()))
      assert(p:generate(ctx(), { traceparent = "00-00000000000000000000000000000000-00f067aa0ba902b7-01" }))
      assert(p:otel_flush(20000))
      p:close()
      local bodies = collector:bodies()
      local d = decode(bodies)
      assert.equal(4, #d.spans)
      local traces = {}
      for _, sp in ipairs(d.spans) do
        assert.equal(32, #sp.traceId)
        assert.equal(16, #sp.spanId)
        if sp.attributes["genaudit.snapshot.id"] then
          assert.is_nil(sp.parentSpanId)
          traces[#traces + 1] = sp.traceId
        end
      end
      assert.equal(2, #traces)
      assert.are_not.equal(traces[1], traces[2])
    end)

    it("carries the prompts and the answer as stored only when capture_content is on", function()
      local p = pipeline{ endpoint = collector.url, capture_content = true }
      prov:queue{ { content = "Acme launches today." } }
      local res = assert(p:generate(ctx()))
      assert(p:otel_flush(20000))
      p:close()
      local gen = by_kind(decode(collector:bodies()).spans)
      local r = row(res.snapshot_id)
      assert.same({ { type = "text", content = r.final_system_prompt } },
                  json.decode(gen.attributes["gen_ai.system_instructions"]))
      assert.same({ { role = "user", parts = { { type = "text", content = r.final_user_prompt } } } },
                  json.decode(gen.attributes["gen_ai.input.messages"]))
      assert.same({ { role = "assistant", finish_reason = "stop",
                      parts = { { type = "text", content = r.content } } } },
                  json.decode(gen.attributes["gen_ai.output.messages"]))
      assert.equal("Acme launches today.", r.content)
    end)

    it("marks a failed generation's span with error.type and an ERROR status", function()
      local p = pipeline({ endpoint = collector.url }, { retries = 0 })
      prov:queue{ { status = 400, body = '{"error":{"message":"bad request"}}' } }
      local res, err, code, id = p:generate(ctx())
      assert.is_nil(res)
      assert.is_string(err)
      assert(p:otel_flush(20000))
      p:close()
      local gen, calls = by_kind(decode(collector:bodies()).spans)
      assert.equal(id, gen.attributes["genaudit.snapshot.id"])
      assert.equal("failed", gen.attributes["genaudit.status"])
      assert.equal(code, gen.attributes["error.type"])
      assert.equal("STATUS_CODE_ERROR", gen.status.code)
      assert.equal(row(id).error, gen.status.message)
      assert.equal(1, #calls)
      assert.equal("400", calls[1].attributes["http.response.status_code"])
      assert.equal("400", calls[1].attributes["error.type"])
      assert.equal("STATUS_CODE_ERROR", calls[1].status.code)
    end)

    it("times a streamed generation's calls and names Anthropic by its semantic-conventions value", function()
      local p = genaudit.pipeline{
        store = store, templates = dir .. "/templates", rules = dir .. "/rules", backoff_ms = 10,
        provider = genaudit.providers.anthropic{ base_url = prov.url, api_key = KEY, model = "claude-3-5-haiku" },
        otel = { endpoint = collector.url },
      }
      prov:queue{ { content = "Acme launches.", usage = { input_tokens = 40, output_tokens = 3,
                                                         cache_read_input_tokens = 6,
                                                         cache_creation_input_tokens = 9 } } }
      local chunks = 0
      local res = assert(p:generate(ctx(), { on_chunk = function() chunks = chunks + 1 end }))
      assert(p:otel_flush(20000))
      p:close()
      assert.is_true(chunks > 0)
      local gen, calls = by_kind(decode(collector:bodies()).spans)
      local tm = row(res.snapshot_id).token_metrics
      assert.equal("anthropic", gen.attributes["gen_ai.provider.name"])
      assert.equal("chat claude-3-5-haiku", gen.name)
      assert.same({ s(tm.prompt_tokens), s(tm.completion_tokens), s(tm.cached_prompt_tokens),
                    s(tm.cache_write_tokens) },
                  { gen.attributes["gen_ai.usage.input_tokens"], gen.attributes["gen_ai.usage.output_tokens"],
                    gen.attributes["gen_ai.usage.cache_read.input_tokens"],
                    gen.attributes["gen_ai.usage.cache_creation.input_tokens"] })
      assert.equal("9", gen.attributes["gen_ai.usage.cache_creation.input_tokens"])
      assert.equal(1, #calls)
      assert.is_true(ns_le(gen.startTimeUnixNano, calls[1].startTimeUnixNano))
      assert.is_true(ns_le(calls[1].endTimeUnixNano, gen.endTimeUnixNano))
    end)

    it("is turned on by OTEL_EXPORTER_OTLP_ENDPOINT alone, and a process that exits flushes on close", function()
      local script = dir .. "/gen.lua"
      tmp.write(script, ([[
        package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
        package.cpath = os.getenv("GENAUDIT_BUILD") .. "/?.so;" .. package.cpath
        local genaudit = require("genaudit")
        local store = assert(genaudit.open("sqlite:%s/env.db"))
        local p = genaudit.pipeline{ store = store, templates = "%s/templates", rules = "%s/rules",
          provider = genaudit.providers.openai{ base_url = "%s", api_key = "%s", model = "gpt-4o-mini" } }
        local res = assert(p:generate{ org_id = 1, user_id = 2, platform = "p", template_id = "launch",
                                      business = { name = "Acme" } })
        p:close()
        store:close()
        io.write(res.snapshot_id)
      ]]):format(dir, dir, dir, prov.url, KEY))
      prov:queue{ { content = "Short." } }
      local luajit = rawget(_G, "jit") ~= nil
      local build = os.getenv("GENAUDIT_BUILD") or (luajit and "build/luajit" or "build/lua54")
      local interp = luajit and "luajit" or "lua5.4"
      local id = run(("GENAUDIT_BUILD=%s OTEL_EXPORTER_OTLP_ENDPOINT=%s OTEL_SERVICE_NAME=from-env "
        .. "OTEL_EXPORTER_OTLP_HEADERS='x-tenant=t%%201' %s %s"):format(build, collector.url, interp, script))
      assert.matches("^%w+$", id)
      local got = collector:bodies()
      assert.equal(1, #got)
      assert.equal("t 1", got[1].headers["x-tenant"])
      local d = decode(got)
      assert.equal("from-env", d.resources[1]["service.name"])
      local gen = by_kind(d.spans)
      assert.equal(id, gen.attributes["genaudit.snapshot.id"])
    end)

    it("retries a collector's 503 with backoff and exports the batch", function()
      collector:script{ { status = 503 }, { status = 200 } }
      local p = pipeline{ endpoint = collector.url, backoff_ms = 10 }
      prov:queue{ { content = "Short." } }
      assert(p:generate(ctx()))
      assert(p:otel_flush(20000))
      local st = p:otel_stats()
      p:close()
      assert.same({ 2, 0, 1 }, { st.exported, st.failed, st.retries })
      assert.equal(2, #collector:bodies())
      assert.equal(1, decode({ collector:bodies()[2] }).requests)
    end)
  end)

  it("has a decoder that refuses what the OTLP definitions do not define (the check is not vacuous)", function()
    local f = os.tmpname()
    tmp.write(f, '{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"4bf92f3577b34da6a3ce929d0e0e4736",'
      .. '"spanId":"00f067aa0ba902b7","name":"x","kind":3,"gen_ai.usage.input_tokens":"1"}]}]}]}')
    local ok, err = pcall(run, "env -u LD_PRELOAD node tools/otlp_decode.js " .. decoder_dir() .. " " .. f)
    os.remove(f)
    assert.is_false(ok)
    assert.matches("unknown field 'gen_ai.usage.input_tokens' in .opentelemetry.proto.trace.v1.Span", err, 1, true)
  end)

  describe("a dead collector", function()
    it("leaves generations unaffected: they complete and are stored, the export is not awaited, "
       .. "and the spans are counted failed", function()
      local url = "http://127.0.0.1:" .. http_server.closed_port() .. "/v1/traces?token=" .. TOKEN
      local p = pipeline{ traces_endpoint = url, headers = { Authorization = "Bearer " .. TOKEN },
                          retries = 2, backoff_ms = 60000 }
      prov:queue{ { content = "One." }, { content = "Two." }, { content = "Three." } }
      for _ = 1, 3 do
        local res = assert(p:generate(ctx()))
        assert.equal("completed", row(res.snapshot_id).status)
      end
      -- the first batch sits in a 30-60 s backoff: nothing has failed yet,
      -- so no generation waited for the collector
      local st = p:otel_stats()
      assert.same({ 0, 0, 0 }, { st.exported, st.failed, st.dropped })
      p:close() -- cuts the backoff short: one last try each, then counted
      st = p:otel_stats()
      assert.equal(0, st.exported)
      assert.equal(6, st.failed + st.dropped)
      assert.equal(0, st.pending)
      assert.matches("^CONNECT: sending spans to 127%.0%.0%.1:%d+ failed", st.last_error)
      assert.is_nil(st.last_error:find("SECRET", 1, true))
      assert.equal(3, #store:query("SELECT id FROM generation_snapshots"))
    end)

    it("drops and counts what does not fit the bounded queue", function()
      local p = pipeline{ endpoint = "http://127.0.0.1:" .. http_server.closed_port(), queue = 1,
                          backoff_ms = 60000, retries = 1 }
      prov:queue{ { content = "A." }, { content = "B." }, { content = "C." }, { content = "D." } }
      for _ = 1, 4 do assert(p:generate(ctx())) end
      local st = p:otel_stats()
      -- one batch in its backoff, one queued, the other two dropped
      assert.is_true(st.dropped >= 4)
      assert.equal(0, st.exported)
      p:close(0)
      st = p:otel_stats()
      assert.equal(8, st.failed + st.dropped)
      assert.equal(0, st.exported)
      assert.equal(4, #store:query("SELECT id FROM generation_snapshots"))
    end)
  end)

  describe("config", function()
    local function env(t) return function(k) return t[k] end end

    it("is off without an endpoint", function()
      assert.is_nil(otel.config(nil, env{}))
      assert.is_nil(otel.config(false, env{ OTEL_EXPORTER_OTLP_ENDPOINT = "http://c:4318" }))
    end)

    it("reads the standard environment variables under the options", function()
      local c = otel.config(nil, env{
        OTEL_EXPORTER_OTLP_ENDPOINT = "http://collector:4318/", OTEL_SERVICE_NAME = "svc",
        OTEL_EXPORTER_OTLP_HEADERS = "Authorization=Bearer%20abc,x-tenant = t1",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT = "true",
      })
      assert.same({ "http://collector:4318/v1/traces", "svc", true },
                  { c.url, c.service_name, c.capture_content })
      assert.same({ Authorization = "Bearer abc", ["x-tenant"] = "t1" }, c.headers)
      c = otel.config(nil, env{ OTEL_EXPORTER_OTLP_ENDPOINT = "http://a:4318",
                                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "http://b:4318/custom" })
      assert.same({ "http://b:4318/custom", "genaudit", false }, { c.url, c.service_name, c.capture_content })
      c = otel.config({ endpoint = "http://o:1", capture_content = false, service_name = "mine" },
                      env{ OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT = "true", OTEL_SERVICE_NAME = "svc" })
      assert.same({ "http://o:1/v1/traces", "mine", false }, { c.url, c.service_name, c.capture_content })
    end)

    it("raises on a bad option", function()
      assert.has_error(function() otel.config("x") end)
      assert.has_error(function() otel.config{ endpoint = "ftp://x" } end)
      assert.has_error(function() otel.config{ endpoint = 5 } end)
      assert.has_error(function() genaudit.pipeline{ store = store, templates = dir, rules = dir,
        provider = genaudit.providers.openai{ base_url = prov.url, api_key = KEY, model = "m" },
        otel = { endpoint = "http://127.0.0.1:1" } }:generate(ctx(), { traceparent = 5 }) end,
        "bad argument #2 to 'generate' (traceparent must be a string)")
    end)
  end)

  describe("parse_traceparent()", function()
    it("reads a W3C traceparent", function()
      assert.same({ "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01" },
                  { otel.parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") })
    end)

    it("refuses malformed ones", function()
      for _, tp in ipairs({ "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra" }) do
        assert.is_nil(otel.parse_traceparent(tp), tp)
      end
    end)
  end)
end)

describe("genaudit.core.otlp_exporter", function()
  it("closes twice, refuses use after close and says so in tostring", function()
    local x = assert(core.otlp_exporter{ url = "http://127.0.0.1:" .. http_server.closed_port() .. "/v1/traces" })
    assert.matches("^genaudit.otlp_exporter %(127%.0%.0%.1:%d+%)$", tostring(x))
    assert.is_true(x:close())
    assert.is_true(x:close())
    assert.equal("genaudit.otlp_exporter (closed)", tostring(x))
    assert.same({ nil, "CLOSED: the exporter is closed", "CLOSED" }, { x:push("{}", 1) })
    assert.has_error(function() x:flush() end, "attempt to use a closed otlp_exporter")
    assert.equal(0, x:stats().exported)
  end)

  it("raises on bad options, naming a header but never its value", function()
    assert.has_error(function() core.otlp_exporter{ url = "file:///x" } end)
    assert.has_error(function() core.otlp_exporter{ url = "http://h:1", queue = 0 } end)
    local ok, err = pcall(core.otlp_exporter, { url = "http://h:1", headers = { Authorization = "tok\nSECRET" } })
    assert.is_false(ok)
    assert.matches("header 'Authorization' value must not contain CR, LF or NUL", err)
    assert.is_nil(err:find("SECRET", 1, true))
  end)

  it("gives 1..64 random bytes as hex", function()
    assert.matches("^%x+$", core.random_hex(16))
    assert.equal(32, #core.random_hex(16))
    assert.are_not.equal(core.random_hex(8), core.random_hex(8))
    assert.has_error(function() core.random_hex(0) end)
    assert.matches("^%d+$", core.unix_nanos())
  end)
end)
