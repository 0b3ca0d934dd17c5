local genaudit = require("genaudit")

describe("genaudit.store", function()
  describe("each()", function()
    local store

    before_each(function()
      store = assert(genaudit.open("sqlite::memory:"))
      local p = genaudit.persister(store)
      for i = 1, 5 do
        assert(p:persist_generation{
          org_id = i, user_id = 1, platform = "x", template_id = "t" .. i,
          final_system_prompt = "s", final_user_prompt = "u",
          token_usage = { prompt_tokens = i, completion_tokens = 0 },
          performance = { total_latency_ms = 1, provider_latency_ms = 1 }, repair_info = {},
        })
      end
    end)
    after_each(function() store:close() end)

    it("passes every row to the function and returns the count", function()
      local seen = {}
      local n = assert(store:each("SELECT template_id, total_tokens FROM generation_snapshots ORDER BY id", {},
        function(row) seen[#seen + 1] = row.template_id .. "=" .. row.total_tokens end))
      assert.equal(5, n)
      assert.same({ "t1=1", "t2=2", "t3=3", "t4=4", "t5=5" }, seen)
    end)

    it("stops when the function returns false", function()
      local n = assert(store:each("SELECT id FROM generation_snapshots WHERE total_tokens > ?", { 1 },
        function() return false end))
      assert.equal(1, n)
    end)

    it("lets the function query the same store", function()
      local sql = "SELECT count(*) AS n FROM generation_snapshots"
      local counts = {}
      assert(store:each(sql, {}, function() counts[#counts + 1] = store:query(sql)[1].n end))
      assert.same({ 5 }, counts)
    end)

    it("re-raises an error from the function and leaves the store usable", function()
      assert.has_error(function()
        store:each("SELECT id FROM generation_snapshots", {}, function() error("stop here", 0) end)
      end, "stop here")
      assert.equal(5, store:query("SELECT count(*) AS n FROM generation_snapshots")[1].n)
    end)

    it("refuses a statement that writes", function()
      assert.same({ nil, "READONLY: query() runs one read-only statement", "READONLY" },
        { store:each("DELETE FROM generation_snapshots", {}, function() end) })
    end)

    it("raises when fn is not a function", function()
      assert.has_error(function() store:each("SELECT 1", {}, nil) end,
        "bad argument #3 to 'each' (function expected, got nil)")
    end)
  end)
end)
