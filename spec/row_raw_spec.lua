-- persist_generation reads the row table raw: no metamethod runs inside the C
-- row builder, so a proxy table can neither hand it a string that is freed
-- before the INSERT binds it nor raise while its JSON buffers are allocated.
local genaudit = require("genaudit")

describe("persist_generation()", function()
  local store

  local function base()
    return {
      org_id = 1, user_id = 2, platform = "x", template_id = "t",
      final_system_prompt = "s", final_user_prompt = "u",
      token_usage = { prompt_tokens = 1, completion_tokens = 1 },
      performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
    }
  end

  before_each(function() store = assert(genaudit.open("sqlite::memory:")) end)
  after_each(function() store:close() end)

  it("does not see fields served by __index, and writes nothing", function()
    local row = base()
    local fresh = row.final_user_prompt
    row.final_user_prompt = nil
    setmetatable(row, { __index = function(_, k)
      if k == "final_user_prompt" then return fresh .. ("U"):rep(100) .. math.random() end
    end })
    assert.same({ nil, "INVALID: final_user_prompt is required", "INVALID" },
      { store:persist_generation(row) })
    assert.equal(0, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
  end)

  it("never calls a metamethod that raises inside a nested metric table", function()
    local row = base()
    row.repair_info = setmetatable({}, { __index = function() error("boom") end })
    for _ = 1, 100 do assert(store:persist_generation(row)) end
    assert.equal(100, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
  end)

  it("binds query parameters raw as well", function()
    local params = setmetatable({}, { __index = function() error("boom") end })
    assert.same({ nil, "BIND: parameter :x has no value", "BIND" },
      { store:query("SELECT :x AS v", params) })
  end)
end)
