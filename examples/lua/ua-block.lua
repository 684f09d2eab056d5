-- ua-block in Lua: the script users attach today through an EnvoyExtensionPolicy `lua`
-- section (or Envoy's envoy.filters.http.lua), with the same decision as Portcullis's
-- ua-block wasm filter configured by ua-block.wasm.json next to this file:
--   1. a missing or empty (whitespace-only) User-Agent follows MISSING_USER_AGENT;
--   2. an ALLOW substring match lets the request through (allow wins over deny);
--   3. a DENY substring match answers STATUS with BODY;
--   4. anything else passes.
-- Matching is a plain substring search, case-insensitive unless CASE_SENSITIVE is true.
-- Every User-Agent header value counts: any allow-listed value lets the request through.
-- Differences from the wasm filter: Lua lowercases ASCII only (the filter lowercases Unicode),
-- and there is no regex, exact match, preset, dry run or metric here.
-- integration/tests/filters_lua_equivalence.rs keeps the lists below and ua-block.wasm.json
-- in step and checks that both block exactly the same requests.

local DENY = {
  "GPTBot",
  "ClaudeBot",
  "CCBot",
  "Bytespider",
  "PerplexityBot",
  "python-requests",
}
local ALLOW = {
  "Googlebot",
  "Portcullis-Monitor",
}
local MISSING_USER_AGENT = "deny" -- "allow" or "deny"
local CASE_SENSITIVE = false
local STATUS = 403
local BODY = "Forbidden\n"

local function prepare(list)
  local out = {}
  for i, p in ipairs(list) do
    out[i] = CASE_SENSITIVE and p or string.lower(p)
  end
  return out
end

local deny = prepare(DENY)
local allow = prepare(ALLOW)

local function matches(ua, list)
  for _, p in ipairs(list) do
    if string.find(ua, p, 1, true) then
      return true
    end
  end
  return false
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local values = {}
  for i = 0, headers:getNumValues("user-agent") - 1 do
    local v = headers:getAtIndex("user-agent", i)
    v = v and v:match("^%s*(.-)%s*$") or ""
    if v ~= "" then
      values[#values + 1] = CASE_SENSITIVE and v or string.lower(v)
    end
  end

  local deny_it
  if #values == 0 then
    deny_it = MISSING_USER_AGENT == "deny"
  else
    deny_it = false
    for _, ua in ipairs(values) do
      if matches(ua, allow) then
        return
      end
    end
    for _, ua in ipairs(values) do
      if matches(ua, deny) then
        deny_it = true
        break
      end
    end
  end

  if deny_it then
    request_handle:respond({ [":status"] = tostring(STATUS), ["content-type"] = "text/plain" }, BODY)
  end
end
