# genaudit — build, test, lint, demo. Every variable can be overridden:
#   make LUA=luajit, make CFLAGS="-O0 -g", make PREFIX=/opt/genaudit install
LUA            ?= lua5.4
LUAJIT         ?= luajit
PKG_CONFIG     ?= pkg-config
CC             ?= cc
CFLAGS         ?= -O2 -g
WARN           ?= -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu99
PREFIX         ?= /usr/local
LUA_VERSION    ?= 5.4
LUA_CMODULE_DIR?= $(PREFIX)/lib/x86_64-linux-gnu/lua/$(LUA_VERSION)
LUA_MODULE_DIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
BUSTED         ?= /usr/bin/busted
LUACHECK       ?= luacheck

LUA54_INCDIR   ?= $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null)
LUAJIT_INCDIR  ?= $(shell $(PKG_CONFIG) --cflags luajit 2>/dev/null)
DEP_CFLAGS     ?= $(shell $(PKG_CONFIG) --cflags sqlite3 libcurl libpq 2>/dev/null)
DEP_LIBS       ?= $(shell $(PKG_CONFIG) --libs sqlite3 libcurl libpq 2>/dev/null) -lm -pthread

SRCS    := $(wildcard csrc/*.c)
HDRS    := $(wildcard csrc/*.h)
SO_54   := build/lua54/genaudit/core.so
SO_JIT  := build/luajit/genaudit/core.so
MODFLAGS = -shared -fPIC -fvisibility=hidden

.PHONY: all deps test lint demo bench install clean rock

all: $(SO_54) $(SO_JIT)

$(SO_54): $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(MODFLAGS) $(LUA54_INCDIR) $(DEP_CFLAGS) -o $@ $(SRCS) $(DEP_LIBS)

$(SO_JIT): $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(MODFLAGS) $(LUAJIT_INCDIR) $(DEP_CFLAGS) -o $@ $(SRCS) $(DEP_LIBS)

deps:
	@sh tools/deps.sh

# The whole busted suite under Lua 5.4 and LuaJIT; one closing line for CI.
test: deps
	@$(MAKE) --no-print-directory all
	@sh tools/run-tests.sh

lint: deps
	$(LUACHECK) $(wildcard lua spec bin tools examples bench)
	@$(MAKE) --no-print-directory -B all >/dev/null && echo "C: -Wall -Wextra -Werror clean"

install: all
	install -d $(DESTDIR)$(LUA_CMODULE_DIR)/genaudit $(DESTDIR)$(LUA_MODULE_DIR)/genaudit
	install -m 0755 $(SO_54) $(DESTDIR)$(LUA_CMODULE_DIR)/genaudit/core.so
	install -m 0644 lua/genaudit/*.lua $(DESTDIR)$(LUA_MODULE_DIR)/genaudit/
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 bin/genaudit $(DESTDIR)$(PREFIX)/bin/genaudit
	install -d $(DESTDIR)$(LUA_MODULE_DIR)/genaudit/migrations/sqlite \
	  $(DESTDIR)$(LUA_MODULE_DIR)/genaudit/migrations/postgresql
	install -m 0644 migrations/sqlite/*.sql $(DESTDIR)$(LUA_MODULE_DIR)/genaudit/migrations/sqlite/
	install -m 0644 migrations/postgresql/*.sql $(DESTDIR)$(LUA_MODULE_DIR)/genaudit/migrations/postgresql/

clean:
	rm -rf build

# Builds and installs the rock into a throwaway tree (checks the rockspec).
ROCKTREE ?= build/rocktree
rock: deps
	luarocks --lua-version 5.4 make --deps-mode=none --tree $(ROCKTREE) rockspec/genaudit-scm-1.rockspec \
	  CURL_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir libcurl) \
	  SQLITE_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir sqlite3) \
	  PQ_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir libpq)

# The main job: the example pipeline into ./genaudit.db, then the reports.
demo: deps
	@$(MAKE) --no-print-directory all
	LUA_PATH="./lua/?.lua;./lua/?/init.lua;./?.lua;;" LUA_CPATH="./build/lua54/?.so;;" $(LUA) examples/demo.lua genaudit.db
	@echo; echo "== genaudit report cost --by template   (the Financial Test, per template)"
	@$(LUA) bin/genaudit --db genaudit.db report cost --by template
	@echo; echo "== genaudit report repairs --top 3 --since 7d   (the Stability Test)"
	@$(LUA) bin/genaudit --db genaudit.db report repairs --top 3 --since 7d

# Benchmarks (bench/, figures in bench/RESULTS.md): the C baselines built
# against the system SQLite, then every benchmark at full size (bench/run.sh;
# BENCH_SIZE=small for a quick run).
BENCH_TOOLS := build/bench/raw_insert build/bench/gen_rows
build/bench/%: bench/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(shell $(PKG_CONFIG) --cflags sqlite3) -o $@ $< $(shell $(PKG_CONFIG) --libs sqlite3) -lm

bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_TOOLS)
	@LUA=$(LUA) LUAJIT=$(LUAJIT) sh bench/run.sh

# ---- reliability: sanitizers and fuzzing (tools/check.sh, tools/fuzz.sh) ----
# The C core under AddressSanitizer + UBSan, one build per ABI, never installed.
# -z nodelete keeps the module mapped after lua_close, so leak reports name
# genaudit's own functions.
SAN_CC         ?= $(CC)
SAN_FLAGS      ?= -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
SO_ASAN54      := build/asan54/genaudit/core.so
SO_ASANJIT     := build/asanjit/genaudit/core.so
FUZZ_SECONDS   ?= 30
.PHONY: check fuzz

$(SO_ASAN54): $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_FLAGS) $(WARN) $(MODFLAGS) -Wl,-z,nodelete $(LUA54_INCDIR) $(DEP_CFLAGS) -o $@ $(SRCS) $(DEP_LIBS)

$(SO_ASANJIT): $(SRCS) $(HDRS)
	@mkdir -p $(@D)
	$(SAN_CC) $(SAN_FLAGS) $(WARN) $(MODFLAGS) -Wl,-z,nodelete $(LUAJIT_INCDIR) $(DEP_CFLAGS) -o $@ $(SRCS) $(DEP_LIBS)

# The spec suite over the sanitizer builds (5.4 and LuaJIT), the fuzz corpora
# replayed, and valgrind memcheck over the C-heavy specs; one closing line.
FUZZ_ENV = LUA54_INCDIR="$(LUA54_INCDIR)" DEP_CFLAGS="$(DEP_CFLAGS)" DEP_LIBS="$(DEP_LIBS)"
check: deps
	@$(MAKE) --no-print-directory all $(SO_ASAN54) $(SO_ASANJIT)
	@CC="$(SAN_CC)" $(FUZZ_ENV) sh tools/check.sh

# libFuzzer harnesses in fuzz/, each run for FUZZ_SECONDS over fuzz/corpus/<target>.
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) $(FUZZ_ENV) sh tools/fuzz.sh run
