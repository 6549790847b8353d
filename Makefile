# The cluster path on a local kind cluster; each target is an `mlops cluster` subcommand
# (operator/mlops_operator/clusterctl.py), which names any missing tool (kind, docker, kubectl).
#   make cluster images deploy demo    # create, build + load, apply, run the iris example
#   make e2e                           # tests/e2e against it
#   make down                          # delete the cluster
PYTHON ?= .venv/bin/python
MLOPS ?= $(PYTHON) -m mlops_operator
CLUSTER ?= mlops

.PHONY: cluster images deploy demo e2e down test promrules mutation

cluster:
	$(MLOPS) cluster create --name $(CLUSTER)

images:
	$(MLOPS) cluster load --name $(CLUSTER)

deploy:
	$(MLOPS) cluster deploy --name $(CLUSTER)

demo:
	$(MLOPS) cluster demo --name $(CLUSTER)

e2e:
	$(MLOPS) cluster e2e --name $(CLUSTER)

down:
	$(MLOPS) cluster down --name $(CLUSTER)

# The README's test command.
test:
	bash .ci/run

# manifests/prometheus/rules.promtool.yaml from rules.yaml (checked by tests/unit/test_alerts.py).
promrules:
	$(PYTHON) tests/unit/test_alerts.py

# Mutation testing of reconcile/ and the artifact store on a copy of the checkout, a seeded
# sample (tests/mutation/run.py says how; SAMPLE=N for more): score and survivors.
SAMPLE ?= 50
mutation:
	$(PYTHON) tests/mutation/run.py --sample $(SAMPLE)
