/* ga_init.c — the module entry `genaudit.core` (Lua's linit to ga_aux.c's
 * lauxlib): luaopen_genaudit_core, the only exported symbol, builds the
 * module table from every concern's opener. The only file that calls them;
 * nothing calls into it. */
#include "ga_private.h"

GA_EXPORT int luaopen_genaudit_core(lua_State *L) {
  lua_newtable(L);
  ga_open_clock(L);
  ga_open_ulid(L);
  ga_open_json(L);
  ga_open_jsondec(L);
  ga_open_digest(L);
  ga_open_chain(L);
  ga_open_store(L);
  ga_open_pg(L);
  ga_open_meter(L);
  ga_open_fs(L);
  ga_open_copy(L);
  ga_open_http(L);
  ga_open_sse(L);
  ga_open_bpe(L);
  ga_open_otlp(L);
  lua_pushliteral(L, "0.1.0");
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
