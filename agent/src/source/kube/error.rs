//! Errors connecting to the Kubernetes API.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the kubeconfig {}: {source}; check --kubeconfig", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "cannot find the Kubernetes API: no in-cluster service account (KUBERNETES_SERVICE_HOST \
         and /var/run/secrets/kubernetes.io/serviceaccount) and no usable kubeconfig \
         ($KUBECONFIG, ~/.kube/config): {0}; give --kubeconfig"
    )]
    Infer(kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(kube::Error),
}
