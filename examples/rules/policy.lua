-- Repair policy: which issues trigger a repair, what the model is told, and
-- how many repairs one generation may use.
return {
  budget = 2,
  min_score = 100, -- accept only a draft with no issues
  feedback = function(_, issues)
    local lines = { "Please revise your post. Fix these problems and keep everything else:" }
    for _, issue in ipairs(issues) do
      lines[#lines + 1] = "- " .. issue.message
    end
    return table.concat(lines, "\n")
  end,
}
