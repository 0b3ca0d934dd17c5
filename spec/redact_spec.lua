-- spec/redact_spec.lua
-- Owns: redaction before storage (lua/genaudit/redact.lua, README
-- "Redaction before storage"), through the real pipeline and local provider,
-- on both stores: what is stored (and hashed) is the redacted text, the
-- caller still gets the model's text, the row names the script and its
-- digest (source pinned in scripts), edits reload, failures fail closed.

local genaudit = require("genaudit")
local json = require("genaudit.json")
local core = require("genaudit.core")
local tmp = require("spec.support.tmp")
local pg = require("spec.support.pg")
local provider_server = require("spec.support.provider")

local KEY = "sk-redact-spec"

local MASK_EMAIL = [[return function(text, field, ctx)
  return (text:gsub("[%w.]+@[%w.]+", "[email]"))
end]]

local function suite(name, open, describe_fn)
  describe_fn(name, function()
    local srv, dir, store

    local function pipeline()
      return genaudit.pipeline{
        store = store, templates = dir .. "/templates", rules = dir .. "/rules",
        provider = genaudit.providers.openai{ base_url = srv.url, api_key = KEY, model = "gpt-4o-mini" },
        backoff_ms = 10, script_timeout_ms = 50,
      }
    end
    local function ctx()
      return { org_id = "o", user_id = "u", platform = "linkedin", template_id = "launch",
               business = { name = "Acme" }, facts = { who = "ann@example.com" } }
    end
    local function row(id) return assert(store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id }))[1] end

    setup(function() srv = provider_server.start{ api_key = KEY } end)
    teardown(function()
      srv:stop()
      pg.drop_schemas()
    end)
    before_each(function()
      srv:reset()
      dir = tmp.dir()
      os.execute("mkdir -p " .. dir .. "/templates " .. dir .. "/rules")
      tmp.write(dir .. "/templates/launch.lua", [[return { version = "1",
        voice_signature = "You are {{business.name}}.", task = "Write to {{facts.who}}." }]])
      store = open(dir)
    end)
    after_each(function()
      store:close()
      tmp.rm(dir)
    end)

    it("stores and hashes the redacted prompts, drafts and content; the caller gets the model's text", function()
      tmp.write(dir .. "/rules/redact.lua", MASK_EMAIL)
      srv:queue{ { content = "Hi bob@example.org, welcome" } }
      local res = assert(pipeline():generate(ctx()))
      assert.equal("Hi bob@example.org, welcome", res.content)
      local r = row(res.snapshot_id)
      assert.truthy(r.final_user_prompt:find("Write to [email]", 1, true), r.final_user_prompt)
      assert.is_nil(r.final_user_prompt:find("@", 1, true)) -- the facts section too
      assert.truthy(res.prompt.user:find("ann@example.com", 1, true)) -- what the model was sent
      assert.equal("Hi [email], welcome", r.content)
      assert.same({ "Hi [email], welcome" }, json.decode(r.drafts))
      assert.equal(core.sha256("Hi [email], welcome"), r.content_sha256)
      local red = json.decode(r.repair_metrics).redaction
      assert.same({ dir .. "/rules/redact.lua", core.sha256(MASK_EMAIL) }, { red.script, red.digest })
      assert.same({ "final_user_prompt", "content", "drafts[1]" }, red.changed)
      assert.is_nil(red.errors)
      assert.equal(MASK_EMAIL, assert(store:get_script(red.digest)).source)
      -- redact.lua is not a rule
      assert.same({}, json.decode(r.repair_metrics).rules)
      assert.is_true(assert(store:verify()).ok)
    end)

    it("picks up an edit of the script on the next generation", function()
      tmp.write(dir .. "/rules/redact.lua", MASK_EMAIL)
      local p = pipeline()
      srv:queue{ { content = "one ann@example.com" }, { content = "two ann@example.com" } }
      local r1 = row(assert(p:generate(ctx())).snapshot_id)
      tmp.write(dir .. "/rules/redact.lua", [[return { redact = function(t) return (t:gsub("%w+@%S+", "***")) end }]])
      local r2 = row(assert(p:generate(ctx())).snapshot_id)
      assert.same({ "one [email]", "two ***" }, { r1.content, r2.content })
      assert.are_not.equal(json.decode(r1.repair_metrics).redaction.digest,
        json.decode(r2.repair_metrics).redaction.digest)
    end)

    it("fails closed: a script that raises or loops stores no unredacted text and says why", function()
      tmp.write(dir .. "/rules/redact.lua", [[return function(t, field)
        if field == "content" then error("boom", 0) end
        if field == "drafts" then while true do end end
        return t
      end]])
      srv:queue{ { content = "secret ann@example.com" } }
      local res = assert(pipeline():generate(ctx()))
      local r = row(res.snapshot_id)
      assert.equal(genaudit.redact.FAILED, r.content)
      assert.same({ genaudit.redact.FAILED }, json.decode(r.drafts))
      assert.is_nil(r.content:find("ann@", 1, true))
      local red = json.decode(r.repair_metrics).redaction
      assert.equal(2, #red.errors)
      assert.truthy(red.errors[1]:find("^content: boom"))
      assert.truthy(red.errors[2]:find("^drafts%[1%]: "))
      assert.is_true(assert(store:verify()).ok)
    end)

    it("without the script, nothing is redacted and the row has no redaction field", function()
      srv:queue{ { content = "Hi bob@example.org" } }
      local r = row(assert(pipeline():generate(ctx())).snapshot_id)
      assert.equal("Hi bob@example.org", r.content)
      assert.is_nil(json.decode(r.repair_metrics).redaction)
    end)
  end)
end

require("spec.support.stores").both("redaction", suite)
