-- spec/stream_review_spec.lua
-- Owns: the specs from the hostile review of streaming (issue 15): hosts
-- whose on_data / on_chunk reenter, raise or yield, and the event shapes of
-- real OpenAI-compatible and Anthropic providers that the first specs did
-- not send (a repeated tool-call name, tool calls without index, `event:
-- error` on the OpenAI wire, cumulative usage on every chunk, Anthropic
-- thinking blocks), each through the real libcurl client and the local
-- provider's raw sse_body replay.
-- luacheck: max line length 140
local genaudit = require("genaudit")
local core = require("genaudit.core")
local provider_server = require("spec.support.provider")

local KEY = "sk-review-spec-0123456789abcdef"

describe("streaming, hostile review", function()
  local srv

  setup(function() srv = provider_server.start{ api_key = KEY } end)
  teardown(function() srv:stop() end)
  before_each(function() srv:reset() end)

  -- A raw streamed request through core.http_client to the local provider.
  local function stream_request(http, on_data)
    return http:request{
      url = srv.url .. "/v1/chat/completions",
      headers = { Authorization = "Bearer " .. KEY, ["Content-Type"] = "application/json" },
      body = '{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}',
      retries = 0, on_data = on_data,
    }
  end

  describe("core.http_client on_data", function()
    it("refuses a request on the same client from inside on_data, and the stream goes on", function()
      srv:queue{ { content = "one two three four five six", chunk_sizes = 7 }, { content = "inner" } }
      local http = core.http_client{}
      local pieces, inner_ok, inner_err = {}, nil, nil
      local res = assert(stream_request(http, function(b)
        pieces[#pieces + 1] = b
        if #pieces == 2 then inner_ok, inner_err = pcall(stream_request, http, function() return true end) end
        return true
      end))
      assert.is_false(inner_ok)
      assert.matches("attempt to use an http_client inside its own running request %(on_data%)", inner_err)
      assert.equal(200, res.status)
      assert.equal("", res.body) -- every byte went to on_data, none to the buffer
      assert.equal(res.stream_bytes, #table.concat(pieces))
      assert.equal(res.reads, #pieces)
      assert.matches("data: %[DONE%]\n\n$", table.concat(pieces))
      assert.equal(1, #srv:requests()) -- the inner request never went out
      assert.equal(200, assert(stream_request(http, function() return true end)).status) -- still usable
      http:close()
    end)

    it("refuses to close the client from inside on_data (it would free the running transfer)", function()
      srv:queue{ { content = "one two three four five six", chunk_sizes = 7 } }
      local http = core.http_client{}
      local n, ok, err = 0, nil, nil
      local res = assert(stream_request(http, function()
        n = n + 1
        if n == 1 then ok, err = pcall(http.close, http) end
        return true
      end))
      assert.is_false(ok)
      assert.matches("attempt to close an http_client inside its own running request %(on_data%)", err)
      assert.equal(200, res.status)
      assert.is_true(n > 1)
      assert.matches("genaudit.http_client %(0x", tostring(http))
      assert.is_true(http:close())
      assert.equal("genaudit.http_client (closed)", tostring(http))
    end)
  end)
end)
