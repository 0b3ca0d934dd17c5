-- bench/stream.lua — issue 15: what genaudit adds per streamed chunk.
--
-- One OpenAI-format event stream of realistic chunks (a role delta, then
-- text deltas of 1 to 4 words as gpt-4o-mini sends them, finish_reason, the
-- include_usage chunk, [DONE]) is read from memory in pieces of PIECE bytes
-- (about one event per read, as a network read of a streaming provider
-- gives) by:
--   genaudit  genaudit.stream: core.sse_parser (C), one JSON decode per
--             event, the delta merged, the host's on_chunk called (a no-op
--             here), then the unstreamed body assembled and parsed by the
--             provider (usage, model, finish reason) — all of a call's
--             stream work except the socket reads;
--   raw C     build/bench/raw_sse: a C loop finding each event's end and
--             its delta text, no JSON, no Lua (the floor).
-- Printed: µs per chunk of each, genaudit's overhead per chunk over the
-- floor, and the ratio. Both run in this invocation on the same bytes.
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local stream = require("genaudit.stream")
local providers = require("genaudit.providers")

local CHUNKS = common.size{ small = 300, full = 2000 } -- text deltas per stream
local REPEAT = common.size{ small = 5, full = 40 }
local PIECE = 160

local WORDS = { "ship", " faster", " with", " less", " stress,", " our", " team", " built", " this", " for",
                " builders", " who", " care", " about", " quality.", " \226\156\168", " every", " release" }

local function stream_text()
  local head = '{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk",'
    .. '"created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306",'
  local out = { "data: " .. head .. '"choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    .. '"refusal":null},"logprobs":null,"finish_reason":null}]}\n\n' }
  local content, r = {}, 7
  for i = 1, CHUNKS do
    r = (r * 48271) % 2147483647 -- exact in doubles too (LuaJIT)
    local piece = {}
    for k = 1, 1 + r % 4 do piece[k] = WORDS[(i * 7 + k * 3 + r) % #WORDS + 1] end
    local text = table.concat(piece)
    content[#content + 1] = text
    out[#out + 1] = "data: " .. head .. '"choices":[{"index":0,"delta":{"content":"' .. text
      .. '"},"logprobs":null,"finish_reason":null}]}\n\n'
  end
  out[#out + 1] = "data: " .. head .. '"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
  out[#out + 1] = "data: " .. head .. '"choices":[],"usage":{"prompt_tokens":412,"completion_tokens":'
    .. string.format("%d", CHUNKS) .. ',"total_tokens":' .. string.format("%d", CHUNKS + 412)
    .. ',"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":'
    .. '{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}\n\n'
  out[#out + 1] = "data: [DONE]\n\n"
  return table.concat(out), table.concat(content)
end

local text, content = stream_text()
local pieces = {}
for i = 1, #text, PIECE do pieces[#pieces + 1] = text:sub(i, i + PIECE - 1) end
local provider = providers.openai{ model = "gpt-4o-mini", api_key = "sk-bench-0123456789abcdef" }

local function once()
  local n = 0
  local acc = stream.new{ wire = "openai", kind = "initial", on_chunk = function() n = n + 1 end }
  for _, p in ipairs(pieces) do assert(acc:feed(p)) end
  assert(acc:complete())
  local res = assert(provider:parse_response(200, (acc:body())))
  acc:close()
  return n, res
end

-- a check that both read the same stream
local n, res = once()
assert(n == CHUNKS and res.content == content and res.usage.completion_tokens == CHUNKS, "genaudit misread the stream")

local dir = common.tmpdir("stream")
local path = dir .. "/stream.txt"
local f = assert(io.open(path, "wb"))
f:write(text)
f:close()
local raw = common.kv(common.run(table.concat({ common.tool("raw_sse"), common.quote(path),
  string.format("%d", PIECE), string.format("%d", REPEAT) }, " ")))
assert(tonumber(raw.deltas) == CHUNKS, "raw_sse misread the stream")

common.title(("streamed chunks: %d text deltas per stream (%d bytes, %d reads of %d bytes), %d streams")
  :format(CHUNKS, #text, #pieces, PIECE, REPEAT))
collectgarbage()
local t0 = common.now_us()
for _ = 1, REPEAT do once() end
local ga_us = (common.now_us() - t0) / (REPEAT * CHUNKS)
local raw_us = tonumber(raw.ns) / 1000 / (REPEAT * CHUNKS)
common.bench("stream_chunk", "us_per_chunk", {
  { "genaudit_us", ga_us }, { "raw_c_us", raw_us }, { "overhead_us", ga_us - raw_us },
  { "ratio", ga_us / raw_us }, { "target", "info" }, { "chunks", CHUNKS * REPEAT },
  { "baseline", "raw_c_sse_loop:" .. common.num(raw_us) },
})
common.say("genaudit reads a chunk in %s us (raw C floor %s us): %s us per chunk over the floor", common.num(ga_us),
  common.num(raw_us), common.num(ga_us - raw_us))
common.rm(dir)
