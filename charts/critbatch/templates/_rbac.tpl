{{- /*
The operator's namespaced permissions, the same whether granted cluster-wide or per namespace.
tests/deploy/test_rbac.py checks them against the API calls the operator makes.
*/ -}}
{{- define "critbatch.namespacedRules" -}}
# Sweeps: kopf lists and watches them and patches its bookkeeping annotations; get serves
# spec.reference.sweep.
- apiGroups: [critbatch.dev]
  resources: [criticalbatchsweeps]
  verbs: [get, list, watch, patch]
# The planner's status (trials, b*, conditions).
- apiGroups: [critbatch.dev]
  resources: [criticalbatchsweeps/status]
  verbs: [patch]
# One Job per trial: listed every reconcile, created, deleted when pruned.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, create, delete]
# A trial on several nodes: the headless Service in which its pods find node 0, created with
# its Job and deleted with it (never read: a 409 on creation is the trial's own).
- apiGroups: [""]
  resources: [services]
  verbs: [create, delete]
# Trial pods: their IP (direct scrape) and termination message (the trainer's result).
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Events on sweeps (trial transitions, b* resolved or not, invalid specs).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
