-- genaudit.schema — the stored columns of generation_snapshots, written once
-- for the Lua layer (copy, report, replay, the CLI). The generated analytics
-- columns (estimated_cost, model_identifier, ...) are not listed: the stores
-- compute them from the JSON documents.
local M = {}

-- The stored columns, in the order the CLI and copy read them.
M.COLUMNS = { "id", "created_at", "org_id", "user_id", "platform", "template_id", "template_version",
              "status", "content", "error", "final_system_prompt", "final_user_prompt", "replay_of",
              "token_metrics", "performance_metrics", "repair_metrics", "request_params", "drafts" }

-- The JSON document columns -> the persist_generation field that fills each.
M.DOCUMENTS = { token_metrics = "token_usage", performance_metrics = "performance",
                repair_metrics = "repair_info", request_params = "request_params", drafts = "drafts" }

-- The seal of a row (migration 0008; README, "Tamper evidence"): written by
-- the store at insert, never by a caller (a copy is sealed again by its
-- destination).
M.SEAL_COLUMNS = { "final_system_prompt_sha256", "final_user_prompt_sha256", "content_sha256", "drafts_sha256",
                   "chain_id", "chain_seq", "prev_hash", "record_hash", "purged_at", "purged_by" }

-- The text columns: every column that is not a JSON document (persisted
-- under its own name).
M.TEXT_COLUMNS = {}
for _, c in ipairs(M.COLUMNS) do
  if not M.DOCUMENTS[c] then M.TEXT_COLUMNS[#M.TEXT_COLUMNS + 1] = c end
end

return M
