rockspec_format = "3.0"
package = "digime-sandbox"
version = "dev-1"
source = {
   url = "git+https://example.invalid/lua-digime.git",
}
description = {
   summary = "A local digi.me API for offline development and tests of digi.me clients",
   detailed = [[
The same paths, JWT checks, token formats, error bodies and consent redirects as the digi.me
API, on loopback, with fault injection and a control endpoint. Runs on Lua 5.4 with lua-http.
Compressed library files are made at startup with the gzip and brotli command-line tools.
]],
   license = "MIT",
}
dependencies = {
   "lua >= 5.4, < 5.5",
   "lua-digime",          -- the C core (digime.core) and the demo contract's key handling
   "http >= 0.3",         -- lua-http (Debian: lua-http, which lives in the 5.1 tree)
   "cqueues",
   "luaossl",             -- certificates for --tls; AES for the library files
   "lua-cjson >= 2.1",
}
build = {
   type = "builtin",
   modules = {
      ["digime.sandbox.api"] = "lua/digime/sandbox/api.lua",
      ["digime.sandbox.body"] = "lua/digime/sandbox/body.lua",
      ["digime.sandbox.compress"] = "lua/digime/sandbox/compress.lua",
      ["digime.sandbox.config"] = "lua/digime/sandbox/config.lua",
      ["digime.sandbox.conns"] = "lua/digime/sandbox/conns.lua",
      ["digime.sandbox.control"] = "lua/digime/sandbox/control.lua",
      ["digime.sandbox.demo_contract"] = "lua/digime/sandbox/demo_contract.lua",
      ["digime.sandbox.discovery"] = "lua/digime/sandbox/discovery.lua",
      ["digime.sandbox.discovery_data"] = "lua/digime/sandbox/discovery_data.lua",
      ["digime.sandbox.file_format"] = "lua/digime/sandbox/file_format.lua",
      ["digime.sandbox.library"] = "lua/digime/sandbox/library.lua",
      ["digime.sandbox.library_accounts"] = "lua/digime/sandbox/library_accounts.lua",
      ["digime.sandbox.library_sources"] = "lua/digime/sandbox/library_sources.lua",
      ["digime.sandbox.library_view"] = "lua/digime/sandbox/library_view.lua",
      ["digime.sandbox.manage"] = "lua/digime/sandbox/manage.lua",
      ["digime.sandbox.netctl"] = "lua/digime/sandbox/netctl.lua",
      ["digime.sandbox.onboard"] = "lua/digime/sandbox/onboard.lua",
      ["digime.sandbox.relay"] = "lua/digime/sandbox/relay.lua",
      ["digime.sandbox.routes"] = "lua/digime/sandbox/routes.lua",
      ["digime.sandbox.server"] = "lua/digime/sandbox/server.lua",
      ["digime.sandbox.state"] = "lua/digime/sandbox/state.lua",
      ["digime.sandbox.storage"] = "lua/digime/sandbox/storage.lua",
      ["digime.sandbox.tls"] = "lua/digime/sandbox/tls.lua",
      ["digime.sandbox.tls_peek"] = "lua/digime/sandbox/tls_peek.lua",
      ["digime.sandbox.tokens"] = "lua/digime/sandbox/tokens.lua",
      ["digime.sandbox.util"] = "lua/digime/sandbox/util.lua",
      ["digime.sandbox.wire"] = "lua/digime/sandbox/wire.lua",
      ["digime.sandbox.write"] = "lua/digime/sandbox/write.lua",
   },
   install = {
      bin = { ["digime-sandbox"] = "bin/digime-sandbox" },
   },
}
