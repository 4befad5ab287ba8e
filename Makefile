# lua-digime: build, test, demo, bench.
# `make` builds the C core for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT from one set of sources.

CC      ?= cc
OPT     ?= -O2 -g
WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS_COMMON := $(OPT) $(WARN) -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC -fvisibility=hidden
DEP_CFLAGS := $(shell pkg-config --cflags libcrypto libcurl zlib libbrotlidec 2>/dev/null)
DEP_LIBS   := $(shell pkg-config --libs libcrypto libcurl zlib libbrotlidec 2>/dev/null || echo -lcrypto -lcurl -lz -lbrotlidec)

LUA51_INC  := $(shell pkg-config --cflags lua5.1 2>/dev/null || echo -I/usr/include/lua5.1)
LUA52_INC  := $(shell pkg-config --cflags lua5.2 2>/dev/null || echo -I/usr/include/lua5.2)
LUA53_INC  := $(shell pkg-config --cflags lua5.3 2>/dev/null || echo -I/usr/include/lua5.3)
LUA54_INC  := $(shell pkg-config --cflags lua5.4 2>/dev/null || echo -I/usr/include/lua5.4)
LUAJIT_INC := $(shell pkg-config --cflags luajit 2>/dev/null || echo -I/usr/include/luajit-2.1)

