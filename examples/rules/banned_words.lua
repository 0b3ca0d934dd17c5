-- Rule: hype words the brand never uses. Several issues may come back at once.
local BANNED = { "synergy", "revolutionary", "game%-changer", "disrupt" }

return {
  slug = "banned_word",
  check = function(draft)
    local issues = {}
    local lower = draft:lower()
    for _, w in ipairs(BANNED) do
      if lower:find(w) then
        issues[#issues + 1] = { message = ("Do not use the word '%s'."):format(w:gsub("%%", "")), penalty = 10 }
      end
    end
    return issues
  end,
}
