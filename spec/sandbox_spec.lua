-- Scripts (templates, rules, policies) are untrusted: none of their code runs
-- in host code outside the time limit (their tables are read raw, their
-- error objects named by type, __gc refused), the limit holds through an
-- xpcall handler and loops of slow C calls, what they return is size-capped,
-- nested string.gsub callbacks cannot crash LuaJIT, and they get copies of
-- the context, the parts and the issues, so the stored snapshot keeps the
-- caller's values. Hangs and crashes are tried in child processes.
local genaudit = require("genaudit")
local scripts = require("genaudit.scripts")
local validator = require("genaudit.validator")
local composer = require("genaudit.composer")
local dto = require("genaudit.dto")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local tmp = require("spec.support.tmp")

local KEY = "sk-sandbox-0a1b2c3d4e-SECRET"
local PRICES = { ["gpt-4o-mini"] = { input_cost_per_token = 1.5e-07, output_cost_per_token = 6e-07 } }

-- Prepended to a script: `trap`, a metatable whose every metamethod raises,
-- so a script value read by host code other than raw shows up as an error.
local TRAP = [[
local trap = {}
for _, m in ipairs({ "__index", "__newindex", "__tostring", "__len", "__eq", "__lt", "__le", "__concat",
                     "__call", "__pairs", "__unm", "__add" }) do
  trap[m] = function() error(m .. " ran in the host", 0) end
end
]]

