# genaudit — build, test, lint, demo. Every variable can be overridden:
#   make LUA=luajit, make CFLAGS="-O0 -g", make PREFIX=/opt/genaudit install
# make install puts the 5.4 build where a stock lua5.4 looks ($(PREFIX)/lib/lua/5.4,
# $(PREFIX)/share/lua/5.4) and the LuaJIT build where luajit/OpenResty look (…/lua/5.1);
# DESTDIR is honoured; make uninstall removes the same files.
LUA            ?= lua5.4
LUAJIT         ?= luajit
PKG_CONFIG     ?= pkg-config
CC             ?= cc
CFLAGS         ?= -O2 -g
WARN           ?= -Wall -Wextra -Werror -Wno-unused-parameter -std=gnu99
PREFIX         ?= /usr/local
LUA_VERSION    ?= 5.4
LUA_CMODULE_DIR?= $(PREFIX)/lib/lua/$(LUA_VERSION)
LUA_MODULE_DIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)
LUAJIT_CMODULE_DIR ?= $(PREFIX)/lib/lua/5.1
LUAJIT_MODULE_DIR  ?= $(PREFIX)/share/lua/5.1
BINDIR         ?= $(PREFIX)/bin
MANDIR         ?= $(PREFIX)/share/man/man1
BUSTED         ?= /usr/bin/busted
LUACHECK       ?= luacheck

LUA54_INCDIR   ?= $(shell $(PKG_CONFIG) --cflags lua5.4 2>/dev/null)
LUAJIT_INCDIR  ?= $(shell $(PKG_CONFIG) --cflags luajit 2>/dev/null)
DEP_CFLAGS     ?= $(shell $(PKG_CONFIG) --cflags sqlite3 libcurl libpq libcrypto libpcre2-8 2>/dev/null)
DEP_LIBS       ?= $(shell $(PKG_CONFIG) --libs sqlite3 libcurl libpq libcrypto libpcre2-8 2>/dev/null) -lm -pthread

