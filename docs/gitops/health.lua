-- Argo CD health of a CriticalBatchSweep (critbatch.dev/v1alpha1), from its status.
--   Healthy      Ready=True: every trial is final and one batch size holds the confidence
--   Degraded     an invalid spec, a failed sweep, a finished sweep whose answer is not
--                resolved (Ready reason Unresolved), or Degraded=True (e.g. Prometheus unreachable)
--   Progressing  anything else: not yet seen by the operator, or trials still running
-- Argo CD runs it as Lua 5.1 with `obj` bound to the resource.
local hs = {}
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

local function condition(kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function progress()
  if status ~= nil and status.progress ~= nil then
    return "trials " .. status.progress
  end
  return "trials pending"
end

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the critbatch operator"
  return hs
end
if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to see generation " .. generation
  return hs
end

local ready = condition("Ready")
local degraded = condition("Degraded")
if status.phase == "Invalid" or status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (ready and ready.message) or ("Sweep " .. status.phase)
  return hs
end
if status.phase == "Succeeded" and ready ~= nil and ready.reason == "Unresolved" then
  hs.status = "Degraded"
  hs.message = ready.message or "Finished without a resolved critical batch size"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Critical batch size measured"
  return hs
end
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end
hs.status = "Progressing"
hs.message = progress()
return hs
