-- luacheck: std min everywhere; busted globals in specs; ngx_lua in the OpenResty glue.
std = "min"
max_line_length = 120
files["spec/"] = { std = "min+busted" }
files["examples/openresty/"] = { std = "min+ngx_lua" }
exclude_files = { "build/" }
files["bench/openresty_bare.lua"] = { std = "min+ngx_lua" }
