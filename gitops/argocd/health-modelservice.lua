-- Argo CD health check for serving.modelservice.dev/ModelService.
-- Follows kstatus (what Flux reads) on the same conditions: a status older than the spec
-- (observedGeneration < generation) is Progressing; Stalled=True (the operator cannot make
-- progress without a human: InvalidSpec, ModelLoadFailed, Unschedulable, ...) is Degraded;
-- Reconciling=True (a rollout, pods not ready yet) is Progressing; Ready=True is Healthy.
-- Statuses written before Stalled existed fall back to Degraded and Ready's reason.
local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end
local found = {}
for _, c in ipairs(obj.status.conditions) do
  if c.type ~= nil then found[c.type] = c end
end
local function describe(c)
  return (c.reason or "") .. ": " .. (c.message or "")
end
local stalled, reconciling, ready, degraded = found["Stalled"], found["Reconciling"], found["Ready"], found["Degraded"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if stalled == nil and degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
  return hs
end
local hard = {InvalidSpec = true, Unschedulable = true, ModelLoadFailed = true}
if stalled == nil and ready ~= nil and ready.status ~= "True" and hard[ready.reason or ""] then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = describe(reconciling)
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil then
  hs.message = describe(ready)
end
return hs
