local providers = require("genaudit.providers")
local client_mod = require("genaudit.client")
local provider_server = require("spec.support.provider")
local cjson = require("cjson")

describe("genaudit.providers", function()
  local function openai_body(u, model)
    return cjson.encode{ model = model or "m", choices = { { message = { role = "assistant", content = "hi" },
      finish_reason = "stop" } }, usage = u }
  end

  describe("usage normalization", function()
    local p = providers.openai{ model = "gpt-4o-mini", api_key = "sk-x" }

    it("keeps OpenAI's prompt_tokens (cached included) and reads cached and reasoning details", function()
      local r = assert(p:parse_response(200, openai_body{ prompt_tokens = 1000, completion_tokens = 300,
        total_tokens = 1300, prompt_tokens_details = { cached_tokens = 600 },
        completion_tokens_details = { reasoning_tokens = 200 } }))
      assert.same({ prompt_tokens = 1000, completion_tokens = 300, total_tokens = 1300, cached_prompt_tokens = 600,
        cache_write_tokens = 0, reasoning_tokens = 200 }, r.usage)
    end)

    it("reads OpenRouter's cache_write_tokens and billed cost", function()
      local r = assert(p:parse_response(200, openai_body{ prompt_tokens = 500, completion_tokens = 50,
        total_tokens = 550, cost = 0.00042,
        prompt_tokens_details = { cached_tokens = 100, cache_write_tokens = 200 } }))
      assert.same({ 100, 200, 0.00042 },
        { r.usage.cached_prompt_tokens, r.usage.cache_write_tokens, r.provider_cost })
    end)

    it("counts Gemini's thinking tokens that only show in total_tokens as reasoning output", function()
      local r = assert(p:parse_response(200, openai_body{ prompt_tokens = 100, completion_tokens = 50,
        total_tokens = 400 }))
      assert.same({ 100, 300, 400, 250 }, { r.usage.prompt_tokens, r.usage.completion_tokens,
        r.usage.total_tokens, r.usage.reasoning_tokens })
    end)

    it("reads Ollama's plain usage", function()
      local r = assert(p:parse_response(200, openai_body({ prompt_tokens = 12, completion_tokens = 8 }, "llama3:8b")))
      assert.same({ 12, 8, 20, "llama3:8b" }, { r.usage.prompt_tokens, r.usage.completion_tokens,
        r.usage.total_tokens, r.model_identifier })
    end)

    it("adds Anthropic's cache reads and writes to the input tokens", function()
      local a = providers.anthropic{ model = "claude-3-5-haiku", api_key = "k" }
      local r = assert(a:parse_response(200, cjson.encode{ model = "claude-3-5-haiku-20241022",
        content = { { type = "text", text = "a" }, { type = "text", text = "b" } },
        usage = { input_tokens = 10, output_tokens = 5, cache_read_input_tokens = 20,
                  cache_creation_input_tokens = 30 } }))
      assert.same({ prompt_tokens = 60, completion_tokens = 5, total_tokens = 65, cached_prompt_tokens = 20,
        cache_write_tokens = 30, reasoning_tokens = 0 }, r.usage)
      assert.equal("ab", r.content)
    end)

    it("rejects negative or fractional token counts", function()
      local _, err, code = p:parse_response(200, openai_body{ prompt_tokens = -1, completion_tokens = 2 })
      assert.same({ "BAD_RESPONSE: usage.prompt_tokens/completion_tokens missing or not non-negative integers",
        "BAD_RESPONSE" }, { err, code })
      _, err = p:parse_response(200, openai_body{ prompt_tokens = 1.5, completion_tokens = 2 })
      assert.truthy(err:find("^BAD_RESPONSE: usage"))
    end)

    it("rejects a total_tokens below prompt + completion", function()
      local _, err = p:parse_response(200, openai_body{ prompt_tokens = 10, completion_tokens = 5, total_tokens = 14 })
      assert.equal("BAD_RESPONSE: usage.total_tokens is less than prompt_tokens + completion_tokens", err)
    end)

    it("rejects more cached tokens than prompt tokens", function()
      local _, err = p:parse_response(200, openai_body{ prompt_tokens = 10, completion_tokens = 2,
        prompt_tokens_details = { cached_tokens = 11 } })
      assert.equal("BAD_RESPONSE: usage reports more cached tokens than prompt tokens", err)
    end)
  end)

  describe("a body without usage (issue 18.3)", function()
    local p = providers.openai{ model = "gpt-4o-mini", api_key = "sk-x" }
    local a = providers.anthropic{ model = "claude-3-5-haiku", api_key = "k" }

    it("is an answer whose usage is missing when the usage key is absent or null (OpenAI-compatible)", function()
      for _, body in ipairs({
        '{"id":"c1","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}',
        '{"id":"c1","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":null}',
        -- Groq's place for it, empty too
        '{"id":"c1","model":"m","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":null,'
          .. '"x_groq":{"id":"req_1"}}',
      }) do
        local r = assert(p:parse_response(200, body))
        assert.same({ "hi", "m", "stop", "c1", true }, { r.content, r.model_identifier, r.finish_reason,
          r.response_id, r.usage_missing }, body)
        assert.is_nil(r.usage)
        assert.is_nil(r.provider_cost)
      end
      -- tool calls and refusals without usage parse the same
      local r = assert(p:parse_response(200, cjson.encode{ choices = { { message = { content = cjson.null,
        tool_calls = { { id = "call_1", type = "function", ["function"] = { name = "f", arguments = "{}" } } } } } } }))
      assert.same({ "", "f", "{}", true }, { r.content, r.tool_calls[1].name, r.tool_calls[1].arguments,
        r.usage_missing })
    end)

    it("reads x_groq.usage when the top-level usage is null", function()
      local r = assert(p:parse_response(200, '{"model":"m","choices":[{"message":{"content":"hi"}}],"usage":null,'
        .. '"x_groq":{"usage":{"prompt_tokens":7,"completion_tokens":3}}}'))
      assert.same({ 7, 3, "x_groq.usage" }, { r.usage.prompt_tokens, r.usage.completion_tokens,
        r.usage_notes.usage_from })
      assert.is_nil(r.usage_missing)
    end)

    it("is an answer whose usage is missing when the usage key is absent or null (Anthropic)", function()
      for _, u in ipairs({ "", ',"usage":null' }) do
        local r = assert(a:parse_response(200, '{"id":"msg_1","model":"claude-3-5-haiku-20241022",'
          .. '"content":[{"type":"text","text":"a"},{"type":"tool_use","id":"t1","name":"f","input":{"x": 1}}],'
          .. '"stop_reason":"tool_use"' .. u .. '}'))
        assert.same({ "a", '{"x": 1}', "tool_use", true }, { r.content, r.tool_calls[1].arguments, r.finish_reason,
          r.usage_missing })
        assert.is_nil(r.usage)
      end
    end)

    it("a usage that is there but not a usage is still BAD_RESPONSE, with the answer kept", function()
      for _, u in ipairs({ '"none"', "0", "[]", "{}", '{"prompt_tokens":null,"completion_tokens":null}',
                           '{"prompt_tokens":5,"completion_tokens":2,"total_tokens":6}' }) do
        local _, err, code, answer = p:parse_response(200, '{"model":"m","choices":[{"message":{"content":"hi"}}],'
          .. '"usage":' .. u .. '}')
        assert.equal("BAD_RESPONSE", code, u)
        assert.matches("^BAD_RESPONSE: usage", err)
        assert.same({ "hi", "m" }, { answer.content, answer.model_identifier })
      end
      for _, u in ipairs({ '"none"', "{}", '{"input_tokens":3}', '{"input_tokens":3,"output_tokens":-1}' }) do
        local _, err, code = a:parse_response(200, '{"content":[{"type":"text","text":"a"}],"usage":' .. u .. '}')
        assert.equal("BAD_RESPONSE", code, u)
        assert.matches("^BAD_RESPONSE: usage", err)
      end
    end)
  end)

  describe("errors", function()
    it("scrubs the API key from a provider's error message", function()
      local p = providers.openai{ model = "m", api_key = "sk-abc.123+x" }
      local _, err, code = p:parse_response(401, cjson.encode{ error = { message = "Incorrect API key sk-abc.123+x" } })
      assert.same({ "PROVIDER_REJECTED: provider answered HTTP 401: Incorrect API key [REDACTED]",
        "PROVIDER_REJECTED" }, { err, code })
    end)

    it("leaves no part of the key in an error even when the body is cut short across it", function()
      local key = "sk-proj-ABCDEFGHIJKLMNOP"
      local p = providers.openai{ model = "m", api_key = key }
      for pad = 100, 130 do
        local _, err = p:parse_response(200, ("x"):rep(pad) .. key)
        assert.falsy(err:find("sk-proj", 1, true), err)
        _, err = p:parse_response(401, ("y"):rep(pad + 70) .. key)
        assert.falsy(err:find("sk-proj", 1, true), err)
      end
    end)

    it("scrubs the key in upper case, hex, percent-, base64- and base64url-encoded, and after Bearer", function()
      local key = "sk-Live>>?~~/key+0123456789"
      local p = providers.openai{ model = "m", api_key = key }
      local function b64(s) -- reference encoder, independent of the one under test
        local A = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        local bits = s:gsub(".", function(c)
          local b, r = c:byte(), ""
          for i = 7, 0, -1 do r = r .. (math.floor(b / 2 ^ i) % 2) end
          return r
        end) .. "0000"
        local out = bits:gsub("%d%d%d%d%d%d", function(x) return A:sub(tonumber(x, 2) + 1, tonumber(x, 2) + 1) end)
        return out:sub(1, math.ceil(#s * 4 / 3)) .. ({ "", "==", "=" })[#s % 3 + 1]
      end
      local echoes = {
        key:upper(), key:lower(), "Bearer " .. key,
        (key:gsub(".", function(c) return ("%02X"):format(c:byte()) end)),
        (key:gsub(".", function(c) return ("%%%02x"):format(c:byte()) end)),
        (key:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)),
        "Bearer " .. b64(key), b64("user:" .. key), b64("u:" .. key), b64(":" .. key),
        (b64(key):gsub("[+/=]", { ["+"] = "-", ["/"] = "_", ["="] = "" })),
      }
      for _, e in ipairs(echoes) do
        local res = assert(p:parse_response(200, cjson.encode{ model = e, choices = { { message = { content = "<"
          .. e .. ">" } } }, usage = { prompt_tokens = 1, completion_tokens = 1 } }))
        local _, err = p:parse_response(401, cjson.encode{ error = { message = "bad key " .. e } })
        for _, text in ipairs({ res.model_identifier, res.content, err }) do
          assert.truthy(text:find("[REDACTED]", 1, true), e .. " -> " .. text)
          assert.falsy(text:lower():find(key:lower(), 1, true), text)
          assert.falsy(text:find(b64(key):sub(2, -4), 1, true), text)
        end
      end
    end)

    it("maps 429 to RATE_LIMITED and 5xx to PROVIDER_ERROR", function()
      local p = providers.openai{ model = "m" }
      assert.equal("RATE_LIMITED", select(3, p:parse_response(429, "{}")))
      assert.equal("PROVIDER_ERROR", select(3, p:parse_response(503, "oops")))
    end)

    it("raises when the model is missing", function()
      assert.has_error(function() providers.openai{ api_key = "k" } end,
        "bad argument #1 to 'openai' (model: string expected, got nil)")
    end)
  end)

  describe("requests", function()
    it("builds an OpenAI chat request with the key only in the Authorization header", function()
      local p = providers.openai{ model = "gpt-4o-mini", api_key = "sk-k", base_url = "http://h:1/" }
      local req = p:request({ { role = "system", content = "s" }, { role = "user", content = "u" } },
        { temperature = 0.2 })
      assert.equal("http://h:1/v1/chat/completions", req.url)
      assert.equal("Bearer sk-k", req.headers.Authorization)
      local body = cjson.decode(req.body)
      assert.same({ "gpt-4o-mini", 0.2, "s" }, { body.model, body.temperature, body.messages[1].content })
      assert.falsy(tostring(p):find("sk-k", 1, true))
      for _, v in pairs(p) do assert.are_not.equal("sk-k", v) end
    end)

    it("moves the system prompt to Anthropic's top-level system field", function()
      local p = providers.anthropic{ model = "claude", api_key = "k" }
      local body = cjson.decode(p:request({ { role = "system", content = "s" }, { role = "user", content = "u" } },
        { max_tokens = 99, seed = 1 }).body)
      assert.same({ "s", 1, "user", 99 }, { body.system, #body.messages, body.messages[1].role, body.max_tokens })
      assert.is_nil(body.seed)
    end)

    it("encodes numbers exactly: a 2^53-1 seed and a 17-digit temperature", function()
      local p = providers.openai{ model = "m" }
      local body = p:request({ { role = "user", content = "u" } },
        { seed = 9007199254740991, temperature = 0.123456789012345678 }).body
      assert.equal('{"messages":[{"content":"u","role":"user"}],"model":"m","seed":9007199254740991,'
        .. '"temperature":0.12345678901234568}', body)
    end)

    it("refuses a body one byte over max_request_bytes with TOO_LARGE, and sends one exactly at it", function()
      local msgs = { { role = "user", content = string.rep("x", 100) .. "\n\"" } } -- escapes grow the body
      local size = #providers.openai{ model = "m" }:request(msgs).body
      local at = providers.openai{ model = "m", max_request_bytes = size }
      assert.equal(size, #assert(at:request(msgs)).body)
      local over = providers.openai{ model = "m", max_request_bytes = size - 1 }
      assert.same({ nil, ("TOO_LARGE: the request body exceeds max_request_bytes=%d"):format(size - 1), "TOO_LARGE" },
        { over:request(msgs) })
    end)

    it("refuses text over max_request_bytes before encoding anything", function()
      local p = providers.anthropic{ model = "m", max_request_bytes = 1000 }
      assert.same({ nil, "TOO_LARGE: the request text exceeds max_request_bytes=1000", "TOO_LARGE" },
        { p:request({ { role = "system", content = string.rep("s", 600) },
                      { role = "user", content = string.rep("u", 401) } }) })
    end)

    it("returns INVALID for parameters JSON cannot hold", function()
      local p = providers.openai{ model = "m" }
      local r, err, code = p:request({ { role = "user", content = "u" } }, { temperature = 0 / 0 })
      assert.same({ nil, "INVALID" }, { r, code })
      assert.matches("^INVALID: the request cannot be sent as JSON: ", err)
    end)

    it("raises on a max_request_bytes that is not a positive integer", function()
      assert.has_error(function() providers.openai{ model = "m", max_request_bytes = 0 } end,
        "bad argument #1 to 'openai' (max_request_bytes: positive integer expected)")
    end)

    it("asks OpenRouter for the billed cost", function()
      local p = providers.openrouter{ model = "openai/gpt-4o-mini", api_key = "k" }
      local req = p:request({ { role = "user", content = "u" } })
      assert.equal("https://openrouter.ai/api/v1/chat/completions", req.url)
      assert.is_true(cjson.decode(req.body).usage.include)
    end)
  end)
  describe("base URLs", function()
    local M = { { role = "user", content = "u" } }
    local function url(kind, opts)
      opts.model = opts.model or "m"
      return providers[kind](opts):request(M).url
    end
    local CASES = {
      { "openai", nil, "https://api.openai.com/v1/chat/completions" },
      { "openai", "https://api.openai.com", "https://api.openai.com/v1/chat/completions" },
      { "openai", "https://api.openai.com/", "https://api.openai.com/v1/chat/completions" },
      { "openai", "https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions" },
      { "openai", "https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions" },
      { "openai", "https://api.openai.com/v1/chat/completions", "https://api.openai.com/v1/chat/completions" },
      { "openrouter", nil, "https://openrouter.ai/api/v1/chat/completions" },
      { "openrouter", "https://openrouter.ai/api", "https://openrouter.ai/api/v1/chat/completions" },
      { "openrouter", "https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1/chat/completions" },
      { "openrouter", "https://openrouter.ai/api/v1/", "https://openrouter.ai/api/v1/chat/completions" },
      { "vllm", nil, "http://127.0.0.1:8000/v1/chat/completions" },
      { "vllm", "http://gpu-box:8000", "http://gpu-box:8000/v1/chat/completions" },
      { "vllm", "http://gpu-box:8000/v1", "http://gpu-box:8000/v1/chat/completions" },
      { "ollama", nil, "http://127.0.0.1:11434/v1/chat/completions" },
      { "ollama", "http://localhost:11434", "http://localhost:11434/v1/chat/completions" },
      { "ollama", "http://localhost:11434/v1/", "http://localhost:11434/v1/chat/completions" },
      { "anthropic", nil, "https://api.anthropic.com/v1/messages" },
      { "anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1/messages" },
      { "anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages" },
      { "anthropic", "https://api.anthropic.com/v1/", "https://api.anthropic.com/v1/messages" },
      { "gemini", nil, "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions" },
      { "gemini", "https://generativelanguage.googleapis.com/v1beta/openai/",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions" },
      { "gemini", "https://generativelanguage.googleapis.com",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions" },
      { "gemini", "https://generativelanguage.googleapis.com/v1beta",
        "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions" },
    }
    for _, c in ipairs(CASES) do
      it(c[1] .. " with base_url " .. tostring(c[2]) .. " posts to " .. c[3], function()
        assert.equal(c[3], url(c[1], { base_url = c[2] }))
      end)
    end

    it("builds an Azure deployment URL from resource, deployment and api_version", function()
      local p = providers.azure{ resource = "acme-eu", deployment = "gpt4o-prod", api_version = "2024-06-01",
        api_key = "az-key" }
      local req = p:request(M)
      assert.equal("https://acme-eu.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        .. "?api-version=2024-06-01", req.url)
      assert.same({ "az-key", nil }, { req.headers["api-key"], req.headers.Authorization })
      assert.equal("gpt4o-prod", cjson.decode(req.body).model)
      assert.equal("gpt4o-prod", p.model)
    end)

    it("accepts Azure's base URL forms", function()
      local D = "https://r.openai.azure.com/openai/deployments/d/chat/completions?api-version="
      assert.equal(D .. "2024-10-21", url("azure", { base_url = "https://r.openai.azure.com", deployment = "d" }))
      assert.equal(D .. "2024-10-21", url("azure", { base_url = "https://r.openai.azure.com/openai/deployments/d/" }))
      assert.equal(D .. "2025-01-01-preview", url("azure", { base_url = D .. "2025-01-01-preview" }))
      assert.equal(D .. "2024-06-01", url("azure", { base_url = "https://r.openai.azure.com/openai/deployments/d",
        api_version = "2024-06-01" }))
      assert.equal("https://r.openai.azure.com/openai/v1/chat/completions",
        url("azure", { base_url = "https://r.openai.azure.com/openai/v1/", model = "gpt-4o" }))
      assert.equal("d", providers.azure{ base_url = D .. "2024-10-21" }.model)
    end)

    it("raises for an Azure provider without a deployment or with a name that is not one", function()
      assert.has_error(function() providers.azure{ resource = "r" } end,
        "bad argument #1 to 'azure' (deployment or model required (or a base_url naming the deployment))")
      assert.equal("https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        url("azure", { resource = "r", model = "gpt-4o" }))
      assert.has_error(function() providers.azure{ resource = "r/../x", deployment = "d" } end,
        "bad argument #1 to 'azure' (resource: a resource or deployment name expected)")
      assert.has_error(function() providers.azure{ deployment = "d" } end,
        "bad argument #1 to 'azure' (resource or base_url required)")
    end)

    it("raises for a base URL that is not http(s), never naming the key", function()
      local ok, err = pcall(providers.openai, { model = "m", api_key = "sk-secret-1", base_url = "api.openai.com" })
      assert.is_false(ok)
      assert.truthy(tostring(err):find("base_url: http(s) URL", 1, true))
      assert.falsy(tostring(err):find("sk-secret-1", 1, true))
    end)
  end)

  describe("finish reason and response id", function()
    local p = providers.openai{ model = "gpt-4o-mini", api_key = "sk-fin-0123456789abcdefSECRET" }
    local a = providers.anthropic{ model = "claude-3-5-haiku", api_key = "sk-ant-fin-0123456789abcdef" }
    local usage = { prompt_tokens = 1, completion_tokens = 1 }

    it("reads OpenAI-compatible choices[1].finish_reason and id as sent", function()
      local r = assert(p:parse_response(200, cjson.encode{ id = "chatcmpl-AbC123", model = "m",
        choices = { { message = { content = "hi" }, finish_reason = "length" } }, usage = usage }))
      assert.same({ "length", "chatcmpl-AbC123" }, { r.finish_reason, r.response_id })
      r = assert(p:parse_response(200, cjson.encode{ id = "x", choices = { { message = { content = "hi" },
        finish_reason = "tool_calls" } }, usage = usage }))
      assert.equal("tool_calls", r.finish_reason)
    end)

    it("reads Anthropic's stop_reason and id as sent", function()
      local r = assert(a:parse_response(200, cjson.encode{ id = "msg_01XFDUDYJgAACzvnptvVoYEL", model = "c",
        content = { { type = "text", text = "a" } }, stop_reason = "max_tokens",
        usage = { input_tokens = 1, output_tokens = 1 } }))
      assert.same({ "max_tokens", "msg_01XFDUDYJgAACzvnptvVoYEL" }, { r.finish_reason, r.response_id })
    end)

    it("gives nil when the body has none, or not a string: never a guess", function()
      local r = assert(p:parse_response(200, cjson.encode{ choices = { { message = { content = "hi" } } },
        usage = usage }))
      assert.same({ nil, nil }, { r.finish_reason, r.response_id })
      r = assert(p:parse_response(200, cjson.encode{ id = 42, choices = { { message = { content = "hi" },
        finish_reason = cjson.null } }, usage = usage }))
      assert.same({ nil, nil }, { r.finish_reason, r.response_id })
      r = assert(a:parse_response(200, cjson.encode{ content = { { type = "text", text = "a" } },
        stop_reason = { "end_turn" }, usage = { input_tokens = 1, output_tokens = 1 } }))
      assert.same({ nil, nil }, { r.finish_reason, r.response_id })
    end)

    it("keeps them in the answer of a body with a malformed usage or without content", function()
      local _, _, code, answer = p:parse_response(200, cjson.encode{ id = "chatcmpl-nu", model = "m",
        choices = { { message = { content = "words" }, finish_reason = "stop" } }, usage = { prompt_tokens = 1 } })
      assert.equal("BAD_RESPONSE", code)
      assert.same({ content = "words", model_identifier = "m", finish_reason = "stop", response_id = "chatcmpl-nu" },
        answer)
      _, _, code, answer = p:parse_response(200, cjson.encode{ id = "chatcmpl-cf",
        choices = { { message = { content = cjson.null }, finish_reason = "content_filter" } }, usage = usage })
      assert.same({ "BAD_RESPONSE", { finish_reason = "content_filter", response_id = "chatcmpl-cf" } },
        { code, answer })
      _, _, code, answer = a:parse_response(200, cjson.encode{ id = "msg_01e", content = {},
        stop_reason = "refusal", usage = { input_tokens = 1, output_tokens = 0 } })
      assert.same({ "BAD_RESPONSE", { finish_reason = "refusal", response_id = "msg_01e" } }, { code, answer })
    end)

    it("scrubs the key out of them", function()
      local key = "sk-fin-0123456789abcdefSECRET"
      local r = assert(p:parse_response(200, cjson.encode{ id = "id-" .. key, choices = { { message = {
        content = "hi" }, finish_reason = key } }, usage = usage }))
      assert.same({ "[REDACTED]", "id-[REDACTED]" }, { r.finish_reason, r.response_id })
    end)
  end)

  describe("API keys a provider needs", function()
    it("says which providers need a key and whether this one has one, never the key", function()
      for _, kind in ipairs({ "openai", "openrouter", "gemini", "anthropic" }) do
        local with = providers[kind]{ model = "m", api_key = "sk-k" }
        local without = providers[kind]{ model = "m" }
        assert.same({ true, true, true, false }, { with.needs_key, with.has_key, without.needs_key, without.has_key },
          kind)
      end
      assert.same({ true, false }, { providers.azure{ resource = "r", deployment = "d" }.needs_key,
        providers.azure{ resource = "r", deployment = "d", api_key = "" }.has_key })
      for _, kind in ipairs({ "ollama", "vllm" }) do
        local keyless = providers[kind]{ model = "m" }
        assert.same({ false, false }, { keyless.needs_key, keyless.has_key })
      end
    end)
  end)

  describe("wire against the local provider", function()
    local KEY = "sk-wire-0123456789-SECRET"
    local srv

    setup(function() srv = provider_server.start{ api_key = KEY, quiet = true } end)
    teardown(function() srv:stop() end)
    before_each(function() srv:reset() end)

    -- Sends one completion through the real libcurl transport; returns the
    -- text (or nil, err) and the local provider's log entry for it.
    local function send(p)
      local c = client_mod.new{ provider = p, retries = 0 }
      local text, err = c:complete(c:run(), "initial", { { role = "system", content = "s" },
        { role = "user", content = "write" } }, { temperature = 0 })
      c:close()
      return text, err, srv:requests()[1]
    end

    for _, c in ipairs({
      { "openai", "", "/v1/chat/completions" }, { "openai", "/v1", "/v1/chat/completions" },
      { "openai", "/v1/", "/v1/chat/completions" }, { "openrouter", "/v1", "/v1/chat/completions" },
      { "vllm", "/v1", "/v1/chat/completions" }, { "ollama", "", "/v1/chat/completions" },
      { "gemini", "", "/v1beta/openai/chat/completions" },
      { "gemini", "/v1beta/openai/", "/v1beta/openai/chat/completions" },
    }) do
      it(c[1] .. " at base " .. (c[2] == "" and "(host only)" or c[2]) .. " reaches " .. c[3]
         .. " with a bearer key", function()
        local text, err, entry = send(providers[c[1]]{ base_url = srv.url .. c[2], api_key = KEY, model = "m1" })
        assert.is_string(text, err)
        assert.same({ c[3], "", "valid", "Bearer [redacted]" },
          { entry.path, entry.query, entry.auth, entry.headers.authorization })
        assert.equal("m1", cjson.decode(entry.body).model)
      end)
    end

    it("anthropic at base /v1 reaches /v1/messages with x-api-key", function()
      local text, err, entry = send(providers.anthropic{ base_url = srv.url .. "/v1", api_key = KEY, model = "c" })
      assert.is_string(text, err)
      assert.same({ "/v1/messages", "valid", "2023-06-01" }, { entry.path, entry.auth,
        entry.headers["anthropic-version"] })
    end)

    it("azure sends the deployment path, api-version and the api-key header, and no Authorization", function()
      local text, err, entry = send(providers.azure{ base_url = srv.url, deployment = "gpt4o-prod",
        api_version = "2024-10-21", api_key = KEY })
      assert.is_string(text, err)
      assert.same({ "/openai/deployments/gpt4o-prod/chat/completions", "api-version=2024-10-21", "valid",
        "[redacted]", nil }, { entry.path, entry.query, entry.auth, entry.headers["api-key"],
        entry.headers.authorization })
      assert.equal("gpt4o-prod", cjson.decode(entry.body).model)
    end)

    it("azure with a full deployment URL keeps its api-version", function()
      local text, err, entry = send(providers.azure{ api_key = KEY,
        base_url = srv.url .. "/openai/deployments/d2/chat/completions?api-version=2025-01-01-preview" })
      assert.is_string(text, err)
      assert.same({ "/openai/deployments/d2/chat/completions", "api-version=2025-01-01-preview" },
        { entry.path, entry.query })
    end)

    it("azure with a wrong key fails without the key in the error", function()
      local text, err = send(providers.azure{ base_url = srv.url, deployment = "d", api_key = "az-wrong-SECRET-77" })
      assert.is_nil(text)
      assert.matches("^PROVIDER_REJECTED: provider answered HTTP 401", err)
      assert.falsy(err:find("az-wrong-SECRET-77", 1, true))
    end)
  end)
end)
