rockspec_format = "3.0"
package = "lua-digime"
version = "dev-1"
source = {
   url = "git+https://example.invalid/lua-digime.git",
}
description = {
   summary = "Lua SDK for the digi.me personal-data API (C core: OpenSSL, libcurl)",
   detailed = [[
Authorize users of a digi.me contract (PKCE, PS512 request JWTs), exchange and refresh their
tokens, and reach the digi.me API from Lua 5.1-5.4, LuaJIT and OpenResty.
]],
   license = "MIT",
   labels = { "digime", "sdk", "oauth", "jwt" },
}
dependencies = {
   "lua >= 5.1, < 5.5",
   -- lua-cjson is needed at run time; install it from your distribution (Debian: lua-cjson)
   -- or with `luarocks install lua-cjson`. Offline builds use --deps-mode=none.
   "lua-cjson >= 2.1",
}
external_dependencies = {
   OPENSSL = { header = "openssl/evp.h", library = "crypto" },
   CURL = { library = "curl" },
   ZLIB = { header = "zlib.h", library = "z" },
   BROTLIDEC = { header = "brotli/decode.h", library = "brotlidec" },
}
build = {
   type = "builtin",
   modules = {
      ["digime.core"] = {
         sources = {
            "csrc/core.c", "csrc/core_http.c", "csrc/http.c", "csrc/keys.c", "csrc/jws.c",
            "csrc/random.c", "csrc/cipher.c", "csrc/core_cipher.c", "csrc/inflate.c",
            "csrc/core_bytes.c", "csrc/core_list.c", "csrc/listscan.c",
         },
         defines = { "_POSIX_C_SOURCE=200809L" },
         libraries = { "crypto", "curl", "z", "brotlidec" },
         incdirs = { "$(OPENSSL_INCDIR)", "$(ZLIB_INCDIR)", "$(BROTLIDEC_INCDIR)",
                     "/usr/include/x86_64-linux-gnu" },
         libdirs = { "$(OPENSSL_LIBDIR)", "$(CURL_LIBDIR)", "$(ZLIB_LIBDIR)", "$(BROTLIDEC_LIBDIR)" },
      },
      ["digime"] = "lua/digime/init.lua",
      ["digime.auth"] = "lua/digime/auth.lua",
      ["digime.config"] = "lua/digime/config.lua",
      ["digime.errors"] = "lua/digime/errors.lua",
      ["digime.file_list"] = "lua/digime/file_list.lua",
      ["digime.json"] = "lua/digime/json.lua",
      ["digime.jwt"] = "lua/digime/jwt.lua",
      ["digime.jwks"] = "lua/digime/jwks.lua",
      ["digime.consent"] = "lua/digime/consent.lua",
      ["digime.signed_call"] = "lua/digime/signed_call.lua",
      ["digime.sink"] = "lua/digime/sink.lua",
      ["digime.body_filter"] = "lua/digime/body_filter.lua",
      ["digime.file_body"] = "lua/digime/file_body.lua",
      ["digime.source"] = "lua/digime/source.lua",
      ["digime.manage"] = "lua/digime/manage.lua",
      ["digime.metadata"] = "lua/digime/metadata.lua",
      ["digime.onboard"] = "lua/digime/onboard.lua",
      ["digime.query"] = "lua/digime/query.lua",
      ["digime.read"] = "lua/digime/read.lua",
      ["digime.request"] = "lua/digime/request.lua",
      ["digime.scheduler"] = "lua/digime/scheduler.lua",
      ["digime.storage"] = "lua/digime/storage.lua",
      ["digime.sync"] = "lua/digime/sync.lua",
      ["digime.tokens"] = "lua/digime/tokens.lua",
      ["digime.urls"] = "lua/digime/urls.lua",
      ["digime.validate"] = "lua/digime/validate.lua",
      ["digime.write"] = "lua/digime/write.lua",
      ["digime.transport.curl"] = "lua/digime/transport/curl.lua",
      ["digime.transport.curl_engine"] = "lua/digime/transport/curl_engine.lua",
      ["digime.transport.ngx"] = "lua/digime/transport/ngx.lua",
      ["digime.ngx_scheduler"] = "lua/digime/ngx_scheduler.lua",
      ["digime.store"] = "lua/digime/store.lua",
      ["digime.store.shared"] = "lua/digime/store/shared.lua",
      ["digime.store.flight"] = "lua/digime/store/flight.lua",
      ["digime.store.memory"] = "lua/digime/store/memory.lua",
      ["digime.store.ngx_shared"] = "lua/digime/store/ngx_shared.lua",
      ["digime.store.redis"] = "lua/digime/store/redis.lua",
      ["digime.store.resp"] = "lua/digime/store/resp.lua",
      ["digime.store.resty_redis"] = "lua/digime/store/resty_redis.lua",
   },
   copy_directories = { "doc" },
}
