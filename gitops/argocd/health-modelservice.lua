-- Argo CD health check for serving.modelservice.dev/ModelService.
-- Follows kstatus: a status older than the spec (observedGeneration < generation) is
-- Progressing; Ready=True is Healthy; reasons that need a human are Degraded.
local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local ready, degraded
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Ready" then ready = c end
  if c.type == "Degraded" then degraded = c end
end
local function describe(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
local hard = {InvalidSpec = true, Unschedulable = true, ModelLoadFailed = true}
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
if ready ~= nil and hard[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil then
  hs.message = describe(ready)
end
return hs
