-- Argo CD health check for mlops.seed.io/TrainingRun; install: docs/argocd.md.
-- Healthy: Ready=True for the current generation. Degraded: phase Failed, or Stalled=True.
-- Progressing: anything else (no status yet, a stale observedGeneration, Pending, Running...).
local DEGRADED_PHASES = {Failed = true}
local SUSPENDED_PHASES = {}
-- (From here on the same in every kind's script; tests/unit/test_manifests.py checks it.)
-- Argo CD runs this with `obj` set to the live object and shows what it returns.
local hs = {}
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = nil
local stalled = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    elseif condition.type == "Stalled" then
      stalled = condition
    end
  end
end

local function message_of(condition, fallback)
  if condition ~= nil and condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return fallback
end

local phase = status.phase
if phase ~= nil and DEGRADED_PHASES[phase] then
  hs.status = "Degraded"
  hs.message = phase .. ": " .. message_of(ready, "see the conditions in its status")
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message_of(stalled, "Stalled")
  return hs
end
-- A Ready condition written for an older generation says nothing about this one.
local ready_is_current = ready ~= nil and
  (generation == nil or ready.observedGeneration == nil or ready.observedGeneration >= generation)
if ready_is_current and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message_of(ready, "Ready")
  return hs
end
if phase ~= nil and SUSPENDED_PHASES[phase] then
  hs.status = "Suspended"
  hs.message = phase .. ": " .. message_of(ready, "waiting")
  return hs
end
hs.status = "Progressing"
if ready_is_current then
  hs.message = message_of(ready, "Phase " .. (phase or "Pending"))
else
  hs.message = "Phase " .. (phase or "Pending")
end
return hs
