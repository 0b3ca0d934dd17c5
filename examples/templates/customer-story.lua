-- Template: a short customer story; the user prompt is assembled by hand to
-- show full control over the final string.
return {
  version = "1",
  voice_signature = "You tell short customer stories: problem, what changed, the result.",
  constraints = { "At most 80 words.", "Quote the customer only with words from the facts.", "End with one hashtag." },
  task = "Tell the story of {{facts.customer}} using {{business.name}}.",
  user = function(_, parts)
    local out = { parts.task, "Facts you may use:" }
    for k, v in pairs(parts.facts) do out[#out + 1] = "* " .. k .. " = " .. tostring(v) end
    table.sort(out, function(a, b)
      local sa, sb = a:sub(1, 1) == "*", b:sub(1, 1) == "*"
      if sa ~= sb then return not sa end
      return a < b
    end)
    if parts.tone_line then out[#out + 1] = parts.tone_line end
    return table.concat(out, "\n")
  end,
}
