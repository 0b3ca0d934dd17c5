-- Replay (the seed's Auditability Test) through the real libcurl path.
local genaudit = require("genaudit")
local cjson = require("cjson")
local provider_server = require("spec.support.provider")
local replay = require("genaudit.replay")

describe("genaudit.replay", function()
  local srv, store, id

  local function provider()
    return genaudit.providers.openai{ base_url = srv.url, api_key = "sk-replay", model = "gpt-4o-mini" }
  end

  setup(function() srv = provider_server.start{ api_key = "sk-replay" } end)
  teardown(function() srv:stop() end)

  before_each(function()
    srv:reset()
    store = assert(genaudit.open("sqlite::memory:"))
    id = assert(genaudit.persister(store):persist_generation{
      org_id = 1, user_id = 2, platform = "x", template_id = "t", template_version = "9",
      final_system_prompt = "SYSTEM\0with NUL", final_user_prompt = "USER prompt, Tone: playful",
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1, model_identifier = "gpt-4o-mini-2024-07-18" },
      repair_info = {}, content = "the quick brown fox", request_params = { temperature = 0.2, max_tokens = 50 },
    })
  end)
  after_each(function() store:close() end)

  it("re-sends the stored final prompts and request parameters", function()
    srv:queue{ { content = "the quick brown fox" } }
    assert(genaudit.replay(store, id, { provider = provider() }))
    local sent = cjson.decode(srv:requests()[1].body)
    assert.same({ "SYSTEM\0with NUL", "USER prompt, Tone: playful", 0.2, 50 },
      { sent.messages[1].content, sent.messages[2].content, sent.temperature, sent.max_tokens })
    assert.truthy(srv:requests()[1].body:find('"max_tokens":50[,}]')) -- an integer, as first sent
  end)

  it("re-sends a 2^53-1 seed and a 17-digit temperature exactly as stored", function()
    local exact = assert(genaudit.persister(store):persist_generation{
      org_id = 1, user_id = 2, platform = "x", template_id = "t", final_system_prompt = "s", final_user_prompt = "u",
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
      request_params = { seed = 9007199254740991, temperature = 0.123456789012345678 },
    })
    assert(genaudit.replay(store, exact, { provider = provider() }))
    local body = srv:requests()[1].body
    local stored = store:query("SELECT request_params FROM generation_snapshots WHERE id = ?", { exact })[1]
    assert.equal('{"seed":9007199254740991,"temperature":0.12345678901234568}', stored.request_params)
    assert.truthy(body:find('"seed":9007199254740991,', 1, true), body)
    assert.truthy(body:find('"temperature":0.12345678901234568}', 1, true), body)
  end)

  it("keeps the content of a replay answered with a malformed usage, its cost null", function()
    srv:queue{ { content = "unmetered words", usage = { prompt_tokens = 3, completion_tokens = -1 } } }
    local r, _, code, rid = genaudit.replay(store, id, { provider = provider() })
    assert.same({ nil, "BAD_RESPONSE" }, { r, code })
    local rec = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { rid })[1]
    assert.same({ "failed", "unmetered words", "gpt-4o-mini-2024-07-18" },
      { rec.status, rec.content, rec.model_identifier })
    assert.is_nil(rec.estimated_cost)
    assert.equal("no_usage", cjson.decode(rec.token_metrics).cost_source)
  end)

  it("completes a replay answered without usage: its usage counted locally, flagged estimated (issue 18.3)",
    function()
      local tokens = require("genaudit.tokens")
      srv:queue{ { content = "the quick brown fox jumps", usage = false } }
      local r = assert(genaudit.replay(store, id, { provider = provider() }))
      local rec = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r.snapshot_id })[1]
      assert.same({ "completed", "the quick brown fox jumps", id }, { rec.status, rec.content, rec.replay_of })
      local tm = cjson.decode(rec.token_metrics)
      local sent = cjson.decode(srv:requests()[1].body).messages
      local p = assert(tokens.count_messages(sent, "gpt-4o-mini"))
      local c = assert(tokens.count("the quick brown fox jumps", "gpt-4o-mini-2024-07-18"))
      assert.same({ "replay", p, c, p, "estimated", true },
        { tm.calls[1].kind, tm.calls[1].prompt_tokens, tm.calls[1].completion_tokens, tm.calls[1].local_input_tokens,
          tm.calls[1].usage_source, tm.calls[1].usage_missing })
      assert.same({ p + c, "estimated" }, { rec.total_tokens, tm.usage_source })
      -- no pricing given to the replay: the tokens are known, the cost is not
      assert.is_nil(rec.estimated_cost)
      assert.equal("unpriced", tm.cost_source)
    end)

  it("scores the new output against the stored one", function()
    srv:queue{ { content = "the quick brown fox" } }
    local r = assert(genaudit.replay(store, id, { provider = provider() }))
    assert.equal(1, r.similarity)
    assert.equal("the quick brown fox", r.content)
  end)

  it("records the replay as its own snapshot linked to the original, which stays unchanged", function()
    local before = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })[1]
    srv:queue{ { content = "a different answer" } }
    local r = assert(genaudit.replay(store, id, { provider = provider() }))
    local after = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { id })[1]
    assert.same(before, after)
    local rec = store:query("SELECT * FROM generation_snapshots WHERE id = ?", { r.snapshot_id })[1]
    assert.same({ id, "a different answer", "SYSTEM\0with NUL", "t", "9" },
      { rec.replay_of, rec.content, rec.final_system_prompt, rec.template_id, rec.template_version })
  end)

  it("records nothing with record = false", function()
    srv:queue{ { content = "x" } }
    local r = assert(genaudit.replay(store, id, { provider = provider(), record = false }))
    assert.is_nil(r.snapshot_id)
    assert.equal(1, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
  end)

  it("returns NOT_FOUND for an unknown id", function()
    assert.same({ nil, "NOT_FOUND: no snapshot with id 'nope'", "NOT_FOUND" },
      { genaudit.replay(store, "nope", { provider = provider() }) })
  end)

  it("records a failed replay and returns its error", function()
    srv:queue{ { status = 400 } }
    local r, err, code, rid = genaudit.replay(store, id, { provider = provider() })
    assert.is_nil(r)
    assert.equal("PROVIDER_REJECTED", code)
    local rec = store:query("SELECT status, error, replay_of FROM generation_snapshots WHERE id = ?", { rid })[1]
    assert.same({ "failed", err, id }, { rec.status, rec.error, rec.replay_of })
  end)

  describe("similarity()", function()
    it("is 1 for the same words, 0 for none in common", function()
      assert.same({ 1, 0 }, { replay.similarity("A b, c!", "c b a"), replay.similarity("a b", "c d") })
    end)

    it("is the cosine of the word-count vectors", function()
      -- {a=2,b=1} . {a=1,c=1} = 2; |.| = sqrt(5) * sqrt(2)
      assert.is_true(math.abs(replay.similarity("a a b", "a c") - 2 / math.sqrt(10)) < 1e-12)
    end)
  end)
end)
