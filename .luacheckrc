-- luacheck settings: the SDK must run on Lua 5.1/LuaJIT and 5.4 alike.
std = "min"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["lua/digime/sandbox"] = { std = "lua54" }
files["bin"] = { std = "lua54" }
exclude_files = { "build/**" }
-- The nginx-only modules run in OpenResty's world (the ngx global).
files["lua/digime/transport/ngx.lua"] = { std = "min+ngx_lua" }
files["lua/digime/ngx_scheduler.lua"] = { std = "min+ngx_lua" }
files["lua/digime/ngx_shared.lua"] = { std = "min+ngx_lua" }
files["examples/openresty"] = { std = "min+ngx_lua" }
files["spec/support/ngx_app.lua"] = { std = "min+ngx_lua" }
