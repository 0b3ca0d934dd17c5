-- genaudit: auditable, measurable LLM content generation (Lua + C core).
-- Build from a checkout: luarocks make rockspec/genaudit-scm-1.rockspec (or make rock)
rockspec_format = "3.0"
package = "genaudit"
version = "scm-1"
source = {
  url = "git+https://github.com/genaudit/genaudit.git",
  branch = "main",
}
description = {
  summary = "Audit trail and metrics for LLM content-generation pipelines",
  detailed = [[
Records, for every generation, the exact final prompts, token usage and cost,
latency and repair metrics in one row of generation_snapshots (SQLite, or
PostgreSQL through libpq).
]],
  license = "MIT",
  homepage = "https://github.com/genaudit/genaudit",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson",
  "argparse", -- bin/genaudit
  "luafilesystem", -- bin/genaudit: follows a symlink to a checkout
}
test_dependencies = {
  "busted",
}
-- luarocks test: the busted suite (.busted's default task: the Lua 5.4 build, so run make first)
test = {
  type = "busted",
}
external_dependencies = {
  SQLITE = { header = "sqlite3.h", library = "sqlite3" },
  CURL = { header = "curl/curl.h", library = "curl" },
  PQ = { header = "libpq-fe.h", library = "pq" },
  CRYPTO = { header = "openssl/evp.h", library = "crypto" },
  PCRE2 = { header = "pcre2.h", library = "pcre2-8" },
}
build = {
  type = "builtin",
  modules = {
    ["genaudit.core"] = {
      sources = {
        "csrc/ga_aux.c", "csrc/ga_init.c",
        "csrc/ga_chain.c", "csrc/ga_clock.c", "csrc/ga_digest.c", "csrc/ga_fs.c", "csrc/ga_copy.c", "csrc/ga_http.c", "csrc/ga_http_parse.c", "csrc/ga_json.c",
        "csrc/ga_jsondec.c",
        "csrc/ga_meter.c", "csrc/ga_price.c",
        "csrc/ga_pg_conn.c", "csrc/ga_pg_migrate.c", "csrc/ga_pg_rows.c", "csrc/ga_pg_sql.c",
        "csrc/ga_pg_writer.c", "csrc/ga_row.c", "csrc/ga_tape.c", "csrc/ga_store.c", "csrc/ga_store_common.c", "csrc/ga_store_query.c",
        "csrc/ga_ulid.c", "csrc/ga_writer.c", "csrc/ga_store_writer.c",
        "csrc/ga_retry.c", "csrc/ga_sse.c", "csrc/ga_bpe.c", "csrc/ga_bpe_scan.c", "csrc/ga_otlp.c",
        "csrc/ga_sqlagg.c", "csrc/ga_verify.c",
      },
      defines = {},
      incdirs = { "$(SQLITE_INCDIR)", "$(CURL_INCDIR)", "$(PQ_INCDIR)", "$(CRYPTO_INCDIR)", "$(PCRE2_INCDIR)" },
      libdirs = { "$(SQLITE_LIBDIR)", "$(CURL_LIBDIR)", "$(PQ_LIBDIR)", "$(CRYPTO_LIBDIR)", "$(PCRE2_LIBDIR)" },
      libraries = { "sqlite3", "curl", "pq", "crypto", "pcre2-8", "m", "pthread" },
    },
    ["genaudit"] = "lua/genaudit/init.lua",
    ["genaudit.store"] = "lua/genaudit/store.lua",
    ["genaudit.persister"] = "lua/genaudit/persister.lua",
    ["genaudit.pricing"] = "lua/genaudit/pricing.lua",
    ["genaudit.dto"] = "lua/genaudit/dto.lua",
    ["genaudit.scripts"] = "lua/genaudit/scripts.lua",
    ["genaudit.composer"] = "lua/genaudit/composer.lua",
    ["genaudit.validator"] = "lua/genaudit/validator.lua",
    ["genaudit.providers"] = "lua/genaudit/providers.lua",
    ["genaudit.pipeline"] = "lua/genaudit/pipeline.lua",
    ["genaudit.client"] = "lua/genaudit/client.lua",
    ["genaudit.replay"] = "lua/genaudit/replay.lua",
    ["genaudit.report"] = "lua/genaudit/report.lua",
    ["genaudit.html"] = "lua/genaudit/html.lua",
    ["genaudit.copy"] = "lua/genaudit/copy.lua",
    ["genaudit.openresty"] = "lua/genaudit/openresty.lua",
    ["genaudit.json"] = "lua/genaudit/json.lua",
    ["genaudit.schema"] = "lua/genaudit/schema.lua",
    ["genaudit.format"] = "lua/genaudit/format.lua",
    ["genaudit.audit"] = "lua/genaudit/audit.lua",
    ["genaudit.redact"] = "lua/genaudit/redact.lua",
    ["genaudit.budget"] = "lua/genaudit/budget.lua",
    ["genaudit.stream"] = "lua/genaudit/stream.lua",
    ["genaudit.metrics"] = "lua/genaudit/metrics.lua",
    ["genaudit.nginx_metrics"] = "lua/genaudit/nginx_metrics.lua",
    ["genaudit.tokens"] = "lua/genaudit/tokens.lua",
    ["genaudit.otel"] = "lua/genaudit/otel.lua",
  },
  install = {
    bin = { genaudit = "bin/genaudit" },
    -- the price map beside the modules: <tree>/share/lua/5.x/genaudit/data/
    lua = {
      ["genaudit.data.prices"] = "lua/genaudit/data/litellm-model-prices-2026-07.json",
      ["genaudit.data.prices_license"] = "lua/genaudit/data/LICENSE.litellm-model-prices",
      -- the tokenizer rank files (genaudit.tokens), named as tokens.lua looks for them
      ["genaudit.data.tiktoken-o200k_base"] = "lua/genaudit/data/tiktoken-o200k_base.json",
      ["genaudit.data.tiktoken-cl100k_base"] = "lua/genaudit/data/tiktoken-cl100k_base.json",
      ["genaudit.data.tiktoken_license"] = "lua/genaudit/data/LICENSE.tiktoken",
    },
  },
  copy_directories = { "migrations" },
}
