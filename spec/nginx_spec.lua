-- genaudit inside real nginx (lua module, OpenResty's LuaJIT): concurrent
-- audited generations through cosockets, snapshots written by each worker's
-- writer thread, nothing lost on reload or quit, no blocking on a slow call.
local cjson = require("cjson")
local genaudit = require("genaudit")
local provider_server = require("spec.support.provider")
local nginx = require("spec.support.nginx")
local tmp = require("spec.support.tmp")

local KEY = "sk-nginx-test-0123456789"
local RS = "\030" -- the example's record separator in a streamed answer (handler.lua)

-- The payload of a chunked HTTP/1.1 body.
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

-- GET path from nginx over HTTP/1.1, whole: status, head, body (chunked decoded).
local function get(port, path)
  local c = assert(require("socket").connect("127.0.0.1", port))
  c:settimeout(30)
  assert(c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
  local raw = c:receive("*a")
  c:close()
  local head, body = raw:match("^(.-\r\n)\r\n(.*)$")
  if head:lower():find("transfer%-encoding: chunked") then body = assert(unchunk(body)) end
  return tonumber(head:match("^HTTP/1%.1 (%d+)")), head, body
end

describe("genaudit in nginx #nginx", function()
  local srv, dir, db, port_base

  setup(function()
    srv = provider_server.start{ api_key = KEY, quiet = true }
    port_base = 20000 + (tonumber(tostring(srv.port):sub(-3)) or 0) * 7 % 9000
  end)
  teardown(function() srv:stop() end)

  before_each(function()
    srv:reset()
    dir = tmp.dir()
    db = dir .. "/audit.db"
  end)
  after_each(function() tmp.rm(dir) end)

  local function start(opts)
    port_base = port_base + 1
    opts = opts or {}
    return nginx.start{
      port = port_base, workers = opts.workers or 2, db = db, templates = opts.templates, prepare = opts.prepare,
      env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = srv.url, GENAUDIT_MODEL = "gpt-4o-mini" },
    }
  end

  local function owner(path)
    local p = io.popen("stat -c %U " .. "'" .. path .. "'")
    local name = p:read("l")
    p:close()
    return name
  end

  local function paths(n, offset)
    local templates = { "launch-post", "weekly-tips", "event-invite", "customer-story" }
    local out = {}
    for i = 1, n do
      local k = i + (offset or 0)
      out[i] = ("/generate?org_id=o%d&user_id=%d&template_id=%s&platform=linkedin&tone_override=tone%d")
        :format(k % 3, k, templates[k % 4 + 1], k)
    end
    return out
  end

  local function snapshots()
    local store = assert(genaudit.open("sqlite:" .. db))
    local rows = {}
    for _, r in ipairs(store:query("SELECT * FROM generation_snapshots")) do rows[r.id] = r end
    store:close()
    return rows
  end

  -- every response is 200 with a snapshot id, and every one of those ids is stored
  local function check(responses, rows, n)
    local ids, seen = {}, 0
    for i, r in ipairs(responses) do
      assert.equal(200, r.code, "request " .. i .. ": " .. tostring(r.body))
      local doc = cjson.decode(r.body)
      ids[i] = doc.snapshot_id
      local row = rows[doc.snapshot_id]
      assert.is_table(row, "snapshot " .. tostring(doc.snapshot_id) .. " missing")
      seen = seen + 1
    end
    assert.equal(n, seen)
    return ids
  end

  it("serves 200 concurrent generations and stores every snapshot with its prompts and metrics", function()
    local ngx_srv = start()
    local ps = paths(200)
    local responses = ngx_srv:load(ps, 20)
    ngx_srv:stop()
    local log = ngx_srv:error_log()
    ngx_srv:cleanup()
    local rows = snapshots()
    local ids = check(responses, rows, 200)
    for i, id in ipairs(ids) do
      local row = rows[id]
      assert.truthy(row.final_user_prompt:find("Tone: tone" .. i, 1, true), row.final_user_prompt)
      assert.equal(tostring(i), row.user_id)
      assert.equal("gpt-4o-mini-2024-07-18", row.model_identifier)
      assert.is_true(row.provider_latency_ms > 0 and row.provider_latency_ms <= row.total_latency_ms)
      assert.is_true(row.estimated_cost > 0)
    end
    -- the OpenResty path pins the code too: every digest a row names has its source in scripts
    local store = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
    for _, id in ipairs(ids) do
      local sc = cjson.decode(rows[id].repair_metrics).scripts
      assert.equal(64, #sc.rule_set_digest)
      for _, e in ipairs({ sc.template, sc.policy, sc.rules[1] }) do
        assert.is_table(store:get_script(e.digest), id .. ": " .. e.digest)
      end
    end
    store:close()
    assert.falsy(log:find("[error]", 1, true), log)
    assert.falsy(log:find(KEY, 1, true), "the API key is in nginx's error.log")
    assert.falsy(tmp.read(db):find(KEY, 1, true))
    -- the config as shipped (no `user root;`): the workers wrote the store as nobody
    assert.equal("nobody", owner(db))
  end)

  it("logs one line naming the store and the worker user when it cannot open the store, and answers 503", function()
    -- the database's directory given back to root: the workers (nobody) cannot write it
    local ngx_srv = start{ workers = 1, prepare = function() assert(os.execute("chown root '" .. dir .. "'")) end }
    local r = ngx_srv:load({ "/generate?user_id=1" }, 1)[1]
    ngx_srv:stop()
    local log = ngx_srv:error_log()
    ngx_srv:cleanup()
    assert.equal(503, r.code)
    assert.same({ error = "the generation service is not available", code = "UNAVAILABLE" }, cjson.decode(r.body))
    assert.falsy(r.body:find(dir, 1, true), r.body)
    local lines = {}
    for l in log:gmatch("[^\n]*genaudit disabled: [^\n]*") do lines[#lines + 1] = l end
    assert.equal(1, #lines, log)
    assert.truthy(lines[1]:find("genaudit disabled: cannot open store sqlite:" .. db .. " as user nobody (uid 65534): "
      .. "OPEN: cannot open database '" .. db .. "': Permission denied", 1, true), lines[1])
    assert.falsy(log:find("NOT_READY", 1, true), log)
    assert.truthy(log:find("UNAVAILABLE: genaudit.openresty.init_worker() failed: cannot open store", 1, true), log)
  end)

  it("never sends a server path to the client: a broken template answers 500 and is logged", function()
    local tdir = dir .. "/templates"
    assert(os.execute("cp -r examples/templates " .. tdir))
    tmp.write(tdir .. "/launch-post.lua", "return { task = ")
    local ngx_srv = start{ workers = 1, templates = tdir }
    local r = ngx_srv:load({ "/generate?user_id=1&template_id=launch-post" }, 1)[1]
    ngx_srv:stop()
    local log = ngx_srv:error_log()
    ngx_srv:cleanup()
    assert.equal(500, r.code)
    local doc = cjson.decode(r.body)
    assert.same({ "internal error (see the server log)", "INTERNAL" }, { doc.error, doc.code })
    assert.falsy(r.body:find("/", 1, true), r.body)
    assert.truthy(log:find(tdir .. "/launch-post.lua", 1, true), log)
    assert.equal("failed", snapshots()[doc.snapshot_id].status)
  end)

  it("loses nothing when nginx reloads in the middle of the load", function()
    local ngx_srv = start()
    local slow = {}
    for i = 1, 300 do slow[i] = { delay_ms = 30 } end -- keeps the load going for ~0.5 s
    srv:queue(slow)
    local wait = ngx_srv:load(paths(200, 1000), 20, true)
    -- until the load is under way (not a fixed sleep: on a loaded machine curl may not even have started)
    local served_before = 0
    for _ = 1, 500 do
      served_before = #srv:requests()
      if served_before > 0 then break end
      require("socket").sleep(0.02)
    end
    ngx_srv:reload()
    local responses = wait()
    ngx_srv:stop()
    local log = ngx_srv:error_log()
    ngx_srv:cleanup()
    assert.truthy(log:find("reconfiguring", 1, true))
    assert.is_true(served_before > 0 and served_before < 200, "reload did not land mid-load: " .. served_before)
    check(responses, snapshots(), 200)
  end)

  it("does not hold up other requests on the same worker while a provider call is slow", function()
    local ngx_srv = start{ workers = 1 }
    srv:queue{ { delay_ms = 1500 } }
    local slow = ngx_srv:load({ "/generate?user_id=slow" }, 1, true)
    local at_provider = false
    for _ = 1, 500 do -- until the slow request is at the provider (else the fast one would get its delay)
      at_provider = #srv:requests() >= 1
      if at_provider then break end
      require("socket").sleep(0.02)
    end
    assert.is_true(at_provider, "the slow request never reached the provider")
    local fast = ngx_srv:load({ "/generate?user_id=fast" }, 1)
    local slow_r = slow()
    ngx_srv:stop()
    ngx_srv:cleanup()
    assert.equal(200, fast[1].code)
    assert.equal(200, slow_r[1].code)
    -- an order, not a duration: the one worker recorded the fast generation (ULID ids grow
    -- monotonically within a process) while the slow one was still waiting for the provider;
    -- a worker blocked by the slow call would finish the slow one first
    local fast_id, slow_id = cjson.decode(fast[1].body).snapshot_id, cjson.decode(slow_r[1].body).snapshot_id
    assert.is_true(fast_id < slow_id, "the fast request was answered only after the slow one")
    local rows = snapshots()
    local slow_row = rows[cjson.decode(slow_r[1].body).snapshot_id]
    assert.is_true(slow_row.provider_latency_ms >= 1400)
  end)

  it("retries a 429 through the cosocket transport and records both tries", function()
    local ngx_srv = start{ workers = 1 }
    srv:queue{ { status = 429, headers = { ["Retry-After"] = "0" } }, { content = "Short post.\n#tag" } }
    local r = ngx_srv:load({ "/generate?user_id=retry" }, 1)[1]
    ngx_srv:stop()
    ngx_srv:cleanup()
    assert.equal(200, r.code)
    local row = snapshots()[cjson.decode(r.body).snapshot_id]
    local pm = cjson.decode(row.performance_metrics)
    assert.same({ 2, 429, 200 }, { pm.attempts, pm.calls[1].tries[1].status, pm.calls[1].tries[2].status })
  end)

  it("completes an answer without usage through the cosocket transport: usage counted locally (issue 18.3)",
    function()
      local tokens = require("genaudit.tokens")
      local ngx_srv = start{ workers = 1 }
      local text = "Short post, no usage billed.\n#tag"
      srv:queue{ { content = text, usage = false } }
      local r = ngx_srv:load({ "/generate?user_id=nousage" }, 1)[1]
      ngx_srv:stop()
      ngx_srv:cleanup()
      assert.equal(200, r.code, r.body)
      local row = snapshots()[cjson.decode(r.body).snapshot_id]
      assert.same({ "completed", text }, { row.status, row.content })
      local tm = cjson.decode(row.token_metrics)
      local sent = cjson.decode(srv:requests()[1].body).messages
      local p, c = tokens.count_messages(sent, "gpt-4o-mini"), tokens.count(text, "gpt-4o-mini-2024-07-18")
      assert.same({ p, c, "estimated", true, "local_estimate" }, { tm.calls[1].prompt_tokens,
        tm.calls[1].completion_tokens, tm.calls[1].usage_source, tm.calls[1].usage_missing, tm.cost_source })
      assert.is_true(row.estimated_cost > 0)
    end)

  it("stores a failed generation when the provider keeps failing, and answers 502", function()
    local ngx_srv = start{ workers = 1 }
    srv:queue{ { status = 500 }, { status = 500 }, { status = 500 } }
    local r = ngx_srv:load({ "/generate?user_id=fail" }, 1)[1]
    ngx_srv:stop()
    ngx_srv:cleanup()
    assert.equal(502, r.code)
    local doc = cjson.decode(r.body)
    local row = snapshots()[doc.snapshot_id]
    assert.same({ "failed", "PROVIDER_ERROR" }, { row.status, doc.code })
    assert.equal(doc.error, row.error)
  end)

  describe("?stream=1", function()
    -- 9 words, a hashtag line, no banned word: passes the example's rules as it is
    local POST = "Meet the Anvil 2: forged for decades, tested in Lyon.\n\n#launch"
    local DELTAS = { "Meet the Anvil 2: ", "forged for decades, ", "tested in Lyon.", "\n\n#launch" }

    it("streams the text as it comes, then a last record with the snapshot id; a repair is announced", function()
      local ngx_srv = start{ workers = 1 }
      local draft = "Meet the Anvil 2, forged for decades."
      srv:queue{ { content = POST, deltas = DELTAS, chunk_delay_ms = 20 },
                 { content = draft }, { content = POST, deltas = DELTAS } }
      local code, head, body = get(ngx_srv.port, "/generate?stream=1&user_id=s1")
      local code2, _, body2 = get(ngx_srv.port, "/generate?stream=1&user_id=s2")
      ngx_srv:stop()
      ngx_srv:cleanup()
      assert.equal(200, code, body)
      assert.truthy(head:find("Content-Type: text/plain; charset=utf-8", 1, true), head)
      local text, last = body:match("^(.-)" .. RS .. "([^" .. RS .. "]*)\n$")
      assert.equal(POST, text)
      local doc = cjson.decode(last)
      assert.same({ 0, "gpt-4o-mini-2024-07-18" }, { doc.repairs, doc.model })
      assert.is_nil(doc.content) -- the text came streamed, not again in the record
      local rows = snapshots()
      local row = rows[doc.snapshot_id]
      assert.equal(text, row.content)
      assert.is_true(cjson.decode(row.performance_metrics).calls[1].streamed)
      -- the first draft lacks its hashtag line: its text, the repair record, the repaired text
      assert.equal(200, code2, body2)
      local t1, rec, t2, last2 = body2:match("^(.-)" .. RS .. "(%b{})\n(.-)" .. RS .. "([^" .. RS .. "]*)\n$")
      assert.same({ draft, { repair = 1 }, POST }, { t1, cjson.decode(rec), t2 })
      local doc2 = cjson.decode(last2)
      assert.equal(1, doc2.repairs)
      assert.same({ "completed", POST, 1 }, { rows[doc2.snapshot_id].status, rows[doc2.snapshot_id].content,
                                               rows[doc2.snapshot_id].repair_count })
    end)

    it("answers a failure before the first piece as JSON, and one after it as the last record", function()
      local ngx_srv = start{ workers = 1 }
      srv:queue{ { status = 500 }, { status = 500 }, { status = 500 },
                 { content = POST, chunk_sizes = 5, drop_after_bytes = 700 } }
      local code, head, body = get(ngx_srv.port, "/generate?stream=1&user_id=f1")
      local code2, _, body2 = get(ngx_srv.port, "/generate?stream=1&user_id=f2")
      ngx_srv:stop()
      local log = ngx_srv:error_log()
      ngx_srv:cleanup()
      assert.equal(502, code, body)
      assert.truthy(head:find("Content-Type: application/json", 1, true), head)
      local doc = cjson.decode(body)
      assert.equal("PROVIDER_ERROR", doc.code)
      assert.equal(200, code2, body2) -- the text had gone out with its 200
      local text, last = body2:match("^(.-)" .. RS .. "([^" .. RS .. "]*)\n$")
      local doc2 = cjson.decode(last)
      assert.equal("HTTP", doc2.code)
      assert.is_true(#text > 0 and #text < #POST and POST:sub(1, #text) == text, text)
      local rows = snapshots()
      assert.same({ "failed", "failed" }, { rows[doc.snapshot_id].status, rows[doc2.snapshot_id].status })
      assert.equal(text, rows[doc2.snapshot_id].content) -- what the client read is what is stored
      assert.falsy(log:find("[error]", 1, true), log)
    end)
  end)

  it("picks up an edited template in every worker without a reload", function()
    local tdir = dir .. "/templates"
    assert(os.execute("cp -r examples/templates " .. tdir))
    local ngx_srv = start{ templates = tdir }
    local before = ngx_srv:load(paths(8), 4)
    tmp.write(tdir .. "/launch-post.lua", [[return { version = "v-edited", task = "Edited {{facts.product}}." }]])
    local after = ngx_srv:load(paths(8), 4)
    ngx_srv:stop()
    ngx_srv:cleanup()
    local rows = snapshots()
    local versions = {}
    for _, r in ipairs(after) do
      local row = rows[cjson.decode(r.body).snapshot_id]
      if row.template_id == "launch-post" then versions[#versions + 1] = row.template_version end
    end
    assert.same({ "v-edited", "v-edited" }, versions)
    assert.equal(8, #before)
  end)
end)