local function shq(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Runs Lua source in a child process of this engine (a hang ends at the
-- guard, a crash ends the child only); returns its output and exit code.
local function child(dir, src, ...)
  local build = os.getenv("GENAUDIT_BUILD") or (rawget(_G, "jit") and "build/luajit" or "build/lua54")
  local guard = tonumber(os.getenv("GENAUDIT_HANG_GUARD_S") or "") or 60
  tmp.write(dir .. "/child.lua", src)
  local args = {}
  for i, a in ipairs({ ... }) do args[i] = shq(a) end
  local cmd = ("timeout %d env LUA_PATH='./lua/?.lua;./lua/?/init.lua;;' LUA_CPATH=%s %s %s %s 2>&1; echo rc=$?")
    :format(guard, shq("./" .. build .. "/?.so;;"), shq(provider_server.interpreter()), shq(dir .. "/child.lua"),
      table.concat(args, " "))
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  local text, rc = out:match("^(.-)rc=(%d+)\n$")
  return text, tonumber(rc)
end

-- A child that validates "draft" with the rules in <dir>/rules, collects
-- garbage and prints each issue as slug|message.
local VALIDATE_CHILD = [[
local validator = require("genaudit.validator")
local v = validator.new{ rules = ... .. "/rules", script_timeout_ms = 50 }
local issues = v:validate("draft", { platform = "x" })
collectgarbage("collect")
collectgarbage("collect")
for _, i in ipairs(issues) do io.write(i.slug, "|", i.message, "\n") end
]]

describe("the script sandbox", function()
  local dir

  before_each(function()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/rules " .. dir .. "/templates")
  end)
  after_each(function() tmp.rm(dir) end)

  local function rule(name, src) tmp.write(dir .. "/rules/" .. name .. ".lua", TRAP .. src) end
  local function template(name, src) tmp.write(dir .. "/templates/" .. name .. ".lua", TRAP .. src) end
  local function validate(draft, opts)
    local o = { rules = dir .. "/rules", script_timeout_ms = 1000 }
    for k, v in pairs(opts or {}) do o[k] = v end
    local v = validator.new(o)
    return v, v:validate(draft or "draft", { platform = "x" })
  end
  local function compose(id, over)
    local t = { org_id = 1, user_id = 2, platform = "linkedin", template_id = id or "t",
                business = { name = "Acme" }, facts = { product = "Anvil" } }
    for k, v in pairs(over or {}) do t[k] = v end
    return composer.new{ templates = dir .. "/templates" }:compose_post_generation(assert(dto.GenerationContext(t)))
  end

  describe("no metamethod of a script value runs in host code", function()
    it("reads an issue and a list of issues raw", function()
      rule("a", [[return function() return setmetatable({ message = "m", penalty = 5 }, trap) end]])
      rule("b", [[return function() return setmetatable({ setmetatable({ message = "n" }, trap) }, trap) end]])
      local _, issues, score = validate()
      assert.same({ { slug = "a", message = "m", penalty = 5 }, { slug = "b", message = "n", penalty = 10 } }, issues)
      assert.equal(85, score)
    end)

    it("names an error object by its type instead of calling its __tostring", function()
      rule("raises", [[return function() error(setmetatable({}, trap)) end]])
      rule("top", [[error(setmetatable({}, trap))]])
      local v, issues = validate()
      assert.same({ { slug = "rule_error", message = "raises: (error object of type table)", penalty = 10 },
                    { slug = "rule_error", message = "top: (error object of type table)", penalty = 10 } }, issues)
      assert.equal("SCRIPT: (error object of type table)", v:script_errors()[dir .. "/rules/top.lua"])
    end)

    it("reads a rule table and a policy table raw when loading them", function()
      rule("r", [[return setmetatable({ check = function() return { message = "x", penalty = 1 } end }, trap)]])
      rule("policy", [[return setmetatable({ budget = 1,
        feedback = function() return nil, setmetatable({}, trap) end }, trap)]])
      local v = validator.new{ rules = dir .. "/rules" }
      local rr = v:validate_and_repair("draft", { platform = "x" }, function() error("must not be called") end)
      assert.same({ "policy_declined", "(error object of type table)", 99 },
        { rr.stop_reason, rr.stop_detail, rr.initial_validation_score })
      assert.same({}, v:script_errors())
    end)

    it("refuses a min_score that is not a number instead of comparing it", function()
      rule("r", [[return function() return { message = "x", penalty = 1 } end]])
      rule("policy", [[return { min_score = setmetatable({}, trap) }]])
      local v = validator.new{ rules = dir .. "/rules" }
      local rr = v:validate_and_repair("draft", { platform = "x" }, function() return "fixed" end)
      assert.equal("budget_exhausted", rr.stop_reason) -- the default policy: min_score 100
      assert.equal("SCRIPT: " .. dir .. "/rules/policy.lua: min_score must be a finite number",
        v:script_errors()[dir .. "/rules/policy.lua"])
    end)

    it("reads a template raw: its table, its platforms and its constraints", function()
      template("t", [[return setmetatable({ version = 2, voice_signature = "You are {{business.name}}.",
        constraints = setmetatable({ "Short.", 42 }, trap),
        platforms = setmetatable({ linkedin = setmetatable({ task = "Post {{facts.product}}." }, trap) }, trap) },
        trap)]])
      local p = assert(compose())
      assert.same({ "You are Acme.\n\nConstraints:\n- Short.\n- 42", "Post Anvil.\n\nFacts:\n- product: Anvil", "2" },
        { p.system, p.user, p.template_version })
    end)

    it("refuses a constraint that is not a string instead of calling tostring on it", function()
      template("t", [[return { constraints = { setmetatable({}, trap) } }]])
      local p, err, code = compose()
      assert.is_nil(p)
      assert.equal("COMPOSE", code)
      assert.equal("COMPOSE: template 't': SCRIPT: " .. dir
        .. "/templates/t.lua: constraints must be a list of strings", err)
    end)

    it("names the error object a template function raises by its type", function()
      template("t", [[return { system = function() error(setmetatable({}, trap)) end }]])
      assert.same({ nil, "COMPOSE: template 't' system(): (error object of type table)", "COMPOSE" },
        { compose() })
    end)
  end)

  describe("scripts that would hang the host (child processes)", function()
    it("an issue whose __index loops forever is read raw", function()
      rule("loop", [[return function()
        return setmetatable({ message = "m" }, { __index = function() while true do end end }) end]])
      assert.same({ "loop|m\n", 0 }, { child(dir, VALIDATE_CHILD, dir) })
    end)

    it("an error object whose __tostring loops forever is named by its type", function()
      template("t", [[return { user = function()
        error(setmetatable({}, { __tostring = function() while true do end end })) end }]])
      local out, rc = child(dir, [[
        local composer = require("genaudit.composer")
        local c = composer.new{ templates = ... .. "/templates", script_timeout_ms = 50 }
        print((select(2, c:compose_post_generation{ org_id = 1, user_id = 1, platform = "x", template_id = "t" })))
      ]], dir)
      assert.same({ "COMPOSE: template 't' user(): (error object of type table)\n", 0 }, { out, rc })
    end)

    it("an xpcall message handler that loops forever is stopped by the time limit", function()
      rule("handler", [[return function()
        xpcall(function() while true do end end, function() while true do end end) end]])
      assert.same({ "rule_error|handler: script exceeded its time limit (50 ms)\n", 0 },
        { child(dir, VALIDATE_CHILD, dir) })
    end)

    it("a __gc metamethod is refused (Lua 5.4 would run it in the host at any time)", function()
      rule("gc", [[return function()
        setmetatable({}, { __gc = function() while true do end end })
        return { message = "no finalizer", penalty = 0 } end]])
      local out, rc = child(dir, VALIDATE_CHILD, dir)
      assert.same({ "rule_error|gc: " .. dir .. "/rules/gc.lua:N: setmetatable: a __gc metamethod is not allowed in"
                    .. " scripts\n", 0 }, { (out:gsub(":%d+:", ":N:")), rc })
    end)

    it("string.rep with a count of 2^40 is refused (Lua 5.4 loops 2^40 times in C)", function()
      rule("rep", [[return function() return { message = tostring(#(""):rep(2 ^ 40)) } end]])
      local out, rc = child(dir, VALIDATE_CHILD, dir)
      assert.same({ "rule_error|rep: " .. dir .. "/rules/rep.lua:N: string.rep: a count of 1099511627776 is over the"
                    .. " limit of 16777216\n", 0 }, { (out:gsub(":%d+:", ":N:")), rc })
    end)
  end)

  describe("the time limit over C functions", function()
    -- Each loop body makes one C call of a millisecond or more; with a 1 ms
    -- limit the deadline has passed by the end of the first or second call.
    -- (Before, the hook looked at the clock only every 1000 VM instructions:
    -- some 170 calls.)
    local cases = {
      ["string.find with backtracking"] = { [[local s = ("a"):rep(3000)]], [[s:find("a-b")]] },
      ["string.rep"] = { "", [[string.rep("ab", 4000000)]] },
      ["table.concat"] = { [[local t = {} for i = 1, 400000 do t[i] = "abcdefgh" end]], [[table.concat(t)]] },
      ["table.sort"] = { [[local t = {} for i = 1, 100000 do t[i] = (i * 7919) % 100000 end]], [[table.sort(t)]] },
      ["string.gsub"] = { [[local s = ("abc "):rep(100000)]], [[s:gsub("%w+", "x")]] },
      ["string.upper"] = { [[local s = ("abc "):rep(1000000)]], [[s:upper()]] },
      ["string.gmatch iterator"] = { [[local s = (("a"):rep(1500) .. "xy"):rep(1000)]],
                                     [[for _ in s:gmatch("a*y") do]] .. " progress.n = progress.n + 1 end" },
      ["os.date"] = { [[local f = ("%Y-%m-%d "):rep(500000)]], [[os.date(f, 0)]] },
      ["table.insert and table.remove"] = { [[local t = {} for i = 1, 2000000 do t[i] = i end]],
                                            [[table.insert(t, 1, table.remove(t, 1))]] },
    }
    for name, case in pairs(cases) do
      it("stops a loop of " .. name .. " calls after the call that passed the deadline", function()
        tmp.write(dir .. "/loop.lua", case[1] .. "\nreturn function() while true do " .. case[2]
          .. " progress.n = progress.n + 1 end end")
        local progress = { n = 0 }
        local fn = assert(scripts.loader{ env = { progress = progress }, limit_ms = 10000 }:load(dir .. "/loop.lua"))
        assert.same({ false, "script exceeded its time limit (1 ms)" }, { scripts.call(fn, 1) })
        assert.is_true(progress.n <= 2, progress.n .. " calls")
      end)
    end
  end)

  describe("the time limit and host code", function()
    -- LuaJIT's hook is global: it also fires in the host code that runs
    -- between the end of a script call and the hook's removal (in about one
    -- call in fifty when the time-out came from a C function's check).
    it("leaves no time-out behind in host code after hundreds of expired calls", function()
      -- the time-out raised by a C function's deadline check, at any point of the hook's count
      tmp.write(dir .. "/spin.lua", "return function() while true do local _ = ('x'):upper() end end")
      local fn = assert(scripts.loader{ limit_ms = 10000 }:load(dir .. "/spin.lua"))
      for _ = 1, 500 do
        assert.same({ false, "script exceeded its time limit (1 ms)" }, { scripts.call(fn, 1) })
        assert.equal("x", ("x"):match("x")) -- the host's own string methods, no deadline
      end
      assert.equal(string.match, ("").match)
    end)
  end)

  describe("size caps", function()
    it("string.rep and table.concat refuse results over 16 MiB, through methods too", function()
      rule("rep", [[return function() return { message = #(("x"):rep(16 * 2^20 + 1)) .. "" } end]])
      rule("concat", [[return function()
        local big = ("x"):rep(8 * 2^20)
        return { message = #table.concat({ big, big, "y" }) .. "" } end]])
      rule("fits", [[return function() return { message = #(("x"):rep(16 * 2^20)) .. "", penalty = 0 } end]])
      local _, issues = validate()
      assert.same({ "concat: " .. dir .. "/rules/concat.lua:N: table.concat: result of 16777217 bytes is over the limit"
                    .. " of 16777216 bytes", "16777216",
                    "rep: " .. dir .. "/rules/rep.lua:N: string.rep: result of 16777217 bytes is over the limit"
                    .. " of 16777216 bytes" },
        { (issues[1].message:gsub(":%d+:", ":N:")), issues[2].message, (issues[3].message:gsub(":%d+:", ":N:")) })
      assert.equal(string.rep, ("").rep) -- the host's string methods are its own again
    end)

    it("refuses an issue message over 64 KiB and more than 100 issues as rule_error", function()
      rule("long", [[return function() return { message = ("m"):rep(65537) } end]])
      rule("many", [[return function() local t = {} for i = 1, 101 do t[i] = { message = "i" .. i } end return t end]])
      local _, issues, score = validate()
      assert.same({
        { slug = "rule_error", message = "long: message is 65537 bytes, over the limit of 65536 bytes", penalty = 10 },
        { slug = "rule_error", message = "many: a rule may return at most 100 issues", penalty = 10 },
      }, issues)
      assert.equal(80, score)
    end)

    it("cuts a script's error text at 64 KiB", function()
      rule("loud", [[return function() error(("e"):rep(100000), 0) end]])
      local _, issues = validate()
      assert.equal("loud: " .. ("e"):rep(65536) .. "... (truncated)", issues[1].message)
    end)

    it("refuses a template prompt over 16 MiB with COMPOSE", function()
      template("t", [[return { system = function() return ("x"):rep(16 * 2^20) .. "y" end }]])
      assert.same({ nil, "COMPOSE: template 't' system prompt is 16777217 bytes, over the limit of 16777216 bytes",
                    "COMPOSE" }, { compose() })
    end)

    it("declines a repair whose feedback is over 16 MiB", function()
      rule("r", [[return function() return { message = "x", penalty = 50 } end]])
      rule("policy", [[return { feedback = function() return ("f"):rep(16 * 2^20) .. "g" end }]])
      local v = validator.new{ rules = dir .. "/rules" }
      local rr = v:validate_and_repair("draft", { platform = "x" }, function() error("must not be called") end)
      assert.same({ "policy_declined", "feedback is 16777217 bytes, over the limit of 16777216 bytes", 0 },
        { rr.stop_reason, rr.stop_detail, rr.repair_count })
    end)
  end)

  describe("worker coroutines (reused from call to call)", function()
    local function pack(...) return { n = select("#", ...), ... } end
    local function load(name, src, env)
      tmp.write(dir .. "/" .. name .. ".lua", src)
      return assert(scripts.loader{ env = env, limit_ms = 10000 }:load(dir .. "/" .. name .. ".lua"))
    end

    it("return every result, nils included, and keep the limit after calls that raised, yielded or timed out",
      function()
        local many = load("many", "return function(a, b) return a, nil, b, nil end")
        local raise = load("raise", "return function() error('no', 0) end")
        local yields = load("yields", "return function() yield('out') return 1 end", { yield = coroutine.yield })
        local spin = load("spin", "return function() while true do end end")
        for _ = 1, 3 do
          assert.same({ n = 5, true, 1, nil, 2, nil }, pack(scripts.call(many, 1000, 1, 2)))
          assert.same({ false, "no" }, { scripts.call(raise, 1000) })
          assert.same({ false, "script yielded; scripts must run to completion" }, { scripts.call(yields, 1000) })
          assert.same({ false, "script exceeded its time limit (5 ms)" }, { scripts.call(spin, 5) })
          assert.same({ n = 5, true, "x", nil, "y", nil }, pack(scripts.call(many, 1000, "x", "y")))
        end
        assert.equal(string.rep, ("").rep) -- the host's string methods are its own again
      end)

    it("run a script call made from host code inside a script call on a worker of its own", function()
      local spin = load("spin", "return function() while true do end end")
      local inner = load("inner", "return function(x) return x * 2 end")
      local outer = load("outer", "return function() local a = host_call(inner_fn, 21) local b = host_call(spin_fn)"
        .. " return a, b end", {
        host_call = function(fn, ...)
          local ok, v = scripts.call(fn, 5, ...)
          return ok and v or v
        end,
        inner_fn = inner, spin_fn = spin,
      })
      assert.same({ true, 42, "script exceeded its time limit (5 ms)" }, { scripts.call(outer, 1000) })
      -- and the outer call's own limit still holds after the inner ones
      local outer_spin = load("outer_spin", "return function() host_call(inner_fn, 1) while true do end end", {
        host_call = function(fn, ...) return select(2, scripts.call(fn, 1000, ...)) end, inner_fn = inner,
      })
      assert.same({ false, "script exceeded its time limit (5 ms)" }, { scripts.call(outer_spin, 5) })
    end)
  end)

  describe("scripts.copy", function()
    it("copies raw and deep: cycles and shared tables kept, tables as keys copied, metatables dropped unrun",
      function()
        local trap = {}
        for _, m in ipairs({ "__index", "__newindex", "__pairs", "__len", "__eq" }) do
          trap[m] = function() error(m .. " ran", 0) end
        end
        local shared = setmetatable({ "s" }, trap)
        local key = { k = true }
        local v = setmetatable({ a = { shared = shared }, b = shared, [key] = "by table", n = 1, [2] = "two" }, trap)
        v.a.up = v
        local c = scripts.copy(v)
        assert.is_nil(getmetatable(c))
        assert.is_nil(getmetatable(rawget(c, "b")))
        assert.is_false(rawequal(rawget(c, "a"), rawget(v, "a")) or rawequal(rawget(c, "b"), shared))
        assert.is_true(rawequal(c, rawget(rawget(c, "a"), "up")))
        assert.is_true(rawequal(rawget(c, "b"), rawget(rawget(c, "a"), "shared")))
        assert.equal("s", rawget(rawget(c, "b"), 1))
        assert.equal(1, rawget(c, "n"))
        assert.equal("two", rawget(c, 2))
        assert.is_nil(rawget(c, key))
        local ckey, n = nil, 0
        for k, x in next, c do
          n = n + 1
          if type(k) == "table" then ckey = k assert.equal("by table", x) end
        end
        assert.equal(5, n)
        assert.is_true(not rawequal(ckey, key) and rawget(ckey, "k") == true)
        for _, x in ipairs({ 1, "s", true, false, coroutine.create(print), print }) do
          assert.equal(x, scripts.copy(x))
        end
        assert.is_nil(scripts.copy(nil))
      end)

    it("copies a table nested 100000 deep (no recursion limit)", function()
      local deep = {}
      local t = deep
      for _ = 1, 100000 do
        t.n = {}
        t = t.n
      end
      local c, k = scripts.copy(deep), 0
      while c.n do
        c, k = c.n, k + 1
      end
      assert.equal(100000, k)
    end)
  end)

  describe("nested string.gsub callbacks", function()
    it("are refused past 32 levels instead of crashing LuaJIT (child process)", function()
      rule("deep", [[return function()
        local function f(s) return (("a"):gsub(".", f)) end
        return { message = f("a") } end]])
      rule("deeptable", [[return function()
        local t = setmetatable({}, { __index = function() return (("a"):gsub(".", _G.t)) end })
        _G.t = t
        return { message = (("a"):gsub(".", t)) } end]])
      -- and gsub still works nested a few levels deep, and after an error inside one
      rule("nest", [[return function()
        pcall(string.gsub, "abc", ".", function() error("inside") end)
        local depth = 0
        local function f(c)
          depth = depth + 1
          if depth >= 10 then return c:upper() end
          return (c:gsub(".", f))
        end
        return { message = ("xy"):gsub(".", f) .. depth, penalty = 0 } end]])
      local out, rc = child(dir, VALIDATE_CHILD, dir)
      assert.equal(0, rc, out)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l:gsub(":%d+:", ":N:") end
      assert.same({ "rule_error|deep: " .. dir .. "/rules/deep.lua:N: string.gsub: callbacks nested more than 32 deep",
                    "rule_error|deeptable: " .. dir .. "/rules/deeptable.lua:N: string.gsub: callbacks nested more"
                    .. " than 32 deep", "nest|XY11" }, lines)
    end)
  end)
end)

describe("scripts and the stored snapshot (the real pipeline)", function()
  local srv, dir, store

  setup(function() srv = provider_server.start{ api_key = KEY, quiet = true } end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    dir = tmp.dir()
    os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
    tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
      voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}." }]])
    store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db"))
  end)
  after_each(function()
    store:close()
    tmp.rm(dir)
  end)

  local function pipeline()
    return genaudit.pipeline{
      store = store, templates = dir .. "/templates", rules = dir .. "/rules",
      provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
      pricing = assert(genaudit.pricing.load(PRICES)), backoff_ms = 1, retries = 0,
    }
  end
  local function input()
    return { org_id = "org-42", user_id = 7, platform = "linkedin", template_id = "launch",
             business = { name = "Acme" }, facts = { product = "Anvil" }, knowledge = { "Acme makes anvils." },
             params = { temperature = 0.5, max_tokens = 200 } }
  end
  local function stored(id)
    return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1]
  end

  describe("scripts get copies", function()
    -- the spoiler: one line for each value the snapshot records
    local SPOIL = [[
      local function spoil(ctx)
        ctx.org_id, ctx.user_id, ctx.template_id, ctx.platform = "evil", "evil", "x", "evil"
        ctx.params.temperature, ctx.params.seed = 9, 666
        ctx.business.name, ctx.knowledge[1], ctx.facts.product = "Evil", "forged", "Forged"
      end
    ]]

    local function assert_unspoiled(res, caller, want_requests)
      local r = stored(res.snapshot_id)
      assert.same({ "org-42", "7", "launch", "linkedin", "completed" },
        { r.org_id, r.user_id, r.template_id, r.platform, r.status })
      assert.same({ temperature = 0.5, max_tokens = 200 }, cjson.decode(r.request_params))
      assert.same(input(), caller) -- the caller's own tables are untouched
      local sent = srv:requests()
      assert.equal(want_requests, #sent)
      for _, req in ipairs(sent) do
        local body = cjson.decode(req.body)
        assert.same({ 0.5, 200, nil }, { body.temperature, body.max_tokens, body.seed })
      end
      return r
    end

    it("a rule that rewrites ctx, and an issue it returned earlier, changes nothing stored", function()
      tmp.write(dir .. "/rules/spoiler.lua", SPOIL .. [[
        local last
        return { slug = "spoiler", check = function(draft, ctx)
          spoil(ctx)
          if last then last.slug, last.message, last.penalty = "forged", "forged", 0 end
          if draft ~= "fixed" then last = { message = "needs a fix", penalty = 50 } return last end
        end }]])
      srv:queue{ { content = "first" }, { content = "fixed" } }
      local caller = input()
      local res = assert(pipeline():generate(caller))
      local r = assert_unspoiled(res, caller, 2)
      local rm = cjson.decode(r.repair_metrics)
      assert.same({ { slug = "spoiler", message = "needs a fix", penalty = 50 } }, rm.repair_log[1].issues)
      assert.same({ "spoiler" }, rm.repair_types)
    end)

    it("a template whose system() and user() rewrite ctx and the parts changes nothing stored", function()
      tmp.write(dir .. "/templates/launch.lua", SPOIL .. [[
        return { version = "1", voice_signature = "You are {{business.name}}.", task = "Announce {{facts.product}}.",
          system = function(ctx, parts)
            spoil(ctx)
            parts.task, parts.knowledge[1], parts.facts.product = "forged", "forged", "Forged"
            return parts.voice_signature
          end,
          user = function(ctx, parts)
            local s = parts.task .. " " .. parts.knowledge[1] .. " " .. parts.facts.product .. " " .. ctx.business.name
            spoil(ctx)
            return s
          end }]])
      local caller = input()
      local res = assert(pipeline():generate(caller))
      local r = assert_unspoiled(res, caller, 1)
      assert.same({ "You are Acme.", "Announce Anvil. Acme makes anvils. Anvil Acme" },
        { r.final_system_prompt, r.final_user_prompt })
    end)

    it("a policy that rewrites the issues and ctx changes nothing stored", function()
      tmp.write(dir .. "/rules/short.lua", [[return { slug = "too_short", check = function(d)
        if #d < 6 then return { message = "longer please", penalty = 40 } end end }]])
      tmp.write(dir .. "/rules/policy.lua", SPOIL .. [[
        local function forge(issues)
          for _, i in ipairs(issues) do i.slug, i.message, i.penalty = "forged", "forged", 0 end
          issues[#issues + 1] = { slug = "extra", message = "extra", penalty = 0 }
        end
        return { budget = 1,
          should_repair = function(issues, score, draft, ctx) forge(issues) spoil(ctx) return score < 100 end,
          feedback = function(draft, issues, ctx) forge(issues) spoil(ctx) return "make it longer" end }]])
      srv:queue{ { content = "hi" }, { content = "hello there" } }
      local caller = input()
      local res = assert(pipeline():generate(caller))
      local r = assert_unspoiled(res, caller, 2)
      local rm = cjson.decode(r.repair_metrics)
      assert.same({ { slug = "too_short", message = "longer please", penalty = 40 } }, rm.repair_log[1].issues)
      assert.same({ { "too_short" }, 60, 100, "make it longer" },
        { rm.repair_types, rm.initial_validation_score, rm.final_validation_score, rm.repair_log[1].feedback })
    end)
  end)

  describe("a rule penalty", function()
    for _, case in ipairs({ { "math.huge", "math.huge" }, { "1e308", "1e308" }, { "NaN", "0/0" },
                            { "a negative one", "-5" }, { "101", "101" } }) do
      it("of " .. case[1] .. " is a rule_error that fails the draft, and the billed generation is stored", function()
        tmp.write(dir .. "/rules/huge.lua", "return function() return { message = 'bad', penalty = "
          .. case[2] .. " } end")
        srv:queue{ { content = "draft", usage = { prompt_tokens = 11, completion_tokens = 5, total_tokens = 16 } } }
        local p = pipeline()
        local res, err, code, id = p:generate(input())
        assert.is_nil(res)
        assert.equal("REPAIR_EXHAUSTED", code)
        assert.matches("rule_error (huge: penalty must be a number from 0 to 100)", err, 1, true)
        local r = stored(id)
        local tm, rm = cjson.decode(r.token_metrics), cjson.decode(r.repair_metrics)
        assert.same({ "failed", 11, 5, 16 }, { r.status, tm.prompt_tokens, tm.completion_tokens, r.total_tokens })
        assert.same({ 90, 90, 0, "policy_declined" },
          { rm.initial_validation_score, rm.final_validation_score, rm.repair_count, rm.stop_reason })
        assert.same({ "huge", "bad_result", 1 },
          { rm.script_errors[1].slug, rm.script_errors[1].kind, rm.script_errors[1].draft })
        assert.equal("SCRIPT: penalty must be a number from 0 to 100", p:script_errors()[dir .. "/rules/huge.lua"])
      end)
    end
  end)
end)
