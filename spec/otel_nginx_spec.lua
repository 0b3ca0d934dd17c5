-- spec/otel_nginx_spec.lua — the OpenTelemetry export inside real nginx:
-- openresty.init_worker{ otel = ... } sends each generation's spans from an
-- ngx.timer over cosockets (openresty.otel_sink) to a loopback collector
-- stand-in; the bodies decode with the official OTLP definitions
-- (spec/support/otlp.lua) and carry the stored snapshot's id and the host's
-- traceparent. A dead collector leaves the generations unaffected.
local cjson = require("cjson")
local socket = require("socket")
local genaudit = require("genaudit")
local server = require("spec.support.http_server")
local provider_server = require("spec.support.provider")
local nginx = require("spec.support.nginx")
local otlp = require("spec.support.otlp")
local tmp = require("spec.support.tmp")

local KEY = "sk-otel-nginx-0123456789"

local function config(dir)
  return nginx.config_head{ env = { "GENAUDIT_BASE_URL", "COLLECTOR" } } .. [[
    init_worker_by_lua_block {
        local genaudit = require("genaudit")
        require("genaudit.openresty").init_worker{
            store = "sqlite:]] .. dir .. [[/audit.db",
            provider = genaudit.providers.openai{ api_key = "]] .. KEY .. [[",
                base_url = os.getenv("GENAUDIT_BASE_URL"), model = "gpt-4o-mini" },
            templates = "]] .. dir .. [[/templates", rules = "]] .. dir .. [[/rules",
            otel = { endpoint = os.getenv("COLLECTOR"), service_name = "nginx-otel", backoff_ms = 10,
                     retries = 1 },
        }
    }
    exit_worker_by_lua_block { require("genaudit.openresty").exit_worker() }
    server {
        listen 127.0.0.1:@PORT@;
        location = /health { content_by_lua_block { ngx.say("ok") } }
        location = /gen {
            content_by_lua_block {
                local a = ngx.req.get_uri_args()
                local res, err = require("genaudit.openresty").generate({ org_id = 1, user_id = 2,
                    platform = "web", template_id = "launch" }, { traceparent = a.tp })
                ngx.say(res and res.snapshot_id or ("ERR " .. tostring(err)))
            }
        }
        location = /stats {
            content_by_lua_block {
                local p = require("genaudit.openresty").pipeline()
                local flushed = p:otel_flush(tonumber(ngx.req.get_uri_args().ms) or 0)
                local st = p:otel_stats()
                st.flushed = flushed == true
                ngx.say(require("cjson").encode(st))
            }
        }
    }
}
]]
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

describe("genaudit.openresty otel_sink #nginx", function()
  local prov, collector, dir

  setup(function()
    otlp.dir()
    prov = provider_server.start{ api_key = KEY, quiet = true }
    collector = server.start()
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
    tmp.write(dir .. "/templates/launch.lua", [[return { version = "3",
      voice_signature = "You are Acme.", task = "Announce the launch." }]])
    tmp.write(dir .. "/rules/policy.lua", [[return { budget = 1 }]])
    os.execute("chmod -R a+rwX " .. dir) -- as root, the workers run as nobody
  end)
  after_each(function() tmp.rm(dir) end)

  local function start(collector_url)
    return nginx.start{ port = free_port(), config = config(dir),
                        env = { GENAUDIT_BASE_URL = prov.url, COLLECTOR = collector_url } }
  end

  it("posts each generation's spans from a timer, joined to the host's trace", function()
    local ngx_srv = start(collector.url)
    local ok, err = pcall(function()
      local tp_trace, tp_parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
      local r = ngx_srv:load({ "/gen?tp=00-" .. tp_trace .. "-" .. tp_parent .. "-01" }, 1)[1]
      assert.equal(200, r.code)
      local id = r.body:match("^(%w+)\n$")
      assert.equal(26, #assert(id, r.body .. ngx_srv:error_log()))
      local st = cjson.decode(ngx_srv:load({ "/stats?ms=10000" }, 1)[1].body)
      assert.is_true(st.flushed)
      assert.same({ 2, 0, 0, 0 }, { st.exported, st.failed, st.dropped, st.pending })
      local d = otlp.decode(collector:bodies())
      assert.equal("nginx-otel", d.resources[1]["service.name"])
      local gen, calls = otlp.split(d.spans)
      assert.equal(id, gen.attributes["genaudit.snapshot.id"])
      assert.equal("chat gpt-4o-mini", gen.name)
      assert.equal("SPAN_KIND_CLIENT", gen.kind)
      assert.equal(tp_trace, gen.traceId)
      assert.equal(tp_parent, gen.parentSpanId)
      assert.equal("launch", gen.attributes["gen_ai.prompt.name"])
      assert.equal("3", gen.attributes["gen_ai.prompt.version"])
      assert.equal(1, #calls)
      assert.equal(gen.spanId, calls[1].parentSpanId)
      -- the stored snapshot has the figures the span carries
      local store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
      local row = assert(store:query("SELECT token_metrics FROM generation_snapshots WHERE id = ?", { id }))[1]
      store:close()
      local tm = cjson.decode(row.token_metrics)
      assert.equal(string.format("%d", tm.prompt_tokens), gen.attributes["gen_ai.usage.input_tokens"])
      assert.equal(string.format("%d", tm.completion_tokens), gen.attributes["gen_ai.usage.output_tokens"])
    end)
    ngx_srv:stop()
    ngx_srv:cleanup()
    assert(ok, err)
  end)

  it("leaves generations unaffected when the collector is down, and counts the failures", function()
    local ngx_srv = start("http://127.0.0.1:" .. server.closed_port())
    local ok, err = pcall(function()
      local rs = ngx_srv:load({ "/gen", "/gen", "/gen" }, 1)
      for _, r in ipairs(rs) do
        assert.equal(200, r.code)
        assert.equal(26, #assert(r.body:match("^(%w+)\n$"), r.body))
      end
      local st = cjson.decode(ngx_srv:load({ "/stats?ms=10000" }, 1)[1].body)
      assert.is_true(st.flushed)
      assert.same({ 0, 6, 0 }, { st.exported, st.failed, st.pending })
      assert.matches("^CONNECT: could not connect to 127%.0%.0%.1:%d+", st.last_error)
    end)
    ngx_srv:stop()
    ngx_srv:cleanup()
    assert(ok, err)
  end)
end)
