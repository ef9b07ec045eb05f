-- What the REST gateway does in Lua, around Envoy's gRPC-JSON transcoder (docs/gateway.md).
-- It runs on every REST call (the filter's default code) and, with per-route settings in
-- filter_context, on the routes of the gRPC methods the transcoder made of a call.
--
-- On the way in:
--   * the names a JSON body sets are passed to the server in the x-agenttasks-body-fields header,
--     because the transcoder drops names the request message does not have without a word: the
--     server refuses unknown ones, as the transcoder refuses unknown query parameters;
-- On the way back:
--   * gRPC's own headers (grpc-status, grpc-message, ...) are taken off HTTP/JSON answers;
--   * errors Envoy made itself get a message a person understands instead of the transcoder's or
--     the proxy's internal wording (the local reply mappers in envoy.yaml gave them their shape);
--   * a path the API has, asked with a method it does not take, is 405 with an Allow header
--     (the transcoder's 404 says only that it found no method);
--   * successful answers are shaped as the google.api.http annotations ask, where the transcoder
--     cannot, by the route's filter_context:
--       status = "202"        Submit queues work: answer 202 Accepted instead of 200.
--       response_body = NAME  the method is annotated `response_body: NAME`, which Envoy 1.40
--                             refuses for non-HttpBody fields: answer the value of the
--                             response's only field NAME instead of {"NAME": value}.

local BODY_FIELDS = "x-agenttasks-body-fields"
local MAX_NAMES = 64
local GATEWAY_BODY_LIMIT = "10 MiB" -- request_body_buffer_limit in envoy.yaml
local GRPC_HEADERS = { "grpc-status", "grpc-message", "grpc-accept-encoding", "grpc-status-details-bin" }

-- What a field must be, for the fields whose type alone says too little. A test keeps these in
-- step with the server's own checks (agenttasks.core.validation).
local EXPECTED = {
  priority = "an integer from 1 to 10",
  timeout_override = "a whole number of seconds, at least 1",
  default_timeout_seconds = "a whole number of seconds, at least 1",
  input_timeout_seconds = "a whole number of seconds, at least 1",
  max_attempts = "an integer from 1 to 100",
  page_size = "a whole number",
  after_sequence = "a sequence number (a whole number)",
}

local TYPES = {
  TYPE_INT32 = "an integer", TYPE_INT64 = "an integer", TYPE_UINT32 = "a whole number",
  TYPE_UINT64 = "a whole number", TYPE_SINT32 = "an integer", TYPE_SINT64 = "an integer",
  TYPE_DOUBLE = "a number", TYPE_FLOAT = "a number", TYPE_BOOL = "true or false",
  TYPE_STRING = "a string", TYPE_BYTES = "base64 text",
}

-- Every REST path and the method that takes it, as the google.api.http annotations of the protos
-- bind them, each also under /v1 (a test keeps this list equal to the annotations).
local ROUTES = {
  { "POST", "/agent/request/{agent_id}" },
  { "POST", "/agent/{agent_id}/tasks:batchSubmit" },
  { "GET", "/agent/{agent_id}/task/{task_id}" },
  { "POST", "/agent/{agent_id}/task/{task_id}/message" },
  { "POST", "/agent/{agent_id}/task/{task_id}/cancel" },
  { "GET", "/agent/{agent_id}/task/{task_id}/watch" },
  { "GET", "/agent/{agent_id}/tasks" },
  { "POST", "/agent/create" },
  { "GET", "/agent/list" },
  { "GET", "/agent/{agent_id}" },
  { "POST", "/agent/update/{agent_id}" },
  { "POST", "/agent/delete/{agent_id}" },
  { "POST", "/agent/{agent_id}/pause" },
  { "POST", "/agent/{agent_id}/resume" },
  { "POST", "/agent/{agent_id}/stop" },
  { "POST", "/agent/{agent_id}/status" },
}

-- The routes as anchored Lua patterns: a {field} is one path segment.
local ROUTE_PATTERNS = {}
for _, route in ipairs(ROUTES) do
  local pattern = route[2]:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"):gsub("{[%w_]+}", "[^/]+")
  ROUTE_PATTERNS[#ROUTE_PATTERNS + 1] = { route[1], "^" .. pattern .. "$" }
  ROUTE_PATTERNS[#ROUTE_PATTERNS + 1] = { route[1], "^/v1" .. pattern .. "$" }
end

-- The methods the API takes on `path`, sorted, as an Allow header lists them ("" if none).
local function allowed_methods(path)
  local seen, allowed = {}, {}
  for _, route in ipairs(ROUTE_PATTERNS) do
    if not seen[route[1]] and path:match(route[2]) then
      seen[route[1]] = true
      allowed[#allowed + 1] = route[1]
    end
  end
  table.sort(allowed)
  return table.concat(allowed, ", ")
end

local function is_grpc(content_type)
  return content_type ~= nil and content_type:sub(1, 16) == "application/grpc"
end

-- JSON string contents (without the quotes) to text, and back.
local ESCAPES = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(code)
  if code < 0x80 then
    return string.char(code)
  elseif code < 0x800 then
    return string.char(0xC0 + math.floor(code / 0x40), 0x80 + code % 0x40)
  end
  return string.char(0xE0 + math.floor(code / 0x1000), 0x80 + math.floor(code / 0x40) % 0x40, 0x80 + code % 0x40)
end

local function json_unescape(text)
  -- One left-to-right pass, so an escaped backslash before "u" stays a backslash.
  return (text:gsub("\\(.)(%x?%x?%x?%x?)", function(c, hex)
    if c == "u" and #hex == 4 then
      return utf8_char(tonumber(hex, 16))
    end
    return (ESCAPES[c] or c) .. hex
  end))
end

local function json_escape(text)
  return (text:gsub('[%c"\\]', function(c)
    if c == '"' or c == "\\" then
      return "\\" .. c
    end
    return string.format("\\u%04x", c:byte())
  end))
end

-- A JSON key as it may travel in a header: bytes other than letters, digits and _ as %XX.
local function encode_name(name)
  return (name:gsub("[^%w_]", function(c) return string.format("%%%02X", c:byte()) end))
end

-- The names a JSON body sets: its top-level keys, and the keys of objects that are elements of
-- a top-level array, as "name[index].key" (each "name[].key" once, at its first index), so a
-- BatchSubmit's requests are checked too. Deeper objects (metadata) are free-form. Escapes in a
-- key are decoded, as the transcoder decodes them. Malformed JSON is scanned as far as it goes;
-- the transcoder refuses it anyway.
local function body_field_names(text)
  local names, seen = {}, {}
  local stack = {} -- open containers: {object = bool, key = last key, index = element, of = name}
  local expect_key = false
  local pos = 1
  while #names < MAX_NAMES do
    local at = text:find('[{}%[%],"]', pos)
    if at == nil then
      break
    end
    local char = text:byte(at)
    local top = stack[#stack]
    pos = at + 1
    if char == 34 then -- a string: it ends at the first quote not escaped by a backslash
      local stop = pos
      while true do
        local q = text:find('["\\]', stop)
        if q == nil then
          return names
        end
        if text:byte(q) == 92 then
          stop = q + 2
        else
          stop = q
          break
        end
      end
      if top ~= nil and top.object and expect_key then
        local key = encode_name(json_unescape(text:sub(pos, stop - 1)))
        top.key, expect_key = key, false
        local name, shape = nil, nil
        if #stack == 1 then
          name, shape = key, key
        elseif #stack == 3 and stack[1].object and not stack[2].object then
          name = stack[2].of .. "[" .. top.index .. "]." .. key
          shape = stack[2].of .. "[]." .. key
        end
        if shape ~= nil and not seen[shape] then
          seen[shape] = true
          names[#names + 1] = name
        end
      end
      pos = stop + 1
    elseif char == 123 or char == 91 then -- { or [
      local container = { object = char == 123, index = 0 }
      if top ~= nil then
        container.of = top.key or ""
        container.index = top.index
      end
      stack[#stack + 1] = container
      expect_key = container.object
    elseif char == 125 or char == 93 then -- } or ]
      stack[#stack] = nil
      expect_key = false
    elseif top ~= nil then -- a comma
      if top.object then
        expect_key = true
      else
        top.index = top.index + 1
      end
    end
  end
  return names
end

-- Headers gRPC cannot carry as metadata: a name with other than lower-case letters, digits and
-- "-_.", or a text value with a byte outside printable ASCII. HTTP allows both (e.g. "h~|"), and
-- the server's gRPC library fails the whole call on them (INTERNAL, a 500): they are dropped
-- here instead, as nothing the server reads can be spelled that way.
local function not_metadata(name, value)
  if name:sub(1, 1) == ":" then
    return false -- a pseudo-header: the transcoder's business
  end
  if name:find("[^%l%d_.-]") then
    return true
  end
  return name:sub(-4) ~= "-bin" and value:find("[^\32-\126]") ~= nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  headers:remove(BODY_FIELDS) -- only the gateway says what a body held
  local dropped = {}
  for name, value in pairs(headers) do
    if not_metadata(name, value) then
      dropped[#dropped + 1] = name
    end
  end
  for _, name in ipairs(dropped) do
    headers:remove(name)
  end
  if headers:get(":method") == "GET" or is_grpc(headers:get("content-type")) then
    return
  end
  local body = handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local names = body_field_names(body:getBytes(0, body:length()))
  if #names > 0 then
    -- body() yielded: the headers object from before is no longer valid, but the headers are
    -- still held back, so they can be changed.
    handle:headers():add(BODY_FIELDS, table.concat(names, ","))
  end
end

local function first_sentence_lower(text)
  local line = text:match("^[^\n]*"):gsub("%.$", "")
  line = line:gsub("%. (%u)", function(c) return ", " .. c:lower() end)
  return line:sub(1, 1):lower() .. line:sub(2)
end

-- A person's wording for a message Envoy wrote itself, or nil to keep it.
local function reworded(message)
  local field, value, kind = message:match("^(.-): invalid value (.+) for type (.+)$")
  if field ~= nil then
    if field == "" then
      if value:find("^Starting an object") then
        return "request body has a JSON object in a field that takes a plain value"
      end
      return "request body holds a value of the wrong JSON type"
    end
    if #value > 64 then
      value = value:sub(1, 60) .. "..."
    end
    local expected = EXPECTED[field:match("([%w_]+)$") or ""] or TYPES[kind] or "a JSON object"
    return field .. " must be " .. expected .. ", got " .. value
  end
  if message == ": Proto field is not repeating, cannot start list." then
    return "request body has a JSON list in a field that takes no list"
  end
  if message == ": Root element must be a message." then
    return "request body must be a JSON object"
  end
  if message == ": Proto fields must have a name." then
    return "request body has a field with an empty name"
  end
  local bound = message:match('^The binding value ".-" of the field ([%w_]+) is conflicting with the value ".-" in the body%.$')
  if bound ~= nil then
    return bound .. " comes from the path; the body may not set it"
  end
  local unknown = message:match('^Could not find field "(.-)" in the type ".-"%.$')
  if unknown ~= nil then
    return 'unknown query parameter "' .. unknown .. '"'
  end
  local method, path = message:match("^(%u+) Could not resolve (.-) to a method%.$")
  if path ~= nil then
    return "no such path: " .. method .. " " .. path
  end
  if message == "Payload Too Large" then
    return "request body is larger than the gateway accepts (" .. GATEWAY_BODY_LIMIT .. ")"
  end
  if message:find("^upstream connect error") or message:find("^upstream connection error") then
    local reason = message:match(": ([^:]+)$") or "connection failure"
    return "cannot reach the agenttasks server behind the gateway (" .. reason:lower()
      .. "): it may be restarting; retry shortly"
  end
  if message == "no healthy upstream" then
    return "no agenttasks server is available behind the gateway; retry shortly"
  end
  if message == "upstream request timeout" then
    return "the agenttasks server did not answer in time"
  end
  -- The transcoder's JSON syntax errors: a sentence, then the body and a caret under the spot.
  if message:find("\n", 1, true) or message:find("^Unexpected ") or message:find("^Expected ")
    or message:find("^Parsing terminated") or message:find("^Invalid ") then
    return "request body is not valid JSON: " .. first_sentence_lower(message)
  end
  return nil
end

local function reword_local_reply(handle)
  local body = handle:body()
  if body == nil then
    return
  end
  -- The mappers in envoy.yaml print the fields in name order, "message" last, and a newline.
  local head, raw = body:getBytes(0, body:length()):match('^(.*"message":")(.*)"}%s*$')
  if raw == nil then
    return
  end
  local original = json_unescape(raw)
  local method, path = original:match("^(%u+) Could not resolve (.-) to a method%.$")
  local allow = path ~= nil and allowed_methods(path) or ""
  if allow ~= "" then
    -- body() yielded: the headers from before are no longer valid, but they are still held
    -- back with the body, so they can be changed.
    local headers = handle:headers()
    headers:replace(":status", "405")
    headers:replace("allow", allow)
    local text = method .. " is not allowed on " .. path .. "; it takes " .. allow
    body:setBytes('{"code":12,"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo",'
      .. '"domain":"agenttasks.dev","metadata":{"allow":"' .. allow .. '"},"reason":"METHOD_NOT_ALLOWED"}],'
      .. '"message":"' .. json_escape(text) .. '"}\n')
    return
  end
  local message = reworded(original)
  if message ~= nil then
    body:setBytes(head .. json_escape(message) .. '"}\n')
  end
end

function envoy_on_response(handle)
  local headers = handle:headers()
  if is_grpc(headers:get("content-type")) then
    return -- a gRPC client through the gateway: nothing here is for it
  end
  for _, name in ipairs(GRPC_HEADERS) do
    headers:remove(name)
  end
  local status = headers:get(":status")
  if status ~= "200" then
    -- An error. The server's own (transcoded from its gRPC status) carry the time the upstream
    -- took; Envoy's local replies do not, and only they are reworded.
    if status:sub(1, 1) ~= "2" and headers:get("x-envoy-upstream-service-time") == nil then
      reword_local_reply(handle)
    end
    return
  end
  -- Read the context before body(): that call yields, and the context is invalid afterwards.
  local context = handle:filterContext()
  local accepted = context:get("status")
  local field = context:get("response_body")
  if accepted ~= nil then
    headers:replace(":status", accepted)
  end
  if field == nil then
    return
  end
  local body = handle:body()
  if body == nil then
    return
  end
  -- The descriptor builder checks that NAME is the response's only field, so the transcoder's
  -- compact output is exactly {"NAME":<value>}.
  local text = body:getBytes(0, body:length())
  local prefix = '{"' .. field .. '":'
  if text:sub(1, #prefix) == prefix and text:sub(-1) == "}" then
    body:setBytes(text:sub(#prefix + 1, -2))
  end
end
