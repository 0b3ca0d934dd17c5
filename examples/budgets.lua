-- examples/budgets.lua — spending limits for the example pipeline (README
-- "Token counts, estimates and budgets"): pass it as the pipeline option
-- budgets = "examples/budgets.lua". Edited without a restart: the next
-- generation sees the change. Amounts are USD, as decimal strings.
return {
  -- the demo's first business (org 100) may spend 5 USD a day: over it,
  -- generations are refused
  -- (stored as failed with BUDGET_EXCEEDED, nothing sent to the provider)
  { org = 100, period = "day", limit_usd = "5.00", action = "refuse", name = "demo daily" },
  -- one template's monthly spend, across every org: over it, a warning
  { template = "launch-post", period = "month", limit_usd = "100", action = "warn" },
}
