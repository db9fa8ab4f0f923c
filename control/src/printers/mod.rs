//! The columns `kubectl get` shows: the Table (meta.k8s.io/v1) rows kube-apiserver's
//! printers produce for each resource, and the default Name/Age ones.
