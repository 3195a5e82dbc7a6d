"""critbatch-operator: the kopf controller that runs CriticalBatchSweeps as Kubernetes Jobs."""
