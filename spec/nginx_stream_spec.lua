-- spec/nginx_stream_spec.lua — issue 15's "done when" through the whole
-- pipeline in real nginx (one worker, OpenResty's LuaJIT): a location calls
-- openresty.generate(ctx, { on_chunk = openresty.client_writer() }) against
-- the local provider's real event streams (OpenAI and Anthropic wires), with
-- the worker's SQLite store in async mode. A raw client of nginx reads the
-- answer as it comes: the first text piece reaches it while the generation
-- is still running, another generation on the same worker is answered
-- meanwhile, and what the client read is byte for byte the stored content;
-- a mid-stream drop and a client that goes away store failed snapshots with
-- the text so far. Orders of events, never durations: the location records
-- "running" / "done" around generate() in a shared dict that the other
-- requests report.
local cjson = require("cjson")
local socket = require("socket")
local genaudit = require("genaudit")
local provider_server = require("spec.support.provider")
local nginx = require("spec.support.nginx")
local tmp = require("spec.support.tmp")

local KEY = "sk-nginx-stream-0123456789"
local RS = "\030" -- the trailer record's separator (RFC 7464): never in the JSON after it

-- @WIRE@ and @DIR@ are filled in here; @PREFIX@, @ROOT@, @PORT@ by spec.support.nginx.
local CONFIG = nginx.config_head({ env = { "GENAUDIT_API_KEY", "GENAUDIT_BASE_URL" } }) .. [[
    lua_shared_dict generations 1m;
    init_by_lua_block { require("genaudit") require("genaudit.openresty") }
    init_worker_by_lua_block {
        local genaudit = require("genaudit")
        local wire = "@WIRE@"
        local provider = genaudit.providers[wire]{
            api_key = os.getenv("GENAUDIT_API_KEY"), base_url = os.getenv("GENAUDIT_BASE_URL"),
            model = wire == "anthropic" and "claude-haiku-4-5" or "gpt-4o-mini",
        }
        require("genaudit.openresty").init_worker{
            store = "sqlite:@DIR@/audit.db", async = { queue = 1000, batch = 100, on_full = "error" },
            provider = provider, templates = "@DIR@/templates", rules = "@DIR@/rules",
            pricing = genaudit.pricing.default(),
        }
    }
    exit_worker_by_lua_block { require("genaudit.openresty").exit_worker() }
    server {
        listen 127.0.0.1:@PORT@;
        location = /health { content_by_lua_block { ngx.say("ok") } }
        # the state of the generation of user_id=tag on this worker
        location = /ping {
            content_by_lua_block { ngx.say("pong; ", ngx.shared.generations:get(ngx.var.arg_tag) or "unknown") }
        }
        # one streamed generation: its text as it comes, then RS + {snapshot_id, code, error} + LF
        location = /stream {
            content_by_lua_block {
                local cjson = require("cjson")
                local openresty = require("genaudit.openresty")
                local tag = ngx.var.arg_tag
                local ctx = { org_id = 42, user_id = tag, platform = "linkedin", template_id = "launch",
                              business = { name = "Acme", tone = "formal" }, facts = { product = "Anvil 2" },
                              params = { temperature = 0.5, max_tokens = 200 } }
                ngx.header["Content-Type"] = "text/plain; charset=utf-8"
                ngx.shared.generations:set(tag, "running")
                local r, err, code, id = openresty.generate(ctx, { on_chunk = openresty.client_writer() })
                ngx.shared.generations:set(tag, "done")
                local out = cjson.encode{ snapshot_id = r and r.snapshot_id or id, code = code, error = err }
                ngx.log(ngx.WARN, "outcome ", tag, ": ", out)
                ngx.print("\030", out, "\n")
            }
        }
        # one unstreamed generation; says what state generation `running` was in when it finished
        location = /generate {
            content_by_lua_block {
                local cjson = require("cjson")
                local openresty = require("genaudit.openresty")
                local ctx = { org_id = 42, user_id = ngx.var.arg_tag, platform = "linkedin", template_id = "launch",
                              business = { name = "Acme", tone = "formal" }, facts = { product = "Anvil 2" } }
                local r, err, code = openresty.generate(ctx)
                ngx.say(cjson.encode{ snapshot_id = r and r.snapshot_id, content = r and r.content, error = err,
                                      code = code, other = ngx.shared.generations:get(ngx.var.arg_running) })
            }
        }
    }
}
]]

-- 14 words with a 4-byte emoji and accented letters: a valid draft (at most 20 words)
local TEXT = "Meet the Anvil 2: forged for decades, tested in Lyon \240\159\148\168 d\195\169j\195\160 ready."
  .. "\n\n#launch"
