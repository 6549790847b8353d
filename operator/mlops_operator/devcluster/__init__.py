"""A real Kubernetes control plane on this machine, for the test tier and for people.

- `build`: etcd, kube-apiserver and kube-controller-manager, built with Go from the module
  in the repository's `controlplane/` folder (pinned versions, go.sum), into a cache folder
  outside the repository keyed by that pin; a second build reuses the binaries.
- `control_plane`: starts them on 127.0.0.1 with RBAC and the default admission plugins,
  writes an admin kubeconfig, stops everything by pid.
- `node`: the node stand-in, one Node whose Pods run as local processes through the same
  `PodRunner` as local mode.

`mlops dev cluster build|up|down` drives them from the command line.
"""
