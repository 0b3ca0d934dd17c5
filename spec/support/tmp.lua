-- spec.support.tmp — temporary files and directories for specs.
local M = {}

-- M.dir() -> a fresh directory path; M.rm(path) removes it recursively.
function M.dir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p '" .. p .. "'"))
  return p
end

function M.rm(path)
  if path and path:match("^/tmp/") then os.execute("rm -rf '" .. path .. "'") end
end

-- M.write(path, text): writes a file, making sure its version (mtime:inode)
-- changes even within one clock tick: write a new file and rename it over.
function M.write(path, text)
  local tmp = path .. ".tmp"
  local f = assert(io.open(tmp, "wb"))
  f:write(text)
  f:close()
  assert(os.rename(tmp, path))
end

function M.read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

return M