SOURCES := $(sort $(wildcard csrc/*.c))
HEADERS := $(wildcard csrc/*.h)

# Lua paths that load this checkout (lua-http's pure-Lua parts live in the 5.1 tree on Debian).
ROOT      := $(CURDIR)
LPATH     := $(ROOT)/lua/?.lua;$(ROOT)/lua/?/init.lua
LPATH_54  := $(LPATH);/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua;;
LPATH_53  := $(LPATH);/usr/share/lua/5.3/?.lua;/usr/share/lua/5.3/?/init.lua;;
LPATH_52  := $(LPATH);/usr/share/lua/5.2/?.lua;/usr/share/lua/5.2/?/init.lua;;
LPATH_JIT := $(LPATH);;
# `make -s env` sets up Lua 5.4, 5.3, 5.2 and LuaJIT; LUA=5.1 gives Lua 5.1 the LUA_PATH/LUA_CPATH
# pair instead of LuaJIT (the two read the same variables and need different cores).
LUA       ?= luajit

.PHONY: all deps deps-demo env openresty check-warnings test test-lua51 test-lua52 test-lua53 test-asan \
        test-valgrind demo bench lint clean docs

all: build/lua5.4/digime/core.so build/luajit/digime/core.so build/lua5.1/digime/core.so \
     build/lua5.2/digime/core.so build/lua5.3/digime/core.so

# A core for nginx only: no libcurl (inside nginx the SDK uses cosockets), and OpenSSL and
# LuaJIT from where the nginx in use has them, so that nginx and the module share one OpenSSL.
# For OpenResty (README "Building for OpenResty"):
#   make openresty OPENSSL_PREFIX=/usr/local/openresty/openssl3 \
#        LUAJIT_INC=-I/usr/local/openresty/luajit/include/luajit-2.1
# Defaults build against Debian's OpenSSL and LuaJIT (what Debian's nginx uses).
OPENSSL_PREFIX ?=
NGX_SOURCES := $(filter-out csrc/http.c csrc/core_http.c,$(SOURCES))
ifneq ($(OPENSSL_PREFIX),)
NGX_SSL_CFLAGS := -I$(OPENSSL_PREFIX)/include
NGX_SSL_LIBS   := -L$(OPENSSL_PREFIX)/lib -Wl,-rpath,$(OPENSSL_PREFIX)/lib -lcrypto
else
NGX_SSL_CFLAGS := $(shell pkg-config --cflags libcrypto 2>/dev/null)
NGX_SSL_LIBS   := $(shell pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)
endif
NGX_DEP_CFLAGS := $(NGX_SSL_CFLAGS) $(shell pkg-config --cflags zlib libbrotlidec 2>/dev/null)
NGX_DEP_LIBS   := $(NGX_SSL_LIBS) $(shell pkg-config --libs zlib libbrotlidec 2>/dev/null || echo -lz -lbrotlidec)

openresty: build/openresty/digime/core.so

build/openresty/digime/core.so: $(NGX_SOURCES) $(HEADERS) Makefile
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) -DDIGIME_NO_CURL $(LUAJIT_INC) $(NGX_DEP_CFLAGS) -shared -o $@ \
	  $(NGX_SOURCES) $(NGX_DEP_LIBS)

build/lua5.4/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(LUA54_INC) $(DEP_CFLAGS) -shared -o $@ $(SOURCES) $(DEP_LIBS)

build/lua5.1/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(LUA51_INC) $(DEP_CFLAGS) -shared -o $@ $(SOURCES) $(DEP_LIBS)

build/lua5.2/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(LUA52_INC) $(DEP_CFLAGS) -shared -o $@ $(SOURCES) $(DEP_LIBS)

build/lua5.3/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(LUA53_INC) $(DEP_CFLAGS) -shared -o $@ $(SOURCES) $(DEP_LIBS)

build/luajit/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_COMMON) $(LUAJIT_INC) $(DEP_CFLAGS) -shared -o $@ $(SOURCES) $(DEP_LIBS)

# Sanitizer build of the core (Lua 5.4 only: the interpreter itself is not instrumented).
build/asan/digime/core.so: $(SOURCES) $(HEADERS)
	@mkdir -p $(@D)
	gcc -O1 -g $(WARN) -std=c99 -D_POSIX_C_SOURCE=200809L -fPIC -fsanitize=address,undefined \
	  -fno-sanitize-recover=undefined -fno-omit-frame-pointer $(LUA54_INC) $(DEP_CFLAGS) \
	  -shared -o $@ $(SOURCES) $(DEP_LIBS)

# What the demo needs (build tools, Lua, the libraries, the sandbox's); `deps` adds the test
# tools (nginx, valgrind, clang, chromium, wrk, node for the browser test).
deps-demo:
	@sh scripts/deps.sh demo

deps:
	@sh scripts/deps.sh test

# Shell lines that make a Lua program in this shell load the checkout's SDK.
env:
	@echo 'export LUA_PATH_5_4="$(LPATH_54)"'
	@echo 'export LUA_CPATH_5_4="$(ROOT)/build/lua5.4/?.so;;"'
	@echo 'export LUA_PATH_5_3="$(LPATH_53)"'
	@echo 'export LUA_CPATH_5_2="$(ROOT)/build/lua5.2/?.so;;"'
	@echo 'export LUA_PATH_5_2="$(LPATH_52)"'
	@echo 'export LUA_CPATH_5_3="$(ROOT)/build/lua5.3/?.so;;"'
	@echo 'export LUA_PATH="$(LPATH_JIT)"'
	@echo 'export LUA_CPATH="$(ROOT)/build/$(if $(filter 5.1,$(LUA)),lua5.1,luajit)/?.so;;"'
	@echo 'export PATH="$(ROOT)/bin:$$PATH"'

test: deps all
	@sh scripts/run-specs.sh all

# Lua 5.1, 5.2 and 5.3: every spec but the nginx-tagged ones (see scripts/run-specs.sh).
test-lua51: deps all
	@sh scripts/run-specs.sh lua5.1

test-lua52: deps all
	@sh scripts/run-specs.sh lua5.2

test-lua53: deps all
	@sh scripts/run-specs.sh lua5.3

test-asan: deps build/asan/digime/core.so build/lua5.4/digime/core.so
	@sh scripts/run-specs.sh asan

test-valgrind: deps all
	@sh scripts/run-specs.sh valgrind

demo: deps-demo build/lua5.4/digime/core.so
	@sh scripts/demo.sh

bench: deps all
	@sh bench/run.sh

lint:
	luacheck lua spec bin examples bench

# The core must compile warning-free for both Lua flavours (a spec runs this).
check-warnings:
	@for inc in "$(LUA54_INC)" "$(LUAJIT_INC)" "$(LUA51_INC)" "$(LUA52_INC)" "$(LUA53_INC)"; do \
	  for f in $(SOURCES); do \
	    $(CC) $(CFLAGS_COMMON) -Werror $$inc $(DEP_CFLAGS) -c $$f -o /dev/null || exit 1; \
	  done; \
	done
	@$(CC) $(CFLAGS_COMMON) -Werror -DDIGIME_NO_CURL $(LUAJIT_INC) $(NGX_DEP_CFLAGS) -c csrc/core.c -o /dev/null

# The API reference of the public face (config.ld: doc/api/), the README as its index page.
docs:
	ldoc -c config.ld .
	sed -e 's#"\.\./#"./#g' build/docs/topics/README.md.html > build/docs/index.html

clean:
	rm -rf build

# ---- fuzzing: libFuzzer targets in csrc/fuzz/, built from the same csrc/*.c as the module ----
# `make fuzz` builds every target into build/fuzz/ and runs each for FUZZ_SECONDS (FUZZ_JOBS
# at a time) from its seed corpus csrc/fuzz/corpus/<target>/; new inputs, logs and crash
# artifacts go under build/fuzz/. It fails if any target crashed. `make fuzz-short`: 5 s each.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_JOBS    ?= 2
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all
FUZZ_CFLAGS  := -g -O1 -fno-omit-frame-pointer $(FUZZ_SAN) $(WARN) -std=c99 \
                -D_POSIX_C_SOURCE=200809L -DDIGIME_FUZZ $(DEP_CFLAGS)
FUZZ_TARGETS := b64url public_key private_key decryptor decryptor_real inflate_gzip \
                inflate_brotli http_headers list_scan
FUZZ_LIBSRC  := csrc/jws.c csrc/keys.c csrc/random.c csrc/cipher.c csrc/inflate.c csrc/http.c \
                csrc/listscan.c
FUZZ_OBJS    := $(FUZZ_LIBSRC:csrc/%.c=build/fuzz/obj/%.o)
FUZZ_BINS    := $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

.PHONY: fuzz fuzz-short fuzz-build
.SECONDARY: $(FUZZ_OBJS)

build/fuzz/obj/%.o: csrc/%.c $(HEADERS)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

build/fuzz/fuzz_%: csrc/fuzz/fuzz_%.c $(wildcard csrc/fuzz/*.h) $(FUZZ_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJS) $(DEP_LIBS)

fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	@sh csrc/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_JOBS) $(FUZZ_TARGETS)

fuzz-short:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=5