SRCS    := $(wildcard csrc/*.c)
HDRS    := $(wildcard csrc/*.h)
SO_54   := build/lua54/genaudit/core.so
SO_JIT  := build/luajit/genaudit/core.so
MODFLAGS = -shared -fPIC -fvisibility=hidden

.PHONY: all deps test lint demo bench install uninstall clean rock openresty-example

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
	$(LUACHECK) $(wildcard lua spec bin tools examples bench) bin/genaudit
	@$(MAKE) --no-print-directory -B all >/dev/null && echo "C: -Wall -Wextra -Werror clean"

# What install copies, per Lua tree (the same Lua files, price map and
# migrations go into the 5.4 and the 5.1/LuaJIT tree; each gets its own core.so).
LUA_FILES   := $(wildcard lua/genaudit/*.lua)
DATA_FILES  := $(wildcard lua/genaudit/data/*.json) lua/genaudit/data/LICENSE.litellm-model-prices \
               lua/genaudit/data/LICENSE.tiktoken
MIG_SQLITE  := $(wildcard migrations/sqlite/*.sql)
MIG_PG      := $(wildcard migrations/postgresql/*.sql)
MAN_PAGE    := $(wildcard man/genaudit.1)

# $(call install_tree,CMODULE_DIR,MODULE_DIR,SO)
define install_tree
	install -d $(DESTDIR)$(1)/genaudit $(DESTDIR)$(2)/genaudit/data \
	  $(DESTDIR)$(2)/genaudit/migrations/sqlite $(DESTDIR)$(2)/genaudit/migrations/postgresql
	install -m 0755 $(3) $(DESTDIR)$(1)/genaudit/core.so
	install -m 0644 $(LUA_FILES) $(DESTDIR)$(2)/genaudit/
	install -m 0644 $(DATA_FILES) $(DESTDIR)$(2)/genaudit/data/
	install -m 0644 $(MIG_SQLITE) $(DESTDIR)$(2)/genaudit/migrations/sqlite/
	install -m 0644 $(MIG_PG) $(DESTDIR)$(2)/genaudit/migrations/postgresql/
endef

# $(call uninstall_tree,CMODULE_DIR,MODULE_DIR): the files install_tree copies,
# then genaudit's own directories when empty (the lua/5.x dirs stay).
define uninstall_tree
	rm -f $(DESTDIR)$(1)/genaudit/core.so $(addprefix $(DESTDIR)$(2)/genaudit/,$(notdir $(LUA_FILES))) \
	  $(addprefix $(DESTDIR)$(2)/genaudit/data/,$(notdir $(DATA_FILES))) \
	  $(addprefix $(DESTDIR)$(2)/genaudit/migrations/sqlite/,$(notdir $(MIG_SQLITE))) \
	  $(addprefix $(DESTDIR)$(2)/genaudit/migrations/postgresql/,$(notdir $(MIG_PG)))
	-rmdir $(DESTDIR)$(1)/genaudit $(DESTDIR)$(2)/genaudit/data $(DESTDIR)$(2)/genaudit/migrations/sqlite \
	  $(DESTDIR)$(2)/genaudit/migrations/postgresql $(DESTDIR)$(2)/genaudit/migrations $(DESTDIR)$(2)/genaudit \
	  2>/dev/null || true
endef

install: all
	$(call install_tree,$(LUA_CMODULE_DIR),$(LUA_MODULE_DIR),$(SO_54))
	$(call install_tree,$(LUAJIT_CMODULE_DIR),$(LUAJIT_MODULE_DIR),$(SO_JIT))
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 bin/genaudit $(DESTDIR)$(BINDIR)/genaudit
	$(if $(MAN_PAGE),install -d $(DESTDIR)$(MANDIR) && install -m 0644 $(MAN_PAGE) $(DESTDIR)$(MANDIR)/genaudit.1)

uninstall:
	$(call uninstall_tree,$(LUA_CMODULE_DIR),$(LUA_MODULE_DIR))
	$(call uninstall_tree,$(LUAJIT_CMODULE_DIR),$(LUAJIT_MODULE_DIR))
	rm -f $(DESTDIR)$(BINDIR)/genaudit $(DESTDIR)$(MANDIR)/genaudit.1

clean:
	rm -rf build csrc/*.o

# Builds and installs the rock into a throwaway tree (checks the rockspec).
# Dependencies the interpreter already loads (Debian's lua-cjson, lua-argparse,
# lua-filesystem) are declared provided (tools/rocks-provided.lua), so luarocks
# reports only what is really missing.
ROCKTREE ?= build/rocktree
ROCK_CONFIG := build/luarocks-config-5.4.lua
rock: deps
	@mkdir -p build && $(LUA) tools/rocks-provided.lua > $(ROCK_CONFIG)
	LUAROCKS_CONFIG_5_4=$(ROCK_CONFIG) luarocks --lua-version 5.4 make --deps-mode=none --tree $(ROCKTREE) rockspec/genaudit-scm-1.rockspec \
	  CURL_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir libcurl) \
	  SQLITE_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir sqlite3) \
	  PQ_INCDIR=$(shell $(PKG_CONFIG) --variable=includedir libpq)

# The OpenResty example rendered into a runnable nginx prefix (tools/openresty-example.sh).
OPENRESTY_PREFIX ?= build/openresty-example
openresty-example: all
	@sh tools/openresty-example.sh $(OPENRESTY_PREFIX)

# The main job: the example pipeline into ./genaudit.db (appended to;
# DEMO_FRESH=1 starts a fresh one), then the reports.
DEMO_FRESH ?=
DEMO_STREAM ?=
demo: deps
	@$(MAKE) --no-print-directory all
	DEMO_FRESH="$(DEMO_FRESH)" DEMO_STREAM="$(DEMO_STREAM)" LUA_PATH="./lua/?.lua;./lua/?/init.lua;./?.lua;;" LUA_CPATH="./build/lua54/?.so;;" $(LUA) examples/demo.lua genaudit.db
	@echo; echo "== genaudit report cost --by template   (the Financial Test, per template)"
	@$(LUA) bin/genaudit --db genaudit.db report cost --by template
	@echo; echo "== genaudit report repairs --top 3 --since 7d   (the Stability Test)"
	@$(LUA) bin/genaudit --db genaudit.db report repairs --top 3 --since 7d

# Benchmarks (bench/, figures in bench/RESULTS.md): the C baselines built
# against the system SQLite and libcrypto (they seal rows as genaudit does:
# bench/seal.h), then every benchmark at full size (bench/run.sh;
# BENCH_SIZE=small for a quick run).
BENCH_TOOLS := build/bench/raw_insert build/bench/gen_rows build/bench/raw_sse build/bench/raw_pg build/bench/floor
build/bench/%: bench/%.c bench/seal.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(shell $(PKG_CONFIG) --cflags sqlite3 libcrypto) -o $@ $< \
	  $(shell $(PKG_CONFIG) --libs sqlite3 libcrypto) -lm -pthread
# the floor of one generation (bench/overhead.lua) also links genaudit's own
# BPE counter (csrc/ga_bpe.c and its scanner ga_bpe_scan.c, with ga_aux.c and Lua for their symbols)
build/bench/floor: bench/floor.c bench/seal.h csrc/ga_bpe.c csrc/ga_bpe_scan.c csrc/ga_aux.c csrc/ga_private.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(LUA54_INCDIR) $(shell $(PKG_CONFIG) --cflags sqlite3 libcrypto libpcre2-8) -o $@ \
	  bench/floor.c csrc/ga_bpe.c csrc/ga_bpe_scan.c csrc/ga_aux.c \
	  $(shell $(PKG_CONFIG) --libs sqlite3 libcrypto libpcre2-8 lua5.4) -lm -pthread
# the PostgreSQL baseline (bench/pg_persist.lua) links libpq instead of SQLite
build/bench/raw_pg: bench/raw_pg.c bench/seal.h
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(WARN) $(shell $(PKG_CONFIG) --cflags libpq libcrypto) -o $@ $< \
	  $(shell $(PKG_CONFIG) --libs libpq libcrypto) -lm -pthread

# The hand-written pre-tokeniser's character tables (csrc/ga_bpe_tables.h,
# committed) derived from the installed PCRE2 by tools/bpe-tables.c;
# spec/tokens_spec.lua checks the committed header equals a fresh run.
build/tools/bpe-tables: tools/bpe-tables.c csrc/ga_bpe_pat.h csrc/ga_bpe_unicode.h
	@mkdir -p $(@D)
	$(CC) -O2 $(WARN) $(shell $(PKG_CONFIG) --cflags libpcre2-8) -o $@ $< $(shell $(PKG_CONFIG) --libs libpcre2-8)
.PHONY: bpe-tables
bpe-tables: build/tools/bpe-tables
	build/tools/bpe-tables > csrc/ga_bpe_tables.h.tmp && mv csrc/ga_bpe_tables.h.tmp csrc/ga_bpe_tables.h

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
