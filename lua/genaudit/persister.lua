-- genaudit.persister — the seed's SnapshotPersister: maps one generation's
-- final prompts and metric objects to a generation_snapshots row.
local M = {}

local Persister = {}
Persister.__index = Persister

-- persister:persist_generation{ org_id, user_id, platform, template_id,
--   template_version, final_system_prompt, final_user_prompt, token_usage,
--   performance, repair_info, content, status, error, request_params,
--   replay_of } -> snapshot id (26-char ULID) | nil, err, code.
-- Nothing is written unless every field is valid.
function Persister:persist_generation(row)
  if type(row) ~= "table" then
    error("bad argument #1 to 'persist_generation' (table expected, got " .. type(row) .. ")", 2)
  end
  return self.store:persist_generation(row)
end

function M.new(store)
  if type(store) ~= "table" or type(store.persist_generation) ~= "function" then
    error("bad argument #1 to 'persister' (store expected, got " .. type(store) .. ")", 2)
  end
  return setmetatable({ store = store }, Persister)
end

return M
