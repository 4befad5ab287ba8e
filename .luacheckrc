-- luacheck settings: the SDK must run on Lua 5.1/LuaJIT and 5.4 alike.
std = "min"
max_line_length = 120
files["spec"] = { std = "+busted" }
files["lua/digime/sandbox"] = { std = "lua54" }
files["bin"] = { std = "lua54" }
exclude_files = { "build/**" }