local DELTAS = { "Meet the Anvil 2: ", "forged for decades, ", "tested in Lyon \240\159\148\168 ",
                 "d\195\169j\195\160 ready.", "\n\n#launch" }
local SECOND = "A short second post.\n\n#two"

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- The payload of a chunked HTTP/1.1 body (the raw bytes after the head).
local function unchunk(raw)
  local out, i = {}, 1
  while true do
    local hex, after = raw:match("^(%x+)\r\n()", i)
    if not hex then return nil, "bad chunk at " .. i end
    local n = tonumber(hex, 16)
    if n == 0 then return table.concat(out) end
    out[#out + 1] = raw:sub(after, after + n - 1)
    i = after + n + 2
  end
end

-- waits (bounded, by tries) until f() is truthy; returns its last value
local function eventually(f)
  for _ = 1, 250 do
    local v = f()
    if v then return v end
    socket.sleep(0.02)
  end
  return f()
end

for _, wire in ipairs({ "openai", "anthropic" }) do
  describe("streamed generations in nginx, " .. wire .. " wire #nginx", function()
    local srv, ngx_srv, dir
    local USAGE = wire == "anthropic" and { input_tokens = 40, output_tokens = 19 }
      or { prompt_tokens = 40, completion_tokens = 19, total_tokens = 59 }

    setup(function()
      srv = provider_server.start{ api_key = KEY, quiet = true }
      dir = tmp.dir()
      assert(os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules"))
      tmp.write(dir .. "/templates/launch.lua", [[return {
        version = "7", voice_signature = "You are {{business.name}}.",
        constraints = { "At most 20 words." }, task = "Announce {{facts.product}}." }]])
      tmp.write(dir .. "/rules/length.lua", [[return { slug = "length_exceeded", check = function(d)
        local n = select(2, d:gsub("%S+", ""))
        if n > 20 then return { message = n .. " words, limit 20", penalty = 30 } end end }]])
      tmp.write(dir .. "/rules/policy.lua", [[return { budget = 2 }]])
      -- started as root, the workers run as nobody: the store's directory is theirs
      assert(os.execute("chmod 755 " .. dir .. " && chown -R nobody " .. dir))
      local config = CONFIG:gsub("@(%u+)@", function(k)
        if k == "WIRE" then return wire elseif k == "DIR" then return dir end
      end)
      ngx_srv = nginx.start{ port = free_port(), config = config,
                             env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = srv.url } }
    end)
    teardown(function()
      if ngx_srv then
        ngx_srv:stop()
        local log = ngx_srv:error_log()
        ngx_srv:cleanup()
        assert.falsy(log:find(KEY, 1, true), "the API key is in nginx's error.log")
      end
      if srv then srv:stop() end
      tmp.rm(dir)
    end)
    before_each(function() srv:reset() end)

    -- the stored row of snapshot id, once the worker's writer thread committed it
    local function row(id)
      return eventually(function()
        local store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db", { readonly = true }))
        local rows = assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))
        store:close()
        return rows[1]
      end)
    end

    -- a raw client of nginx: GET path over HTTP/1.1, read as bytes come
    local function client(path)
      local c = assert(socket.connect("127.0.0.1", ngx_srv.port))
      assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
      c:settimeout(0.05)
      local got = ""
      local function read_until(needle)
        for _ = 1, 300 do
          local d, err, partial = c:receive(4096)
          got = got .. (d or partial or "")
          if got:find(needle, 1, true) then return true end
          if err == "closed" then break end
        end
        return false
      end
      return c, read_until, function() return got end
    end

    -- a whole answer read by client(): head, text, trailer table
    local function parse(raw)
      local head, body = raw:match("^(.-\r\n)\r\n(.*)$")
      assert.truthy(head and head:find("Transfer-Encoding: chunked", 1, true), raw)
      local payload = assert(unchunk(body))
      local text, trailer = payload:match("^(.*)" .. RS .. "([^" .. RS .. "]*)\n$")
      assert.is_string(text, payload)
      return head, text, cjson.decode(trailer)
    end

    -- the outcome the /stream location logged for tag
    local function outcome(tag)
      local json = eventually(function() return ngx_srv:error_log():match("outcome " .. tag .. ": (%b{})") end)
      return json and cjson.decode(json)
    end

    it("reaches the client as it is generated while another generation on the worker is answered", function()
      srv:queue{ { content = TEXT, deltas = DELTAS, chunk_delay_ms = 300, usage = USAGE }, { content = SECOND } }
      local c, read_until, got = client("/stream?tag=s1")
      local events = {}
      assert.is_true(read_until(DELTAS[1]), got())
      local ping = ngx_srv:load({ "/ping?tag=s1" }, 1)[1]
      events[#events + 1] = "client has the first piece; " .. ping.body:gsub("\n", "")
      local before = #got()
      local second = ngx_srv:load({ "/generate?tag=g1&running=s1" }, 1)[1]
      assert.equal(200, second.code, second.body)
      local doc = cjson.decode(second.body)
      events[#events + 1] = "second generation " .. tostring(doc.content == SECOND) .. "; stream " .. doc.other
      assert.is_true(read_until("\r\n0\r\n\r\n"), got())
      c:close()
      events[#events + 1] = "client has it all; " .. ngx_srv:load({ "/ping?tag=s1" }, 1)[1].body:gsub("\n", "")
      assert.same({ "client has the first piece; pong; running", "second generation true; stream running",
                    "client has it all; pong; done" }, events)
      assert.is_true(#got() > before, "the rest came afterwards")
      local head, text, trailer = parse(got())
      assert.truthy(head:find("^HTTP/1.1 200"), head)
      assert.truthy(head:find("Content-Type: text/plain; charset=utf-8", 1, true), head)
      assert.same({}, { trailer.error, trailer.code })
      assert.equal(TEXT, text)
      -- the one worker committed the second generation first (ULIDs grow within a process)
      assert.is_true(doc.snapshot_id < trailer.snapshot_id, doc.snapshot_id .. " " .. trailer.snapshot_id)
      local stored = row(trailer.snapshot_id)
      assert.equal("completed", stored.status)
      assert.equal(text, stored.content) -- byte for byte what the client read
      assert.equal("s1", stored.user_id)
      local tm = cjson.decode(stored.token_metrics)
      assert.same({ 40, 19, 59 }, { tm.prompt_tokens, tm.completion_tokens, tm.total_tokens })
      assert.is_number(tm.estimated_cost)
      local pm = cjson.decode(stored.performance_metrics)
      local call = pm.calls[1]
      assert.is_true(call.streamed)
      assert.equal(#DELTAS, call.chunks)
      assert.is_true(call.time_to_first_token_ms > 0, tostring(call.time_to_first_token_ms))
      assert.is_true(call.time_to_first_token_ms <= call.wait_ms, "TTFT within the call's wait")
      local sent = cjson.decode(srv:requests()[1].body)
      assert.is_true(sent.stream)
      assert.equal("completed", row(doc.snapshot_id).status)
    end)

    it("a mid-stream drop: the client has the partial text, stored failed with that same text", function()
      srv:queue{ { content = TEXT, chunk_sizes = 5, drop_after_bytes = wire == "anthropic" and 900 or 700 } }
      local c, read_until, got = client("/stream?tag=d1")
      assert.is_true(read_until("\r\n0\r\n\r\n"), got())
      c:close()
      local _, text, trailer = parse(got())
      assert.equal("HTTP", trailer.code)
      assert.matches("closed the connection before the whole response arrived", trailer.error)
      assert.is_true(#text > 0 and #text < #TEXT, "a partial text: " .. text)
      assert.equal(TEXT:sub(1, #text), text)
      local stored = row(trailer.snapshot_id)
      assert.same({ "failed", trailer.error }, { stored.status, stored.error })
      assert.equal(text, stored.content)
      assert.is_true(cjson.decode(stored.performance_metrics).calls[1].stream_broken)
      assert.equal(1, #srv:requests()) -- never tried again once bytes came
    end)

    it("a client that goes away aborts the generation: STREAM_ABORTED, stored failed", function()
      local words = {}
      for i = 1, 12 do words[i] = "w" .. i .. " " end
      local long = table.concat(words) .. "\n\n#gone"
      words[#words + 1] = "\n\n#gone"
      srv:queue{ { content = long, deltas = words, chunk_delay_ms = 100 } }
      local c, read_until, got = client("/stream?tag=a1")
      assert.is_true(read_until("w1 "), got())
      c:close()
      local o = outcome("a1")
      assert.is_table(o, ngx_srv:error_log())
      assert.equal("STREAM_ABORTED", o.code)
      assert.matches("^STREAM_ABORTED: client went away %(stream broken after %d+ bytes, %d+ chunks%)$", o.error)
      local stored = row(o.snapshot_id)
      assert.same({ "failed", o.error, "a1" }, { stored.status, stored.error, stored.user_id })
      assert.is_true(#stored.content >= #"w1 " and #stored.content < #long, stored.content)
      assert.equal(long:sub(1, #stored.content), stored.content)
      assert.equal(1, #srv:requests())
    end)
  end)
end
