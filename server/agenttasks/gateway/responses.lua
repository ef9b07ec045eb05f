-- Shapes successful REST answers the way the google.api.http annotations ask, where Envoy's
-- transcoder cannot (see docs/gateway.md). It runs on the way back, after the transcoder has
-- turned the gRPC answer into JSON; each route that needs it passes what to do in
-- filter_context:
--   status = "202"        Submit queues work: answer 202 Accepted instead of 200.
--   response_body = NAME  the method is annotated `response_body: NAME`, which Envoy 1.40 refuses
--                         for non-HttpBody fields: answer the value of the response's only
--                         field NAME instead of {"NAME": value}.
-- Errors (any status but 200) pass untouched: they keep the status and body the transcoder or
-- the local reply mappers gave them. Unary answers arrive whole, so the status seen here is final.

function envoy_on_response(handle)
  local headers = handle:headers()
  if headers:get(":status") ~= "200" then
    return
  end
  -- Read the context before body(): that call yields, and the context is invalid afterwards.
  local context = handle:filterContext()
  local status = context:get("status")
  local field = context:get("response_body")
  if status ~= nil then
    headers:replace(":status", status)
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
