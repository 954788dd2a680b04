"""The quorum.recovery lab: real etcd and dqlite clusters on network and mount namespaces."""
from .core import Host, Lab, LabError  # noqa: F401
from .microk8s import K8sSnapLab, MicroK8sLab, lab_class  # noqa: F401,E402
